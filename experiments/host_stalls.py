"""How much of its CPUs a virtual machine's host takes away: the context for a latency run.

    python -m experiments.host_stalls [--seconds 2] [--cpus 0,1]

One process per CPU, pinned to it, reads the clock in a tight loop for ``--seconds`` and
counts every gap between two reads longer than ``STALL_NS`` (0.2 ms): time in which that CPU
did not run it. With nothing else running in the machine, that is time the host took from the
virtual CPU (another guest, the hypervisor). A guest kernel without steal-time accounting
(this lab's Firecracker VMs report a steal of 0) cannot tell these stalls apart from work, so
a stall lands in the CPU time and the latency of whatever ran on that CPU. The load benchmark
(``experiments/benchmark_serving.py``) runs this before and after each run and prints it in
its header, because its tail moves with them: a 20 ms stall of the CPU that runs the server's
event loop delays every session at once.

Measured, both CPUs spinning for 5 s, at different hours of one day: stalls of 0.2-4% of the
time, the longest 4-33 ms; one CPU spinning alone: 0.2-0.5% and below 0.5 ms.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from collections.abc import Iterable
from typing import NamedTuple

STALL_NS = 200_000
"""A gap between two clock reads longer than this (0.2 ms) is a stall; the loop reads the
clock every 0.1 us and a guest's own interrupts take microseconds."""


class Stalls(NamedTuple):
    """What one CPU's spinning process saw."""

    cpu: int
    seconds: float
    stalled: float
    """Seconds in stalls."""
    longest: float
    """Seconds of the longest stall."""
    over_1ms: int
    """Stalls longer than 1 ms."""

    @property
    def share(self) -> float:
        return self.stalled / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        return (f"cpu{self.cpu} {self.share:.1%} (longest {self.longest * 1000:.1f} ms, "
                f"{self.over_1ms} over 1 ms)")


def spin(cpu: int, seconds: float) -> Stalls:
    """Spin on ``cpu`` (this process is pinned to it) for ``seconds``: its stalls."""
    os.sched_setaffinity(0, {cpu})
    clock = time.perf_counter_ns
    start = previous = clock()
    end = start + int(seconds * 1e9)
    stalled = longest = over_1ms = 0
    while previous < end:
        now = clock()
        gap = now - previous
        if gap > STALL_NS:
            stalled += gap
            longest = max(longest, gap)
            over_1ms += gap > 1_000_000
        previous = now
    return Stalls(cpu, (previous - start) / 1e9, stalled / 1e9, longest / 1e9, over_1ms)


def measure(cpus: Iterable[int], seconds: float = 2.0) -> list[Stalls]:
    """Spin on every CPU of ``cpus`` at once for ``seconds``: each one's stalls."""
    chosen = sorted(set(cpus))
    with mp.get_context("spawn").Pool(len(chosen)) as pool:
        return pool.starmap(spin, [(cpu, seconds) for cpu in chosen])


def summary(stalls: Iterable[Stalls]) -> str:
    return ", ".join(s.describe() for s in stalls)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--cpus", default="", help="CPUs to spin on (default: every one "
                                                   "this process may use), e.g. 0,1")
    args = parser.parse_args(argv)
    cpus = ([int(c) for c in args.cpus.split(",")] if args.cpus
            else sorted(os.sched_getaffinity(0)))
    print(f"stalls with a process spinning on each CPU for {args.seconds:g} s: "
          f"{summary(measure(cpus, args.seconds))}")


if __name__ == "__main__":
    main()
