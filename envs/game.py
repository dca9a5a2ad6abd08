"""Game definitions: a boss, its moves and phases, the arenas and the difficulty levels.

A game is data, a YAML file under ``configs/game/``; see ``configs/game/duel.yaml`` for a
commented example. :func:`load_game` reads and validates one; :class:`GameTables` is the
numeric view the simulator's kernel works on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from envs.schema import DefinitionError, build, read_yaml, spec

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
GAME_DIR = CONFIG_DIR / "game"
ACTION_TYPES = ("aggressive", "defensive", "tactical")


@dataclass(frozen=True, kw_only=True)
class Move:
    """One boss move: how it is telegraphed, what it does, what it costs."""

    action_type: str = spec("aggressive, defensive or tactical (the protocol's action_type)")
    damage: float = spec("HP taken from the player by a clean hit", 0.0, low=0)
    reach: float = spec("metres from the boss within which the move connects", 3.0, low=0)
    windup_ticks: int = spec("ticks of telegraph before the move is active", 10, low=1)
    active_ticks: int = spec("ticks during which the move hits", 4, low=1)
    recovery_ticks: int = spec("ticks after the move in which the boss is open", 10, low=0)
    cooldown: float = spec("seconds before the move can be used again", 0.0, low=0)
    stamina_cost: float = spec("boss stamina the move costs", 0.0, low=0)
    dodgeability: float = spec("multiplier on a player's dodge success (0: undodgeable)", 1.0,
                               low=0, high=1.5)
    blockable: bool = spec("whether a player's block reduces the damage", True)
    guard: float = spec("fraction of the player's damage the boss ignores during the move", 0.0,
                        low=0, high=1)
    counter_damage: float = spec("damage dealt to a player who attacks into the move", 0.0, low=0)
    advance: float = spec("metres the boss closes toward the player", 0.0, low=0)
    knockback: float = spec("metres a hit pushes the player away", 0.0, low=0)
    parameters: dict[str, Any] = spec("free-form parameters sent to the game with the move",
                                      factory=dict)


@dataclass(frozen=True, kw_only=True)
class Phase:
    """A stretch of the fight, entered when the boss's HP fraction falls to ``starts_below``."""

    name: str = spec("phase name, e.g. early_battle (the protocol's battle_phase)")
    starts_below: float = spec("HP fraction at which the phase begins (1.0 for the first)",
                               low=0, high=1)
    moves: tuple[str, ...] = spec("names of the moves the boss may use in this phase")
    damage_multiplier: float = spec("multiplier on move damage", 1.0, low=0)
    speed_multiplier: float = spec("multiplier on wind-up and recovery (< 1 is faster)", 1.0,
                                   low=0.2, high=3)


@dataclass(frozen=True, kw_only=True)
class Boss:
    name: str = spec("the boss's display name")
    max_hp: float = spec("hit points at full health", low=1)
    max_stamina: float = spec("stamina pool that moves draw from", 100.0, low=0)
    stamina_regen: float = spec("stamina regained per second", 10.0, low=0)


@dataclass(frozen=True, kw_only=True)
class PlayerRules:
    """What any player can do in this game (personas decide how they use it)."""

    max_hp: float = spec("player hit points", 100.0, low=1)
    light_damage: float = spec("damage of one light attack", 10.0, low=0)
    heavy_damage: float = spec("damage of one heavy attack", 25.0, low=0)
    ranged_damage: float = spec("damage of one ranged attack", 6.0, low=0)
    melee_reach: float = spec("metres within which melee attacks connect", 2.5, low=0)
    hit_seconds: float = spec("seconds one attack takes", 0.5, low=0.05)
    guard: float = spec("fraction of blockable damage a block stops", 0.6, low=0, high=1)
    heal_amount: float = spec("HP restored by one heal", 30.0, low=0)
    heals: int = spec("heals available per fight", 3, low=0)


@dataclass(frozen=True, kw_only=True)
class Arena:
    """An environment the fight can take place in, and what it changes."""

    size: float = spec("metres of room the player has to keep distance", 12.0, low=1)
    visibility: float = spec("how readable telegraphs are (scales the reaction window)", 1.0,
                             low=0.1, high=2)
    dodge_multiplier: float = spec("multiplier on dodge success", 1.0, low=0, high=2)
    boss_damage_multiplier: float = spec("multiplier on the boss's damage", 1.0, low=0)


