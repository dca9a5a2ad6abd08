"""Where and how eagerly the server's processes run: CPU pinning (``--cpus``,
``BOSSLAB_CPUS``) and the storage process's lower priority (``--storage-nice``).

On a small dedicated machine the server's three processes keep out of each other's way when
each stays on its CPU: the event loop's process on the first CPU listed, the brain and storage
processes on the others (on the same one when only one is listed). A woken process then
finds its caches warm and never waits behind its own server's other processes for a CPU.
Linux only (``os.sched_setaffinity``); nothing is pinned when no CPUs are listed.

The storage process's group commits can wait a few milliseconds; a decision cannot. With the
brain and storage processes on one CPU, a commit that woke while the brain was deciding took
the CPU from it. Run nicer than its siblings (:func:`lower_priority`), storage yields to them
instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence


def allowed_cpus() -> set[int] | None:
    """The CPUs this process may run on; None where the platform cannot pin."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    return set(os.sched_getaffinity(0))


def checked_cpus(cpus: Sequence[int]) -> tuple[int, ...]:
    """``cpus`` if this process may pin to every one of them; else a ``ValueError`` saying
    which it may use."""
    if not cpus:
        return ()
    allowed = allowed_cpus()
    if allowed is None:
        raise ValueError("CPU pinning needs Linux (os.sched_setaffinity): leave --cpus unset")
    unknown = sorted(set(cpus) - allowed)
    if unknown:
        raise ValueError(f"CPU(s) {unknown} are not available to this process; it may use "
                         f"{sorted(allowed)}: list the event loop's CPU first, then the brain "
                         f"and storage processes', e.g. --cpus {min(allowed)},{max(allowed)}")
    return tuple(cpus)


def event_loop_cpus(cpus: Sequence[int]) -> set[int]:
    """Where the event loop's process runs: the first CPU listed."""
    return set(cpus[:1])


def worker_cpus(cpus: Sequence[int]) -> set[int]:
    """Where the brain and storage processes run: the other CPUs listed, or the first."""
    return set(cpus[1:] or cpus[:1])


def lower_priority(nice: int) -> None:
    """Make the calling thread, and the threads and processes it starts later, ``nice`` steps
    nicer (0: unchanged; capped at 19; Unix only). Raising niceness needs no privilege."""
    if nice > 0 and hasattr(os, "nice"):
        os.nice(nice)


def pin(cpus: set[int] | None, pid: int | None = 0) -> None:
    """Run process ``pid``'s main thread (0: the calling thread), and the threads and
    processes it starts later, on ``cpus``; nothing when None or empty."""
    if cpus and pid is not None:
        os.sched_setaffinity(pid, cpus)
