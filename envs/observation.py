"""The observation contract: what a boss policy sees, shared by the simulator and the server.

A live game describes its player with the ``player_context`` of ../shared/PROTOCOL.md; the
simulator computes the same fields from what its synthetic player actually did. Both turn
them into numbers through :meth:`ObservationLayout.encode`, the one encoder, so a served
policy and the simulator it was trained in can never disagree about what an observation means.

Every feature lies in [0, 1]. The layout, in order (sizes depend on the game): single values,
then multi-valued blocks, then one-hot categories.

=====================  ======================  ==========================================
feature                size                    meaning (scale)
=====================  ======================  ==========================================
dodge_frequency        1                       share of boss attacks the player dodged
reaction_time          1                       seconds / 2
health_percentage      1                       player HP fraction
session_duration       1                       minutes / 60
recent_deaths          1                       player deaths in the last 5 fights / 5
equipment_level        1                       level / 10
boss_health            1                       boss HP fraction
distance               1                       metres / 20
boss_stamina           1                       stamina fraction
frequent_actions       len(PLAYER_ACTIONS)     multi-hot of the player's frequent actions
attack_patterns        len(ATTACK_PATTERNS)    multi-hot of the player's attack patterns
cooldowns              moves                   remaining cooldown / the move's cooldown
move_habits            moves                   how often the boss followed its last move with
                                               each move against this player: count / (all + 2)
movement_style         len(MOVEMENT_STYLES)    one-hot
difficulty             levels                  one-hot of the difficulty level
battle_phase           phases                  one-hot
environment            arenas                  one-hot
last_boss_action       moves + 1               one-hot; the first slot means "none yet"
=====================  ======================  ==========================================
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from envs.backend import Ops, ScalarOps
from envs.game import GameDefinition

PLAYER_ACTIONS = ("light_attack", "heavy_attack", "ranged_attack", "dodge", "block", "heal")
ATTACK_PATTERNS = ("combo", "hit_and_run", "ranged_poke", "counter_attack", "button_mash")
MOVEMENT_STYLES = ("aggressive", "defensive", "balanced", "evasive")
BATTLE_PHASES = ("early_battle", "mid_battle", "late_battle")


@dataclass(frozen=True)
class PlayerContext:
    """A player as a live game describes it (``player_context`` in ../shared/PROTOCOL.md)."""

    frequent_actions: tuple[str, ...] = ()
    dodge_frequency: float = 0.0
    attack_patterns: tuple[str, ...] = ()
    movement_style: str = "balanced"
    reaction_time: float = 0.5
    health_percentage: float = 1.0
    difficulty_preference: str = "normal"
    session_duration: float = 0.0
    recent_deaths: int = 0
    equipment_level: int = 0


@dataclass(frozen=True)
class BossState:
    """What the boss itself knows between decisions: stamina, cooldowns, its last move, and its
    habits against this player (``move_habits`` in the module docstring; the server counts
    them from the session's decisions)."""

    stamina: float = 1.0
    cooldowns: tuple[float, ...] = ()
    last_action: str | None = None
    habits: tuple[float, ...] = ()


@dataclass(frozen=True)
class Situation:
    """Everything one boss decision is made on: a protocol request plus the boss's own state."""

    player: PlayerContext
    boss_health_percentage: float = 1.0
    battle_phase: str = "early_battle"
    environment: str | None = None
    distance: float = 3.0
    difficulty: str | None = None
    boss: BossState = field(default_factory=BossState)


class ContextColumns(NamedTuple):
    """A situation in numbers: per-env scalars (or arrays of shape (n,) for a batch).

    The order is the observation's: single values first, then multi-valued blocks (lists or
    (n, k) arrays of values already in [0, 1]), then categorical indices (one-hot encoded).
    """

    dodge_frequency: Any
    reaction_time: Any
    health_percentage: Any
    session_duration: Any
    recent_deaths: Any
    equipment_level: Any
    boss_health: Any
    distance: Any
    boss_stamina: Any
    frequent_actions: Any
    attack_patterns: Any
    cooldowns: Any
    move_habits: Any
    movement_style: Any
    difficulty: Any
    battle_phase: Any
    environment: Any
    last_boss_action: Any


VALUE_SCALES = {"dodge_frequency": 1.0, "reaction_time": 0.5, "health_percentage": 1.0,
                "session_duration": 1 / 60, "recent_deaths": 0.2, "equipment_level": 0.1,
                "boss_health": 1.0, "distance": 0.05, "boss_stamina": 1.0}
BLOCKS = ("frequent_actions", "attack_patterns", "cooldowns", "move_habits")
CATEGORIES = ("movement_style", "difficulty", "battle_phase", "environment", "last_boss_action")


class Feature(NamedTuple):
    name: str
    start: int
    size: int


SCALES = tuple(VALUE_SCALES.values())
VALUES_END = len(VALUE_SCALES)
BLOCKS_END = VALUES_END + len(BLOCKS)


@dataclass(frozen=True)
class ObservationLayout:
    """Feature names, positions and scales of one game's observation vector."""

    features: tuple[Feature, ...]
    difficulty_levels: tuple[str, ...]
    phases: tuple[str, ...]
    environments: tuple[str, ...]
    moves: tuple[str, ...]

    @classmethod
    def for_game(cls, game: GameDefinition) -> ObservationLayout:
        moves = game.move_names
        sizes = {
            **dict.fromkeys(VALUE_SCALES, 1),
            "frequent_actions": len(PLAYER_ACTIONS), "attack_patterns": len(ATTACK_PATTERNS),
            "cooldowns": len(moves), "move_habits": len(moves),
            "movement_style": len(MOVEMENT_STYLES),
            "difficulty": len(game.difficulty_levels), "battle_phase": len(game.phases),
            "environment": len(game.environments), "last_boss_action": len(moves) + 1,
        }
        features, start = [], 0
        for name in ContextColumns._fields:
            features.append(Feature(name, start, sizes[name]))
            start += sizes[name]
        return cls(
            features=tuple(features),
            difficulty_levels=tuple(game.difficulty_levels),
            phases=tuple(p.name for p in game.phases),
            environments=tuple(game.environments),
            moves=moves,
        )

    @property
    def size(self) -> int:
        last = self.features[-1]
        return last.start + last.size

    def names(self) -> list[str]:
        """One name per vector element, e.g. ``frequent_actions[dodge]``."""
        labels = {
            "frequent_actions": PLAYER_ACTIONS, "attack_patterns": ATTACK_PATTERNS,
            "movement_style": MOVEMENT_STYLES, "difficulty": self.difficulty_levels,
            "battle_phase": self.phases, "environment": self.environments,
            "cooldowns": self.moves, "move_habits": self.moves,
            "last_boss_action": ("none", *self.moves),
        }
        out = []
        for f in self.features:
            out += [f"{f.name}[{x}]" for x in labels[f.name]] if f.name in labels else [f.name]
        return out

    def encode(self, columns: ContextColumns, ops: Ops) -> np.ndarray:
        """The one encoder, for a batch (``BatchOps``) or one situation (``ScalarOps``)."""
        out = ops.new_observation(self.size)
        ops.write_scalars(out, columns[:VALUES_END], SCALES)
        ops.write_blocks(out, self.block_starts, columns[VALUES_END:BLOCKS_END])
        ops.write_one_hots(out, self.category_starts, self.category_rows, columns[BLOCKS_END:])
        return ops.finish_observation(out)

    @property
    def block_starts(self) -> tuple[int, ...]:
        return self._positions[0]

    @property
    def category_starts(self) -> tuple[int, ...]:
        return self._positions[1]

    @property
    def category_rows(self) -> tuple[tuple[tuple[float, ...], ...], ...]:
        """Per category, its one-hot rows by index, then an all-zero row (index -1)."""
        return self._positions[2]

    @functools.cached_property
    def _positions(self) -> tuple[Any, Any, Any]:
        blocks = self.features[VALUES_END:BLOCKS_END]
        categories = self.features[BLOCKS_END:]
        return (tuple(f.start for f in blocks), tuple(f.start for f in categories),
                tuple(_one_hot_rows(f.size) for f in categories))

    def encode_situation(self, situation: Situation) -> np.ndarray:
        """Encode one decision's situation (what the server does for every request)."""
        return self.encode(self.columns(situation), ScalarOps())

    def columns(self, s: Situation) -> ContextColumns:
        """Turn the protocol's strings into the numbers the encoder takes."""
        p = s.player
        boss = s.boss
        cooldowns = self._per_move(boss.cooldowns, "cooldowns")
        habits = self._per_move(boss.habits, "habits")
        last = -1 if boss.last_action is None else _index(self.moves, boss.last_action, "move")
        difficulty = s.difficulty or p.difficulty_preference
        return ContextColumns(
            frequent_actions=_multi_hot(PLAYER_ACTIONS, p.frequent_actions),
            dodge_frequency=p.dodge_frequency,
            attack_patterns=_multi_hot(ATTACK_PATTERNS, p.attack_patterns),
            movement_style=_index(MOVEMENT_STYLES, p.movement_style, "movement_style"),
            reaction_time=p.reaction_time,
            health_percentage=p.health_percentage,
            difficulty=_lookup(self.difficulty_levels, difficulty),
            session_duration=p.session_duration,
            recent_deaths=float(p.recent_deaths),
            equipment_level=float(p.equipment_level),
            boss_health=s.boss_health_percentage,
            battle_phase=_index(self.phases, s.battle_phase, "battle_phase"),
            environment=_lookup(self.environments, s.environment),
            distance=s.distance,
            boss_stamina=boss.stamina,
            cooldowns=cooldowns,
            move_habits=habits,
            last_boss_action=last + 1,
        )

    def _per_move(self, values: Sequence[float], what: str) -> list[float]:
        """One float per move (all 0 when ``values`` is empty)."""
        if values and len(values) != len(self.moves):
            raise ValueError(f"boss {what} have {len(values)} entries; this game has "
                             f"{len(self.moves)} moves ({', '.join(self.moves)}).")
        return [float(v) for v in values] or [0.0] * len(self.moves)


def _one_hot_rows(size: int) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(1.0 if i == j else 0.0 for j in range(size)) for i in range(size + 1))


