"""``serving.client`` against a real server: moves and outcomes, resending an outcome across a
server crash and restart, reconnecting in the same session, refreshing an expired token; and
against a stand-in server that leaves requests unanswered: resending after a try times out."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from serving.auth import issue_token
from serving.bundle import write_scripted_bundle
from serving.client import BossClient, BossClientError, SyncBossClient
from serving.protocol import MAX_REQUEST_ID
from serving.settings import Settings
from tests.server_helpers import CONTEXT, SECRET, ServerProcess, register, run, start_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    running = start_server(tmp_path, write_scripted_bundle(tmp_path / "bundle"))
    yield running
    if running.process is not None and running.process.poll() is None:
        running.stop()


def test_moves_and_outcomes_with_an_api_key_only(server: ServerProcess) -> None:
    game = register(server.url)

    async def body() -> None:
        async with BossClient(server.url, game.game_id, api_key=game.api_key,
                              session_id="alice") as boss:
            assert boss.status["session_id"] == "alice"
            move = await boss.request_move(CONTEXT, boss_health_percentage=0.5,
                                           battle_phase="mid_battle", difficulty="hard")
            update = await boss.report_outcome(move["action_id"], "success", 0.8,
                                               damage_dealt=12.0, player_hit=True)
            assert update["duplicate"] is False and update["memory_size"] == 1
            again = await boss.report_outcome(move["action_id"], "success", 0.8)
            assert again["duplicate"] is True
            with pytest.raises(BossClientError) as refused:
                await boss.report_outcome("never-issued", "failure", 0.1)
            assert refused.value.code == "unknown_action"

    run(body())


def test_an_outcome_is_resent_across_a_crash_and_restart(server: ServerProcess) -> None:
    game = register(server.url)

    async def body() -> None:
        boss = BossClient(server.url, game.game_id, token=game.token, try_timeout=1.0,
                          attempts=40, base_backoff=0.05, max_backoff=0.5)
        status = await boss.connect()
        move = await boss.request_move(CONTEXT)
        server.kill()
        pending = asyncio.create_task(boss.report_outcome(move["action_id"], "failure", 0.1))
        await asyncio.sleep(0)  # the first tries fail while the server is down
        await asyncio.to_thread(server.restart)
        update = await asyncio.wait_for(pending, 30)
        assert update["duplicate"] is False  # stored after the restart, not unknown_action
        assert boss.reconnects >= 1 and boss.status["session_id"] == status["session_id"]
        await boss.close()

    run(body())


def test_an_expired_token_is_refreshed_with_the_api_key(server: ServerProcess) -> None:
    game = register(server.url)
    expired = issue_token(game.game_id, Settings(secret_key=SECRET), now=time.time() - 7200)[0]

    async def body() -> None:
        async with BossClient(server.url, game.game_id, token=expired,
                              api_key=game.api_key) as boss:
            assert boss.token != expired
            assert (await boss.heartbeat())["server_time"]
        lone = BossClient(server.url, game.game_id, token=expired, attempts=2,
                          base_backoff=0.01)
        with pytest.raises(BossClientError):
            await lone.connect()

    run(body())


def test_sync_client(server: ServerProcess) -> None:
    game = register(server.url)
    with SyncBossClient(server.url, game.game_id, api_key=game.api_key) as boss:
        move = boss.request_move(CONTEXT, boss_health_percentage=0.3,
                                 battle_phase="late_battle")
        assert move["boss_action"]["boss_action"] in ("attack", "defend", "special_move")
        assert boss.report_outcome(move["action_id"], "partial", 0.5)["duplicate"] is False


@asynccontextmanager
async def deaf_server(unanswered: int, request_ids: list[str]) -> AsyncIterator[str]:
    """A stand-in server that sends ``status``, leaves the first ``unanswered`` requests
    unanswered and answers the rest with a heartbeat; records every request_id; yields its URL."""

    async def session(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "status", "data": {"session_id": "stub"}}))
        async for frame in ws:
            request_id = json.loads(frame)["request_id"]
            request_ids.append(request_id)
            if len(request_ids) > unanswered:
                await ws.send(json.dumps({"type": "heartbeat", "request_id": request_id,
                                          "data": {"server_time": 1.0}}))

    async with serve(session, "127.0.0.1", 0) as server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def test_an_unanswered_request_is_resent_after_its_try_timeout() -> None:
    request_ids: list[str] = []

    async def body() -> None:
        async with deaf_server(2, request_ids) as url, BossClient(
                url, "game", token="t", try_timeout=0.2, attempts=8,
                base_backoff=0.001) as boss:
            assert await boss.heartbeat() == {"server_time": 1.0}
            assert boss.reconnects == 0 and not boss._pending

    run(body())
    assert len(request_ids) >= 3  # more only if an answer took longer than try_timeout
    assert len(set(request_ids)) == len(request_ids)  # a fresh request_id per try


def test_a_request_never_answered_fails_as_unavailable() -> None:
    request_ids: list[str] = []

    async def body() -> None:
        async with deaf_server(100, request_ids) as url, BossClient(
                url, "game", token="t", try_timeout=0.05, attempts=3,
                base_backoff=0.001) as boss:
            with pytest.raises(BossClientError) as unanswered:
                await boss.heartbeat()
            assert unanswered.value.code == "unavailable"
            assert "after 3 tries (last: no answer within 0.05 s)" in unanswered.value.message
            assert not boss._pending

    run(body())


def test_request_ids_are_unique_across_clients() -> None:
    request_ids: list[str] = []

    async def body() -> None:
        async with deaf_server(0, request_ids) as url:
            for _ in range(2):
                async with BossClient(url, "game", token="t") as boss:
                    for _ in range(3):
                        await boss.heartbeat()

    run(body())
    assert len(set(request_ids)) == 6
    assert all(0 < len(request_id) <= MAX_REQUEST_ID for request_id in request_ids)
