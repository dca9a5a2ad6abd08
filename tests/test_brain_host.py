"""The brain process (serving.brain_host): the same decisions as a brain in this process,
batches through the event loop's pipe, a bad situation failing alone, and a killed child:
waiting calls fail with BrainsLost, and a server rebuilds its brains from storage."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from envs.observation import Situation
from serving.brain import brain_for
from serving.brain_host import (
    TURNS_IN_FLIGHT,
    Answered,
    BrainHost,
    Brains,
    BrainsLost,
    RemoteBrain,
    answer_all,
)
from serving.bundle import load_bundle, write_scripted_bundle
from serving.decisions import Lesson
from serving.service import LessonBatch
from serving.settings import Settings
from tests.server_helpers import (
    SECRET,
    ThreadServer,
    ask,
    connect,
    free_port,
    move_request,
    outcome,
    register,
    run,
    sqlite_url,
    wait_until,
)
from tests.test_brain import random_situations

SEED = 7


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_scripted_bundle(tmp_path_factory.mktemp("host") / "duel")


@pytest.fixture
def host() -> Iterator[BrainHost]:
    running = BrainHost()
    yield running
    running.close()


def test_a_remote_brain_decides_and_learns_as_one_in_this_process(
        host: BrainHost, bundle_path: Path) -> None:
    local = load_bundle(bundle_path).new_brain(seed=SEED)
    remote = host.new_brain(str(bundle_path), SEED)
    assert remote.policy_version == local.policy_version
    assert tuple(remote.boss_actions) == tuple(local.boss_actions)
    assert remote.memory_size() == local.memory_size()
    for index, situation in enumerate(random_situations(60, seed=3)):
        assert remote.decide(situation) == local.decide(situation)
        lesson = Lesson(situation, local.boss_actions[index % 3], (index % 5) / 4, "s1")
        assert remote.learn(lesson) == local.learn(lesson)
    assert remote.memory_size() == local.memory_size() > 0


def test_a_refused_lesson_is_skipped_and_named(host: BrainHost, bundle_path: Path) -> None:
    remote = host.new_brain(str(bundle_path), SEED)
    good = random_situations(2)
    size, refused = remote.learn_many([Lesson(good[0], "attack", 0.5, "s"),
                                       Lesson(good[1], "no_such_move", 0.5, "s"),
                                       Lesson(good[1], "defend", 1.5, "s")])
    assert size == remote.memory_size() == 1
    assert refused[0] is None
    assert isinstance(refused[1], (ValueError, KeyError)) and "no_such_move" in str(refused[1])
    assert isinstance(refused[2], ValueError)
    with pytest.raises(ValueError):
        remote.learn(Lesson(good[0], "defend", -1.0, "s"))


def test_batches_on_the_event_loop_answer_each_situation(host: BrainHost,
                                                         bundle_path: Path) -> None:
    local = brain_for(load_bundle(bundle_path), seed=SEED)
    remote = host.new_brain(str(bundle_path), SEED)
    situations = random_situations(12, seed=5)
    bad = Situation(situations[0].player, boss_health_percentage=0.5,
                    battle_phase="no_such_phase")

    async def body() -> None:
        seconds, results = await remote.decide_soon(situations)
        assert seconds > 0
        expected = local.decide_many(situations)
        assert [r[0] for r in results] == [d for d, _ in expected]  # type: ignore[index]
        keys = [r[1] for r in results]  # type: ignore[index]
        assert np.allclose(np.stack(keys), np.stack([k for _, k in expected]))
        size = await remote.learn_keyed_soon(keys, ["attack"] * 12, [0.9] * 12, ["s"] * 12)
        assert size == remote.memory_size() == 12
        _, mixed = await remote.decide_soon([situations[1], bad, situations[2]])
        assert isinstance(mixed[1], ValueError) and "no_such_phase" in str(mixed[1])
        assert not isinstance(mixed[0], BaseException)
        assert not isinstance(mixed[2], BaseException)

    run(body())


def test_a_failing_answer_callback_costs_the_others_nothing(host: BrainHost,
                                                             bundle_path: Path) -> None:
    remote = host.new_brain(str(bundle_path), SEED)
    situations = random_situations(2, seed=6)

    async def body() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _, context: reported.append(context))

        def broken(answer: object) -> None:
            raise RuntimeError("a bug in one caller")

        remote.decide_then(situations[:1], broken)
        _, results = await remote.decide_soon(situations[1:])  # answered all the same
        assert not isinstance(results[0], BaseException)
        assert [(context["message"], str(context["exception"])) for context in reported] == [
            ("a brain answer's callback failed", "a bug in one caller")]

    run(body())


def test_a_cancelled_outcome_leaves_the_others_of_its_lesson_batch_answered(
        host: BrainHost, bundle_path: Path) -> None:
    remote = host.new_brain(str(bundle_path), SEED)
    situations = random_situations(2, seed=8)

    async def body() -> None:
        _, decided = await remote.decide_soon(situations)
        batch = LessonBatch(remote)
        learnt = [batch.add(result[1], "attack", 0.5, "s")  # type: ignore[index]
                  for result in decided]

        async def outcome_handler(future: asyncio.Future[int]) -> int:
            return await future

        handlers = [asyncio.create_task(outcome_handler(future)) for future in learnt]
        await asyncio.sleep(0)
        handlers[0].cancel()
        assert await handlers[1] == 2
        assert handlers[0].cancelled() and remote.memory_size() == 2

    run(body())


def counted_requests(host: BrainHost) -> list[str]:
    """The commands the host sends on the event loop's pipe, from now on."""
    requests: list[str] = []
    send = host.call_then

    def counted(*request: object, generation: int, then: Answered) -> None:
        requests.append(str(request[0]))
        send(*request, generation=generation, then=then)

    host.call_then = counted  # type: ignore[method-assign]
    return requests


