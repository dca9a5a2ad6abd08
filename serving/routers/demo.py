"""The playable demo, in development mode only (``--demo`` / ``BOSSLAB_DEMO=true``).

- At start, :func:`register_demo_game` registers the game ``demo`` for the first loaded
  bundle's boss actions (through ``Service.register``, as ``POST /api/v1/games/register``
  does) unless it is registered already: its stored outcomes carry over from run to run.
- ``GET /demo``: one static page (``serving/static/demo.html``: HTML, CSS and JavaScript, no
  build step, nothing fetched from elsewhere) on which a person fights the served boss with
  the keyboard over the real WebSocket protocol (../shared/PROTOCOL.md).
- ``GET /demo/token``: what the page needs to connect: an access token for ``demo`` (to
  anyone who asks: that is why production mode refuses ``--demo``), the game's names and the
  game definition of the bundle serving it (boss and player hit points, moves, arena sizes).

Without demo mode both answer 404 with a message saying how to turn it on.
"""

from __future__ import annotations

import logging
from functools import cache
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict

from serving.auth import issue_token
from serving.deps import ServiceDep, SettingsDep
from serving.protocol import RegisterRequest, Vocabulary
from serving.service import Service
from serving.settings import ENV_PREFIX, Settings
from serving.storage import GameExists

log = logging.getLogger("serving.demo")
router = APIRouter(tags=["demo"])

DEMO_GAME_ID = "demo"
"""The game the demo page plays."""
PAGE = "demo.html"
"""The page, in ``serving/static/``."""


class DemoToken(BaseModel):
    """``GET /demo/token``: how the page connects to the demo game, and what it plays."""

    model_config = ConfigDict(frozen=True)

    game_id: str
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    policy_version: str
    vocabulary: dict[str, list[str]]
    """The game's boss_actions, action_types, environments and difficulty_levels."""
    battle_phases: list[str]
    """Phase names the game accepts (the bundle's, then early/mid/late_battle)."""
    game: dict[str, Any]
    """The game definition the serving bundle was made for (manifest.json's ``game``)."""


def require_demo_mode(settings: SettingsDep) -> None:
    """404 unless the server runs in demo mode, saying how to turn it on."""
    if not settings.demo:
        raise HTTPException(404, "the demo page is off: start the server in development mode "
                            f"with --demo (or {ENV_PREFIX}DEMO=true) to play the served boss "
                            "at /demo. Production mode refuses it.")


DemoMode = Annotated[None, Depends(require_demo_mode)]


@router.get("/demo", response_class=HTMLResponse, include_in_schema=False)
async def demo_page(_demo: DemoMode) -> HTMLResponse:
    """The playable page (keyboard controls are listed on it)."""
    return HTMLResponse(page_html(), headers={"Cache-Control": "no-store"})


@router.get("/demo/token", response_model=DemoToken,
            responses={404: {"description": "not in demo mode"},
                       503: {"description": "the demo game is not served"}})
async def demo_token(_demo: DemoMode, service: ServiceDep, settings: SettingsDep) -> DemoToken:
    """A fresh access token for the game ``demo``, its names and its game definition."""
    game = service.games.get(DEMO_GAME_ID)
    if game is None:
        why = service.unserved.get(DEMO_GAME_ID, "it could not be registered at start")
        raise HTTPException(503, f"the demo game is not served: {why}. See the server's log; "
                            "start it with a --bundle serving the stored demo game, or a "
                            "fresh --database-url")
    token, expires_in = issue_token(DEMO_GAME_ID, settings)
    return DemoToken(
        game_id=DEMO_GAME_ID, access_token=token, expires_in=expires_in,
        policy_version=game.brain.policy_version,
        vocabulary={name: list(values) for name, values in game.record.vocabulary.items()},
        battle_phases=list(game.terms.phases),
        game=dict(game.bundle.manifest.game),
    )


@cache
def page_html() -> str:
    """The page's text (read once)."""
    return resources.files("serving").joinpath("static").joinpath(PAGE).read_text(encoding="utf-8")


async def register_demo_game(service: Service, settings: Settings) -> None:
    """In demo mode, register ``demo`` for the first bundle's boss actions unless it exists."""
    if not settings.demo:
        return
    log.warning("DEMO MODE: /demo hands a token for the game %r to anyone; for development "
                "only", DEMO_GAME_ID)
    if DEMO_GAME_ID in service.games or DEMO_GAME_ID in service.unserved:
        log.info("demo game %r is registered already: play it at /demo", DEMO_GAME_ID)
        return
    boss_actions = list(service.bundles[0].manifest.vocabulary["boss_actions"])
    request = RegisterRequest(
        game_id=DEMO_GAME_ID, name="BossLab demo",
        description="The playable page /demo (development mode).",
        vocabulary=Vocabulary(boss_actions=boss_actions))
    try:
        await service.register(request)
    except GameExists as error:  # another server on the same database registered it first
        log.error("demo game not registered: %s; restart this server to serve it", error)
        return
    log.info("demo game %r registered for boss_actions %s: play it at /demo", DEMO_GAME_ID,
             ", ".join(boss_actions))
