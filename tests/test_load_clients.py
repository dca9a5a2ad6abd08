"""The benchmark's lean sessions (``experiments.load_clients``) against a real server: real
answers matched by request_id, a refused token counted as a connection failure, an ``error``
answer raised, pings answered and a quiet socket kept open, a close seen."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from experiments.benchmark_serving import (
    Tally,
    bucket_quantile,
    open_sessions,
    scripted_bundle,
    share_within,
)
from experiments.load_clients import AnswerError, LeanSession, SessionClosedError
from serving.brain import MemoryBrain
from serving.bundle import load_bundle, write_scripted_bundle
from tests.server_helpers import CONTEXT, Game, ServerProcess, register, run, start_server

QUICK_KEEP_ALIVE = {"BOSSLAB_HEARTBEAT_INTERVAL": "0.3", "BOSSLAB_IDLE_TIMEOUT": "1.5"}
"""The server pings every 0.3 s (its pong timeout is the idle timeout) and closes a socket
silent for 1.5 s."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("load-clients")
    running = start_server(tmp, write_scripted_bundle(tmp / "b"), env=QUICK_KEEP_ALIVE)
    yield running
    running.stop()


def as_registered(game: Game, token: str | None = None) -> dict[str, Any]:
    """The registration answer the benchmark passes to its client processes."""
    return {"game_id": game.game_id, "access_token": token or game.token}


async def one_round(session: LeanSession) -> tuple[dict[str, Any], dict[str, Any]]:
    move = await session.request_move(CONTEXT, boss_health_percentage=0.6)
    return move, await session.report_outcome(move["action_id"], "partial", 0.4)


def test_round_trips_get_real_answers(server: ServerProcess) -> None:
    game = register(server.url)

    async def body() -> tuple[Tally, list[tuple[dict[str, Any], dict[str, Any]]]]:
        tally = Tally()
        opened = await open_sessions(server.url, as_registered(game), 3, tally, "raw")
        sessions = [session for session in opened if isinstance(session, LeanSession)]
        assert len(sessions) == 3
        rounds = [pair for _ in range(3)
                  for pair in await asyncio.gather(*(one_round(s) for s in sessions))]
        assert all(session.is_open for session in sessions)
        await asyncio.gather(*(session.close() for session in sessions))
        assert not any(session.is_open for session in sessions)
        return tally, rounds

    tally, rounds = run(body(), timeout=15)
    assert (tally.connected, tally.errors) == (3, {})
    assert len(rounds) == 9
    assert len({move["action_id"] for move, _ in rounds}) == 9
    for move, update in rounds:
        assert move["boss_action"]["boss_action"] in ("attack", "defend", "special_move")
        assert update["action_id"] == move["action_id"]
        assert update["duplicate"] is False


def test_a_refused_token_is_a_connection_failure(server: ServerProcess) -> None:
    game = register(server.url)
    tally = Tally()
    sessions = run(open_sessions(server.url, as_registered(game, "not-a-token"), 2, tally),
                   timeout=15)
    assert sessions == []
    assert (tally.connected, tally.errors) == (0, {"connect: InvalidStatus": 2})


def test_an_error_answer_is_raised(server: ServerProcess) -> None:
    game = register(server.url)

    async def body() -> None:
        session = await LeanSession.open(server.url, game.game_id, game.token)
        with pytest.raises(AnswerError, match="unknown_action"):
            await session.report_outcome("never-issued", "partial", 0.5)
        assert session.is_open  # a bad message never closes the socket
        await session.close()

    run(body(), timeout=15)


def test_pings_are_answered_and_a_silent_session_is_closed(server: ServerProcess) -> None:
    game = register(server.url)

    async def body() -> LeanSession:
        kept = await LeanSession.open(server.url, game.game_id, game.token,
                                      heartbeat_interval=0.4)
        silent = await LeanSession.open(server.url, game.game_id, game.token,
                                        heartbeat_interval=60.0)
        await asyncio.sleep(2.5)  # many pings; past the pong timeout and the idle timeout
        assert kept.is_open
        await one_round(kept)
        await kept.close()
        assert not silent.is_open
        with pytest.raises(SessionClosedError):
            await silent.request_move(CONTEXT)
        return silent

    assert run(body(), timeout=15).close_code == 1000


def test_the_benchmark_bundle_can_start_with_a_learnt_memory(tmp_path: Path) -> None:
    assert load_bundle(scripted_bundle(tmp_path / "empty", 0)).memory_size == 0
    bundle = load_bundle(scripted_bundle(tmp_path / "learnt", 120))
    assert bundle.memory_size == 120
    brain = bundle.new_brain()
    assert isinstance(brain, MemoryBrain)
    search = brain.reader.memory.search_any(brain.reader.memory.records().keys[:5], k=3)
    assert (search.distances[:, 0] == 0).all()  # the stored keys are found again


def test_histogram_readings_cover_only_the_window_between_two_scrapes() -> None:
    inf = float("inf")
    before = {0.001: 10.0, 0.002: 20.0, inf: 20.0}
    after = {0.001: 60.0, 0.002: 119.0, inf: 120.0}  # the window: 50 <= 1 ms, 99 <= 2 ms, 100
    assert bucket_quantile(before, after, 0.5) == "<= 1 ms"
    assert bucket_quantile(before, after, 0.99) == "<= 2 ms"
    assert bucket_quantile(before, after, 0.999) == "> 100 ms"
    assert share_within(before, after, 0.002) == "99.00%"
    assert share_within(before, before, 0.002) == "n/a"