def test_requests_go_at_once_up_to_the_limit_then_together_in_order(
        host: BrainHost, bundle_path: Path) -> None:
    remote = host.new_brain(str(bundle_path), SEED)
    situations = random_situations(3, seed=9)
    requests = counted_requests(host)

    async def body() -> None:
        _, first = await remote.decide_soon(situations[:1])
        assert first[0][0].retrieved == 0  # type: ignore[index]  # an empty memory
        key = first[0][1]  # type: ignore[index]
        asked = [remote.decide_soon(situations[1:]) for _ in range(TURNS_IN_FLIGHT - 1)]
        learnt = remote.learn_keyed_soon([key] * 3, ["attack", "defend", "attack"],
                                         [0.2, 0.9, 0.4], ["s"] * 3)
        after = remote.decide_soon(situations[:1])
        refused = remote.learn_keyed_soon([key], ["attack"], [1.5], ["s"])
        assert requests == ["turn"] * (1 + TURNS_IN_FLIGHT)  # the last two wait, together
        for decided in await asyncio.gather(*asked):
            assert all(not isinstance(result, BaseException) for result in decided[1])
        assert await learnt == 3
        _, again = await after
        assert again[0][0].retrieved == 3  # type: ignore[index]  # sent after: learnt first
        with pytest.raises(ValueError, match=r"1\.5"):
            await refused  # the only lessons of the last request: refused alone
        assert requests == ["turn"] * (2 + TURNS_IN_FLIGHT)
        assert remote.memory_size() == 3

    run(body())


def keyed(key: np.ndarray, values: list[float]) -> tuple[np.ndarray, list[str], list[float],
                                                          list[str]]:
    """Lessons at one key, as a turn request carries them."""
    return np.stack([key] * len(values)), ["attack"] * len(values), values, ["s"] * len(values)


def test_turns_read_together_are_worked_on_together_lessons_first(bundle_path: Path) -> None:
    brains = Brains()
    brains.handle("new", 1, str(bundle_path), SEED, "bundle")
    brains.handle("new", 2, str(bundle_path), SEED, "bundle")
    situation = random_situations(1, seed=4)[0]
    [(_, (_, first))] = answer_all(brains, [("turn", 1, None, [situation])])
    key = first[2][0]
    answers = answer_all(brains, [
        ("turn", 1, None, [situation]),  # asked before the lessons, decided after them
        ("turn", 1, keyed(key, [0.2, 0.9]), []),
        ("turn", 1, None, [situation, situation]),
        ("turn", 2, None, [situation]),  # another brain: its own memory
    ])
    assert [failed for failed, _ in answers] == [False] * 4
    (no_lessons, decided), (learnt, no_decisions), (_, both), (_, other) = (
        answer for _, answer in answers)
    assert (no_lessons, learnt) == (None, 2)
    assert [d.retrieved for d in decided[1] + both[1]] == [2, 2, 2]
    assert len(decided[2]) == 1 and len(both[2]) == 2
    assert np.allclose(both[2], key)
    assert other[1][0].retrieved == 0
    assert no_decisions is None and decided[0] == both[0]  # one batch: one brain time

    apart = answer_all(brains, [("turn", 1, keyed(key, [1.5]), [situation]), ("drop", 2),
                                ("turn", 1, keyed(key, [0.5]), [situation])])
    refused, decided_before = apart[0][1]
    assert isinstance(refused, ValueError)  # refused alone: its own turn's write
    assert decided_before[1][0].retrieved == 2  # decided before the next turn's lessons
    assert apart[1] == (False, None)
    learnt_after, decided_after = apart[2][1]
    assert learnt_after == 3 and decided_after[1][0].retrieved == 3
    assert answer_all(brains, [("turn", 2, None, [situation])])[0][0]  # dropped: an error


