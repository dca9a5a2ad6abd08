"""A Python client for games and tools: ``BossClient`` (asyncio) and ``SyncBossClient``.

It speaks ../shared/PROTOCOL.md over one WebSocket (the ``websockets`` library) and makes the
protocol's delivery rules easy to follow:

- :meth:`BossClient.report_outcome` resends the outcome until its ``learning_update`` arrives
  (``try_timeout`` per try), across reconnects: at-least-once delivery; the server stores it
  once and answers a resend with ``duplicate: true``.
- A lost connection is re-opened with exponential backoff and full jitter
  (``uniform(0, min(max_backoff, base_backoff * 2**attempt))``), in the same session.
- With an ``api_key`` the client fetches a token when it has none and fetches a fresh one
  when the server refuses the current one (expired) at the handshake.
- It sends a ``heartbeat`` every ``heartbeat_interval`` seconds so the server's idle timeout
  never closes a quiet but live session.

Example::

    async with BossClient("http://127.0.0.1:8000", "my-game", api_key=KEY) as boss:
        move = await boss.request_move(context, boss_health_percentage=0.8)
        await boss.report_outcome(move["action_id"], "success", 0.9, damage_dealt=12.0)

The token goes in an ``Authorization`` header, never in the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import threading
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

T = TypeVar("T")
RETRYABLE = ("unavailable", "rate_limited")
"""Error codes after which the same message may simply be sent again (after a pause)."""
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


class BossClientError(Exception):
    """The server answered with an ``error`` (``code``, ``message``), or refused the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class _DisconnectedError(Exception):
    """The socket closed while a request waited."""


async def _wait_for(waiter: asyncio.Future[T], timeout: float) -> T:
    """``asyncio.wait_for(waiter, timeout)`` for a plain future, at less CPU: one timer, no
    wrapping future or done-callbacks."""
    deadline = asyncio.get_running_loop().call_later(timeout, _time_out, waiter, timeout)
    try:
        return await waiter
    finally:
        deadline.cancel()


def _time_out(waiter: asyncio.Future[Any], timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError(f"no answer within {timeout} s"))


