"""Known-answer telemetry: synthetic players of the shipped personas fight a served boss.

    python -m experiments.telemetry --url http://127.0.0.1:8000 \\
        --players dodger=20,rusher=20,novice=20 [--fights 3] [--game duel] [--difficulty normal]

Each synthetic player is one session (``session_id`` ``<persona>-<i>``) of ``--fights`` fights
in the simulator (:mod:`experiments.calibration_sim`); every boss decision of the fight is asked
of the running server (``serving.client.BossClient``, one WebSocket per session) with the
player context the game observes, and every resolved move reports its outcome (resent until
acknowledged). Every session's request of a step goes out at once, so the server sees
as many concurrent players as there are sessions; a step's requests wait for the previous
step's outcomes to be acknowledged, so every move is decided with every earlier outcome
learnt, however fast the server learns.

The game is registered first (a fresh ``game_id``; ``--admin-key`` when the server asks for
one), unless ``--game-id`` and ``--api-key`` name one already registered. Then export what the
server stored (``python -m serving export-telemetry``) and calibrate it
(``python -m experiments.calibrate telemetry=...``): the answer is known.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import numpy as np

from envs.game import GameDefinition, load_game
from envs.observation import ATTACK_PATTERNS, MOVEMENT_STYLES, PLAYER_ACTIONS, ObservationLayout
from envs.persona import available_personas
from experiments.calibration_sim import Cohort, DecisionBatch, Outcomes, play_sessions
from serving.client import BossClient

T = TypeVar("T")


@dataclass(frozen=True)
class Registered:
    """A game the generator may play: its id and API key."""

    game_id: str
    api_key: str


@dataclass(frozen=True)
class GeneratedTelemetry:
    """What :func:`generate` sent."""

    game_id: str
    sessions: int
    decisions: int
    seconds: float
    personas: dict[str, int]


def parse_players(text: str) -> dict[str, int]:
    """``dodger=20,rusher=20`` as {persona: sessions}; ValueError naming the fix."""
    players: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, count = part.partition("=")
        if name not in available_personas():
            raise ValueError(f"--players: unknown persona {name!r}; shipped personas: "
                             f"{', '.join(available_personas())}.")
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"--players: {part!r} needs a session count >= 1, e.g. {name}=20.")
        players[name] = int(count)
    if not players:
        raise ValueError("--players is empty: give persona=sessions pairs, e.g. "
                         "dodger=20,rusher=20,novice=20.")
    return players


def register_game(url: str, game: GameDefinition, admin_key: str | None = None,
                  game_id: str | None = None) -> Registered:
    """Register a fresh game with ``game``'s vocabulary (POST /api/v1/games/register)."""
    name = game_id or f"telemetry-{game.name}-{uuid.uuid4().hex[:8]}"
    headers = {"X-Admin-Key": admin_key} if admin_key else {}
    answer = httpx.post(f"{url.rstrip('/')}/api/v1/games/register", headers=headers,
                        timeout=30.0, json={"game_id": name, "name": f"Telemetry {game.name}",
                                            "description": "synthetic players (known answer)",
                                            "vocabulary": dict(game.vocabulary)})
    if answer.status_code != 201:
        raise ValueError(f"registering {name!r} at {url} failed ({answer.status_code}): "
                         f"{answer.text[:300]}. With an admin key on the server pass "
                         f"--admin-key; to reuse a game pass --game-id and --api-key.")
    return Registered(name, str(answer.json()["api_key"]))


class RemotePolicy:
    """The served boss: one :class:`serving.client.BossClient` per session, all on one loop."""

    def __init__(self, url: str, game: GameDefinition, registered: Registered) -> None:
        self.url = url
        self.game = game
        self.layout = ObservationLayout.for_game(game)
        self.registered = registered
        self.loop = asyncio.new_event_loop()
        self.clients: dict[str, BossClient] = {}
        self.action_ids: list[str] = []
        self.decisions = 0
        self.pending: asyncio.Task[list[dict[str, Any]]] | None = None
        """The last step's outcomes, sent and acknowledged before the next step's moves are
        asked."""

    def choose(self, batch: DecisionBatch) -> np.ndarray:
        self._settle()
        requests = [request_data(batch, row, self.layout) for row in range(len(batch.session_ids))]
        answers = self._all([self._client(session).request_move(**request)
                             for session, request in zip(batch.session_ids, requests,
                                                         strict=True)])
        self.action_ids = [answer["action_id"] for answer in answers]
        self.decisions += len(answers)
        moves = [answer["boss_action"]["boss_action"] for answer in answers]
        return np.array([self.game.move_names.index(move) for move in moves], dtype=np.int64)

    def report(self, batch: DecisionBatch, moves: np.ndarray, outcomes: Outcomes) -> None:
        """Send the outcomes (each resent until acknowledged); their acknowledgements are
        awaited before the next step's requests (or at close)."""
        self._settle()
        self.pending = self.loop.create_task(_gathered([self._client(session).report_outcome(
            action_id, str(outcomes.outcome[i]), float(outcomes.effectiveness_score[i]),
            damage_dealt=float(outcomes.damage_dealt[i]), player_hit=bool(outcomes.player_hit[i]),
            execution_time=float(outcomes.execution_time[i]))
            for i, (session, action_id) in enumerate(zip(batch.session_ids, self.action_ids,
                                                         strict=True))]))

    def _settle(self) -> None:
        """Wait until the outstanding outcomes are acknowledged (raises if one never is)."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            self.loop.run_until_complete(pending)

    def _all(self, calls: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
        """Run the calls concurrently on this policy's loop; their results in order."""
        return self.loop.run_until_complete(_gathered(calls))

    def _client(self, session_id: str) -> BossClient:
        client = self.clients.get(session_id)
        if client is None:
            client = self.clients[session_id] = BossClient(
                self.url, self.registered.game_id, api_key=self.registered.api_key,
                session_id=session_id, try_timeout=10.0)
        return client

    def close(self) -> None:
        try:
            self._settle()
        finally:
            self._all([client.close() for client in self.clients.values()])
        self.loop.close()


