"""Failures inside the server, through real sockets: storage down (``unavailable``, nothing
stored, health degraded) and a failing brain (``internal``, the socket stays open). The app
runs under uvicorn in a thread of this process so the test can break its parts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.bundle import load_bundle, write_scripted_bundle
from serving.loop_writer import LoopWriter
from serving.settings import Settings
from serving.storage import StorageUnavailable
from serving.writer import StorageWriter
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
)


class DownStorage:
    """A database that fails every call, as an unreachable one does."""

    def _down(self, *_args: Any) -> Any:
        raise StorageUnavailable("storage unavailable (injected: the database is down); "
                                 "nothing was stored: send again")

    store = add_decisions = add_outcomes = ping = add_session = get_decision = _down

    def close(self) -> None:
        pass


class BrokenBrain:
    """A brain whose decisions fail (a bug)."""

    policy_version = "broken"
    boss_actions: Sequence[str] = ("attack", "defend", "special_move")

    def decide(self, _situation: Any) -> Any:
        raise RuntimeError("the brain failed")

    def learn(self, _lesson: Any) -> int:
        return 0

    def memory_size(self) -> int:
        return 0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadServer]:
    settings = Settings(port=free_port(), database_url=sqlite_url(tmp_path), secret_key=SECRET)
    bundle = load_bundle(write_scripted_bundle(tmp_path / "bundle"))
    running = ThreadServer(settings, [bundle])
    yield running
    running.stop()


def decisions_committed(service: Any) -> float:
    """Decisions whose group commit is over (the count of the store-time histogram)."""
    return sum(sample.value for metric in service.metrics.store_seconds.collect()
               for sample in metric.samples if sample.name.endswith("_count"))


def test_storage_down_answers_unavailable_and_loses_nothing(server: ThreadServer) -> None:
    """Decisions are answered before their commit: the first one after storage fails is
    answered and lost; from then on requests and outcomes hear ``unavailable`` until storage
    is back; the lost decision's outcome is still stored (a stand-in), never unknown."""
    game = register(server.url)
    service = server.app.state.service

    async def body() -> None:
        ws, _ = await connect(server.ws_url, game)
        move = (await ask(ws, "boss_action_request", move_request()))["data"]
        for _ in range(200):  # its commit is over (else its success could come last)
            if decisions_committed(service) >= 1:
                break
            await asyncio.sleep(0.02)
        real = (service.storage, service.decision_writer, service.outcome_writer)
        assert isinstance(real[1], LoopWriter) and real[2] is real[1]  # no writer thread
        down = DownStorage()
        service.storage = down
        service.decision_writer = service.outcome_writer = StorageWriter(down)  # type: ignore[arg-type]
        lost = await ask(ws, "boss_action_request", move_request(), "before-known")
        assert lost["type"] == "boss_action_response"
        for _ in range(100):  # its commit fails (reported on the event loop)
            if service.storage_failing:
                break
            await asyncio.sleep(0.05)
        assert service.storage_failing
        for kind, data in (("boss_action_request", move_request()),
                           ("action_outcome", outcome(move["action_id"]))):
            answer = await ask(ws, kind, data, "while-down")
            assert answer["request_id"] == "while-down"
            assert answer["data"]["code"] == "unavailable"
            assert "send again" in answer["data"]["message"]
        health = httpx.get(f"{server.url}/api/v1/health")
        assert health.status_code == 503 and health.json()["status"] == "degraded"
        assert "injected" in health.json()["storage"]
        service.decision_writer.close()
        service.storage, service.decision_writer, service.outcome_writer = real
        update = await ask(ws, "action_outcome", outcome(move["action_id"]))
        assert update["data"]["duplicate"] is False  # the failed try stored nothing
        kept = await ask(ws, "action_outcome", outcome(lost["data"]["action_id"]))
        assert kept["type"] == "learning_update" and kept["data"]["duplicate"] is False
        again = await ask(ws, "action_outcome", outcome(lost["data"]["action_id"]))
        assert again["data"]["duplicate"] is True
        back = await ask(ws, "boss_action_request", move_request())
        assert back["type"] == "boss_action_response" and not service.storage_failing
        await ws.close()

    run(body())
    assert httpx.get(f"{server.url}/api/v1/health").json()["status"] == "ok"
    stats = httpx.get(f"{server.url}/api/v1/games/{game.game_id}/realtime-stats",
                      headers={"Authorization": f"Bearer {game.token}"})
    assert stats.json()["outcomes_stored"] == 2


def test_a_failing_handler_answers_internal_and_keeps_the_socket(server: ThreadServer) -> None:
    game = register(server.url)
    runtime = server.app.state.service.games[game.game_id]

    async def body() -> None:
        ws, _ = await connect(server.ws_url, game)
        working = runtime.brain
        runtime.brain = BrokenBrain()
        answer = await ask(ws, "boss_action_request", move_request(), "boom")
        assert answer["request_id"] == "boom" and answer["data"]["code"] == "internal"
        assert "RuntimeError" in answer["data"]["message"]
        runtime.brain = working
        again = await ask(ws, "boss_action_request", move_request())
        assert again["type"] == "boss_action_response"
        await ws.close()

    run(body())
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'bosslab_errors_total{code="internal"} 1.0' in metrics
    assert 'bosslab_errors_total{code="unavailable"}' not in metrics
