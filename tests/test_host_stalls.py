"""The host-stall probe of the load benchmark (``experiments.host_stalls``): a process that is
not run for a while is seen stalled for that long, and a quiet spin reports its own length;
the speed probe times its work on each CPU; steal is read from /proc/stat."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from typing import Any

import pytest

from experiments.host_stalls import (
    CpuTimes,
    Stalls,
    cpu_times,
    measure,
    probe,
    speeds,
    spin,
    steal_share,
    summary,
    wake_ups,
)

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"),
                                reason="the probe pins processes: Linux only")


def _spin_into(queue: mp.Queue[Stalls], spinning: Any, cpu: int, seconds: float) -> None:
    spinning.set()
    queue.put(spin(cpu, seconds))


def test_a_process_stopped_for_80_ms_sees_one_stall_of_about_that_long() -> None:
    cpu = min(os.sched_getaffinity(0))
    context = mp.get_context("spawn")
    queue: mp.Queue[Stalls] = context.Queue()
    spinning = context.Event()
    spinner = context.Process(target=_spin_into, args=(queue, spinning, cpu, 1.5))
    spinner.start()
    try:
        assert spinning.wait(60), "the spinner did not start"  # a slow host starts it late
        time.sleep(0.3)
        assert spinner.pid is not None
        os.kill(spinner.pid, signal.SIGSTOP)
        time.sleep(0.08)
        os.kill(spinner.pid, signal.SIGCONT)
        stalls = queue.get(timeout=30)
    finally:
        spinner.join(30)
    assert stalls.cpu == cpu
    assert 0.075 <= stalls.longest < 1.0
    assert stalls.stalled >= stalls.longest
    assert stalls.over_1ms >= 1
    assert 1.4 <= stalls.seconds < 3.0
    assert 0.04 < stalls.share < 0.7


def test_every_cpu_asked_for_is_probed_once_for_the_time_asked() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    stalls = measure(cpus + cpus[:1], 0.2)
    assert [s.cpu for s in stalls] == cpus
    for one in stalls:
        assert 0.2 <= one.seconds < 0.5
        assert 0.0 <= one.stalled <= one.seconds
        assert one.longest <= one.stalled
    assert summary(stalls).startswith(f"cpu{cpus[0]} ")


def test_wake_up_round_trips_are_timed_between_the_two_cpus() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    trips = wake_ups(cpus[0], cpus[-1], trips=50)
    assert (trips.first, trips.last) == (cpus[0], cpus[-1])
    assert 0.0 < trips.p50 <= trips.p99 <= trips.longest < 1.0
    line = probe(cpus, 0.1, trips=20)
    assert line.startswith("stalls over 0.1 s: cpu")
    assert ("wake-up round trip" in line) == (len(cpus) > 1)


def test_the_speed_probe_times_its_work_on_each_cpu() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    measured = speeds(cpus)
    assert [s.cpu for s in measured] == cpus
    for one in measured:
        assert 0.0 < one.best <= one.median < 0.01
    assert "summing 1,000 ints: cpu" in probe(cpus, 0.1, trips=0)


def test_steal_is_the_stolen_share_of_the_time_between_two_readings() -> None:
    assert steal_share(CpuTimes(10, 1000), CpuTimes(30, 1400)) == pytest.approx(0.05)
    assert steal_share(CpuTimes(10, 1000), CpuTimes(10, 1000)) is None
    assert steal_share(None, CpuTimes(10, 1000)) is None
    now = cpu_times()
    if now is not None:  # Linux
        assert 0 <= now.steal <= now.total
