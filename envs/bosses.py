"""Boss policies: the one Protocol for "picks a boss move", and the scripted baselines.

The scripted bosses are the yardsticks every trained boss is compared with:

- :class:`RandomBoss`: uniform over the legal moves.
- :class:`RotationBoss`: the game's moves in a fixed order, the repetitive boss that players
  who learn patterns (``pattern_learning`` in a persona) read and punish.
- :class:`ReactiveBoss`: a hand-written heuristic that reads the player context in the
  observation and counters what it sees (dodgers, button-mashers, slow or quick readers of
  telegraphs, range).

Every policy is batched (one row per env) and only ever returns legal moves. Build one by name
with :func:`make_boss`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from envs.game import GameDefinition, load_game
from envs.observation import (
    ATTACK_PATTERNS,
    MOVEMENT_STYLES,
    PLAYER_ACTIONS,
    VALUE_SCALES,
    ObservationLayout,
)


@runtime_checkable
class BossPolicy(Protocol):
    """Anything that picks boss moves: scripted bosses, trained agents, the served policy.

    Batched: ``observations`` is (n, observation size) float32 and ``action_masks`` is
    (n, moves) bool (legal moves); the result is (n,) integer move indices, each legal.
    """

    name: str

    def select_moves(self, observations: np.ndarray, action_masks: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class AdaptiveBoss(BossPolicy, Protocol):
    """A boss that keeps learning from the fights it plays, with no gradient steps (e.g. one
    that writes an episodic memory; agents.retrieval). ``envs.fights.play_fights`` calls
    ``start_fights`` once, then ``observe`` after every step with what the step returned
    (``infos``: the vector env's info dict, persona tags as names); evaluations call
    ``forget`` before each group of fights so every group starts from the same boss."""

    def start_fights(self) -> None: ...

    def observe(self, observations: np.ndarray, moves: np.ndarray, rewards: np.ndarray,
                dones: np.ndarray, infos: Any, truncated: np.ndarray | None = None) -> object: ...

    def forget(self) -> None: ...


SCRIPTED_BOSSES = ("random", "rotation", "reactive")
"""Names :func:`make_boss` accepts."""


def masked_argmax(scores: np.ndarray, action_masks: np.ndarray) -> np.ndarray:
    """Per row, the index of the highest score among the legal moves, as int64."""
    masks = np.asarray(action_masks, dtype=bool)
    if masks.ndim != 2 or masks.shape != scores.shape:
        raise ValueError(f"action_masks must be (n, moves) like the scores {scores.shape}, "
                         f"got {masks.shape}.")
    empty = ~masks.any(axis=1)
    if empty.any():
        raise ValueError(f"rows {np.flatnonzero(empty).tolist()} of action_masks have no legal "
                         f"move; every game phase has a free move, so check the masks passed.")
    return np.where(masks, scores, -np.inf).argmax(axis=1).astype(np.int64)


def masked_sample(probabilities: np.ndarray, action_masks: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
    """Per row, a legal move drawn with ``probabilities`` renormalized over the legal moves (the
    most likely legal move where every legal probability is 0), as int64."""
    legal_first = masked_argmax(probabilities, action_masks)  # also checks the masks
    weights = np.where(np.asarray(action_masks, dtype=bool), probabilities, 0.0)
    totals = weights.sum(axis=1, keepdims=True)
    cumulative = np.cumsum(weights, axis=1)
    draws = rng.random((weights.shape[0], 1)) * totals
    chosen = (cumulative <= draws).sum(axis=1)
    # A draw can only fall past the last legal move through rounding, or when every legal
    # probability is 0: then the most likely legal move is the answer.
    bad = (chosen >= weights.shape[1]) | (totals[:, 0] <= 0.0)
    chosen = np.minimum(chosen, weights.shape[1] - 1)
    bad |= ~np.take_along_axis(np.asarray(action_masks, dtype=bool), chosen[:, None], 1)[:, 0]
    return np.where(bad, legal_first, chosen).astype(np.int64)


class RandomBoss:
    """Uniform over the legal moves, from its own seeded generator."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def select_moves(self, observations: np.ndarray, action_masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(action_masks, dtype=bool)
        # The argmax of i.i.d. uniforms over the legal moves is a uniform legal move.
        return masked_argmax(self.rng.random(masks.shape), masks)


class RotationBoss:
    """The game's moves in order, one after the other, skipping illegal ones.

    Stateless: the last move comes from the observation's ``last_boss_action`` one-hot (the
    observation's last ``moves + 1`` elements; its first slot means "no move yet"), so one
    instance drives any number of envs and restarts each fight at the first move.
    """

    name = "rotation"

    def select_moves(self, observations: np.ndarray, action_masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(action_masks, dtype=bool)
        moves = masks.shape[1]
        last_action = np.asarray(observations)[:, -(moves + 1):]
        # Slot 0 ("none yet") maps to move 0 and slot k to move k, which is the move after k-1.
        start = last_action.argmax(axis=1) % moves
        candidates = (start[:, None] + np.arange(moves)) % moves
        legal = np.take_along_axis(masks, candidates, axis=1)
        if not legal.any(axis=1).all():
            raise ValueError("a row of action_masks has no legal move.")
        first_legal = legal.argmax(axis=1)
        return candidates[np.arange(len(masks)), first_legal].astype(np.int64)


@dataclass(frozen=True)
class ReactiveWeights:
    """How much each consideration of :class:`ReactiveBoss` counts (scores are summed)."""

    damage: float = 0.3
    """Base preference for damage, scaled by how much of the move's damage can connect."""
    anti_dodge: float = 1.0
    """Preference for hard-to-dodge attacks, times the player's dodge frequency."""
    guard: float = 1.0
    """Preference for guard / counter moves, times the player's aggression."""
    openings: float = 0.3
    """Penalty for attacks with long recovery (openings), times the player's aggression."""
    telegraph: float = 0.5
    """Preference for wind-ups that suit the player's reaction time (see ReactiveBoss)."""
    out_of_range: float = 1.0
    """Penalty for attacks that cannot reach the player from the current distance."""
    pacing: float = 0.5
    """Preference for damage when the player is ahead on HP, against it when the boss is."""
    noise: float = 0.25
    """Width of the uniform noise added to every score, so the boss is not predictable."""


@dataclass(frozen=True)
class MoveTraits:
    """A game's moves as arrays in [0, 1], the facts ReactiveBoss scores them on."""

    is_attack: np.ndarray
    damage: np.ndarray
    dodge_proof: np.ndarray
    defence: np.ndarray
    recovery: np.ndarray
    windup: np.ndarray
    reach: np.ndarray

    @classmethod
    def from_game(cls, game: GameDefinition) -> MoveTraits:
        moves = list(game.moves.values())

        def values(attr: str) -> np.ndarray:
            return np.array([float(getattr(m, attr)) for m in moves])

        damage = values("damage")
        is_attack = damage > 0
        dodgeability = np.where(is_attack, values("dodgeability"), np.inf)
        easiest = dodgeability[is_attack].max() if is_attack.any() else 1.0
        dodge_proof = np.where(is_attack, 1.0 - dodgeability / easiest, 0.0)
        defence = 0.6 * _share_of_max(values("guard")) + 0.4 * _share_of_max(
            values("counter_damage"))
        return cls(
            is_attack=is_attack.astype(float),
            damage=_share_of_max(damage),
            dodge_proof=_share_of_max(dodge_proof),
            defence=defence,
            recovery=_share_of_max(values("recovery_ticks")),
            windup=_share_of_max(values("windup_ticks")),
            reach=values("reach") + values("advance"),
        )


def _share_of_max(values: np.ndarray) -> np.ndarray:
    top = float(values.max())
    return values / top if top > 0 else np.zeros_like(values)


class PlayerReading:
    """The parts of the player context ReactiveBoss reacts to, read from observations."""

    QUICK_SECONDS = 0.3
    """Reaction times at or below this count as quick, 0.4 s slower as fully slow."""
    RANGE_SLACK = 2.0
    """Metres beyond a move's reach over which it goes from connecting to missing."""

    def __init__(self, layout: ObservationLayout) -> None:
        self.slices = {f.name: slice(f.start, f.start + f.size) for f in layout.features}

    def feature(self, observations: np.ndarray, name: str) -> np.ndarray:
        return observations[:, self.slices[name]]

    def value(self, observations: np.ndarray, name: str) -> np.ndarray:
        """A single-valued feature in its own unit (seconds, metres...), shape (n,)."""
        return self.feature(observations, name)[:, 0] / VALUE_SCALES[name]

    def aggression(self, observations: np.ndarray) -> np.ndarray:
        """0..1: an aggressive movement style that goes with heavy hits, combos or mashing.

        The style alone is not enough: anyone who attacks more than they defend is
        "aggressive", novices included; heavy attacks among the frequent actions, combos and
        button-mashing are what make a player punishable by a guard.
        """
        style = self.feature(observations, "movement_style")[:, MOVEMENT_STYLES.index("aggressive")]
        patterns = self.feature(observations, "attack_patterns")
        actions = self.feature(observations, "frequent_actions")
        pressing = np.maximum.reduce([
            actions[:, PLAYER_ACTIONS.index("heavy_attack")],
            patterns[:, ATTACK_PATTERNS.index("button_mash")],
            patterns[:, ATTACK_PATTERNS.index("combo")],
        ])
        return style * pressing

    def slowness(self, observations: np.ndarray) -> np.ndarray:
        """0 for a quick reader of telegraphs, 1 for a slow one (0.4 s slower or more)."""
        seconds = self.value(observations, "reaction_time")
        return np.clip((seconds - self.QUICK_SECONDS) / 0.4, 0.0, 1.0)

    def connects(self, observations: np.ndarray, reach: np.ndarray) -> np.ndarray:
        """(n, moves): 1 when a move reaches the player from here, falling to 0 out of range."""
        gap = self.value(observations, "distance")[:, None] - reach[None, :]
        return np.clip(1.0 - gap / self.RANGE_SLACK, 0.0, 1.0)

    def pace(self, observations: np.ndarray) -> np.ndarray:
        """Player HP fraction minus boss HP fraction: > 0 when the player is ahead."""
        return (self.value(observations, "health_percentage")
                - self.value(observations, "boss_health"))


class ReactiveBoss:
    """A heuristic boss that reads the player context and counters what it sees.

    Each move gets a score per env (:meth:`scores`, vectorized over envs and moves); the boss
    plays the legal move with the highest score after adding seeded uniform noise. Attacks
    (moves with damage) score for:

    - damage, scaled by how well the move connects from the current ``distance`` (reach plus
      advance against the distance, with 2 m of slack), and more so when the player is ahead
      on HP than when the boss is (``pacing``, which keeps fights close);
    - being hard to dodge (low ``dodgeability``), times the player's ``dodge_frequency``;
    - wind-ups that suit the player: long, readable telegraphs against slow reaction times and
      fast moves against quick players (``reaction_time`` 0.3 s is quick, 0.7 s slow);

    and lose for long recovery against aggressive players (who punish openings) and for not
    reaching the player at all. Guard and counter moves (``guard``, ``counter_damage``) score
    with the player's aggression: an aggressive movement style together with heavy attacks
    among the frequent actions, combos or button-mashing. Weights are in :class:`ReactiveWeights`.
    """

    name = "reactive"

    def __init__(self, game: GameDefinition, seed: int = 0,
                 weights: ReactiveWeights | None = None) -> None:
        self.moves = game.move_names
        self.traits = MoveTraits.from_game(game)
        self.reading = PlayerReading(ObservationLayout.for_game(game))
        self.weights = weights or ReactiveWeights()
        self.rng = np.random.default_rng(seed)

    def scores(self, observations: np.ndarray) -> np.ndarray:
        """The deterministic part of the decision: (n, moves) scores, higher is better."""
        obs = np.asarray(observations, dtype=np.float64)
        w, t, read = self.weights, self.traits, self.reading
        connects = read.connects(obs, t.reach)
        aggression = read.aggression(obs)[:, None]
        slowness = read.slowness(obs)[:, None]
        dodging = read.feature(obs, "dodge_frequency")
        pace = read.pace(obs)[:, None]
        telegraph_fit = slowness * t.windup + (1.0 - slowness) * (1.0 - t.windup)
        attack = (
            (w.damage + w.pacing * pace) * t.damage * connects
            + w.anti_dodge * dodging * t.dodge_proof
            + w.telegraph * telegraph_fit
            - w.openings * aggression * t.recovery
            - w.out_of_range * (1.0 - connects)
        )
        return t.is_attack * attack + w.guard * aggression * t.defence

    def select_moves(self, observations: np.ndarray, action_masks: np.ndarray) -> np.ndarray:
        scores = self.scores(observations)
        noisy = scores + self.weights.noise * self.rng.random(scores.shape)
        return masked_argmax(noisy, action_masks)


def make_boss(name: str, game: GameDefinition | str | Path | dict[str, Any],
              seed: int = 0) -> BossPolicy:
    """A scripted boss by name (one of :data:`SCRIPTED_BOSSES`) for ``game``."""
    if name == "random":
        return RandomBoss(seed)
    if name == "rotation":
        return RotationBoss()
    if name == "reactive":
        return ReactiveBoss(load_game(game), seed)
    raise ValueError(f"unknown boss {name!r}: the scripted bosses are "
                     f"{', '.join(SCRIPTED_BOSSES)}.")