def test_a_killed_child_fails_waiting_calls_and_a_restart_serves_again(
        bundle_path: Path) -> None:
    lost: list[bool] = []
    host = BrainHost(on_lost=lambda: lost.append(True))
    try:
        remote = host.new_brain(str(bundle_path), SEED)
        situations = random_situations(4)

        async def body() -> None:
            await remote.decide_soon(situations)  # the loop's reader is registered
            assert host.pid is not None
            os.kill(host.pid, signal.SIGKILL)
            with pytest.raises(BrainsLost):
                for _ in range(200):
                    await remote.decide_soon(situations)
                    await asyncio.sleep(0.01)
            assert lost == [True]
            with pytest.raises(BrainsLost, match="send this message again"):
                await remote.decide_soon(situations)

        run(body())
        with pytest.raises(BrainsLost):
            remote.decide(situations[0])
        host.restart()
        with pytest.raises(BrainsLost):  # a brain of the dead child stays gone
            remote.decide(situations[0])
        fresh = host.new_brain(str(bundle_path), SEED)
        assert fresh.decide(situations[0]).move in fresh.boss_actions
    finally:
        host.close()


def test_a_server_whose_brain_process_dies_rebuilds_its_brains(tmp_path: Path) -> None:
    """Killed mid-play: a request in the gap hears ``unavailable`` (never ``internal``), then
    the new brain process serves again with every stored lesson back in the memory."""
    settings = Settings(port=free_port(), database_url=sqlite_url(tmp_path), secret_key=SECRET)
    server = ThreadServer(settings, [load_bundle(write_scripted_bundle(tmp_path / "b"))])
    try:
        game = register(server.url)
        service = server.app.state.service
        first_host_pid = service.brain_host.pid

        async def body() -> None:
            ws, _ = await connect(server.ws_url, game)
            for _ in range(6):
                move = await ask(ws, "boss_action_request", move_request())
                update = await ask(ws, "action_outcome", outcome(move["data"]["action_id"]))
                assert update["data"]["memory_size"] >= 1
            before = service.games[game.game_id].brain.memory_size()
            os.kill(first_host_pid, signal.SIGKILL)
            codes = set()
            for _ in range(400):
                answer = await ask(ws, "boss_action_request", move_request())
                if answer["type"] == "boss_action_response":
                    break
                codes.add(answer["data"]["code"])
                await asyncio.sleep(0.02)
            assert answer["type"] == "boss_action_response", codes
            assert codes <= {"unavailable"}
            assert service.brain_host.pid != first_host_pid
            assert service.games[game.game_id].brain.memory_size() == before
            update = await ask(ws, "action_outcome", outcome(answer["data"]["action_id"]))
            assert update["data"]["memory_size"] == before + 1
            await ws.close()

        run(body())
        wait_until(lambda: httpx.get(f"{server.url}/api/v1/health").json()["status"] == "ok",
                   10, "the server to be healthy again")
    finally:
        server.stop()


def test_the_setting_keeps_brains_in_the_servers_process(tmp_path: Path) -> None:
    settings = Settings(port=free_port(), database_url=sqlite_url(tmp_path), secret_key=SECRET,
                        brain_process=False)
    server = ThreadServer(settings, [load_bundle(write_scripted_bundle(tmp_path / "b"))])
    try:
        game = register(server.url)
        service = server.app.state.service
        assert service.brain_host is None
        assert not isinstance(service.games[game.game_id].brain, RemoteBrain)

        async def body() -> None:
            ws, _ = await connect(server.ws_url, game)
            move = await ask(ws, "boss_action_request", move_request())
            update = await ask(ws, "action_outcome", outcome(move["data"]["action_id"]))
            assert update["data"]["memory_size"] == 1
            await ws.close()

        run(body())
    finally:
        server.stop()


def test_a_closed_host_refuses_calls_and_starts_nothing(bundle_path: Path) -> None:
    lost: list[bool] = []
    host = BrainHost(on_lost=lambda: lost.append(True))
    remote = host.new_brain(str(bundle_path), SEED)
    situations = random_situations(2)

    async def body() -> None:
        await remote.decide_soon(situations)
        host.close()
        with pytest.raises(BrainsLost):
            await remote.decide_soon(situations)

    run(body())
    with pytest.raises(BrainsLost):
        remote.decide(situations[0])
    assert lost == [] and host.generation == 1