@dataclass(frozen=True, kw_only=True)
class Difficulty:
    """A difficulty level: how hard the boss hits, and the designer's target for the fight."""

    boss_damage: float = spec("multiplier on boss damage", 1.0, low=0)
    boss_hp: float = spec("multiplier on boss max HP", 1.0, low=0.05)
    target_player_win_rate: float = spec("player win rate the designer wants", 0.5, low=0, high=1)
    win_rate_tolerance: float = spec("half-width of the target win-rate band", 0.1, low=0,
                                     high=0.5)
    target_hp_margin: float = spec("largest |boss HP - player HP| fraction at the end of a "
                                   "fight that still counts as close", 0.4, low=0, high=1)
    target_duration: tuple[float, ...] = spec("[min, max] fight duration in seconds",
                                              factory=lambda: (30.0, 120.0))


@dataclass(frozen=True, kw_only=True)
class GameDefinition:
    """A whole game, as loaded from ``configs/game/<name>.yaml``."""

    name: str = spec("the game's id")
    description: str = spec("what the game is, for people")
    tick_rate: int = spec("simulation ticks per second", 30, low=1)
    max_fight_seconds: float = spec("the fight's time limit: it is truncated after this", 180.0,
                                    low=1)
    boss: Boss = spec("the boss")
    moves: dict[str, Move] = spec("the boss's move vocabulary, by name")
    phases: tuple[Phase, ...] = spec("phases in order, from full HP down")
    player: PlayerRules = spec("what players can do", factory=PlayerRules)
    environments: dict[str, Arena] = spec("arenas the fight can take place in, by name")
    difficulty_levels: dict[str, Difficulty] = spec("difficulty levels, easiest first, by name")

    @property
    def move_names(self) -> tuple[str, ...]:
        return tuple(self.moves)

    @property
    def vocabulary(self) -> dict[str, list[str]]:
        """The vocabulary a game registers with the server (../shared/PROTOCOL.md)."""
        return {
            "boss_actions": list(self.moves),
            "action_types": sorted({m.action_type for m in self.moves.values()}),
            "environments": list(self.environments),
            "difficulty_levels": list(self.difficulty_levels),
        }

    def fingerprint(self) -> str:
        """A short hash of the definition, to tell which game a policy was trained on."""
        text = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_game(game: str | Path | Mapping[str, Any] | GameDefinition) -> GameDefinition:
    """Load a game by name (``configs/game/<name>.yaml``), path, mapping or definition."""
    if isinstance(game, GameDefinition):
        return game
    if isinstance(game, Mapping):
        return validate_game(build(GameDefinition, dict(game), "game definition"), "game")
    path = _game_path(game)
    return validate_game(build(GameDefinition, read_yaml(path), str(path)), str(path))


def available_games() -> list[str]:
    return sorted(p.stem for p in GAME_DIR.glob("*.yaml"))


def _game_path(game: str | Path) -> Path:
    path = Path(game)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise DefinitionError(f"{path}: no such game file.")
        return path
    named = GAME_DIR / f"{game}.yaml"
    if not named.is_file():
        raise DefinitionError(
            f"unknown game {str(game)!r}. Games available: {', '.join(available_games())} "
            f"(files in {GAME_DIR}), or pass a path to a YAML file."
        )
    return named


def validate_game(game: GameDefinition, source: str) -> GameDefinition:
    """Cross-field checks the per-field bounds cannot express."""
    _require(bool(game.moves), source, "moves", "define at least one move")
    for name, move in game.moves.items():
        _require(move.action_type in ACTION_TYPES, source, f"moves.{name}.action_type",
                 f"use one of {', '.join(ACTION_TYPES)}, not {move.action_type!r}")
    _validate_phases(game, source)
    _require(bool(game.environments), source, "environments", "define at least one arena")
    _require(bool(game.difficulty_levels), source, "difficulty_levels",
             "define at least one difficulty level")
    for name, level in game.difficulty_levels.items():
        low_high = level.target_duration
        _require(len(low_high) == 2 and 0 <= low_high[0] < low_high[1], source,
                 f"difficulty_levels.{name}.target_duration",
                 f"give [min, max] seconds with min < max, not {list(low_high)}")
    return game


