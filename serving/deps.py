"""What routes depend on, as ``Annotated[..., Depends(...)]`` aliases (the FastAPI full-stack
template's ``deps.py``): the service, the settings, the metrics, a game's token, the admin key.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from serving.auth import AuthError, check_admin_key, verify_token
from serving.metrics import Metrics
from serving.service import Service
from serving.settings import Settings


def get_service(connection: HTTPConnection) -> Service:
    """The app's :class:`Service` (made by the lifespan in ``serving.main``)."""
    return connection.app.state.service


def get_settings(connection: HTTPConnection) -> Settings:
    return connection.app.state.settings


def get_metrics(connection: HTTPConnection) -> Metrics:
    return connection.app.state.metrics


ServiceDep = Annotated[Service, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]

bearer = HTTPBearer(auto_error=False, description="The game's access_token (a JWT)")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def authorized_game(game_id: str, settings: SettingsDep, credentials: Credentials) -> str:
    """The path's game_id, once the bearer token proves it is that game's (401/403 if not)."""
    token = credentials.credentials if credentials is not None else None
    try:
        verify_token(token, game_id, settings)
    except AuthError as error:
        status = 403 if error.reason == "other_game" else 401
        raise HTTPException(status, str(error), headers={"WWW-Authenticate": "Bearer"}) from None
    return game_id


def require_admin(settings: SettingsDep,
                  x_admin_key: Annotated[str | None, Header()] = None) -> None:
    """Registration needs the admin key when the server has one (403 without it)."""
    try:
        check_admin_key(x_admin_key, settings)
    except AuthError as error:
        raise HTTPException(403, str(error)) from None


GameDep = Annotated[str, Depends(authorized_game)]
AdminDep = Annotated[None, Depends(require_admin)]
