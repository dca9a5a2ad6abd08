"""Play many fights of one boss policy and collect what happened in each, batched.

:func:`play_fights` is the fight runner the tournament, the persona command and the evaluation
of trained bosses share: it steps a :class:`envs.boss_fight.BossFightVectorEnv` with a
:class:`envs.bosses.BossPolicy` and turns every ended fight into a :class:`FightResult`.

>>> from envs.bosses import RandomBoss
>>> results = play_fights(RandomBoss(seed=0), 12, game="duel", player="dodger", series=4)
>>> len(results)
12
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from envs.boss_fight import BossFightVectorEnv
from envs.bosses import AdaptiveBoss, BossPolicy
from envs.observation import VALUE_SCALES, ObservationLayout, PlayerContext, describe_context


@dataclass(frozen=True)
class FightResult:
    """One ended fight: the conditions, the outcome and how the boss fought it."""

    persona: str
    """The player's persona name."""
    difficulty: str
    """The difficulty level's name."""
    environment: str
    """The arena's name."""
    player_won: bool
    """The boss's HP reached 0 (a timeout is not a win for either side)."""
    timed_out: bool
    """The fight reached the game's ``max_fight_seconds`` (truncated) with both alive."""
    fight_seconds: float
    """Fight duration in simulated seconds."""
    hp_margin: float
    """Boss HP fraction minus player HP fraction at the end (> 0: the boss was ahead)."""
    moves_used: tuple[int, ...]
    """How many times the boss chose each move, in the game's move order."""
    observed: PlayerContext
    """What the game had observed of the player at the fight's end (the player context)."""
    player: int = 0
    """Which of the players fighting side by side (the env index) fought it."""
    series_fight: int = 0
    """Its place in that player's series: 0 for their first fight."""

    @property
    def decisions(self) -> int:
        """Boss decisions (moves) in the fight."""
        return sum(self.moves_used)

    @property
    def boss_won(self) -> bool:
        return not (self.player_won or self.timed_out)


def play_fights(boss: BossPolicy, fights: int, *, game: Any, player: Any,
                difficulty: str | None = None, environment: str | None = None,
                objective: str = "engagement", series: int = 8, seed: int = 0,
                progress: Callable[[int], object] | None = None,
                switch: StyleSwitch | None = None) -> list[FightResult]:
    """Play exactly ``fights`` fights of ``boss`` against ``player``; same seed, same results.

    ``series`` players (envs) fight side by side, each playing a series of up to
    ``ceil(fights / series)`` fights in a row (what the game observes of a player and what
    they learn of the boss carry over within a series). Each env contributes a fixed quota of
    its first fights, so short fights are not over-represented by stopping at the first
    ``fights`` to end. ``game``, ``player``, ``difficulty``, ``environment`` and ``objective``
    are the env's arguments (:class:`envs.boss_fight.BossFightEnv`); ``progress`` is called
    with the number of fights just collected. Results come in the order the fights ended.

    ``switch`` makes every player change style once, after their ``switch.after``-th fight
    (:meth:`envs.boss_fight.BossFightVectorEnv.switch_style`). An
    :class:`envs.bosses.AdaptiveBoss` is told every step's outcome (``observe``).
    """
    if fights < 1:
        raise ValueError(f"fights must be >= 1, got {fights}.")
    if series < 1:
        raise ValueError(f"series must be >= 1 (players fighting side by side), got {series}.")
    envs = min(series, fights)
    env = BossFightVectorEnv(num_envs=envs, game=game, player=player, objective=objective,
                             difficulty=difficulty, environment=environment,
                             fights_per_player=math.ceil(fights / envs))
    observations, _ = env.reset(seed=seed)
    collector = _Collector(env, _quotas(fights, envs), progress)
    learner = boss if isinstance(boss, AdaptiveBoss) else None
    if learner is not None:
        learner.start_fights()
    while not collector.done:
        masks = env.action_masks()
        moves = np.asarray(boss.select_moves(observations, masks.copy()), dtype=np.int64)
        collector.count(moves, masks, boss.name)
        chosen_on = observations
        observations, rewards, terminated, truncated, info = env.step(moves)
        if learner is not None:
            learner.observe(chosen_on, moves, rewards, terminated | truncated,
                            _with_persona_names(info, env.persona_names), truncated)
        if "final_info" in info:
            switching = collector.collect(info, terminated, switch)
            if switch is not None and len(switching):
                env.switch_style(switch.player, switching)
    return collector.results