def _multi_hot(vocabulary: Sequence[str], names: Sequence[str]) -> list[float]:
    chosen = set(names)
    return [1.0 if v in chosen else 0.0 for v in vocabulary]


def _index(vocabulary: Sequence[str], name: str, what: str) -> int:
    if name not in vocabulary:
        raise ValueError(f"unknown {what} {name!r}: use one of {', '.join(vocabulary)}.")
    return list(vocabulary).index(name)


def _lookup(vocabulary: Sequence[str], name: str | None) -> int:
    """Index of an optional categorical value; unknown or absent encodes as all zeros."""
    if name is None or name not in vocabulary:
        return -1
    return list(vocabulary).index(name)


def describe_context(columns: Mapping[str, Any], threshold: float = 0.5) -> PlayerContext:
    """A readable PlayerContext from one env's columns (for replays and inspection)."""
    actions = np.asarray(columns["frequent_actions"]).reshape(-1)
    patterns = np.asarray(columns["attack_patterns"]).reshape(-1)
    return PlayerContext(
        frequent_actions=tuple(a for a, v in zip(PLAYER_ACTIONS, actions, strict=True)
                               if v >= threshold),
        dodge_frequency=float(columns["dodge_frequency"]),
        attack_patterns=tuple(a for a, v in zip(ATTACK_PATTERNS, patterns, strict=True)
                              if v >= threshold),
        movement_style=MOVEMENT_STYLES[int(columns["movement_style"])],
        reaction_time=float(columns["reaction_time"]),
        health_percentage=float(columns["health_percentage"]),
        session_duration=float(columns["session_duration"]),
        recent_deaths=int(columns["recent_deaths"]),
        equipment_level=int(columns["equipment_level"]),
    )
