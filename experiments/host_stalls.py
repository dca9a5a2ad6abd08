"""How much of its CPUs a virtual machine's host takes away, and what a wake-up costs there:
the context for a latency run.

    python -m experiments.host_stalls [--seconds 2] [--cpus 0,1] [--wake-ups 1000]

One process per CPU, pinned to it, reads the clock in a tight loop for ``--seconds`` and
counts every gap between two reads longer than ``STALL_NS`` (0.2 ms): time in which that CPU
did not run it. With nothing else running in the machine, that is time the host took from the
virtual CPU (another guest, the hypervisor). A guest kernel without steal-time accounting
(this lab's Firecracker VMs reported a steal of 0 on 2026-12-03; one accounted 0-5% on
2026-12-04) cannot tell these stalls apart from work, so
a stall lands in the CPU time and the latency of whatever ran on that CPU. The load benchmark
(``experiments/benchmark_serving.py``) runs this before and after each run and prints it in
its header, because its tail moves with them: a 20 ms stall of the CPU that runs the server's
event loop delays every session at once.

Wake-ups: a process on the first CPU sends a byte every millisecond to a process on the last
CPU, which sends it back; both CPUs are idle in between, so each trip wakes a halted virtual
CPU, as the server's processes are woken under a moderate load. It prints the round trip's
p50, p99 and maximum.

Speed: a process pinned to each CPU in turn sums a list of 1,000 ints 2,000 times and prints
the median and the best time. The host's other guests share its cores, caches and memory
bandwidth, so the same work takes longer when they are busy, and nothing in the guest counts
that as a stall or as steal.

Steal: where the guest kernel accounts it (``/proc/stat``), :func:`steal_share` gives the
share of all CPUs' time the host took between two readings; the load benchmark prints it for
its measured window.

Measured on this lab's 2-vCPU VMs on 2026-12-03 (2 s probes around load runs, a few of 5 s):
stalls of 0-4% of a CPU, the longest 0.3-8.6 ms (33 ms once, with the same loop in C), and
none over 0.5 ms with one CPU spinning alone; wake-up round trips p50 57-119 us and p99
129-428 us, single ones up to 123 ms, against 15 us between two busy CPUs. Neither predicts a
load run: what else moves with the host is the CPU each operation costs."""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Iterable
from multiprocessing.connection import Connection
from typing import NamedTuple

STALL_NS = 200_000
"""A gap between two clock reads longer than this (0.2 ms) is a stall; the loop reads the
clock every fraction of a microsecond and a guest's own interrupts take microseconds."""


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


WORK = list(range(1000))
"""The fixed piece of Python work that :func:`work_speed` times: summing 1,000 ints."""


class Speed(NamedTuple):
    """How long :data:`WORK` took on one CPU: the median and the best of its repetitions."""

    cpu: int
    median: float
    best: float

    def describe(self) -> str:
        return f"cpu{self.cpu} {self.median * 1e6:.1f} us (best {self.best * 1e6:.1f})"


def work_speed(cpu: int, repetitions: int = 2000) -> Speed:
    """Sum :data:`WORK` ``repetitions`` times on ``cpu`` (this process is pinned to it)."""
    os.sched_setaffinity(0, {cpu})
    clock = time.perf_counter
    seconds = []
    for _ in range(repetitions):
        start = clock()
        sum(WORK)
        seconds.append(clock() - start)
    return Speed(cpu, statistics.median(seconds), min(seconds))


def speeds(cpus: Iterable[int]) -> list[Speed]:
    """:func:`work_speed` on each CPU of ``cpus``, one after the other."""
    with mp.get_context("spawn").Pool(1) as pool:
        return [pool.apply(work_speed, (cpu,)) for cpu in sorted(set(cpus))]


class CpuTimes(NamedTuple):
    """Jiffies of all CPUs together since boot (``/proc/stat``): stolen and in all."""

    steal: int
    total: int