class StyleSwitch(NamedTuple):
    """Players change style mid-series: after their ``after``-th fight they play ``player``."""

    after: int
    player: Any


def _with_persona_names(info: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The step's info with ``final_info["persona"]`` as names (memories are tagged by name)."""
    if "final_info" not in info:
        return info
    final = dict(info["final_info"])
    final["persona"] = np.asarray(names)[np.asarray(final["persona"], dtype=np.int64)]
    return {**info, "final_info": final}


def _quotas(fights: int, envs: int) -> np.ndarray:
    """Fights each env contributes: as even as possible, summing to ``fights``."""
    base, extra = divmod(fights, envs)
    return base + (np.arange(envs) < extra)


class _Collector:
    """Per-env move counts between fight ends, and the results of ended fights."""

    def __init__(self, env: BossFightVectorEnv, quotas: np.ndarray,
                 progress: Callable[[int], object] | None) -> None:
        self.names = _Names(env)
        self.quotas = quotas
        self.taken = np.zeros_like(quotas)
        self.moves_used = np.zeros((env.num_envs, len(env.setup.game.moves)), dtype=np.int64)
        self.progress = progress
        self.results: list[FightResult] = []

    @property
    def done(self) -> bool:
        return bool((self.taken >= self.quotas).all())

    def count(self, moves: np.ndarray, masks: np.ndarray, boss: str) -> None:
        rows = np.arange(len(moves))
        if moves.shape != rows.shape or not masks[rows, moves].all():
            raise ValueError(f"boss {boss!r} returned {moves.tolist()} for masks "
                             f"{masks.tolist()}: a BossPolicy must return one legal move per env.")
        self.moves_used[rows, moves] += 1

    def collect(self, info: dict[str, Any], terminated: np.ndarray,
                switch: StyleSwitch | None = None) -> np.ndarray:
        """Record the wanted fights that ended; returns the envs whose players switch now."""
        final = info["final_info"]
        ended = np.flatnonzero(info["_final_info"])
        wanted = ended[self.taken[ended] < self.quotas[ended]]
        for i in wanted:
            self.results.append(FightResult(
                persona=self.names.persona(final["persona"][i]),
                difficulty=self.names.difficulty(final["difficulty"][i]),
                environment=self.names.environment(final["environment"][i]),
                player_won=bool(final["player_won"][i]),
                timed_out=not bool(terminated[i]),
                fight_seconds=float(final["fight_seconds"][i]),
                hp_margin=float(final["hp_margin"][i]),
                moves_used=tuple(int(c) for c in self.moves_used[i]),
                observed=self.names.observed(info["final_obs"][i]),
                player=int(i),
                series_fight=int(self.taken[i]),
            ))
        self.taken[wanted] += 1
        self.moves_used[ended] = 0
        if self.progress is not None and len(wanted):
            self.progress(len(wanted))
        if switch is None:
            return wanted[:0]
        return wanted[self.taken[wanted] == switch.after]


class _Names:
    """Turns the indices in ``final_info`` into names, and observations into contexts."""

    def __init__(self, env: BossFightVectorEnv) -> None:
        self.env = env  # its persona_names grow when players switch style
        self.layout = env.layout

    def persona(self, index: Any) -> str:
        return self.env.persona_names[int(index)]

    def difficulty(self, index: Any) -> str:
        return self.layout.difficulty_levels[int(index)]

    def environment(self, index: Any) -> str:
        return self.layout.environments[int(index)]

    def observed(self, observation: np.ndarray) -> PlayerContext:
        return observed_player(self.layout, observation)


def observed_player(layout: ObservationLayout, observation: np.ndarray) -> PlayerContext:
    """The player context encoded in one observation vector, back in protocol units."""
    columns: dict[str, Any] = {}
    for feature in layout.features:
        values = np.asarray(observation[feature.start:feature.start + feature.size], dtype=float)
        if feature.name in VALUE_SCALES:
            columns[feature.name] = values[0] / VALUE_SCALES[feature.name]
        elif feature.name in ("frequent_actions", "attack_patterns"):
            columns[feature.name] = values
        else:
            columns[feature.name] = int(values.argmax())
    # Observations store counts as fractions (deaths / 5, level / 10): round them back.
    columns["recent_deaths"] = round(columns["recent_deaths"])
    columns["equipment_level"] = round(columns["equipment_level"])
    return describe_context(columns)