def _validate_phases(game: GameDefinition, source: str) -> None:
    _require(bool(game.phases), source, "phases", "define at least one phase")
    _require(game.phases[0].starts_below == 1.0, source, "phases[0].starts_below",
             "the first phase must start at 1.0 (full HP)")
    for i, phase in enumerate(game.phases):
        where = f"phases[{i}]"
        if i > 0:
            previous = game.phases[i - 1].starts_below
            _require(phase.starts_below < previous, source, f"{where}.starts_below",
                     f"thresholds must fall phase by phase: {phase.starts_below} follows "
                     f"{previous}; list phases from full HP down")
        _require(bool(phase.moves), source, f"{where}.moves", "list the moves of this phase")
        for move in phase.moves:
            _require(move in game.moves, source, f"{where}.moves",
                     f"move {move!r} is not defined; define it under 'moves' or use one of "
                     f"{', '.join(game.moves)}")
        free = [m for m in phase.moves
                if game.moves[m].cooldown == 0 and game.moves[m].stamina_cost == 0]
        _require(bool(free), source, f"{where}.moves",
                 "each phase needs a move with no cooldown and no stamina cost, so the boss "
                 "always has a legal move")


def _require(ok: bool, source: str, path: str, fix: str) -> None:
    if not ok:
        raise DefinitionError(f"{source}: {path!r} is invalid: {fix}.")


MOVE_STATS = ("windup_s", "active_s", "recovery_s", "damage", "reach", "advance", "dodgeability",
              "blockable", "guard", "counter_damage", "knockback", "cooldown", "stamina_cost")
"""What ``GameTables.move_stats`` holds per (phase, move), in this order."""
LEVEL_STATS = ("target_win_rate", "margin_band", "inverse_margin_span", "duration_low",
               "duration_high", "inverse_duration_slack")
"""What ``GameTables.level_stats`` holds per difficulty level, in this order."""


