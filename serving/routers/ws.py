"""``ws://HOST:PORT/api/v1/ws/{game_id}?token=JWT&session_id=OPTIONAL``: the real-time channel.

The handshake is refused (HTTP 403) for a missing or bad token before anything of the game is
sent; HTTP 503 when the server is at its connection limit or restarting, 400 for a malformed
session_id. After ``accept`` the server sends ``status`` and then answers every message.

One :class:`Connection` per socket:

- a receive loop: text frames only (a binary frame gets ``invalid_message``), the rate limit
  (``rate_limited``; sustained flooding closes with 1008), then one task per message (at most
  ``MAX_IN_FLIGHT`` at a time per socket), so a request never waits for an outcome's commit;
- every send goes through one lock per socket (frames never interleave);
- a keep-alive task: a ``heartbeat`` when nothing was sent for ``heartbeat_interval``, and a
  close (1000) after ``idle_timeout`` without any message from the client;
- :meth:`Connection.drain` at shutdown: take no new messages, let in-flight ones finish
  (an outcome is committed and its ``learning_update`` sent), then close with 1012.

A handler error is answered with an ``error`` (code ``internal``) and never drops the socket.
Frames over ``max_message_bytes`` are closed with 1009 by uvicorn (``ws_max_size``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import MutableMapping
from time import perf_counter
from typing import Any

from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from serving.auth import AuthError, bearer_token, verify_token
from serving.deps import ServiceDep
from serving.limits import ALLOW, FLOOD, FloodGuard
from serving.protocol import (
    ProtocolError,
    encode,
    error_message,
    parse_message,
    peek_request_id,
    server_time,
)
from serving.service import GameRuntime, Service, Unavailable, classify
from serving.sessions import Session

log = logging.getLogger("serving.ws")
router = APIRouter(tags=["websocket"])

MAX_IN_FLIGHT = 32
"""Messages of one socket handled at once; the socket is read no faster beyond that."""
SESSION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
SEND_ERRORS = (WebSocketDisconnect, RuntimeError, OSError)
RESTART_REASON = "server restarting: reconnect and resend unacknowledged outcomes"


@router.websocket("/api/v1/ws/{game_id}")
async def game_socket(websocket: WebSocket, game_id: str, service: ServiceDep) -> None:
    """The WebSocket of ../shared/PROTOCOL.md (see the module docstring)."""
    refusal = _refusal(websocket, game_id, service)
    if refusal is not None:
        await _deny(websocket, *refusal)
        return
    if not service.connection_limit.acquire():
        await _deny(websocket, 503, f"the server holds its maximum of "
                    f"{service.connection_limit.maximum} connections: retry later with backoff")
        return
    try:
        await websocket.accept()
        connection = Connection(websocket, service, service.game(game_id))
        await connection.run(websocket.query_params.get("session_id"))
    finally:
        service.connection_limit.release()


def _refusal(websocket: WebSocket, game_id: str, service: Service) -> tuple[int, str] | None:
    """Why the handshake is refused (HTTP status, message), or None to accept it."""
    token = websocket.query_params.get("token") or bearer_token(
        websocket.headers.get("authorization"))
    try:
        verify_token(token, game_id, service.settings)
    except AuthError as error:
        log.info("websocket refused for game %s: %s", game_id, error.reason)
        return 403, str(error)
    if service.draining:
        return 503, "the server is restarting: reconnect in a moment"
    session_id = websocket.query_params.get("session_id")
    if session_id is not None and not SESSION_ID.match(session_id):
        return 400, ("session_id must be 1 to 64 characters of letters, digits, _ . : -; "
                     "or leave it out and the server makes one")
    try:
        service.game(game_id)
    except KeyError:
        return 403, f"game {game_id!r} is not registered: register it first"
    except Unavailable as error:
        return 503, str(error)
    return None


async def _deny(websocket: WebSocket, status: int, message: str) -> None:
    """Refuse the handshake with an HTTP response (or a 1008 close where not supported)."""
    try:
        await websocket.send_denial_response(JSONResponse({"detail": message}, status))
    except RuntimeError:
        await websocket.close(code=1008, reason=message[:120])


class Connection:
    """One open socket of one game (see the module docstring)."""

    def __init__(self, websocket: WebSocket, service: Service, game: GameRuntime) -> None:
        settings = service.settings
        self.ws = websocket
        self.service = service
        self.game = game
        # Kept: asyncio.get_running_loop() makes a getpid system call on Python 3.11.
        self.loop = asyncio.get_running_loop()
        self.guard = FloodGuard(settings.rate_limit_per_second, settings.rate_limit_burst)
        self.tasks: set[asyncio.Task[None]] = set()
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.send_lock = asyncio.Lock()
        self.closed = False
        self.draining = False
        self.session_id = ""
        self.last_received = self.last_sent = perf_counter()

    async def run(self, session_id: str | None) -> None:
        """Serve the socket until it closes."""
        session = await self.service.session(self.game, session_id)
        self.session_id = session.session_id
        self._opened(session, +1)
        keeper = asyncio.create_task(self._keep_alive())
        try:
            await self.send("status", {"session_id": session.session_id,
                                       "game_id": self.game.game_id,
                                       "policy_version": self.game.brain.policy_version,
                                       "server_time": server_time()})
            await self._receive_loop()
        finally:
            keeper.cancel()
            self._opened(session, -1)
            if self.tasks:  # outcomes in flight still commit; their answers have nowhere to go
                await asyncio.wait(set(self.tasks), timeout=30.0)

    def _opened(self, session: Session, step: int) -> None:
        session.open_sockets += step
        if step > 0:
            self.service.connections.add(self)
            self.service.metrics.open_sockets.inc()
        else:
            self.service.connections.discard(self)
            self.service.metrics.open_sockets.dec()

    async def _receive_loop(self) -> None:
        while not self.closed:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                self.closed = True
                return
            received = perf_counter()
            self.last_received = received
            if self.draining:
                continue  # not processed: the client resends after reconnecting
            if not await self._admit(message, received):
                return

    async def _admit(self, message: MutableMapping[str, Any], received: float) -> bool:
        """Rate-limit one frame and start its handler; False once the socket is closed."""
        text = message.get("text")
        verdict = self.guard.check(received)
        if verdict is not ALLOW:
            settings = self.service.settings
            await self.send_error("rate_limited", f"over the rate limit of "
                                  f"{settings.rate_limit_per_second:g} messages/s (bursts of "
                                  f"{settings.rate_limit_burst}): this message was not "
                                  "processed; slow down and send it again",
                                  peek_request_id(text) if text else None)
            if verdict is FLOOD:
                await self.close(1008, "sustained flooding past the rate limit")
                return False
            return True
        if text is None:
            await self.send_error("invalid_message", "binary frames are not accepted: send "
                                  "each message as one JSON object in a text frame")
            return True
        await self.slots.acquire()
        if self.draining:
            self.slots.release()
            return True
        task = self.loop.create_task(self._handle(text, received))
        self.tasks.add(task)
        task.add_done_callback(self._finished)
        return True

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.slots.release()

    async def _handle(self, text: str, received: float) -> None:
        """Answer one message; any failure becomes an ``error`` message."""
        request_id: str | None = None
        try:
            message = parse_message(text)
            request_id = message.request_id
            if message.type == "boss_action_request":
                data = await self.service.decide(self.game.game_id, self.session_id,
                                                 message.data, received, request_id)
                await self.send("boss_action_response", data, request_id)
            elif message.type == "action_outcome":
                data = await self.service.record_outcome(self.game.game_id, message.data,
                                                         received)
                await self.send("learning_update", data, request_id)
            else:
                beat: dict[str, Any] = {"server_time": server_time()}
                if message.data.client_time is not None:
                    beat["client_time"] = message.data.client_time
                await self.send("heartbeat", beat, request_id)
        except Exception as error:  # every failure is answered; the socket stays open
            code, explanation = classify(error)
            if code == "internal":
                log.exception("handling a message of game %s failed", self.game.game_id)
            if isinstance(error, ProtocolError) and error.request_id is not None:
                request_id = error.request_id
            await self.send_error(code, explanation, request_id)

    async def send(self, kind: str, data: dict[str, Any], request_id: str | None = None) -> bool:
        return await self.send_text(encode(kind, data, request_id))

    async def send_error(self, code: str, message: str, request_id: str | None = None) -> bool:
        self.service.metrics.errors.labels(code).inc()
        return await self.send_text(error_message(code, message, request_id))

    async def send_text(self, text: str) -> bool:
        """Send one frame (serialized per socket); False if the socket is gone."""
        async with self.send_lock:
            if self.closed:
                return False
            try:
                await self.ws.send_text(text)
            except SEND_ERRORS:
                self.closed = True
                return False
            self.last_sent = perf_counter()
            return True

    async def close(self, code: int, reason: str) -> None:
        """Close the socket with ``code`` (once)."""
        async with self.send_lock:
            if self.closed:
                return
            self.closed = True
            with contextlib.suppress(*SEND_ERRORS):
                await self.ws.close(code=code, reason=reason[:120])

    async def drain(self, timeout: float) -> None:
        """Finish in-flight messages, then close with 1012 (server restart)."""
        self.draining = True
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=timeout)
        await self.close(1012, RESTART_REASON)

    async def _keep_alive(self) -> None:
        settings = self.service.settings
        interval, idle = settings.heartbeat_interval, settings.idle_timeout
        while not self.closed:
            now = perf_counter()
            idle_left = self.last_received + idle - now
            if idle_left <= 0:
                await self.close(1000, f"idle timeout: no message for {idle:g} s; send a "
                                 f"heartbeat at least every {interval:g} s")
                return
            beat_left = self.last_sent + interval - now
            if beat_left <= 0:
                await self.send("heartbeat", {"server_time": server_time()})
                continue
            await asyncio.sleep(min(idle_left, beat_left) + 0.001)