class BossClient:
    """One game session over a WebSocket (see the module docstring)."""

    def __init__(self, url: str, game_id: str, *, token: str | None = None,
                 api_key: str | None = None, session_id: str | None = None,
                 try_timeout: float = 2.0, attempts: int = 8, base_backoff: float = 0.05,
                 max_backoff: float = 5.0, heartbeat_interval: float = 15.0) -> None:
        if token is None and api_key is None:
            raise ValueError("BossClient needs a token or an api_key (the key registration "
                             "returned): pass token=... or api_key=...")
        self.base_url = url.rstrip("/").replace("ws://", "http://", 1).replace(
            "wss://", "https://", 1)
        self.game_id = game_id
        self.token = token
        self.api_key = api_key
        self.session_id = session_id
        self.try_timeout = try_timeout
        self.attempts = attempts
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self.heartbeat_interval = heartbeat_interval
        self.status: dict[str, Any] = {}
        self.reconnects = 0
        self.close_code: int | None = None
        """Close code of the last connection that ended."""
        self._ws: ClientConnection | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._request_id_prefix = os.urandom(8).hex()
        """With a counter: request_ids unique across clients, without a syscall per request."""
        self._request_numbers = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []
        self._connecting = asyncio.Lock()
        self._closed = False

    # --- connection -------------------------------------------------------------------------

    @property
    def ws_url(self) -> str:
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        query = f"?session_id={quote(self.session_id)}" if self.session_id else ""
        return f"{scheme}://{parts.netloc}/api/v1/ws/{quote(self.game_id)}{query}"

    async def connect(self) -> dict[str, Any]:
        """Open the socket (retrying with backoff); returns the ``status`` data."""
        await self._ensure_connected()
        return self.status

    async def __aenter__(self) -> BossClient:
        await self.connect()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the socket and stop the background tasks."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        if self._ws is not None:
            await self._ws.close()
        self._ws = None

    async def refresh_token(self) -> str:
        """A fresh access token from ``POST /api/v1/games/{game_id}/token`` (X-API-Key)."""
        if self.api_key is None:
            raise BossClientError("unauthorized", "the token was refused and no api_key was "
                                  "given to get a fresh one")
        async with httpx.AsyncClient(base_url=self.base_url, timeout=10.0) as http:
            answer = await http.post(f"/api/v1/games/{quote(self.game_id)}/token",
                                     headers={"X-API-Key": self.api_key})
        if answer.status_code != 200:
            raise BossClientError("unauthorized", f"token refused ({answer.status_code}): "
                                  f"{answer.text[:200]}")
        self.token = str(answer.json()["access_token"])
        return self.token

    async def _ensure_connected(self) -> ClientConnection:
        async with self._connecting:
            if self._ws is not None:
                return self._ws
            for attempt in range(self.attempts):
                try:
                    return await self._open()
                except (OSError, asyncio.TimeoutError, InvalidStatus, ConnectionClosed) as error:
                    if isinstance(error, InvalidStatus) and error.response.status_code in (
                            400, 403, 404):  # a bad token or session: retrying cannot help
                        raise BossClientError("refused", str(error)) from error
                    await self._backoff(attempt)
            raise BossClientError("unavailable", f"could not connect to {self.ws_url} after "
                                  f"{self.attempts} attempts")

    async def _open(self) -> ClientConnection:
        if self.token is None:
            await self.refresh_token()
        try:
            ws = await self._handshake()
        except InvalidStatus as error:
            if error.response.status_code != 403 or self.api_key is None:
                raise
            await self.refresh_token()  # expired or revoked: one fresh try
            ws = await self._handshake()
        status = json.loads(await asyncio.wait_for(ws.recv(), self.try_timeout))
        if status.get("type") != "status":
            await ws.close()
            raise BossClientError("protocol", f"expected status first, got {status}")
        self.status = status["data"]
        self.session_id = self.status["session_id"]
        self._ws = ws
        self._tasks = [asyncio.create_task(self._read(ws)),
                       asyncio.create_task(self._beat(ws))]
        return ws

    async def _handshake(self) -> ClientConnection:
        return await websockets.connect(
            self.ws_url, additional_headers={"Authorization": f"Bearer {self.token}"},
            open_timeout=self.try_timeout * 2, max_size=2**20)

    async def _backoff(self, attempt: int) -> None:
        ceiling = min(self.max_backoff, self.base_backoff * 2 ** attempt)
        await asyncio.sleep(random.uniform(0.0, ceiling))

    async def _read(self, ws: ClientConnection) -> None:
        """Route every incoming message to the request waiting for it."""
        try:
            while True:
                message = json.loads(await ws.recv())
                waiter = self._pending.pop(message.get("request_id") or "", None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(message)
        except ConnectionClosed:
            pass
        finally:
            self._lost(ws)

    def _lost(self, ws: ClientConnection) -> None:
        if self._ws is ws:
            self._ws = None
            self.reconnects += 0 if self._closed else 1
        self.close_code = ws.close_code
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(_DisconnectedError(f"closed with {ws.close_code}"))
        self._pending.clear()

    async def _beat(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(self.heartbeat_interval)
                await ws.send(_COMPACT_JSON.encode({"type": "heartbeat", "data": {}}))

    # --- messages ---------------------------------------------------------------------------

    async def _call(self, kind: str, data: Mapping[str, Any],
                    timeout: float) -> dict[str, Any]:
        """Send one message and wait for the answer with its request_id (raises on error)."""
        # the lock in _ensure_connected is only needed while there is no socket
        ws = self._ws if self._ws is not None else await self._ensure_connected()
        request_id = f"{self._request_id_prefix}-{next(self._request_numbers)}"
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = waiter
        try:
            await ws.send(_COMPACT_JSON.encode({"type": kind, "request_id": request_id,
                                                "data": data}))
            answer = await _wait_for(waiter, timeout)
        except ConnectionClosed as error:
            self._lost(ws)
            raise _DisconnectedError(str(error)) from error
        finally:
            self._pending.pop(request_id, None)
        if answer["type"] == "error":
            raise BossClientError(answer["data"]["code"], answer["data"]["message"])
        return answer

    async def _with_retries(self, kind: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """``_call`` until answered: reconnecting, and resending after retryable errors."""
        last: Exception | None = None
        for attempt in range(self.attempts):
            try:
                return (await self._call(kind, data, self.try_timeout))["data"]
            except BossClientError as error:
                if error.code not in RETRYABLE:
                    raise
                last = error
            except (_DisconnectedError, asyncio.TimeoutError, OSError) as error:
                last = error
            await self._backoff(attempt)
        raise BossClientError("unavailable", f"no answer to {kind} after {self.attempts} "
                              f"tries (last: {last})")

    async def request_move(self, player_context: Mapping[str, Any], *,
                           boss_health_percentage: float = 1.0,
                           battle_phase: str = "early_battle",
                           environment_factors: Mapping[str, Any] | None = None,
                           difficulty: str | None = None) -> dict[str, Any]:
        """A boss move for the player: the ``boss_action_response`` data."""
        data: dict[str, Any] = {"player_context": dict(player_context),
                                "boss_health_percentage": boss_health_percentage,
                                "battle_phase": battle_phase}
        if environment_factors is not None:
            data["environment_factors"] = dict(environment_factors)
        if difficulty is not None:
            data["difficulty"] = difficulty
        return await self._with_retries("boss_action_request", data)

    async def report_outcome(self, action_id: str, outcome: str, effectiveness_score: float, *,
                             damage_dealt: float = 0.0, player_hit: bool = False,
                             execution_time: float = 0.0) -> dict[str, Any]:
        """Report how a move went; resends until stored: the ``learning_update`` data."""
        data = {"action_id": action_id, "outcome": outcome,
                "effectiveness_score": effectiveness_score, "damage_dealt": damage_dealt,
                "player_hit": player_hit, "execution_time": execution_time}
        return await self._with_retries("action_outcome", data)

    async def heartbeat(self) -> dict[str, Any]:
        """A heartbeat round trip: the server's ``heartbeat`` data."""
        return await self._with_retries("heartbeat", {})


class SyncBossClient:
    """:class:`BossClient` for code without an event loop (runs one in a daemon thread)."""

    def __init__(self, url: str, game_id: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="boss-client")
        self._thread.start()
        self.client: BossClient = self._run(self._make(url, game_id, options))

    @staticmethod
    async def _make(url: str, game_id: str, options: dict[str, Any]) -> BossClient:
        return BossClient(url, game_id, **options)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def connect(self) -> dict[str, Any]:
        return self._run(self.client.connect())

    def request_move(self, player_context: Mapping[str, Any], **options: Any) -> dict[str, Any]:
        return self._run(self.client.request_move(player_context, **options))

    def report_outcome(self, action_id: str, outcome: str, effectiveness_score: float,
                       **options: Any) -> dict[str, Any]:
        return self._run(self.client.report_outcome(action_id, outcome, effectiveness_score,
                                                    **options))

    def close(self) -> None:
        self._run(self.client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5.0)

    def __enter__(self) -> SyncBossClient:
        self.connect()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
