"""Synthetic player sessions against a served boss, batched: what telemetry would record.

The one simulation the telemetry generator (:mod:`experiments.telemetry`, through a real
server) and the calibrator (:mod:`experiments.calibrate`, locally, thousands of candidate
players) share, so that simulated and real telemetry are made the same way:

- A :class:`Cohort` is ``sessions`` players drawn from a :class:`envs.persona.PlayerPool`, each
  one session (``session_id``) of ``fights`` fights in a row (what the game observes of the
  player carries over within the session, as in :class:`envs.boss_fight.BossFightVectorEnv`).
- Every step, each active session asks a :class:`ServedPolicy` for the boss's move with what
  a game observes (the player context, boss HP, phase, arena, distance, difficulty) and what
  the server knows of its own state (its habits against the player; no cooldowns, full
  stamina, as :mod:`serving.sessions` says), the simulator plays it (a move illegal in the
  simulator, on cooldown or too expensive, is replaced by the phase's free move, as the
  kernel does), and the outcome is reported (:func:`outcomes`).
- :class:`LocalServedPolicy` decides as the server's brain would, batched (no memory);
  ``experiments.telemetry.RemotePolicy`` asks a real server.

The records come back as a *decision table* (:data:`DECISION_COLUMNS`): one row per decision,
the lists of the player context as 0/1 columns ``fa:<action>`` and ``ap:<pattern>``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import pandas as pd

from envs.backend import BatchOps
from envs.boss_fight import BossFightVectorEnv
from envs.bosses import BossPolicy
from envs.game import GameDefinition
from envs.kernel import StepResult
from envs.observation import (
    ATTACK_PATTERNS,
    MOVEMENT_STYLES,
    PLAYER_ACTIONS,
    ContextColumns,
    ObservationLayout,
)
from envs.persona import PlayerPool, load_players

ACTION_COLUMNS = tuple(f"fa:{name}" for name in PLAYER_ACTIONS)
PATTERN_COLUMNS = tuple(f"ap:{name}" for name in ATTACK_PATTERNS)
NUMERIC_CONTEXT = ("dodge_frequency", "reaction_time", "health_percentage", "session_duration",
                   "recent_deaths", "equipment_level", "boss_health_percentage", "distance")
OUTCOME_COLUMNS = ("outcome", "effectiveness_score", "damage_dealt", "player_hit",
                   "execution_time")
DECISION_COLUMNS = ("session_id", "persona", "boss_move", *NUMERIC_CONTEXT, "movement_style",
                    "battle_phase", "difficulty", "environment", *ACTION_COLUMNS,
                    *PATTERN_COLUMNS, *OUTCOME_COLUMNS)
"""The decision table's columns (``persona`` is empty for real players)."""
EFFECTIVENESS_GAIN = 2.5
"""effectiveness = clip(0.5 + 2.5 * (damage taken share - damage dealt share), 0, 1)."""
SUCCESS, FAILURE = 0.6, 0.4
"""Effectiveness at or above SUCCESS is a ``success``, at or below FAILURE a ``failure``."""
MAX_STEPS = 100_000
"""A safety net: no session plays this many decisions."""


@dataclass(frozen=True)
class Cohort:
    """``sessions`` players drawn from ``pool``, each a session named ``<prefix>-<i>``."""

    pool: PlayerPool
    sessions: int
    prefix: str

    @classmethod
    def of(cls, player: Any, sessions: int, prefix: str | None = None) -> Cohort:
        """Players of a persona or population (a name in configs/player/, path or mapping)."""
        pool = load_players(player)
        return cls(pool, sessions, prefix or "-".join(pool.names))


class DecisionBatch(NamedTuple):
    """What the server is asked for the active sessions of one step (one row each)."""

    session_ids: list[str]
    columns: ContextColumns
    """The player context and fight as the game observes it (arrays, one row per session)."""
    observations: np.ndarray
    """The server's view encoded (cooldowns 0, stamina full): (rows, observation size)."""
    allowed: np.ndarray
    """(rows, moves) bool: the moves the server may play (allowed in the phase)."""


class Outcomes(NamedTuple):
    """How each move of a step went for the boss (``action_outcome`` fields, arrays)."""

    outcome: np.ndarray
    effectiveness_score: np.ndarray
    damage_dealt: np.ndarray
    player_hit: np.ndarray
    execution_time: np.ndarray


class ServedPolicy(Protocol):
    """Decides boss moves as a server would, and hears how they went."""

    def choose(self, batch: DecisionBatch) -> np.ndarray:
        """(rows,) move indices in the game's order, one per session of the batch."""
        ...

    def report(self, batch: DecisionBatch, moves: np.ndarray, outcomes: Outcomes) -> None:
        """The outcome of each move just chosen for the batch."""
        ...


