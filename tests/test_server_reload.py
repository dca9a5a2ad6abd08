"""Hot reload (``serving.reload``, ``POST /api/v1/admin/bundles``) against a real server.

One server (uvicorn in a subprocess, SQLite, a scripted ``reactive`` bundle, an admin key) for
the module; each test registers its own game.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.bundle import write_scripted_bundle
from tests.server_helpers import (
    ServerProcess,
    ask,
    connect,
    move_request,
    outcome,
    receive,
    register,
    run,
    start_server,
)

ADMIN_KEY = "admin-key-for-the-reload-tests"


def start_admin_server(tmp: Path, bundle: Path, admin_key: str | None = None) -> ServerProcess:
    """A running server (``python -m serving``) on a free port with a SQLite database."""
    return start_server(tmp, bundle, env={"BOSSLAB_ADMIN_KEY": admin_key} if admin_key else {})


def load(url: str, path: Path | str, key: str | None = ADMIN_KEY) -> httpx.Response:
    """``POST /api/v1/admin/bundles``."""
    headers = {"X-Admin-Key": key} if key is not None else {}
    return httpx.post(f"{url}/api/v1/admin/bundles", json={"path": str(path)},
                      headers=headers, timeout=60.0)


def loaded(url: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/api/v1/admin/bundles", headers={"X-Admin-Key": ADMIN_KEY},
                       timeout=10.0)
    assert answer.status_code == 200, answer.text
    return list(answer.json())


def health(url: str) -> dict[str, Any]:
    return dict(httpx.get(f"{url}/api/v1/health", timeout=10.0).json())


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Scripted bundles: the served one, another duel boss, another game; broken ones."""
    tmp = tmp_path_factory.mktemp("reload-bundles")
    made = {"reactive": write_scripted_bundle(tmp / "reactive"),
            "rotation": write_scripted_bundle(tmp / "rotation", boss="rotation"),
            "random": write_scripted_bundle(tmp / "random", boss="random"),
            "dragon_keep": write_scripted_bundle(tmp / "dragon_keep", game="dragon_keep")}
    edited = shutil.copytree(made["rotation"], tmp / "edited")
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["game_fingerprint"] = "0" * 16
    (edited / "manifest.json").write_text(json.dumps(manifest))
    garbled = tmp / "garbled"
    garbled.mkdir()
    (garbled / "manifest.json").write_text("{not json")
    return {**made, "edited": edited, "garbled": garbled, "missing": tmp / "no-such-bundle"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory,
           bundles: dict[str, Path]) -> Iterator[ServerProcess]:
    started = start_admin_server(tmp_path_factory.mktemp("reload-server"), bundles["reactive"],
                                 ADMIN_KEY)
    yield started
    started.stop()


def test_reload_needs_the_admin_key_when_the_server_has_one(server: ServerProcess,
                                                             bundles: dict[str, Path]) -> None:
    before = health(server.url)["policy_version"]
    for key in (None, "", "not-the-admin-key"):
        answer = load(server.url, bundles["rotation"], key)
        assert answer.status_code == 403, answer.text
        assert "X-Admin-Key" in answer.json()["detail"]
    listing = httpx.get(f"{server.url}/api/v1/admin/bundles", timeout=10.0)
    assert listing.status_code == 403
    assert health(server.url)["policy_version"] == before


@pytest.mark.parametrize("broken", ["missing", "garbled", "edited"])
def test_a_bundle_that_does_not_load_is_422_and_changes_nothing(
        server: ServerProcess, bundles: dict[str, Path], broken: str) -> None:
    game = register(server.url, admin_key=ADMIN_KEY)
    before_health, before_list = health(server.url), loaded(server.url)
    answer = load(server.url, bundles[broken])
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert "nothing changed" in detail
    assert {"missing": "no such bundle", "garbled": "not valid JSON",
            "edited": "game_fingerprint"}[broken] in detail
    assert health(server.url)["policy_version"] == before_health["policy_version"]
    assert loaded(server.url) == before_list
    stats = httpx.get(f"{server.url}/api/v1/games/{game.game_id}/realtime-stats",
                      headers={"Authorization": f"Bearer {game.token}"}, timeout=10.0).json()
    assert stats["policy_version"] == before_health["policy_version"]


def test_a_bundle_for_another_vocabulary_changes_no_game(server: ServerProcess,
                                                          bundles: dict[str, Path]) -> None:
    game = register(server.url, admin_key=ADMIN_KEY)
    before = health(server.url)["policy_version"]

    async def body() -> tuple[dict[str, Any], dict[str, Any]]:
        ws, _status = await connect(server.ws_url, game)
        answer = load(server.url, bundles["dragon_keep"])
        assert answer.status_code == 200, answer.text
        # A status would have been sent before the reload answered: the next message is the
        # heartbeat's reply.
        reply = await ask(ws, "heartbeat", {})
        await ws.close()
        return answer.json(), reply

    answer, reply = run(body())
    assert answer["games"] == [] and answer["replaced"] == [] and answer["notified_sockets"] == 0
    assert reply["type"] == "heartbeat"
    assert health(server.url)["policy_version"] == before
    listed = {b["name"]: b for b in loaded(server.url)}
    assert game.game_id in listed["boss-duel"]["games"]
    assert listed["boss-dragon_keep"]["games"] == []
    assert listed["boss-dragon_keep"]["path"] == str(bundles["dragon_keep"])


def test_reload_swaps_the_brain_and_keeps_sockets_and_sessions(
        server: ServerProcess, bundles: dict[str, Path]) -> None:
    game = register(server.url, admin_key=ADMIN_KEY)
    old = health(server.url)["policy_version"]
    new = "scripted-random" if old != "scripted-random" else "scripted-rotation"
    target = bundles[new.removeprefix("scripted-")]

    async def body() -> dict[str, Any]:
        ws, status = await connect(server.ws_url, game, session_id="player-1")
        first = await ask(ws, "boss_action_request", move_request())
        assert first["data"]["policy_version"] == old
        stored = await ask(ws, "action_outcome", outcome(first["data"]["action_id"], 0.9,
                                                         "success"))
        assert stored["type"] == "learning_update"
        pending = await ask(ws, "boss_action_request", move_request())
        answer = load(server.url, target)
        assert answer.status_code == 200, answer.text
        announced = await receive(ws)
        late = await ask(ws, "action_outcome", outcome(pending["data"]["action_id"], 0.2,
                                                       "failure"))
        after = await ask(ws, "boss_action_request", move_request())
        await ws.close()
        return {"status": status, "answer": answer.json(), "announced": announced,
                "late": late, "after": after}

    seen = run(body())
    answer, announced = seen["answer"], seen["announced"]
    assert answer["policy_version"] == new and game.game_id in answer["games"]
    assert old in answer["replaced"] and answer["notified_sockets"] >= 1
    assert answer["memory_size"][game.game_id] >= 1  # the stored outcome, replayed
    assert announced["type"] == "status"
    assert announced["data"]["session_id"] == seen["status"]["session_id"] == "player-1"
    assert announced["data"]["policy_version"] == new
    assert announced["data"]["game_id"] == game.game_id
    assert seen["late"]["type"] == "learning_update"  # an old version's decision
    assert seen["late"]["data"]["duplicate"] is False
    assert seen["after"]["type"] == "boss_action_response"
    assert seen["after"]["data"]["policy_version"] == new
    assert health(server.url)["policy_version"] == new
    assert loaded(server.url)[0]["policy_version"] == new
