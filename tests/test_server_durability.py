"""Delivery across restarts and crashes: every issued action_id is recognised, every acknowledged
outcome survives kill -9, SIGTERM answers in-flight outcomes and then closes with 1012, and the
memory and the player profiles are rebuilt from storage."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from serving.bundle import write_scripted_bundle
from serving.service import ActionIds
from tests.server_helpers import (
    SECRET,
    Game,
    ServerProcess,
    ask,
    auth,
    connect,
    move_request,
    outcome,
    register,
    run,
    start_server,
)

FAST = {"BOSSLAB_RATE_LIMIT_PER_SECOND": "100000", "BOSSLAB_RATE_LIMIT_BURST": "100000"}
"""These tests stream hundreds of messages on one socket."""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    running = start_server(tmp_path, write_scripted_bundle(tmp_path / "bundle"), env=FAST)
    yield running
    if running.process is not None and running.process.poll() is None:
        running.stop()


async def decide(server: ServerProcess, game: Game, count: int,
                 session_id: str = "player") -> list[str]:
    ws, _ = await connect(server.ws_url, game, session_id=session_id)
    ids = [(await ask(ws, "boss_action_request", move_request()))["data"]["action_id"]
           for _ in range(count)]
    await ws.close()
    return ids


async def report(server: ServerProcess, game: Game, action_ids: list[str],
                 effectiveness: float = 0.5) -> list[dict[str, object]]:
    """Send each outcome and return the answers' data (learning_update or error)."""
    ws, _ = await connect(server.ws_url, game)
    answers = [(await ask(ws, "action_outcome", outcome(a, effectiveness)))["data"]
               for a in action_ids]
    await ws.close()
    return answers


def realtime_stats(server: ServerProcess, game: Game) -> dict[str, object]:
    answer = httpx.get(f"{server.url}/api/v1/games/{game.game_id}/realtime-stats",
                       headers=auth(game.token))
    return dict(answer.json())


def test_restart_between_an_outcome_and_its_resend(server: ServerProcess) -> None:
    game = register(server.url)
    ids = run(decide(server, game, 3))
    first = run(report(server, game, ids))
    assert [a["duplicate"] for a in first] == [False, False, False]
    server.stop()
    server.restart()
    resent = run(report(server, game, ids, effectiveness=0.9))
    assert [a["duplicate"] for a in resent] == [True, True, True]
    assert all(a["memory_size"] == 3 for a in resent)  # the memory was rebuilt, unchanged


@pytest.mark.parametrize("how", ["stop", "kill"], ids=["sigterm", "kill-9"])
def test_restart_between_decisions_and_their_outcomes(server: ServerProcess, how: str) -> None:
    """SIGTERM commits every decision first; kill -9 just after the answers may lose some
    decisions (answered before their group commit), never the games' outcomes of them."""
    game = register(server.url)
    ids = run(decide(server, game, 20))
    getattr(server, how)()
    server.restart()
    answers = run(report(server, game, ids))
    assert [a.get("duplicate") for a in answers] == [False] * 20, answers
    stats = realtime_stats(server, game)
    assert stats["outcomes_stored"] == 20
    if how == "stop":  # every decision was stored, so every outcome is learnt
        assert [a["memory_size"] for a in answers] == list(range(1, 21))
        assert stats["actions_served"] == 20


def test_an_issued_but_never_stored_decision_keeps_its_outcome(server: ServerProcess) -> None:
    """An action_id signed with the server's key whose decision never reached storage (the
    crash case, made certain): its outcome is stored once with a stand-in decision and not
    learnt; the same id under another key, or for another game, is ``unknown_action``."""
    game = register(server.url)
    other = register(server.url)
    lost = ActionIds(SECRET).next(game.game_id, 1)
    forged = ActionIds("another key of forty characters or so ....").next(game.game_id, 1)
    [first, again, wrong_key] = run(report(server, game, [lost, lost, forged]))
    assert first["duplicate"] is False and "not learnt" in str(first["adapted"])
    assert first["memory_size"] == 0 and again["duplicate"] is True
    assert wrong_key["code"] == "unknown_action"
    [elsewhere] = run(report(server, other, [lost]))
    assert elsewhere["code"] == "unknown_action"
    server.stop()
    server.restart()  # the stand-in is no lesson: the replay skips it
    assert httpx.get(f"{server.url}/api/v1/health").json()["memory_size"] == 0
    stats = realtime_stats(server, game)
    assert stats["outcomes_stored"] == 1 and stats["action_mix"] == {"defend": 1}