def cpu_times() -> CpuTimes | None:
    """All CPUs' time so far; None where ``/proc/stat`` cannot be read (not Linux)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(field) for field in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal guest guest_nice; guests are in user
    return CpuTimes(fields[7] if len(fields) > 7 else 0, sum(fields[:8]))


def steal_share(before: CpuTimes | None, after: CpuTimes | None) -> float | None:
    """The share of all CPUs' time the host took between two readings (None if unknown)."""
    if before is None or after is None or after.total <= before.total:
        return None
    return (after.steal - before.steal) / (after.total - before.total)


def measure(cpus: Iterable[int], seconds: float = 2.0) -> list[Stalls]:
    """Spin on every CPU of ``cpus`` at once for ``seconds``: each one's stalls."""
    chosen = sorted(set(cpus))
    with mp.get_context("spawn").Pool(len(chosen)) as pool:
        return pool.starmap(spin, [(cpu, seconds) for cpu in chosen])


def summary(stalls: Iterable[Stalls]) -> str:
    return ", ".join(s.describe() for s in stalls)


class WakeUps(NamedTuple):
    """Round trips between two processes on two CPUs that were idle before each trip."""

    first: int
    last: int
    p50: float
    p99: float
    longest: float

    def describe(self) -> str:
        return (f"wake-up round trip cpu{self.first}-cpu{self.last} p50 {self.p50 * 1e6:.0f} "
                f"us, p99 {self.p99 * 1e6:.0f} us, max {self.longest * 1e3:.1f} ms")


def _echo(cpu: int, connection: Connection) -> None:
    os.sched_setaffinity(0, {cpu})
    while True:
        try:
            message = connection.recv_bytes()
        except EOFError:
            return
        connection.send_bytes(message)


def _ping(cpu: int, connection: Connection, trips: int, results: mp.SimpleQueue[list[float]],
          ) -> None:
    os.sched_setaffinity(0, {cpu})
    seconds = []
    for _ in range(trips):
        time.sleep(0.001)
        start = time.perf_counter()
        connection.send_bytes(b"x")
        connection.recv_bytes()
        seconds.append(time.perf_counter() - start)
    connection.close()
    results.put(seconds)


def wake_ups(first: int, last: int, trips: int = 1000) -> WakeUps:
    """``trips`` round trips from ``first`` to ``last`` and back, 1 ms apart."""
    context = mp.get_context("spawn")
    ping_end, echo_end = context.Pipe()
    results: mp.SimpleQueue[list[float]] = context.SimpleQueue()
    echo = context.Process(target=_echo, args=(last, echo_end), daemon=True)
    ping = context.Process(target=_ping, args=(first, ping_end, trips, results), daemon=True)
    echo.start()
    ping.start()
    ping_end.close()
    echo_end.close()
    seconds = results.get()
    ping.join(30)
    echo.join(30)
    cut = statistics.quantiles(seconds, n=100, method="inclusive")
    return WakeUps(first, last, cut[49], cut[98], max(seconds))


def probe(cpus: Iterable[int], seconds: float = 2.0, trips: int = 1000) -> str:
    """The three measures on ``cpus`` in one line (wake-ups between the first and last
    CPU)."""
    chosen = sorted(set(cpus))
    line = f"stalls over {seconds:g} s: {summary(measure(chosen, seconds))}"
    line += f"; summing 1,000 ints: {', '.join(s.describe() for s in speeds(chosen))}"
    if trips > 0 and len(chosen) > 1:
        line += f"; {wake_ups(chosen[0], chosen[-1], trips).describe()}"
    return line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--wake-ups", type=int, default=1000, metavar="N",
                        help="round trips between the first and last CPU (0 skips them)")
    parser.add_argument("--cpus", default="", help="CPUs to spin on (default: every one "
                                                   "this process may use), e.g. 0,1")
    args = parser.parse_args(argv)
    cpus = ([int(c) for c in args.cpus.split(",")] if args.cpus
            else sorted(os.sched_getaffinity(0)))
    print(probe(cpus, args.seconds, args.wake_ups))


if __name__ == "__main__":
    main()
