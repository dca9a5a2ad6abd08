"""serving.collector: the garbage collector paced by the event loop's clock."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.bundle import load_bundle, write_scripted_bundle
from serving.collector import ALLOCATIONS_YOUNG, PacedCollector
from serving.settings import Settings
from tests.server_helpers import SECRET, ThreadServer, connect, free_port, register, run, sqlite_url


class Node:
    """Something in a reference cycle: only a collection frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def automatic_collection_off() -> Iterator[None]:
    """Only explicit collections (``gc.collect``, what the pace does) run in the test."""
    was_enabled, thresholds = gc.isenabled(), gc.get_threshold()
    gc.disable()
    yield
    gc.set_threshold(*thresholds)
    if was_enabled:
        gc.enable()


def test_paced_collections_free_cycles_and_visit_every_generation(
        automatic_collection_off: None) -> None:
    pauses: list[tuple[int, float]] = []
    collector = PacedCollector(every=0.005, middle_after=3, oldest_after=2,
                               on_pause=lambda generation, s: pauses.append((generation, s)))

    async def run() -> None:
        collector.start(asyncio.get_running_loop())
        cycle = weakref.ref(Node())
        for _ in range(400):
            if cycle() is None and len(pauses) >= 12:
                break
            await asyncio.sleep(0.005)
        collector.stop()
        assert cycle() is None, "a reference cycle outlived the paced collections"

    started = time.perf_counter()
    asyncio.run(run())
    elapsed = time.perf_counter() - started
    generations = [generation for generation, _ in pauses]
    assert generations.count(0) > generations.count(1) > 0, generations
    assert 2 in generations, generations
    # each is a pause's length: within the run (a full collection of a test worker's heap
    # can take over a second on a slow host)
    assert all(0.0 <= seconds <= elapsed for _, seconds in pauses), (pauses, elapsed)


def test_stop_ends_the_pace_and_restores_the_thresholds(automatic_collection_off: None) -> None:
    gc.set_threshold(700, 10, 10)
    pauses: list[int] = []
    collector = PacedCollector(every=0.005, on_pause=lambda generation, _: pauses.append(1))

    async def run() -> None:
        collector.start(asyncio.get_running_loop())
        assert gc.get_threshold() == (ALLOCATIONS_YOUNG, 2 * collector.middle_after,
                                      collector.oldest_after)
        while len(pauses) < 3:
            await asyncio.sleep(0.005)
        collector.stop()
        heard = len(pauses)
        await asyncio.sleep(0.05)
        gc.collect(0)
        assert len(pauses) == heard, "a collection was heard of after stop"

    asyncio.run(run())
    assert gc.get_threshold() == (700, 10, 10)
    assert collector._timed not in gc.callbacks


def test_a_collector_starts_once_and_refuses_a_bad_pace() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        PacedCollector(every=0)
    collector = PacedCollector(every=10.0)

    async def run() -> None:
        collector.start(asyncio.get_running_loop())
        try:
            with pytest.raises(RuntimeError, match="already started"):
                collector.start(asyncio.get_running_loop())
        finally:
            collector.stop()

    thresholds = gc.get_threshold()
    asyncio.run(run())
    assert gc.get_threshold() == thresholds


def test_a_storm_of_allocation_triggered_collections_has_the_middle_one_collected(
        automatic_collection_off: None) -> None:
    generations: list[int] = []
    collector = PacedCollector(every=0.005, middle_after=10_000, storm_after=3,
                               on_pause=lambda generation, _: generations.append(generation))

    async def run() -> None:
        collector.start(asyncio.get_running_loop())
        while len(generations) < 5:
            await asyncio.sleep(0.005)
        assert set(generations) == {0}, "paced young collections alone made a middle one due"
        for _ in range(3):
            gc.collect(0)  # what allocations trigger between two paced collections
        for _ in range(200):
            if 1 in generations:
                break
            await asyncio.sleep(0.005)
        collector.stop()

    asyncio.run(run())
    assert 1 in generations, generations


def test_an_upgraded_connection_leaves_no_http_protocol_for_the_collector(
        tmp_path: Path, automatic_collection_off: None) -> None:
    settings = Settings(port=free_port(), database_url=sqlite_url(tmp_path), secret_key=SECRET)
    server = ThreadServer(settings, [load_bundle(write_scripted_bundle(tmp_path / "bundle"))])
    try:
        game = register(server.url)
        gc.collect()

        async def body() -> None:
            sockets = [(await connect(server.ws_url, game))[0] for _ in range(3)]
            left = [o for o in gc.get_objects() if issubclass(type(o), HttpToolsProtocol)]
            assert left == [], f"{len(left)} HTTP protocols outlive their upgrade in a cycle"
            for ws in sockets:
                await ws.close()

        run(body())
    finally:
        server.stop()