class LocalServedPolicy:
    """A batched boss deciding on what a server sees, with the scripted brains' exploration.

    ``exploration``: the share of the preference a served scripted boss spreads over the legal
    moves (``serving.brain.SCRIPTED_EXPLORATION``); 0 for a network policy, which samples.
    """

    def __init__(self, boss: BossPolicy, exploration: float = 0.0, seed: int = 0) -> None:
        self.boss = boss
        self.exploration = exploration
        self.rng = np.random.default_rng(seed)

    def choose(self, batch: DecisionBatch) -> np.ndarray:
        moves = np.asarray(self.boss.select_moves(batch.observations, batch.allowed.copy()))
        if self.exploration <= 0.0:
            return moves.astype(np.int64)
        uniform = np.where(batch.allowed, self.rng.random(batch.allowed.shape), -1.0).argmax(1)
        explore = self.rng.random(len(moves)) < self.exploration
        return np.where(explore, uniform, moves).astype(np.int64)

    def report(self, batch: DecisionBatch, moves: np.ndarray, outcomes: Outcomes) -> None:
        """A local boss keeps no memory."""


class SessionEnv(BossFightVectorEnv):
    """The vector env, with each step's exchange (what happened, for the outcomes) public."""

    def use_pool(self, pool: PlayerPool) -> None:
        """Draw players from ``pool`` (personas given as parameter rows) from the next reset."""
        self.setup = dataclasses.replace(self.setup, pool=pool)
        self.persona_names = pool.names

    @property
    def exchange(self) -> StepResult:
        """What the last step resolved, per env (hits, damage, durations)."""
        assert self.last_step is not None, "step() first"
        return self.last_step


@dataclass
class _Running:
    """One cohort's env and the bookkeeping of its sessions."""

    env: SessionEnv
    cohort: Cohort
    fights_done: np.ndarray
    persona: np.ndarray

    @property
    def active(self) -> np.ndarray:
        return self.fights_done < self.env.setup.config.fights_per_player


def play_sessions(cohorts: Sequence[Cohort], policy: ServedPolicy, game: GameDefinition, *,
                  fights: int, difficulty: str | None = None, environment: str | None = None,
                  seed: int = 0) -> pd.DataFrame:
    """Every cohort's sessions play ``fights`` fights each against ``policy``, all side by
    side (one policy call per step for every active session); returns the decision table."""
    if fights < 1:
        raise ValueError(f"fights must be >= 1 per session, got {fights}.")
    running = [_start(cohort, game, fights, difficulty, environment, seed + i)
               for i, cohort in enumerate(cohorts) if cohort.sessions > 0]
    layout = ObservationLayout.for_game(game)
    allowed = np.array([[m in phase.moves for m in game.move_names] for phase in game.phases])
    records: list[pd.DataFrame] = []
    for _ in range(MAX_STEPS):
        if not any(r.active.any() for r in running):
            break
        batch, rows = _batch(running, layout, allowed)
        moves = policy.choose(batch)
        outcomes = _step(running, rows, moves, game)
        policy.report(batch, moves, outcomes)
        records.append(_records(batch, moves, outcomes, game, layout))
    table = pd.concat(records, ignore_index=True) if records else _empty()
    return _with_personas(table, running)


def _start(cohort: Cohort, game: GameDefinition, fights: int, difficulty: str | None,
           environment: str | None, seed: int) -> _Running:
    env = SessionEnv(num_envs=cohort.sessions, game=game, player=_placeholder(cohort.pool),
                     difficulty=difficulty, environment=environment, fights_per_player=fights)
    env.use_pool(cohort.pool)
    env.reset(seed=seed)
    return _Running(env, cohort, np.zeros(cohort.sessions, dtype=int),
                    np.full(cohort.sessions, -1))


def _placeholder(pool: PlayerPool) -> Any:
    """A valid player for the env's constructor; its pool is replaced right after."""
    return {"name": pool.names[0]}


def _batch(running: Sequence[_Running], layout: ObservationLayout,
           allowed: np.ndarray) -> tuple[DecisionBatch, list[np.ndarray]]:
    """The active sessions of every cohort, concatenated into one batch."""
    rows = [np.flatnonzero(r.active) for r in running]
    parts = [_take(r.env.context_columns(), index) for r, index in zip(running, rows,
                                                                        strict=True)]
    columns = ContextColumns(*(np.concatenate([np.asarray(p[k]) for p in parts])
                               for k in range(len(ContextColumns._fields))))
    ids = [f"{r.cohort.prefix}-{i}" for r, index in zip(running, rows, strict=True)
           for i in index]
    served = columns._replace(cooldowns=np.zeros_like(columns.cooldowns),
                              boss_stamina=np.ones_like(columns.boss_stamina))
    observations = layout.encode(served, BatchOps(len(ids)))
    return DecisionBatch(ids, columns, observations, allowed[columns.battle_phase]), rows


