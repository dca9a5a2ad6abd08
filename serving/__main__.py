"""``python -m serving --bundle PATH [--bundle PATH2] [flags]``: run the server.

``python -m serving export-telemetry --database-url URL --out FILE.parquet|FILE.csv
[--game GAME_ID]``: export the stored decisions and outcomes (:mod:`serving.telemetry`).

Every flag is also a ``BOSSLAB_*`` environment variable (``python -m serving --help``).
Logs are JSON lines on stderr (``--no-log-json`` for plain text) through the token-redacting
filter, uvicorn's access and error logs included.

Shutdown (SIGTERM or Ctrl-C): the listening socket closes, every WebSocket stops taking new
messages, in-flight outcomes are committed and answered, then each socket is closed with 1012
(service restart: clients reconnect and resend what was not acknowledged); then uvicorn stops
and the decision and outcome writers are flushed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Sequence

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.auth import configure_logging
from serving.collector import PacedCollector, freeze_startup_objects
from serving.main import create_app
from serving.metrics import Metrics
from serving.settings import Settings, settings_from_cli

log = logging.getLogger("serving")
GRACEFUL_SECONDS = 20.0
SWITCH_INTERVAL = 0.0005
"""Seconds a thread may hold the GIL while another waits (Python's default: 5 ms). The group
commit threads wait for the GIL after every database call; with the event loop busy, the
default adds up to 5 ms per call to every commit."""


WEBSOCKET_PROTOCOL = "websockets-sansio"
"""uvicorn's WebSocket implementation on the ``websockets`` library's sans-I/O protocol (its
default, "websockets", runs on that library's deprecated legacy API, with a task and a queue
per connection). In the load benchmark its event loop took about 5% less CPU per decision
(0.72-0.79 against 0.76-0.85 ms, three interleaved pairs of runs)."""


class UpgradedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools HTTP protocol (its default with ``uvicorn[standard]``), which lets
    its parser go once the connection is upgraded to a WebSocket. The parser holds the
    protocol's bound callbacks, a reference cycle that uvicorn breaks only in
    ``connection_lost``, which an upgraded connection's HTTP protocol never hears: every
    WebSocket left 18 objects for the garbage collector (the load benchmark's 1,000 sessions
    made its first seconds' middle-generation collections find about 1,000 of them each, 13-24
    ms apiece on a slow host). Let go, the protocol is freed as soon as the upgrade is done."""

    def handle_websocket_upgrade(self) -> None:
        super().handle_websocket_upgrade()
        self.parser = None  # type: ignore[assignment]  # as uvicorn's own connection_lost does


class DrainingServer(uvicorn.Server):
    """uvicorn, but sockets are drained by the app before uvicorn closes them (see above), and
    once the app has started, what it loaded is frozen and the garbage collector paced
    (:mod:`serving.collector`)."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app
        metrics: Metrics = app.state.metrics
        self.collector = PacedCollector(on_pause=metrics.observe_gc_pause)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        freeze_startup_objects()
        self.collector.start(asyncio.get_running_loop())

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # stop accepting connections first
        service = getattr(self.app.state, "service", None)
        if service is not None:
            await service.drain(timeout=GRACEFUL_SECONDS / 2)
        await super().shutdown(sockets)
        self.collector.stop()


def uvicorn_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    """uvicorn's settings for the app: frame size limit, keep-alive pings, our logging."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=UpgradedHttpProtocol,
        ws=WEBSOCKET_PROTOCOL,
        ws_max_size=settings.max_message_bytes,
        ws_ping_interval=settings.heartbeat_interval,
        ws_ping_timeout=settings.idle_timeout,
        ws_per_message_deflate=False,  # messages are small: compression costs more than it saves
        log_config=None,
        log_level=settings.log_level.lower(),
        access_log=True,
        timeout_graceful_shutdown=int(GRACEFUL_SECONDS),
        server_header=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["export-telemetry"]:
        from serving.telemetry import main as export_main  # noqa: PLC0415 (only this command)

        return export_main(arguments[1:])
    return serve(argv)


def serve(argv: Sequence[str] | None = None) -> int:
    """Run the server with the flags in ``argv`` (default: the command line)."""
    settings = settings_from_cli(argv)
    sys.setswitchinterval(SWITCH_INTERVAL)
    configure_logging(settings.log_level, settings.log_json)
    app = create_app(settings)
    server = DrainingServer(uvicorn_config(app, settings), app)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
