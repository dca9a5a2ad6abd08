"""The wire protocol against a real server: every message type, every error code the server can
produce from what a client sends, request_id echo, and the REST endpoints."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from serving.bundle import write_scripted_bundle
from tests.server_helpers import (
    CONTEXT,
    ServerProcess,
    ask,
    auth,
    connect,
    move_request,
    outcome,
    receive,
    register,
    run,
    start_server,
    wait_until,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("protocol")
    bundle = write_scripted_bundle(tmp / "bundle")
    running = start_server(tmp, bundle)
    yield running
    running.stop()


def test_status_then_move_then_learning_update(server: ServerProcess) -> None:
    game = register(server.url)

    async def body() -> None:
        ws, status = await connect(server.ws_url, game, session_id="player-1")
        assert status["session_id"] == "player-1" and status["game_id"] == game.game_id
        assert status["policy_version"] == "scripted-reactive" and status["server_time"]
        answer = await ask(ws, "boss_action_request", move_request(), "r-1")
        assert answer["type"] == "boss_action_response" and answer["request_id"] == "r-1"
        data = answer["data"]
        assert data["boss_action"]["boss_action"] in ("attack", "defend", "special_move")
        assert data["boss_action"]["action_type"] in ("aggressive", "defensive", "tactical")
        assert 0.0 <= data["confidence"] <= 1.0 and data["retrieved"] == 0
        assert data["latency_ms"] > 0 and len(data["action_id"]) == 50
        update = await ask(ws, "action_outcome", outcome(data["action_id"], 0.2), "o-1")
        assert update == {"type": "learning_update", "request_id": "o-1", "data": {
            "action_id": data["action_id"], "duplicate": False, "memory_size": 1,
            "adapted": update["data"]["adapted"]}}
        again = await ask(ws, "action_outcome", outcome(data["action_id"], 0.9), "o-2")
        assert again["data"]["duplicate"] is True and again["data"]["memory_size"] == 1
        await ws.close()

    run(body())


def test_a_session_is_made_when_absent_and_action_ids_are_unique(server: ServerProcess) -> None:
    game = register(server.url)

    async def body() -> None:
        ws, status = await connect(server.ws_url, game)
        assert len(status["session_id"]) >= 16
        ids = {(await ask(ws, "boss_action_request", move_request()))["data"]["action_id"]
               for _ in range(20)}
        assert len(ids) == 20
        await ws.close()

    run(body())


def test_heartbeat_is_answered_with_server_time(server: ServerProcess) -> None:
    game = register(server.url)

    async def body() -> None:
        ws, _ = await connect(server.ws_url, game)
        answer = await ask(ws, "heartbeat", {"client_time": 12.5}, "hb")
        assert answer["type"] == "heartbeat" and answer["data"]["client_time"] == 12.5
        await ws.send(json.dumps({"type": "heartbeat", "request_id": "no-data"}))  # optional
        assert (await receive(ws, "no-data"))["type"] == "heartbeat"
        await ws.close()

    run(body())


BAD_MESSAGES: list[tuple[str, str, str]] = [
    ("{not json", "invalid_json", "not valid JSON"),
    ("[1, 2]", "invalid_message", "JSON object"),
    ('{"type": "dance", "request_id": "x", "data": {}}', "unknown_type", "dance"),
    ('{"request_id": "x", "data": {}}', "invalid_message", "type"),
    ('{"type": "heartbeat", "request_id": "x", "data": {}, "extra": 1}', "invalid_message",
     "extra"),
    ('{"type": "boss_action_request", "request_id": "x", "data": 5}', "invalid_message",
     "JSON object"),
]


@pytest.mark.parametrize(("frame", "code", "names"), BAD_MESSAGES)
def test_malformed_frames_get_their_error_code(server: ServerProcess, frame: str, code: str,
                                               names: str) -> None:
    game = register(server.url)

    async def body() -> None:
        ws, _ = await connect(server.ws_url, game)
        await ws.send(frame)
        answer = await receive(ws)
        assert answer["type"] == "error" and answer["data"]["code"] == code
        assert names in answer["data"]["message"]
        if '"request_id": "x"' in frame and code != "invalid_json":
            assert answer["request_id"] == "x"
        # the socket survives a bad message
        assert (await ask(ws, "heartbeat", {}))["type"] == "heartbeat"
        await ws.close()

    run(body())


def _with(path: str, value: Any) -> dict[str, Any]:
    data = move_request()
    target = data
    *parents, last = path.split(".")
    for part in parents:
        target = target[part]
    if value is _DROP:
        del target[last]
    else:
        target[last] = value
    return data


_DROP = object()
BAD_FIELDS: list[tuple[str, Any, str]] = [
    ("boss_health_percentage", 1.5, "less than or equal to 1"),
    ("boss_health_percentage", "0.5", "not a string"),
    ("boss_health_percentage", math.nan, "finite"),
    ("boss_health_percentage", math.inf, "finite"),
    ("player_context.dodge_frequency", -0.1, "greater than or equal to 0"),
    ("player_context.recent_deaths", 1.5, "integer"),
    ("player_context.recent_deaths", "2", "not a string"),
    ("player_context.movement_style", "sneaky", "evasive"),
    ("player_context.frequent_actions", ["x"] * 33, "at most 32"),
    ("player_context.difficulty_preference", "x" * 65, "at most 64"),
    ("player_context.telepathy", 1, "telepathy"),
    ("player_context.dodge_frequency", _DROP, "dodge_frequency"),
    ("battle_phase", "final_battle", "early_battle"),
    ("difficulty", "nightmare", "difficulty_levels"),
    ("environment_factors", {"environment": "moon"}, "arena"),
    ("environment_factors", {"weather": "rain"}, "weather"),
]


@pytest.mark.parametrize(("path", "value", "names"), BAD_FIELDS)
def test_invalid_requests_name_the_field(server: ServerProcess, path: str, value: Any,
                                         names: str) -> None:
    game = register(server.url)

    async def body() -> None:
        ws, _ = await connect(server.ws_url, game)
        answer = await ask(ws, "boss_action_request", _with(path, value), "bad")
        assert answer["type"] == "error" and answer["request_id"] == "bad"
        assert answer["data"]["code"] == "invalid_message"
        message = answer["data"]["message"]
        assert path.rsplit(".", maxsplit=1)[-1] in message and names in message, message
        await ws.close()

    run(body())


def test_invalid_outcomes_are_refused_and_store_nothing(server: ServerProcess) -> None:
    game = register(server.url)

    async def body() -> None:
        ws, _ = await connect(server.ws_url, game)
        move = (await ask(ws, "boss_action_request", move_request()))["data"]
        for field, value in [("effectiveness_score", 2.0), ("outcome", "win"),
                             ("player_hit", 1), ("damage_dealt", -1.0),
                             ("execution_time", "1.0")]:
            bad = {**outcome(move["action_id"]), field: value}
            answer = await ask(ws, "action_outcome", bad)
            assert answer["data"]["code"] == "invalid_message" and field in answer["data"][
                "message"]
        good = await ask(ws, "action_outcome", outcome(move["action_id"]))
        assert good["data"]["duplicate"] is False  # nothing was stored by the bad ones
        await ws.close()

    run(body())


def test_unknown_and_other_games_action_ids_are_unknown_action(server: ServerProcess) -> None:
    first, second = register(server.url), register(server.url)

    async def body() -> None:
        ws1, _ = await connect(server.ws_url, first)
        ws2, _ = await connect(server.ws_url, second)
        theirs = (await ask(ws1, "boss_action_request", move_request()))["data"]["action_id"]
        for action_id in (uuid.uuid4().hex, theirs):
            answer = await ask(ws2, "action_outcome", outcome(action_id), "u")
            assert answer["data"]["code"] == "unknown_action" and answer["request_id"] == "u"
        # the other game's action is untouched: its own outcome is stored fresh
        update = await ask(ws1, "action_outcome", outcome(theirs))
        assert update["data"]["duplicate"] is False
        await ws1.close()
        await ws2.close()

    run(body())


def test_binary_frames_are_invalid_messages(server: ServerProcess) -> None:
    game = register(server.url)

    async def body() -> None:
        ws, _ = await connect(server.ws_url, game)
        await ws.send(b'{"type": "heartbeat"}')
        answer = await receive(ws)
        assert answer["data"]["code"] == "invalid_message" and "text" in answer["data"]["message"]
        await ws.close()

    run(body())


def test_rest_boss_action_outcome_stats_and_profile(server: ServerProcess) -> None:
    game = register(server.url)
    base = f"{server.url}/api/v1/games/{game.game_id}"
    with httpx.Client(headers=auth(game.token), timeout=10.0) as http:
        answer = http.post(f"{base}/boss-action?session_id=rest-player", json=move_request())
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Session-Id"] == "rest-player"
        move = answer.json()
        assert set(move) == {"action_id", "boss_action", "confidence", "retrieved",
                             "policy_version", "latency_ms"}
        update = http.post(f"{base}/action-outcome", json=outcome(move["action_id"], 0.25,
                                                                  "failure"))
        assert update.json()["duplicate"] is False
        bad = http.post(f"{base}/boss-action", json=_with("battle_phase", "final"))
        assert bad.status_code == 422 and "battle_phase" in bad.text
        unknown = http.post(f"{base}/action-outcome", json=outcome("nope"))
        assert unknown.status_code == 404
        stats = http.get(f"{base}/realtime-stats").json()
        assert stats["actions_served"] == 1 and stats["outcomes_stored"] == 1
        assert stats["mean_effectiveness"] == pytest.approx(0.25)
        assert stats["action_mix"] == {move["boss_action"]["boss_action"]: 1}
        assert stats["latency_ms"]["p50"] > 0 and stats["latency_ms"]["p99"] >= stats[
            "latency_ms"]["p50"]
        assert stats["open_sessions"] == 0
        profile = http.get(f"{base}/sessions/rest-player/profile").json()
        played = move["boss_action"]["boss_action"]
        assert profile["lessons"] == 1 and profile["movement_styles"] == {"evasive": 1}
        assert profile["context_means"]["dodge_frequency"] == pytest.approx(0.7)
        assert profile["moves"][played] == {"outcomes": {"failure": 1}, "count": 1,
                                            "mean_effectiveness": 0.25}
        assert profile["last_boss_action"] == played
        assert http.get(f"{base}/sessions/nobody/profile").status_code == 404


def test_profile_counts_context_and_what_worked(server: ServerProcess) -> None:
    game = register(server.url)
    contexts = [{**CONTEXT, "dodge_frequency": 0.2, "movement_style": "aggressive"},
                {**CONTEXT, "dodge_frequency": 0.6, "movement_style": "evasive"}]

    async def body() -> list[str]:
        ws, _ = await connect(server.ws_url, game, session_id="p")
        moves = []
        for i, context in enumerate(contexts):
            move = (await ask(ws, "boss_action_request", move_request(context)))["data"]
            await ask(ws, "action_outcome", outcome(move["action_id"], 0.1 + 0.8 * i,
                                                    "failure" if i == 0 else "success"))
            moves.append(move["boss_action"]["boss_action"])
        await ws.close()
        return moves

    moves = run(body())
    profile = httpx.get(f"{server.url}/api/v1/games/{game.game_id}/sessions/p/profile",
                        headers=auth(game.token)).json()
    assert profile["lessons"] == 2
    assert profile["context_means"]["dodge_frequency"] == pytest.approx(0.4)
    assert profile["movement_styles"] == {"aggressive": 1, "evasive": 1}
    assert sum(m["count"] for m in profile["moves"].values()) == 2
    assert profile["decisions"] == 2 and profile["last_boss_action"] == moves[-1]
    # The habits of the last move's row: one transition counted (1 / (1 + 2)) only when the
    # second move repeated the first; a row never left yet is all zeros.
    repeated = moves[0] == moves[1]
    assert sum(profile["habits"].values()) == pytest.approx(1 / 3 if repeated else 0.0)


def test_system_endpoints(server: ServerProcess) -> None:
    health = httpx.get(f"{server.url}/api/v1/health").json()
    assert health["status"] == "ok" and health["storage"] == "ok"
    assert health["policy_version"] == "scripted-reactive" and health["memory_size"] >= 0
    info = httpx.get(f"{server.url}/websocket-info").json()
    assert info["version"] == "v1" and info["limits"]["max_message_bytes"] == 65536
    assert set(info["client_messages"]) == {"boss_action_request", "action_outcome",
                                            "heartbeat"}
    assert "rate_limited" in info["error_codes"] and info["heartbeat_interval"] == 15.0
    metrics = httpx.get(f"{server.url}/metrics").text
    assert "bosslab_decision_seconds_bucket" in metrics and 'le="0.0001"' in metrics
    assert "bosslab_open_sockets" in metrics
    assert httpx.get(f"{server.url}/docs").status_code == 200
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert "/api/v1/games/{game_id}/boss-action" in schema["paths"]


def _young_collections(server: ServerProcess) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    prefix = 'bosslab_gc_pause_seconds_count{generation="0"} '
    return sum(float(line.removeprefix(prefix)) for line in text.splitlines()
               if line.startswith(prefix))


def test_the_collector_runs_by_the_clock_and_its_pauses_are_measured(
        server: ServerProcess) -> None:
    """An idle server allocates too little to trigger a collection; paced, it still collects
    its young generation ten times a second, and each pause lands in the histogram."""
    before = _young_collections(server)
    started = time.monotonic()
    wait_until(lambda: _young_collections(server) >= before + 5, 5.0,
               "five young-generation collections")
    assert time.monotonic() - started < 2.0


def test_registration_conflicts_and_unservable_vocabularies(server: ServerProcess) -> None:
    game = register(server.url)
    again = httpx.post(f"{server.url}/api/v1/games/register", json={
        "game_id": game.game_id, "name": "x", "vocabulary": {
            "boss_actions": ["attack", "defend", "special_move"]}})
    assert again.status_code == 409
    other = httpx.post(f"{server.url}/api/v1/games/register", json={
        "game_id": "dragons", "name": "x", "vocabulary": {"boss_actions": ["bite", "roar"]}})
    assert other.status_code == 422
    detail = other.json()["detail"]
    assert "boss-duel" in detail and "attack, defend, special_move" in detail
    assert "bite" in detail
    malformed = httpx.post(f"{server.url}/api/v1/games/register", json={
        "game_id": "bad id!", "name": "x", "vocabulary": {"boss_actions": ["attack"]}})
    assert malformed.status_code == 422


def test_tokens_come_only_with_the_api_key(server: ServerProcess) -> None:
    game = register(server.url)
    url = f"{server.url}/api/v1/games/{game.game_id}/token"
    fresh = httpx.post(url, headers={"X-API-Key": game.api_key})
    assert fresh.status_code == 200 and fresh.json()["token_type"] == "bearer"
    assert httpx.post(url, headers={"X-API-Key": "bl_wrong"}).status_code == 401
    assert httpx.post(url).status_code == 401
    unknown = f"{server.url}/api/v1/games/never-registered/token"
    assert httpx.post(unknown, headers={"X-API-Key": game.api_key}).status_code == 401

    async def body() -> None:
        ws, _ = await connect(server.ws_url, game, token=fresh.json()["access_token"])
        await ws.close()

    run(body())


def test_tokens_and_keys_never_reach_the_logs(server: ServerProcess) -> None:
    game = register(server.url)

    async def body() -> None:
        ws, _ = await connect(server.ws_url, game)
        await ws.close()

    run(body())
    logs = server.logs()
    assert "[REDACTED]" in logs
    assert game.token not in logs and game.api_key not in logs
    for line in logs.splitlines():
        if line.startswith("{"):
            json.loads(line)  # structured logs: one JSON object per line