@dataclass(frozen=True, kw_only=True)
class GameTables:
    """The game as arrays indexed by move, phase, arena and difficulty (the kernel's input)."""

    damage: np.ndarray
    reach: np.ndarray
    windup_s: np.ndarray
    active_s: np.ndarray
    recovery_s: np.ndarray
    cooldown: np.ndarray
    stamina_cost: np.ndarray
    dodgeability: np.ndarray
    blockable: np.ndarray
    guard: np.ndarray
    counter_damage: np.ndarray
    advance: np.ndarray
    knockback: np.ndarray
    phase_thresholds: np.ndarray
    phase_damage: np.ndarray
    phase_speed: np.ndarray
    phase_allows: np.ndarray
    phase_fallback: np.ndarray
    arena_size: np.ndarray
    arena_visibility: np.ndarray
    arena_dodge: np.ndarray
    arena_damage: np.ndarray
    level_damage: np.ndarray
    level_hp: np.ndarray
    level_target: np.ndarray
    level_tolerance: np.ndarray
    level_margin: np.ndarray
    level_duration: np.ndarray
    move_stats: np.ndarray
    level_stats: np.ndarray
    level_duration_low: np.ndarray
    level_duration_high: np.ndarray
    cooldown_safe: np.ndarray
    boss_max_hp: float
    max_stamina: float
    max_stamina_safe: float
    stamina_regen: float
    player_max_hp: float
    max_fight_seconds: float

    @classmethod
    def from_game(cls, game: GameDefinition) -> GameTables:
        moves = list(game.moves.values())
        names = list(game.moves)
        ticks = float(game.tick_rate)

        def per_move(attr: str, scale: float = 1.0) -> np.ndarray:
            return np.array([float(getattr(m, attr)) / scale for m in moves])

        allows = np.array([[n in p.moves for n in names] for p in game.phases])
        fallback = np.array([_free_move(game, p) for p in game.phases])
        arenas = list(game.environments.values())
        levels = list(game.difficulty_levels.values())
        return cls(
            damage=per_move("damage"), reach=per_move("reach"),
            windup_s=per_move("windup_ticks", ticks), active_s=per_move("active_ticks", ticks),
            recovery_s=per_move("recovery_ticks", ticks), cooldown=per_move("cooldown"),
            stamina_cost=per_move("stamina_cost"), dodgeability=per_move("dodgeability"),
            blockable=per_move("blockable"), guard=per_move("guard"),
            counter_damage=per_move("counter_damage"), advance=per_move("advance"),
            knockback=per_move("knockback"),
            phase_thresholds=np.array([p.starts_below for p in game.phases[1:]]),
            phase_damage=np.array([p.damage_multiplier for p in game.phases]),
            phase_speed=np.array([p.speed_multiplier for p in game.phases]),
            phase_allows=allows, phase_fallback=fallback,
            arena_size=np.array([a.size for a in arenas]),
            arena_visibility=np.array([a.visibility for a in arenas]),
            arena_dodge=np.array([a.dodge_multiplier for a in arenas]),
            arena_damage=np.array([a.boss_damage_multiplier for a in arenas]),
            level_damage=np.array([lv.boss_damage for lv in levels]),
            level_hp=np.array([lv.boss_hp for lv in levels]),
            level_target=np.array([lv.target_player_win_rate for lv in levels]),
            level_tolerance=np.array([lv.win_rate_tolerance for lv in levels]),
            level_margin=np.array([lv.target_hp_margin for lv in levels]),
            level_duration=np.array([list(lv.target_duration) for lv in levels]),
            move_stats=_move_stats(game),
            level_stats=_level_stats(levels),
            level_duration_low=np.array([lv.target_duration[0] for lv in levels]),
            level_duration_high=np.array([lv.target_duration[1] for lv in levels]),
            cooldown_safe=np.maximum(per_move("cooldown"), 1e-9),
            boss_max_hp=game.boss.max_hp,
            max_stamina=game.boss.max_stamina,
            max_stamina_safe=max(game.boss.max_stamina, 1e-9),
            stamina_regen=game.boss.stamina_regen,
            player_max_hp=game.player.max_hp,
            max_fight_seconds=game.max_fight_seconds,
        )

    def as_tuples(self) -> GameTables:
        """Every table as (nested) tuples of Python numbers, fast to index one at a time.

        ``move_stats`` becomes [phase][move] -> a tuple of MOVE_STATS, ``level_stats``
        [level] -> a tuple of LEVEL_STATS.
        """
        changes = {f.name: _tuples(getattr(self, f.name).tolist()) for f in fields(self)
                   if isinstance(getattr(self, f.name), np.ndarray)}
        changes["move_stats"] = _tuples(np.moveaxis(self.move_stats, 0, -1).tolist())
        changes["level_stats"] = _tuples(np.moveaxis(self.level_stats, 0, -1).tolist())
        return replace(self, **changes)


def _tuples(values: Any) -> Any:
    return tuple(_tuples(v) for v in values) if isinstance(values, list) else values


def _move_stats(game: GameDefinition) -> np.ndarray:
    """(stat, phase, move) array of MOVE_STATS with each phase's speed and damage applied."""
    ticks = float(game.tick_rate)
    stats = np.zeros((len(MOVE_STATS), len(game.phases), len(game.moves)))
    for p, phase in enumerate(game.phases):
        for m, move in enumerate(game.moves.values()):
            stats[:, p, m] = (
                move.windup_ticks / ticks * phase.speed_multiplier,
                move.active_ticks / ticks,
                move.recovery_ticks / ticks * phase.speed_multiplier,
                move.damage * phase.damage_multiplier,
                move.reach, move.advance, move.dodgeability, float(move.blockable), move.guard,
                move.counter_damage, move.knockback, move.cooldown, move.stamina_cost,
            )
    return stats


def _level_stats(levels: list[Difficulty]) -> np.ndarray:
    """(stat, level) array of LEVEL_STATS: each level's targets, with reciprocals precomputed."""
    columns = []
    for level in levels:
        low, high = level.target_duration
        columns.append((level.target_player_win_rate, level.target_hp_margin,
                        1.0 / (1.0 - level.target_hp_margin + 1e-9), low, high,
                        2.0 / (high - low)))
    return np.array(columns).T


def _free_move(game: GameDefinition, phase: Phase) -> int:
    names = list(game.moves)
    for move in phase.moves:
        spec_ = game.moves[move]
        if spec_.cooldown == 0 and spec_.stamina_cost == 0:
            return names.index(move)
    raise AssertionError("validate_game guarantees a free move in every phase")
