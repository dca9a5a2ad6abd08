"""Lean WebSocket sessions for the load benchmark (``experiments/benchmark_serving.py``).

The benchmark's client processes share the server's cores, so every millisecond of CPU they
burn is taken from the server under test. :class:`LeanSession` speaks ../shared/PROTOCOL.md as
a real, standards-conforming WebSocket client over TCP, at a fraction of the CPU of
``serving.client.BossClient``:

- one ``asyncio.Protocol`` per connection, driven by the event loop's callbacks: no asyncio
  Streams, no task per connection; received bytes are parsed in ``data_received`` and an
  answer resolves the future of the request carrying its ``request_id``;
- the ``websockets`` library's sans-I/O ``ClientProtocol`` does the WebSocket: the opening
  handshake (the token in an ``Authorization: Bearer`` header), framing, masking, answering
  pings (it queues the pongs, written out with everything else it has to send), and the
  closing handshake; fragmented messages are reassembled;
- the first message must be ``status``; then :meth:`LeanSession.request_move` and
  :meth:`LeanSession.report_outcome` send the same messages as ``BossClient``, one try each,
  each with a unique ``request_id`` (a random prefix per session and a counter). An ``error``
  answer raises :class:`AnswerError`, a closed connection :class:`SessionClosedError`, no answer
  within ``try_timeout`` ``TimeoutError``: a load generator counts failures, it does not
  retry, reconnect or refresh tokens;
- messages are encoded and parsed with orjson (as the server does);
- a ``heartbeat`` only after ``heartbeat_interval`` seconds without sending anything (the
  server closes a socket that is silent for its ``idle_timeout``): one timer per session, and
  no extra message while the session is busy.

No permessage-deflate: the server does not offer it (its messages are small).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import quote, urlsplit

import orjson
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN
from websockets.uri import parse_uri

MAX_MESSAGE_BYTES = 2**20
CLOSE_TIMEOUT = 5.0
"""Seconds to wait for the server to end the TCP connection after the closing handshake."""
DATA_FRAMES = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)


class AnswerError(Exception):
    """The server answered a request with an ``error`` (``code``, ``message``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class SessionClosedError(Exception):
    """The connection closed (or never opened) before the answer came."""


def socket_url(base_url: str, game_id: str, session_id: str | None = None) -> str:
    """The WebSocket URL of a game on the server at ``base_url`` (http, https, ws or wss)."""
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme in ("https", "wss") else "ws"
    query = f"?session_id={quote(session_id)}" if session_id else ""
    return f"{scheme}://{parts.netloc}/api/v1/ws/{quote(game_id)}{query}"


def _time_out(waiter: asyncio.Future[Any], timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(f"no answer within {timeout} s"))


class LeanSession(asyncio.Protocol):
    """One game session over one WebSocket (see the module docstring)."""

    transport: asyncio.Transport

    def __init__(self, url: str, token: str, *, try_timeout: float = 5.0,
                 heartbeat_interval: float = 10.0) -> None:
        self.uri = parse_uri(url)
        self.token = token
        self.try_timeout = try_timeout
        self.heartbeat_interval = heartbeat_interval
        self.websocket = ClientProtocol(self.uri, max_size=MAX_MESSAGE_BYTES)
        self.loop = asyncio.get_running_loop()
        self.status: dict[str, Any] = {}
        self.close_code: int | None = None
        self._opened: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self._lost: asyncio.Future[None] = self.loop.create_future()
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._request_id_prefix = os.urandom(8).hex()
        self._request_numbers = itertools.count()
        self._fragments: list[bytes] = []
        self._last_sent = self.loop.time()
        self._keep_alive: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None

    @classmethod
    async def open(cls, base_url: str, game_id: str, token: str, *,
                   session_id: str | None = None, try_timeout: float = 5.0,
                   heartbeat_interval: float = 10.0) -> LeanSession:
        """A session whose handshake is done and whose ``status`` has arrived."""
        session = cls(socket_url(base_url, game_id, session_id), token,
                      try_timeout=try_timeout, heartbeat_interval=heartbeat_interval)
        await session.connect()
        return session

    @property
    def is_open(self) -> bool:
        """Connected (``status`` received) and not closed by either side since."""
        return bool(self.status) and self.websocket.state is OPEN

    # --- opening and closing -----------------------------------------------------------------

    async def connect(self) -> dict[str, Any]:
        """Open the TCP connection, do the handshake, wait for ``status``: its data."""
        try:
            self.status = await asyncio.wait_for(self._connect(), self.try_timeout * 2)
        except BaseException:
            if hasattr(self, "transport"):
                self.transport.abort()
            raise
        self._keep_alive = self.loop.call_later(self.heartbeat_interval, self._beat)
        return self.status

    async def _connect(self) -> dict[str, Any]:
        await self.loop.create_connection(lambda: self, self.uri.host, self.uri.port,
                                          ssl=True if self.uri.secure else None)
        return await self._opened

    async def close(self) -> None:
        """The closing handshake (code 1000); returns once the TCP connection is closed."""
        if not hasattr(self, "transport") or self._lost.done():
            return
        if self.websocket.state is OPEN:
            self.websocket.send_close(1000)
            self._flush()
        self._close_soon()
        await self._lost

    def _close_soon(self) -> None:
        """End the TCP connection ourselves unless the server does within CLOSE_TIMEOUT."""
        if self._close_timer is None:
            self._close_timer = self.loop.call_later(CLOSE_TIMEOUT, self.transport.abort)

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        request = self.websocket.connect()
        request.headers["Authorization"] = f"Bearer {self.token}"
        self.websocket.send_request(request)
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.websocket.receive_data(data)
        self._flush()  # pongs, the echo of a close frame
        if self.websocket.close_expected():
            self._close_soon()
        for event in self.websocket.events_received():
            if isinstance(event, Frame):
                self._frame_received(event)
            else:
                self._handshake_answered()

    def eof_received(self) -> None:
        self.websocket.receive_eof()
        self._flush()  # returning None lets the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.websocket.receive_eof()  # idempotent; the state becomes CLOSED
        self.close_code = self.websocket.close_code
        for timer in (self._keep_alive, self._close_timer):
            if timer is not None:
                timer.cancel()
        closed = SessionClosedError(f"connection closed with {self.close_code}")
        if not self._opened.done():
            self._opened.set_exception(self.websocket.handshake_exc or closed)
        self._fail_pending(closed)
        self._lost.set_result(None)

    # --- receiving ---------------------------------------------------------------------------

    def _handshake_answered(self) -> None:
        refused = self.websocket.handshake_exc
        if refused is not None and not self._opened.done():
            self._opened.set_exception(refused)

    def _frame_received(self, frame: Frame) -> None:
        if frame.opcode in DATA_FRAMES:
            message = self._reassembled(frame)
            if message is not None:
                self._message_received(orjson.loads(message))
        elif frame.opcode is Opcode.CLOSE:
            self.close_code = self.websocket.close_code
            self._fail_pending(SessionClosedError(f"the server closed with {self.close_code}"))

    def _reassembled(self, frame: Frame) -> bytes | None:
        """The whole message once its last frame is in, else None."""
        data = cast(bytes, frame.data)  # what the library's frame parser makes
        if frame.fin and not self._fragments:
            return data
        self._fragments.append(data)
        if not frame.fin:
            return None
        message = b"".join(self._fragments)
        self._fragments.clear()
        return message

    def _message_received(self, message: dict[str, Any]) -> None:
        if not self._opened.done():
            if message.get("type") == "status":
                self._opened.set_result(message["data"])
            else:
                self._opened.set_exception(SessionClosedError(f"expected status, got {message}"))
            return
        waiter = self._pending.pop(message.get("request_id") or "", None)
        if waiter is not None and not waiter.done():
            waiter.set_result(message)

    def _fail_pending(self, error: Exception) -> None:
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(error)
        self._pending.clear()

    # --- sending -----------------------------------------------------------------------------

    def _send(self, message: Mapping[str, Any]) -> None:
        self.websocket.send_text(orjson.dumps(message))
        self._last_sent = self.loop.time()
        self._flush()

    def _flush(self) -> None:
        """Write out what the protocol has to send; an empty chunk means half-close."""
        for data in self.websocket.data_to_send():
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():
                self.transport.write_eof()
            else:
                self.transport.close()

    def _beat(self) -> None:
        if self.websocket.state is not OPEN:
            return
        quiet = self.loop.time() - self._last_sent
        if quiet >= self.heartbeat_interval:
            self._send({"type": "heartbeat", "data": {}})
            quiet = 0.0
        self._keep_alive = self.loop.call_later(self.heartbeat_interval - quiet, self._beat)

    async def _ask(self, kind: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """Send one message; the ``data`` of the answer carrying its request_id."""
        if self.websocket.state is not OPEN:
            raise SessionClosedError(f"connection closed with {self.close_code}")
        request_id = f"{self._request_id_prefix}-{next(self._request_numbers)}"
        waiter: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self._pending[request_id] = waiter
        self._send({"type": kind, "request_id": request_id, "data": data})
        deadline = self.loop.call_later(self.try_timeout, _time_out, waiter, self.try_timeout)
        try:
            answer = await waiter
        finally:
            deadline.cancel()
            self._pending.pop(request_id, None)
        if answer["type"] == "error":
            raise AnswerError(answer["data"]["code"], answer["data"]["message"])
        return cast(dict[str, Any], answer["data"])

    async def request_move(self, player_context: Mapping[str, Any], *,
                           boss_health_percentage: float = 1.0,
                           battle_phase: str = "early_battle") -> dict[str, Any]:
        """A boss move for the player: the ``boss_action_response`` data."""
        return await self._ask("boss_action_request", {
            "player_context": player_context, "boss_health_percentage": boss_health_percentage,
            "battle_phase": battle_phase})

    async def report_outcome(self, action_id: str, outcome: str, effectiveness_score: float, *,
                             damage_dealt: float = 0.0, player_hit: bool = False,
                             execution_time: float = 0.0) -> dict[str, Any]:
        """Report how a move went, once: the ``learning_update`` data."""
        return await self._ask("action_outcome", {
            "action_id": action_id, "outcome": outcome,
            "effectiveness_score": effectiveness_score, "damage_dealt": damage_dealt,
            "player_hit": player_hit, "execution_time": execution_time})
