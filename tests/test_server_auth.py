"""Who gets in: every bad token is refused at the WebSocket handshake (HTTP 403, before any game
data) and on REST (401/403); registration needs the admin key when the server has one."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from serving.auth import issue_token
from serving.bundle import write_scripted_bundle
from serving.settings import Settings
from tests.server_helpers import (
    SECRET,
    Game,
    ServerProcess,
    auth,
    connect,
    move_request,
    register,
    run,
    start_server,
)

ADMIN_KEY = "admin-key-for-tests"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("auth")
    running = start_server(tmp, write_scripted_bundle(tmp / "bundle"),
                           env={"BOSSLAB_ADMIN_KEY": ADMIN_KEY})
    yield running
    running.stop()


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def unsigned_token(game_id: str) -> str:
    """An ``alg: none`` token with otherwise perfect claims."""
    now = int(time.time())
    claims = {"sub": game_id, "aud": "bosslab-games", "iss": "bosslab", "iat": now,
              "exp": now + 600, "jti": "x"}
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."


def bad_tokens(game: Game, other: Game) -> dict[str, str | None]:
    ours = Settings(secret_key=SECRET)
    return {
        "missing": None,
        "malformed": "not-a-jwt",
        "expired": issue_token(game.game_id, ours, now=time.time() - 7200)[0],
        "other key": issue_token(game.game_id, Settings(secret_key="x" * 40))[0],
        "alg none": unsigned_token(game.game_id),
        "other game": other.token,
    }


def test_bad_tokens_are_refused_at_the_handshake(server: ServerProcess) -> None:
    game = register(server.url, admin_key=ADMIN_KEY)
    other = register(server.url, admin_key=ADMIN_KEY)

    async def refused(token: str | None) -> int:
        url = f"{server.ws_url}/api/v1/ws/{game.game_id}"
        import websockets  # noqa: PLC0415

        try:
            ws = await websockets.connect(url + (f"?token={token}" if token else ""))
        except InvalidStatus as error:
            return error.response.status_code
        await ws.close()
        return 101

    for name, token in bad_tokens(game, other).items():
        assert run(refused(token)) == 403, name
    assert run(refused(game.token)) == 101


def test_bearer_header_is_accepted_and_checked(server: ServerProcess) -> None:
    game = register(server.url, admin_key=ADMIN_KEY)
    other = register(server.url, admin_key=ADMIN_KEY)

    async def body() -> None:
        import websockets  # noqa: PLC0415

        url = f"{server.ws_url}/api/v1/ws/{game.game_id}"
        ws = await websockets.connect(url, additional_headers=auth(game.token))
        assert json.loads(await ws.recv())["type"] == "status"
        await ws.close()
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(url, additional_headers=auth(other.token))
        assert refused.value.response.status_code == 403

    run(body())


def test_rest_refuses_bad_tokens(server: ServerProcess) -> None:
    game = register(server.url, admin_key=ADMIN_KEY)
    other = register(server.url, admin_key=ADMIN_KEY)
    url = f"{server.url}/api/v1/games/{game.game_id}/boss-action"
    for name, token in bad_tokens(game, other).items():
        headers = auth(token) if token else {}
        answer = httpx.post(url, json=move_request(), headers=headers)
        expected = 403 if name == "other game" else 401
        assert answer.status_code == expected, (name, answer.text)
        assert "token" in answer.text or "game" in answer.text
    stats = httpx.get(f"{server.url}/api/v1/games/{game.game_id}/realtime-stats",
                      headers=auth(other.token))
    assert stats.status_code == 403
    assert httpx.post(url, json=move_request(), headers=auth(game.token)).status_code == 200


def test_registration_needs_the_admin_key(server: ServerProcess) -> None:
    body = {"game_id": "guarded", "name": "x",
            "vocabulary": {"boss_actions": ["attack", "defend", "special_move"]}}
    url = f"{server.url}/api/v1/games/register"
    assert httpx.post(url, json=body).status_code == 403
    wrong = httpx.post(url, json=body, headers={"X-Admin-Key": "guess"})
    assert wrong.status_code == 403 and "X-Admin-Key" in wrong.text
    assert httpx.post(url, json=body, headers={"X-Admin-Key": ADMIN_KEY}).status_code == 201
    assert "registration is OPEN" not in server.logs()


def test_a_valid_token_for_an_unregistered_game_gets_nothing(server: ServerProcess) -> None:
    token = issue_token("ghost", Settings(secret_key=SECRET))[0]
    game = Game("ghost", "", token)

    async def body() -> int:
        try:
            await connect(server.ws_url, game)
        except InvalidStatus as error:
            return error.response.status_code
        return 101

    assert run(body()) == 403