async def _gathered(calls: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    return list(await asyncio.gather(*calls))


def request_data(batch: DecisionBatch, row: int, layout: ObservationLayout) -> dict[str, Any]:
    """The ``boss_action_request`` of one session of the batch (BossClient.request_move's
    keyword arguments)."""
    c = batch.columns
    difficulty = layout.difficulty_levels[int(c.difficulty[row])]
    context = {
        "frequent_actions": _names(PLAYER_ACTIONS, c.frequent_actions[row]),
        "dodge_frequency": _unit(c.dodge_frequency[row]),
        "attack_patterns": _names(ATTACK_PATTERNS, c.attack_patterns[row]),
        "movement_style": MOVEMENT_STYLES[int(c.movement_style[row])],
        "reaction_time": float(c.reaction_time[row]),
        "health_percentage": _unit(c.health_percentage[row]),
        "difficulty_preference": difficulty,
        "session_duration": float(c.session_duration[row]),
        "recent_deaths": int(c.recent_deaths[row]),
        "equipment_level": round(float(c.equipment_level[row])),
    }
    return {"player_context": context,
            "boss_health_percentage": _unit(c.boss_health[row]),
            "battle_phase": layout.phases[int(c.battle_phase[row])],
            "environment_factors": {"environment": layout.environments[int(c.environment[row])],
                                    "distance": float(c.distance[row])},
            "difficulty": difficulty}


def _names(vocabulary: Sequence[str], flags: Any) -> list[str]:
    return [name for name, flag in zip(vocabulary, np.asarray(flags), strict=True) if flag >= 0.5]


def _unit(value: Any) -> float:
    return min(max(float(value), 0.0), 1.0)


def generate(url: str, players: Mapping[str, int], *, fights: int = 3, game: Any = "duel",
             difficulty: str | None = "normal", registered: Registered | None = None,
             admin_key: str | None = None, seed: int = 0) -> GeneratedTelemetry:
    """Play ``players`` (persona -> sessions) through the server at ``url``; see the module
    docstring."""
    definition = load_game(game)
    registered = registered or register_game(url, definition, admin_key)
    cohorts = [Cohort.of(name, count, prefix=name) for name, count in players.items()]
    policy = RemotePolicy(url, definition, registered)
    started = time.perf_counter()
    try:
        table = play_sessions(cohorts, policy, definition, fights=fights, difficulty=difficulty,
                              seed=seed)
    finally:
        policy.close()
    return GeneratedTelemetry(registered.game_id, int(table["session_id"].nunique()),
                              len(table), time.perf_counter() - started, dict(players))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.telemetry",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--players", required=True,
                        help="persona=sessions pairs, e.g. dodger=20,rusher=20,novice=20")
    parser.add_argument("--fights", type=int, default=3, help="fights per session (3)")
    parser.add_argument("--game", default="duel", help="the game the server's bundle plays")
    parser.add_argument("--difficulty", default="normal",
                        help="the level every fight is played at ('random': drawn per fight)")
    parser.add_argument("--game-id", default=None, help="a game already registered (with "
                        "--api-key); default: register a fresh one")
    parser.add_argument("--api-key", default=None, help="the API key of --game-id")
    parser.add_argument("--admin-key", default=None, help="X-Admin-Key, when registration "
                        "needs it")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        players = parse_players(args.players)
        if (args.game_id is None) != (args.api_key is None):
            raise ValueError("--game-id and --api-key go together (or leave both out to "
                             "register a fresh game).")
        registered = Registered(args.game_id, args.api_key) if args.game_id else None
        result = generate(args.url, players, fights=args.fights, game=args.game,
                          difficulty=None if args.difficulty == "random" else args.difficulty,
                          registered=registered, admin_key=args.admin_key, seed=args.seed)
    except ValueError as error:
        print(f"experiments.telemetry: {error}", file=sys.stderr)
        return 2
    print(f"game {result.game_id}: {result.sessions} sessions ({result.personas}), "
          f"{result.decisions} decisions with outcomes in {result.seconds:.1f} s. Export:\n"
          f"  python -m serving export-telemetry --database-url <the server's URL> "
          f"--out telemetry.parquet --game {result.game_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