def test_memory_profile_and_habits_are_rebuilt_at_start(server: ServerProcess) -> None:
    game = register(server.url)
    ids = run(decide(server, game, 6, session_id="hero"))
    run(report(server, game, ids, effectiveness=0.3))
    url = f"{server.url}/api/v1/games/{game.game_id}/sessions/hero/profile"
    before = httpx.get(url, headers=auth(game.token)).json()
    memory = httpx.get(f"{server.url}/api/v1/health").json()["memory_size"]
    server.stop()
    server.restart()
    after = httpx.get(url, headers=auth(game.token)).json()
    assert httpx.get(f"{server.url}/api/v1/health").json()["memory_size"] == memory == 6
    for key in ("lessons", "context_means", "movement_styles", "moves", "habits",
                "last_boss_action"):
        assert after[key] == before[key], key


async def _stream_outcomes(ws: ClientConnection, ids: list[str]) -> None:
    for i, action_id in enumerate(ids):
        await ws.send(json.dumps({"type": "action_outcome", "request_id": action_id,
                                  "data": outcome(action_id, (i % 10) / 10)}))
        await asyncio.sleep(0)


async def _collect_acks(ws: ClientConnection, acked: set[str], enough: asyncio.Event,
                        wanted: int) -> None:
    try:
        async for frame in ws:
            message = json.loads(frame)
            if message["type"] == "learning_update":
                acked.add(message["request_id"])
                if len(acked) >= wanted:
                    enough.set()
    except ConnectionClosed:
        pass
    enough.set()


def test_kill_9_loses_no_acknowledged_outcome(server: ServerProcess) -> None:
    game = register(server.url)
    ids = run(decide(server, game, 300))
    acked: set[str] = set()

    async def stream_then_crash() -> None:
        ws, _ = await connect(server.ws_url, game)
        enough = asyncio.Event()
        reader = asyncio.create_task(_collect_acks(ws, acked, enough, wanted=60))
        writer = asyncio.create_task(_stream_outcomes(ws, ids))
        await enough.wait()
        server.kill()  # mid-stream: outcomes are in flight and in the group commit
        await asyncio.wait_for(reader, 10)
        writer.cancel()

    run(stream_then_crash())
    assert 60 <= len(acked) < 300
    server.restart()
    answers = run(report(server, game, ids))
    by_id = dict(zip(ids, answers, strict=True))
    assert all(by_id[a]["duplicate"] is True for a in acked)  # every ack survived
    assert all("code" not in answer for answer in answers)  # never unknown_action


def test_sigterm_answers_in_flight_outcomes_then_closes_with_1012(
        server: ServerProcess) -> None:
    game = register(server.url)
    ids = run(decide(server, game, 200))
    acked: set[str] = set()
    codes: list[int | None] = []

    async def stream_then_stop() -> None:
        ws, _ = await connect(server.ws_url, game)
        enough = asyncio.Event()
        reader = asyncio.create_task(_collect_acks(ws, acked, enough, wanted=20))
        writer = asyncio.create_task(_stream_outcomes(ws, ids))
        await enough.wait()
        assert server.process is not None
        server.process.terminate()  # SIGTERM while outcomes stream in
        await asyncio.wait_for(reader, 20)
        writer.cancel()
        codes.append(ws.close_code)

    run(stream_then_stop())
    assert server.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM once done
    assert codes == [1012]
    assert "decisions and outcomes flushed" in server.logs()
    server.restart()
    answers = run(report(server, game, ids))
    stored_before = {a for a, answer in zip(ids, answers, strict=True) if answer["duplicate"]}
    # exactly the acknowledged outcomes were stored: nothing committed went unanswered
    assert stored_before == acked
