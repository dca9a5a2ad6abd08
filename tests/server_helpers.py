"""Real servers for the server tests: uvicorn on a free loopback port, a temporary database and a
scripted bundle; real sockets, no mocks of the web layer.

- :func:`start_server`: ``python -m serving`` in a subprocess (what a game team runs); waits
  until ``/api/v1/health`` answers; :meth:`ServerProcess.stop` sends SIGTERM,
  :meth:`ServerProcess.kill` SIGKILL; :meth:`ServerProcess.restart` starts it again on the same
  port and database.
- :class:`ThreadServer`: ``serving.main.create_app`` under uvicorn in a thread of the test
  process, for tests that must reach into the running service (fault injection).
- :func:`register`, :func:`connect`, :func:`ask`: a game, a socket, one request and its answer.

Everything waits on conditions with timeouts, never on fixed sleeps.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn
import websockets
from websockets.asyncio.client import ClientConnection

from serving.settings import Settings

REPO = Path(__file__).resolve().parent.parent
SECRET = "test-secret-key-for-the-server-suite-0123456789"
"""The secret key test servers sign tokens with (tests forge tokens with it and others)."""
START_TIMEOUT = 60.0
T = TypeVar("T")

CONTEXT: dict[str, Any] = {
    "frequent_actions": ["light_attack", "dodge"],
    "dodge_frequency": 0.7,
    "attack_patterns": ["hit_and_run"],
    "movement_style": "evasive",
    "reaction_time": 0.25,
    "health_percentage": 0.8,
    "difficulty_preference": "normal",
    "session_duration": 12.0,
    "recent_deaths": 1,
    "equipment_level": 4,
}
"""A complete, valid player_context."""


def wait_until(condition: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def run(coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run a test's async body with an overall timeout."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'serving.db'}"


class LoopbackAddress:
    """The HTTP and WebSocket base URLs of a server on 127.0.0.1:``port``."""

    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


@dataclass
class ServerProcess(LoopbackAddress):
    """``python -m serving`` in a subprocess."""

    bundle: Path
    database_url: str
    log_path: Path
    port: int = field(default_factory=free_port)
    env: Mapping[str, str] = field(default_factory=dict)
    args: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        env = {**os.environ, "BOSSLAB_DATABASE_URL": self.database_url,
               "BOSSLAB_PORT": str(self.port), "BOSSLAB_HOST": "127.0.0.1",
               "BOSSLAB_SECRET_KEY": SECRET, "PYTHONUNBUFFERED": "1", **self.env}
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving", "--bundle", str(self.bundle), *self.args],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_until(self._healthy, START_TIMEOUT, f"the server on port {self.port} to start")
        return self

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"the server exited with {self.process.returncode}:\n"
                               f"{self.logs()[-4000:]}")
        try:
            return httpx.get(f"{self.url}/api/v1/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the exit; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL (a crash): nothing is flushed, nothing is closed."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def restart(self) -> ServerProcess:
        return self.start()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_server(tmp: Path, bundle: Path, *, database_url: str | None = None,
                 env: Mapping[str, str] | None = None, args: Sequence[str] = ()) -> ServerProcess:
    """A running server on a free port with a SQLite database under ``tmp`` (by default)."""
    tmp.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(bundle=bundle, database_url=database_url or sqlite_url(tmp),
                           log_path=tmp / f"server-{uuid.uuid4().hex[:6]}.log",
                           env=dict(env or {}), args=tuple(args))
    return server.start()


class ThreadServer(LoopbackAddress):
    """The app under uvicorn in a thread of this process: ``.app.state.service`` is reachable
    for fault injection. Stop with :meth:`stop`."""

    def __init__(self, settings: Settings, bundles: Sequence[Any]) -> None:
        from serving.__main__ import uvicorn_config  # noqa: PLC0415 (as above)
        from serving.main import create_app  # noqa: PLC0415 (only thread-server tests need it)

        self.port = settings.port
        self.app = create_app(settings, bundles)
        self.server = uvicorn.Server(uvicorn_config(self.app, settings))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, START_TIMEOUT, "the thread server to start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@dataclass(frozen=True)
class Game:
    game_id: str
    api_key: str
    token: str


def register(url: str, game_id: str | None = None, *, admin_key: str | None = None,
             boss_actions: Sequence[str] = ("attack", "defend", "special_move")) -> Game:
    """Register a game (unique id by default); fails the test unless 201."""
    game = game_id or f"game-{uuid.uuid4().hex[:10]}"
    headers = {"X-Admin-Key": admin_key} if admin_key else {}
    answer = httpx.post(f"{url}/api/v1/games/register", headers=headers, timeout=10.0, json={
        "game_id": game, "name": "Test game",
        "vocabulary": {"boss_actions": list(boss_actions)}})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    return Game(game, body["api_key"], body["access_token"])


async def connect(ws_url: str, game: Game, *, token: str | None = None,
                  session_id: str | None = None,
                  **options: Any) -> tuple[ClientConnection, dict[str, Any]]:
    """An open socket of ``game`` and its ``status`` data."""
    query = f"?token={token or game.token}"
    if session_id:
        query += f"&session_id={session_id}"
    ws = await websockets.connect(f"{ws_url}/api/v1/ws/{game.game_id}{query}", **options)
    status = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert status["type"] == "status", status
    return ws, status["data"]


async def receive(ws: ClientConnection, request_id: str | None = None,
                  timeout: float = 10.0) -> dict[str, Any]:
    """The next message (with ``request_id`` when given), skipping server heartbeats."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if message["type"] == "heartbeat" and "request_id" not in message:
            continue
        if request_id is None or message.get("request_id") == request_id:
            return message


async def ask(ws: ClientConnection, kind: str, data: Any, request_id: str | None = None,
              timeout: float = 10.0) -> dict[str, Any]:
    """Send one message and return the answer carrying its request_id."""
    rid = request_id or uuid.uuid4().hex
    await ws.send(json.dumps({"type": kind, "request_id": rid, "data": data}))
    return await receive(ws, rid, timeout)


def move_request(context: Mapping[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """``boss_action_request`` data with a complete context."""
    return {"player_context": dict(context or CONTEXT), "boss_health_percentage": 0.9,
            "battle_phase": "early_battle", **fields}


def outcome(action_id: str, effectiveness: float = 0.5, result: str = "partial") -> dict[str, Any]:
    """``action_outcome`` data."""
    return {"action_id": action_id, "outcome": result, "effectiveness_score": effectiveness,
            "damage_dealt": 5.0, "player_hit": effectiveness > 0.5, "execution_time": 1.1}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
