"""How fast a boss adapts to a player: the metrics of :mod:`experiments.adaptation`, pure numpy.

A *series* is ``players`` players (side by side) each fighting the same boss ``fights`` times in
a row. Its *win curve* is, per place ``i`` in the series, the share of players who won their
``i``-th fight; the *smoothed curve* is its trailing mean over ``window`` fights (the first
``window - 1`` values average the fights so far). The *band* is the difficulty level's target
player win rate ± its tolerance (duel, normal: 0.5 ± 0.1), edges included (up to 1e-9, so
0.6 counts as inside 0.5 ± 0.1 whatever the float rounding).

- :func:`adaptation_fights`: the smallest ``t`` such that the smoothed curve is in the band at
  every ``i >= max(t, window - 1)`` to the series' end (values before a full window are not
  judged). A boss that is never out of the band afterwards scores 0; one that is still out of
  it at the last fight never settled: it scores the series' length (censored) and
  ``settled`` is False.
- :func:`recovery_fights`: after a style switch before fight ``switch`` (0-based), the smallest
  ``r >= 0`` such that the smoothed curve is in the band at every ``i >= switch + r``; censored
  at the remaining length ``fights - switch`` (``settled`` False). The trailing window still
  holds pre-switch fights for ``window - 1`` fights after the switch, on purpose: a boss whose
  win rate does not move at the switch has nothing to recover from and scores 0.
- :func:`win_rate_error`: the mean over ``i`` of ``|win curve[i] - target|``.

Over seeds, :func:`spread` gives the median and the interquartile range (25th to 75th
percentile, numpy's linear interpolation) and :func:`adapts_twice_as_fast` is the target check
of a memory boss against the same agent without memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

BAND_EPSILON = 1e-9
"""Slack on the band's edges, so that a mean of 0/1 outcomes equal to an edge is inside."""


class Band(NamedTuple):
    """The player win rates a difficulty level aims for: ``target ± tolerance``."""

    target: float
    tolerance: float

    def contains(self, values: np.ndarray) -> np.ndarray:
        """Which ``values`` are inside the band (edges included), as bool."""
        distance = np.abs(np.asarray(values, dtype=np.float64) - self.target)
        return distance <= self.tolerance + BAND_EPSILON


class Settling(NamedTuple):
    """Fights until a curve stays in the band, and whether it did before the end."""

    fights: int
    """Fights needed (the remaining length when it never settled: censored)."""
    settled: bool


class Spread(NamedTuple):
    """The median and the interquartile range of a metric over seeds."""

    median: float
    q25: float
    q75: float


class PairVerdict(NamedTuple):
    """The target check of a memory boss against the same agent without memory."""

    memory: Spread
    baseline: Spread
    at_most_half: bool
    """The memory boss's median is at most half the baseline's."""
    iqrs_apart: bool
    """The memory boss's 75th percentile is below the baseline's 25th (no overlap)."""

    @property
    def passed(self) -> bool:
        return self.at_most_half and self.iqrs_apart


def outcome_matrix(player: np.ndarray, series_fight: np.ndarray, won: np.ndarray,
                   players: int, fights: int) -> np.ndarray:
    """(players, fights) bool: ``won[k]`` at (``player[k]``, ``series_fight[k]``).

    Every cell must be filled exactly once (every player played the whole series).
    """
    rows = np.asarray(player, dtype=np.int64)
    columns = np.asarray(series_fight, dtype=np.int64)
    outcomes = np.asarray(won, dtype=bool)
    if not rows.shape == columns.shape == outcomes.shape or rows.ndim != 1:
        raise ValueError(f"player, series_fight and won must be 1-d and of one length, got "
                         f"shapes {rows.shape}, {columns.shape} and {outcomes.shape}.")
    if len(rows) and (rows.min() < 0 or rows.max() >= players or columns.min() < 0
                      or columns.max() >= fights):
        raise ValueError(f"a fight lies outside the {players} players x {fights} fights grid.")
    counts = np.zeros((players, fights), dtype=np.int64)
    np.add.at(counts, (rows, columns), 1)
    if (counts != 1).any():
        missing, repeated = int((counts == 0).sum()), int((counts > 1).sum())
        raise ValueError(f"each player must have played each of the {fights} fights once: "
                         f"{missing} missing, {repeated} repeated.")
    matrix = np.zeros((players, fights), dtype=bool)
    matrix[rows, columns] = outcomes
    return matrix


def win_curve(outcomes: np.ndarray) -> np.ndarray:
    """Per place in the series, the share of players who won: (players, fights) -> (fights,)."""
    matrix = np.asarray(outcomes, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] < 1:
        raise ValueError(f"outcomes must be (players, fights) with a player at least, got "
                         f"shape {matrix.shape}.")
    return matrix.mean(axis=0)


def smoothed(curve: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` values (over the values so far for the first ones)."""
    values = np.asarray(curve, dtype=np.float64)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}.")
    sums = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def _stays_from(inside: np.ndarray, first: int) -> int | None:
    """The smallest index >= ``first`` from which ``inside`` holds to the end; None if it
    does not hold at the last index."""
    outside = np.flatnonzero(~inside[first:])
    if not len(outside):
        return first
    last = first + int(outside[-1])
    return None if last == len(inside) - 1 else last + 1


def adaptation_fights(curve: np.ndarray, band: Band, window: int) -> Settling:
    """Fights until the smoothed win curve stays in the band (see the module docstring)."""
    values = np.asarray(curve, dtype=np.float64)
    if not 1 <= window <= len(values):
        raise ValueError(f"window must be between 1 and the series' {len(values)} fights, got "
                         f"{window}.")
    stays = _stays_from(band.contains(smoothed(values, window)), window - 1)
    if stays is None:
        return Settling(len(values), settled=False)
    # In the band from the first full window on: any t <= window - 1 qualifies, so 0.
    return Settling(0 if stays == window - 1 else stays, settled=True)


def recovery_fights(curve: np.ndarray, band: Band, window: int, switch: int) -> Settling:
    """Fights after the style switch until the smoothed curve stays in the band."""
    values = np.asarray(curve, dtype=np.float64)
    if not 0 < switch < len(values):
        raise ValueError(f"switch must be inside the series (1 to {len(values) - 1}), got "
                         f"{switch}.")
    stays = _stays_from(band.contains(smoothed(values, window)), switch)
    if stays is None:
        return Settling(len(values) - switch, settled=False)
    return Settling(stays - switch, settled=True)


def win_rate_error(curve: np.ndarray, target: float) -> float:
    """Mean absolute distance of the win curve from the target win rate."""
    return float(np.mean(np.abs(np.asarray(curve, dtype=np.float64) - target)))


def spread(values: Sequence[float] | np.ndarray) -> Spread:
    """Median and interquartile range over seeds."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise ValueError("spread needs at least one value (one seed).")
    q25, median, q75 = np.percentile(array, [25, 50, 75])
    return Spread(float(median), float(q25), float(q75))


def adapts_twice_as_fast(memory: Sequence[float] | np.ndarray,
                         baseline: Sequence[float] | np.ndarray) -> PairVerdict:
    """Adaptation fights over seeds: memory boss vs the same agent without memory.

    Passes when the memory boss's median is at most half the baseline's and the IQRs do not
    overlap (the memory boss's 75th percentile strictly below the baseline's 25th).
    """
    mine, theirs = spread(memory), spread(baseline)
    return PairVerdict(mine, theirs, at_most_half=mine.median <= theirs.median / 2,
                       iqrs_apart=mine.q75 < theirs.q25)
