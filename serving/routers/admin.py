"""Administration: the policy bundles the server serves, and their hot reload.

- ``GET /api/v1/admin/bundles``: the loaded bundles (name, policy_version, where each was
  loaded from, the boss_actions it serves, the games it serves).
- ``POST /api/v1/admin/bundles`` with ``{"path": "<bundle dir or .tar.gz on the server's
  disk>"}``: load it and serve it without dropping a connection (:mod:`serving.reload`):
  the games whose boss_actions it serves get a fresh brain (the bundle's memory plus their
  stored lessons), keep their sessions and sockets, and every open socket of theirs is sent a
  ``status`` with the new policy_version. Answers what changed (:class:`ReloadAnswer`).

Both need the ``X-Admin-Key`` header when the server has an admin key (403 without it); with
none they are open, as registration is (local development), and each reload says so in the
log. Errors: 422 for a bundle that does not load (the loader's message; nothing changed), 503
while the server shuts down or when storage cannot replay the games' lessons.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from serving.deps import AdminDep, ServiceDep, SettingsDep
from serving.reload import BundleRefused, ReloadReport, reload_bundle
from serving.service import Service
from serving.settings import ENV_PREFIX

log = logging.getLogger("serving.admin")
router = APIRouter(prefix="/api/v1/admin", tags=["admin"])


class ReloadRequest(BaseModel):
    """``POST /api/v1/admin/bundles``: which bundle to serve."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(min_length=1, max_length=4096)
    """A bundle directory or its .tar.gz archive, on the server's disk."""


class ReloadAnswer(BaseModel):
    """What a reload changed."""

    model_config = ConfigDict(frozen=True)

    policy_version: str
    name: str
    path: str
    games: list[str]
    """Games now served by the new bundle."""
    skipped: dict[str, str]
    """Games it serves but which keep their brain -> why."""
    replaced: list[str]
    """policy_versions of the bundles it replaced."""
    notified_sockets: int
    """Open sockets sent a ``status`` with the new policy_version."""
    memory_size: dict[str, int]
    """Each swapped game's memory entries (the bundle's snapshot plus its stored lessons)."""


class LoadedBundle(BaseModel):
    """One bundle the server serves."""

    model_config = ConfigDict(frozen=True)

    name: str
    policy_version: str
    path: str
    """Where it was loaded from, on the server's disk."""
    boss_actions: list[str]
    games: list[str]
    """Registered games it serves now."""


@router.get("/bundles", response_model=list[LoadedBundle],
            responses={403: {"description": "the X-Admin-Key is missing or wrong"}})
async def loaded_bundles(service: ServiceDep, _admin: AdminDep) -> Any:
    """The bundles the server serves, first the one ``/api/v1/health`` reports."""
    return [describe(service, index) for index in range(len(service.bundles))]


def describe(service: Service, index: int) -> LoadedBundle:
    bundle = service.bundles[index]
    games = [game_id for game_id, game in service.games.items() if game.bundle is bundle]
    return LoadedBundle(name=bundle.manifest.name, policy_version=bundle.manifest.policy_version,
                        path=str(bundle.path),
                        boss_actions=list(bundle.manifest.vocabulary["boss_actions"]),
                        games=games)


@router.post("/bundles", response_model=ReloadAnswer,
             responses={403: {"description": "the X-Admin-Key is missing or wrong"},
                        422: {"description": "the bundle does not load; nothing changed"},
                        503: {"description": "shutting down, or storage unavailable"}})
async def reload(body: ReloadRequest, service: ServiceDep, settings: SettingsDep,
                 _admin: AdminDep) -> Any:
    """Serve the bundle at ``path`` without dropping a connection (module docstring)."""
    if settings.admin_key is None:
        log.warning("bundle reload is OPEN: anyone can change the served policy. Set "
                    "%sADMIN_KEY (or --admin-key) to require an X-Admin-Key header", ENV_PREFIX)
    if service.draining:
        raise HTTPException(503, "the server is shutting down: load the bundle after it "
                            "restarts (--bundle PATH)")
    try:
        report = await reload_bundle(service, body.path)
    except BundleRefused as error:
        raise HTTPException(422, str(error)) from None
    return answer(report)


def answer(report: ReloadReport) -> ReloadAnswer:
    return ReloadAnswer(policy_version=report.policy_version, name=report.name,
                        path=report.path, games=list(report.games), skipped=dict(report.skipped),
                        replaced=list(report.replaced), notified_sockets=report.notified,
                        memory_size=dict(report.memory_sizes))
