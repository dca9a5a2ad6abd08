"""Adaptation through the real server: a move that keeps failing against a player context is
chosen less once its outcomes are stored, and the change survives a restart."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serving.bundle import write_scripted_bundle
from serving.storage import DecisionRecord, OutcomeRecord, Storage
from tests.server_helpers import (
    Game,
    ServerProcess,
    ask,
    connect,
    move_request,
    outcome,
    register,
    run,
    start_server,
)

ROUNDS = 80


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    running = start_server(tmp_path, write_scripted_bundle(tmp_path / "bundle"),
                           env={"BOSSLAB_RATE_LIMIT_PER_SECOND": "100000",
                                "BOSSLAB_RATE_LIMIT_BURST": "100000"})
    yield running
    running.stop()


async def play(server: ServerProcess, game: Game, rounds: int,
               failing: str | None = None) -> Counter[str]:
    """Moves chosen over ``rounds`` decisions; with ``failing``, every outcome is reported:
    that move fails (0.0), the others succeed (1.0)."""
    ws, _ = await connect(server.ws_url, game, session_id="learner")
    chosen: Counter[str] = Counter()
    for _ in range(rounds):
        move = (await ask(ws, "boss_action_request", move_request()))["data"]
        name = move["boss_action"]["boss_action"]
        chosen[name] += 1
        if failing is not None:
            failed = name == failing
            await ask(ws, "action_outcome", outcome(move["action_id"], 0.0 if failed else 1.0,
                                                    "failure" if failed else "success"))
    await ws.close()
    return chosen


def test_a_move_that_keeps_failing_is_chosen_less(server: ServerProcess) -> None:
    untaught, taught = register(server.url), register(server.url)
    before = run(play(server, untaught, ROUNDS))
    favourite, count = before.most_common(1)[0]
    assert count / ROUNDS > 0.6  # the scripted boss has a clear favourite for this player
    run(play(server, taught, ROUNDS, failing=favourite))
    after = run(play(server, taught, ROUNDS))
    assert after[favourite] / ROUNDS < count / ROUNDS - 0.3, (before, after)
    server.stop()
    server.restart()  # the memory is rebuilt from the stored outcomes
    rebuilt = run(play(server, taught, ROUNDS))
    assert rebuilt[favourite] / ROUNDS < count / ROUNDS - 0.3, (before, rebuilt)


def test_a_stored_lesson_that_cannot_be_read_is_skipped_at_start(
        server: ServerProcess) -> None:
    game = register(server.url)
    run(play(server, game, 3, failing="attack"))
    server.stop()
    storage = Storage(server.database_url)
    now = time.time()
    storage.store([DecisionRecord("edited-by-hand", game.game_id, "learner",
                                  {"player": {"no_such_field": 1}}, "attack", "v", now)],
                  [OutcomeRecord("edited-by-hand", game.game_id, "success", 1.0, 0.0, False,
                                 0.1, now)])
    storage.close()
    server.restart()  # the three readable lessons are replayed, the edited one is logged
    health = httpx.get(f"{server.url}/api/v1/health").json()
    assert health["status"] == "ok" and health["memory_size"] == 3, health
    assert "lesson edited-by-hand of game" in server.logs()
    assert "its stored situation cannot be read" in server.logs()
