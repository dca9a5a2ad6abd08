"""Builds the server's FastAPI app: ``create_app(settings, bundles=None)``.

The lifespan loads the policy bundles (``settings.bundles`` unless ``bundles`` are given),
opens storage, creates the schema, gives every registered game a fresh brain and replays its
stored lessons into it (``Service.start``), registers the game ``demo`` in demo mode
(``serving.routers.demo``), and logs what it serves. At shutdown it drains the
sockets (in-flight outcomes are committed and answered, then every socket closes with 1012),
flushes both group-commit writers and closes storage.

``python -m serving`` drains *before* uvicorn closes anything (``serving.__main__``); under a
plain ``uvicorn --factory serving.main:app_from_env`` uvicorn closes the sockets with 1012
itself, and in-flight outcomes are still committed before the writers are flushed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from serving.affinity import event_loop_cpus, pin, worker_cpus
from serving.bundle import Bundle, load_bundle
from serving.metrics import Metrics
from serving.protocol import PROTOCOL_VERSION, ProtocolError
from serving.routers import actions, admin, demo, games, system, ws
from serving.service import Service, Unavailable, UnknownGame
from serving.settings import Settings
from serving.storage import Storage, StorageUnavailable, UnknownAction

log = logging.getLogger("serving")

DESCRIPTION = """Adaptive boss policies for games, over HTTP and WebSocket
(protocol v1: ../shared/PROTOCOL.md). Register a game, get a token, then connect to
`/api/v1/ws/{game_id}?token=JWT` or use the REST endpoints below."""


def create_app(settings: Settings, bundles: Sequence[Bundle] | None = None) -> FastAPI:
    """The server app; nothing is loaded or opened until its lifespan starts."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.cpus:  # before any thread or child process starts: they inherit it
            pin(event_loop_cpus(settings.cpus))
        service = await asyncio.to_thread(start_service, settings, bundles, metrics)
        app.state.service = service
        log_start(settings, service)
        try:
            await demo.register_demo_game(service, settings)
            yield
        finally:
            await service.close()
            log.info("stopped: every socket closed, decisions and outcomes flushed")

    app = FastAPI(title="BossLab serving", version=PROTOCOL_VERSION, description=DESCRIPTION,
                  lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    for module in (games, actions, ws, system, demo, admin):
        app.include_router(module.router)
    add_error_handlers(app)
    return app


def app_from_env() -> FastAPI:
    """The app configured by ``BOSSLAB_*`` variables (``uvicorn --factory``)."""
    return create_app(Settings())


def start_service(settings: Settings, bundles: Sequence[Bundle] | None,
                  metrics: Metrics) -> Service:
    """Load bundles, open storage, load games and replay their lessons (blocking)."""
    loaded = list(bundles) if bundles is not None else [load_bundle(p) for p in settings.bundles]
    if not loaded:
        raise ValueError("no policy bundle to serve: pass --bundle PATH (or BOSSLAB_BUNDLES); "
                         "export one with python -m experiments.export, or write a scripted one "
                         "with serving.bundle.write_scripted_bundle(PATH)")
    storage = Storage(settings.database_url)
    service = Service(settings, loaded, storage, metrics)
    try:
        service.start()
    except BaseException:
        service.decision_writer.close()
        service.outcome_writer.close()
        storage.close()
        if service.brain_host is not None:
            service.brain_host.close()
        raise
    return service


def log_start(settings: Settings, service: Service) -> None:
    for bundle in service.bundles:
        log.info("serving bundle %s (%s) for boss_actions %s", bundle.manifest.name,
                 bundle.manifest.policy_version,
                 ", ".join(bundle.manifest.vocabulary["boss_actions"]))
    log.info("storage %r: %d game(s) loaded, memory %d", service.storage, len(service.games),
             sum(g.brain.memory_size() for g in service.games.values()))
    if settings.cpus:
        log.info("pinned: event loop on CPU %s, brain and storage processes on CPU %s",
                 sorted(event_loop_cpus(settings.cpus)), sorted(worker_cpus(settings.cpus)))
    if settings.admin_key is None:
        log.warning("registration is OPEN: anyone can register games. Set BOSSLAB_ADMIN_KEY "
                    "(or --admin-key) to require an X-Admin-Key header")
    if settings.uses_default_secret:
        log.warning("tokens are signed with the development secret key: set "
                    "BOSSLAB_SECRET_KEY to a random value of 32+ characters outside development")


def add_error_handlers(app: FastAPI) -> None:
    """Service exceptions as HTTP answers: 404 unknown game/action, 422 a bad request the
    schema let through (a name the game does not know), 503 storage down or not served."""

    def answer(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
        async def handler(_request: Request, error: Exception) -> JSONResponse:
            return JSONResponse({"detail": _message(error)}, status_code=status)
        return handler

    app.add_exception_handler(UnknownGame, answer(404))
    app.add_exception_handler(UnknownAction, answer(404))
    app.add_exception_handler(ProtocolError, answer(422))
    app.add_exception_handler(StorageUnavailable, answer(503))
    app.add_exception_handler(Unavailable, answer(503))


def _message(error: Exception) -> str:
    if isinstance(error, ProtocolError):
        return error.message
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    return str(error)
