"""How engaging a group of fights was, against the designer's targets for a difficulty level.

A designer states what a level's fights should feel like in the game file
(:class:`envs.game.Difficulty`): the player's win rate (``target_player_win_rate`` ±
``win_rate_tolerance``), how close the end should be (``target_hp_margin``) and how long a
fight should last (``target_duration``). :func:`summarize_fights` measures a group of
:class:`envs.fights.FightResult` against those targets and returns a :class:`FightSummary`.

The engagement score (in [0, 1], 1 = exactly what the designer asked for) is::

    engagement_score = 0.5 * win_rate_score + 0.25 * close_share + 0.25 * duration_share

- ``win_rate_score``: 1 while the player win rate is inside the band target ± tolerance,
  falling linearly to 0 at the farthest win rate possible from the band (0 or 1);
- ``close_share``: fraction of fights that ended with |boss HP - player HP| (fractions)
  <= ``target_hp_margin``;
- ``duration_share``: fraction of fights whose duration lies in ``target_duration``.

The win rate counts half because it is the one number a player notices across a session;
closeness and length are what make each fight feel fair.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from envs.fights import FightResult
from envs.game import Difficulty

WILSON_Z = 1.959963984540054
"""The normal quantile of a two-sided 95% interval."""
EXPLOIT_SHARE = 0.4
"""A boss that spends more than this share of its moves on one move is flagged as exploiting."""
SCORE_WEIGHTS = (0.5, 0.25, 0.25)
"""Weights of win-rate score, close share and duration share in the engagement score."""


@dataclass(frozen=True)
class FightSummary:
    """Statistics of a group of fights and how they compare with the level's targets."""

    fights: int
    player_wins: int
    player_win_rate: float
    win_rate_low: float
    """Lower end of the 95% Wilson interval of the player win rate."""
    win_rate_high: float
    """Upper end of the 95% Wilson interval of the player win rate."""
    timeout_rate: float
    """Share of fights that reached the time limit with nobody down."""
    mean_duration: float
    """Mean fight duration, seconds."""
    mean_hp_margin: float
    """Mean boss HP fraction minus player HP fraction at the end (> 0: the boss was ahead)."""
    close_share: float
    """Share of fights with |margin| <= the level's target_hp_margin."""
    duration_share: float
    """Share of fights whose duration lies inside the level's target_duration."""
    target_win_rate: float
    win_rate_tolerance: float
    win_rate_in_band: bool
    """Whether the player win rate lies in target ± tolerance."""
    win_rate_score: float
    engagement_score: float
    """See the module docstring: 1 means the fights are exactly what the designer asked for."""
    move_mix: dict[str, float]
    """Share of the boss's moves spent on each move, in the game's move order."""
    dominant_move: str
    dominant_share: float
    exploit: bool
    """Whether one move is more than EXPLOIT_SHARE of the boss's moves."""

    def as_row(self) -> dict[str, Any]:
        """The summary as one flat table row (the move mix as ``mix_<move>`` columns)."""
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "move_mix"}
        row.update({f"mix_{move}": share for move, share in self.move_mix.items()})
        return row


def wilson_interval(successes: int, trials: int, z: float = WILSON_Z) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion ((0, 1) when there are no trials)."""
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}.")
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    # The interval always holds p; min/max only undo rounding at p = 0 or 1.
    return max(0.0, min(centre - half, p)), min(1.0, max(centre + half, p))


def win_rate_score(win_rate: float, target: float, tolerance: float) -> float:
    """1 inside target ± tolerance, falling linearly to 0 at the farthest possible win rate."""
    outside = max(abs(win_rate - target) - tolerance, 0.0)
    room = max(target, 1.0 - target) - tolerance
    if room <= 0:
        return 1.0
    return float(np.clip(1.0 - outside / room, 0.0, 1.0))


def engagement_score(win_score: float, close_share: float, duration_share: float) -> float:
    """The weighted mean of the three parts (see the module docstring)."""
    w_win, w_close, w_duration = SCORE_WEIGHTS
    return w_win * win_score + w_close * close_share + w_duration * duration_share


def move_mix(fights: Sequence[FightResult], moves: Sequence[str]) -> dict[str, float]:
    """Share of each move among all the boss's moves in ``fights``."""
    counts = np.sum([f.moves_used for f in fights], axis=0, dtype=float).reshape(-1)
    if len(counts) != len(moves):
        raise ValueError(f"fights used {len(counts)} moves but {len(moves)} move names were "
                         f"given ({', '.join(moves)}); pass the game's move_names.")
    total = counts.sum()
    shares = counts / total if total > 0 else counts
    return {move: float(share) for move, share in zip(moves, shares, strict=True)}


def summarize_fights(fights: Sequence[FightResult], level: Difficulty,
                     moves: Sequence[str]) -> FightSummary:
    """Measure ``fights`` against the targets of ``level``; ``moves`` are the game's moves."""
    if not fights:
        raise ValueError("no fights to summarize: play at least one fight.")
    won = np.array([f.player_won for f in fights], dtype=bool)
    seconds = np.array([f.fight_seconds for f in fights], dtype=float)
    margins = np.array([f.hp_margin for f in fights], dtype=float)
    low, high = wilson_interval(int(won.sum()), len(won))
    win_rate = float(won.mean())
    close = float(np.mean(np.abs(margins) <= level.target_hp_margin))
    shortest, longest = level.target_duration
    in_duration = float(np.mean((seconds >= shortest) & (seconds <= longest)))
    win_score = win_rate_score(win_rate, level.target_player_win_rate, level.win_rate_tolerance)
    mix = move_mix(fights, moves)
    dominant = max(mix, key=mix.__getitem__)
    return FightSummary(
        fights=len(fights), player_wins=int(won.sum()), player_win_rate=win_rate,
        win_rate_low=low, win_rate_high=high,
        timeout_rate=float(np.mean([f.timed_out for f in fights])),
        mean_duration=float(seconds.mean()), mean_hp_margin=float(margins.mean()),
        close_share=close, duration_share=in_duration,
        target_win_rate=level.target_player_win_rate,
        win_rate_tolerance=level.win_rate_tolerance,
        win_rate_in_band=abs(win_rate - level.target_player_win_rate)
        <= level.win_rate_tolerance + 1e-12,
        win_rate_score=win_score,
        engagement_score=engagement_score(win_score, close, in_duration),
        move_mix=mix, dominant_move=dominant, dominant_share=mix[dominant],
        exploit=mix[dominant] > EXPLOIT_SHARE,
    )
