"""A game's moves over HTTP (for clients without sockets), its stats and its players' profiles.

All need the game's access token (``Authorization: Bearer JWT``). Errors: 401/403 for the
token, 404 for an unknown game, session or action_id, 422 for a bad request (the message names
the field), 503 when storage is down (nothing was stored: send again).
"""

from __future__ import annotations

import uuid
from time import perf_counter
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response

from serving.deps import GameDep, ServiceDep
from serving.protocol import ActionOutcome, BossActionRequest, BossActionResponse, LearningUpdate

router = APIRouter(prefix="/api/v1/games/{game_id}", tags=["actions"])
SessionQuery = Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
                                           description="the player's session (made if absent)")]


@router.post("/boss-action", response_model=BossActionResponse)
async def boss_action(game_id: GameDep, body: BossActionRequest, service: ServiceDep,
                      response: Response, session_id: SessionQuery = None) -> Any:
    """The ``boss_action_request`` of the WebSocket; answers its ``boss_action_response``
    data. The session is ``?session_id=`` (made when absent), returned as ``X-Session-Id``."""
    received = perf_counter()
    session = session_id or uuid.uuid4().hex
    data = await service.decide(game_id, session, body, received)
    response.headers["X-Session-Id"] = session
    return data


@router.post("/action-outcome", response_model=LearningUpdate)
async def action_outcome(game_id: GameDep, body: ActionOutcome, service: ServiceDep) -> Any:
    """The ``action_outcome`` of the WebSocket; answers its ``learning_update`` data once the
    outcome is stored (a resend gets ``duplicate: true``)."""
    return await service.record_outcome(game_id, body, perf_counter())


@router.get("/realtime-stats")
async def realtime_stats(game_id: GameDep, service: ServiceDep) -> dict[str, Any]:
    """Open sessions, moves served, outcomes stored, mean effectiveness, the move mix and the
    server-side latency (p50, p99 of the last 10,000 requests, frame to answer)."""
    return await service.stats(game_id)


@router.get("/sessions/{session_id}/profile")
async def session_profile(game_id: GameDep, session_id: str,
                          service: ServiceDep) -> dict[str, Any]:
    """A player's profile: context statistics, movement styles, the boss's habits and which
    moves worked against them (derived from stored outcomes)."""
    profile = service.profile(game_id, session_id)
    if profile is None:
        raise HTTPException(404, f"session {session_id!r} of game {game_id!r} is unknown: "
                            "use the session_id of a status message")
    return profile
