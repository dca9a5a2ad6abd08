"""Games: registration and access tokens."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException

from serving.auth import AuthError
from serving.deps import AdminDep, ServiceDep
from serving.protocol import Registered, RegisterRequest, TokenOut
from serving.service import NotServable
from serving.storage import GameExists

router = APIRouter(prefix="/api/v1/games", tags=["games"])


@router.post("/register", status_code=201, response_model=Registered,
             responses={409: {"description": "the game_id is taken"},
                        422: {"description": "no loaded bundle serves the vocabulary"}})
async def register(body: RegisterRequest, service: ServiceDep, _admin: AdminDep) -> Any:
    """Register a game. The ``api_key`` is shown once (only its hash is stored)."""
    try:
        return await service.register(body)
    except NotServable as error:
        raise HTTPException(422, str(error)) from None
    except GameExists as error:
        raise HTTPException(409, str(error)) from None


@router.post("/{game_id}/token", response_model=TokenOut,
             responses={401: {"description": "unknown game or wrong X-API-Key"}})
async def token(game_id: str, service: ServiceDep,
                x_api_key: Annotated[str | None, Header()] = None) -> Any:
    """A fresh access token for the holder of the game's API key (``X-API-Key``)."""
    try:
        return await service.new_token(game_id, x_api_key)
    except AuthError as error:
        raise HTTPException(401, str(error)) from None