def _take(columns: ContextColumns, index: np.ndarray) -> ContextColumns:
    return ContextColumns(*(np.asarray(value)[index] for value in columns))


def _step(running: Sequence[_Running], rows: Sequence[np.ndarray], moves: np.ndarray,
          game: GameDefinition) -> Outcomes:
    """Play the chosen moves (inactive sessions play the free move, unrecorded)."""
    parts, start = [], 0
    for r, index in zip(running, rows, strict=True):
        if len(index) == 0:
            continue
        chosen = np.zeros(r.env.num_envs, dtype=np.int64)
        chosen[index] = moves[start:start + len(index)]
        start += len(index)
        _, _, _, _, info = r.env.step(chosen)
        parts.append(outcomes(r.env.exchange, game, index))
        _count_fights(r, info)
    return Outcomes(*(np.concatenate([p[k] for p in parts]) for k in range(len(Outcomes._fields))))


def _count_fights(r: _Running, info: dict[str, Any]) -> None:
    if "final_info" not in info:
        return
    ended = np.flatnonzero(info["_final_info"])
    first = ended[r.persona[ended] < 0]
    r.persona[first] = np.asarray(info["final_info"]["persona"])[first]
    r.fights_done[ended] += 1


def outcomes(exchange: StepResult, game: GameDefinition, index: np.ndarray) -> Outcomes:
    """How the exchange went for the boss, for the envs in ``index``.

    ``player_hit``: the move connected (guarded or not); ``damage_dealt``: HP the player lost
    to it (counters included); ``effectiveness_score``: ``0.5 + 2.5 * (taken / player max HP -
    dealt / boss max HP)``, clipped to 0..1 (0.5 when nobody was hurt); ``outcome``: success
    from 0.6, failure up to 0.4, else partial; ``execution_time``: the move's seconds.
    """
    taken = np.asarray(exchange.taken, dtype=float)[index]
    dealt = np.asarray(exchange.dealt, dtype=float)[index]
    share = taken / game.player.max_hp - dealt / game.boss.max_hp
    effectiveness = np.clip(0.5 + EFFECTIVENESS_GAIN * share, 0.0, 1.0)
    outcome = np.where(effectiveness >= SUCCESS, "success",
                       np.where(effectiveness <= FAILURE, "failure", "partial"))
    return Outcomes(outcome, effectiveness, taken,
                    np.asarray(exchange.hit, dtype=bool)[index],
                    np.asarray(exchange.duration, dtype=float)[index])


def _records(batch: DecisionBatch, moves: np.ndarray, result: Outcomes, game: GameDefinition,
             layout: ObservationLayout) -> pd.DataFrame:
    c = batch.columns
    data: dict[str, Any] = {
        "session_id": batch.session_ids,
        "boss_move": np.asarray(game.move_names)[moves],
        "dodge_frequency": c.dodge_frequency, "reaction_time": c.reaction_time,
        "health_percentage": c.health_percentage, "session_duration": c.session_duration,
        "recent_deaths": c.recent_deaths, "equipment_level": c.equipment_level,
        "boss_health_percentage": c.boss_health, "distance": c.distance,
        "movement_style": np.asarray(MOVEMENT_STYLES)[c.movement_style],
        "battle_phase": np.asarray(layout.phases)[c.battle_phase],
        "difficulty": np.asarray(layout.difficulty_levels)[c.difficulty],
        "environment": np.asarray(layout.environments)[c.environment],
        **dict(zip(ACTION_COLUMNS, np.asarray(c.frequent_actions).T, strict=True)),
        **dict(zip(PATTERN_COLUMNS, np.asarray(c.attack_patterns).T, strict=True)),
        **result._asdict(),
    }
    return pd.DataFrame(data)


def _with_personas(table: pd.DataFrame, running: Sequence[_Running]) -> pd.DataFrame:
    names = {f"{r.cohort.prefix}-{i}": r.cohort.pool.names[p] if p >= 0 else ""
             for r in running for i, p in enumerate(r.persona)}
    table.insert(1, "persona", table["session_id"].map(names).fillna(""))
    return table[list(DECISION_COLUMNS)]


def _empty() -> pd.DataFrame:
    return pd.DataFrame({name: [] for name in DECISION_COLUMNS if name != "persona"})
