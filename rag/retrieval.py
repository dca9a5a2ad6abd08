"""What the episodic memory's neighbours say about each boss move: pure numpy, no FAISS.

The training wrapper, the value-blended policy and the real-time server all turn the
memory's search results into numbers through these functions, so they cannot disagree.

Search results (:class:`MoveNeighbours` from ``EpisodicMemory.search`` and :class:`Neighbours`
from ``EpisodicMemory.search_any``) are padded: a missing neighbour has id ``-1``, squared
distance ``inf`` and value ``0``.

Kernel (Neural Episodic Control, Pritzel et al. 2017). A neighbour at squared L2 distance
``s_i`` gets the weight ``w_i = (1 / (s_i + delta)) / sum_j 1 / (s_j + delta)`` over the valid
neighbours of the same query and move; padding gets weight 0, and a row without any valid
neighbour gets all zeros. ``delta`` keeps an exact match from taking all the weight.

Features (:func:`retrieval_features`), per query and move, all finite:

==========  =====================================================================================
feature     meaning
==========  =====================================================================================
values      the kernel-weighted mean of the neighbours' values (returns); 0 without neighbours
counts      how many valid neighbours were found (0..k)
distances   the mean squared distance of the valid neighbours squashed to [0, 1):
            ``d / (d + distance_scale)``; exactly 1.0 without neighbours
==========  =====================================================================================

:meth:`RetrievalFeatures.as_array` stacks them as ``(n, moves, 3)`` float32 with
``counts / k``, so two of the three lie in [0, 1] (``values`` is on the scale of the returns).

Blending (Ephemeral Value Adjustments, Hansen et al. 2018): :func:`blend_values` computes
``Q = lam_eff * Q_learned + (1 - lam_eff) * Q_memory`` with

    closeness = (min(counts, k) / k) * (1 - distances)      in [0, 1]
    lam_eff   = 1 - (1 - lam) * closeness                    in [lam, 1]

so a move with a full set of neighbours at distance 0 gets EVA's ``lam``, and a move with no
neighbours, or only far ones, falls back to the learned value.

Steering (:func:`steering_direction`, :func:`steered_values`). A memory may store each
move's *effectiveness* (its effect on the HP margin, > 0 when it helped the boss) rather than a
return. Whether an effective move is worth playing depends on the player: when their recent win
rate is above the level's target the boss wants effective moves, below it gentle ones. So

    direction = clip((player_win_rate - target) / tolerance, -limit, limit)
    value     = direction * effect

the same steering the engagement reward pays for at a fight's end (``envs.kernel``): a move's
value is its effect when the player wins too much, minus its effect when they win too little,
and about 0 on target (every move alike).

Example::

    hits = memory.search(embeddings, k=8)                 # (n, moves, k)
    features = retrieval_features(hits)
    q = blend_values(q_learned, features.values, features.counts, features.distances,
                     lam=0.5, k=8)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

DEFAULT_DELTA = 1e-3
DEFAULT_DISTANCE_SCALE = 1.0
DEFAULT_STEER_LIMIT = 1.0
BAND_SLACK = 1e-6
"""In tolerances: a win rate on the dead zone's edge (e.g. 0.6 in 0.5 ± 0.1, read off float32
observations) counts as inside."""


class MoveNeighbours(NamedTuple):
    """The k nearest entries of each move for each query; arrays shaped ``(n, moves, k)``."""

    ids: np.ndarray
    """int64 entry ids, nearest first; -1 pads a move with fewer than k entries."""
    distances: np.ndarray
    """float32 squared L2 distances; inf on padding."""
    values: np.ndarray
    """float32 stored values (the return that followed the move); 0 on padding."""


class Neighbours(NamedTuple):
    """The k nearest entries of any move for each query; arrays shaped ``(n, k)``."""

    ids: np.ndarray
    """int64 entry ids, nearest first; -1 on padding."""
    distances: np.ndarray
    """float32 squared L2 distances; inf on padding."""
    moves: np.ndarray
    """int64 boss move of each entry; -1 on padding."""
    values: np.ndarray
    """float32 stored values; 0 on padding."""
    outcomes: np.ndarray
    """float32 stored outcomes (1 boss won, 0 player won, 0.5 timeout); 0 on padding."""


class RetrievalFeatures(NamedTuple):
    """Per query and move: what the memory's neighbours say; arrays shaped ``(n, moves)``."""

    values: np.ndarray
    """float32 kernel-weighted neighbour value; 0 without neighbours."""
    counts: np.ndarray
    """int64 number of valid neighbours, 0..k."""
    distances: np.ndarray
    """float32 squashed mean squared distance in [0, 1]; 1.0 without neighbours."""
    k: int
    """How many neighbours were asked for (the largest possible count)."""

    def as_array(self) -> np.ndarray:
        """``(n, moves, 3)`` float32: values, counts / k, distances (a network's input)."""
        return np.stack([self.values, self.counts / self.k, self.distances], axis=-1).astype(
            np.float32)


def kernel_weights(squared_distances: np.ndarray, delta: float = DEFAULT_DELTA) -> np.ndarray:
    """NEC's normalized inverse-distance weights over the last axis.

    ``w_i = (1 / (s_i + delta)) / sum_j 1 / (s_j + delta)`` for squared distances ``s``;
    ``inf`` (padding) gets 0 and a row of padding only gets all zeros, never NaN.
    """
    _check_delta(delta)
    distances = np.asarray(squared_distances, dtype=np.float64)
    return _kernel_weights(distances, np.isfinite(distances), delta)


def _check_delta(delta: float) -> None:
    if delta <= 0:
        raise ValueError(f"delta must be > 0 (got {delta}); NEC uses 1e-3.")


def _kernel_weights(distances: np.ndarray, valid: np.ndarray, delta: float) -> np.ndarray:
    """:func:`kernel_weights` of float64 ``distances`` whose finite entries are ``valid``."""
    kernel = np.where(valid, 1.0 / (np.maximum(distances, 0.0) + delta), 0.0)
    total = kernel.sum(axis=-1, keepdims=True)
    return np.divide(kernel, total, out=np.zeros(kernel.shape), where=total > 0)


def retrieval_features(neighbours: MoveNeighbours, delta: float = DEFAULT_DELTA,
                       distance_scale: float = DEFAULT_DISTANCE_SCALE) -> RetrievalFeatures:
    """Kernel-weighted value, neighbour count and squashed mean distance per query and move.

    ``distance_scale`` is the mean squared distance that squashes to 0.5: set it to a typical
    squared distance between neighbouring encounters in the embedding space.
    """
    if distance_scale <= 0:
        raise ValueError(f"distance_scale must be > 0 (got {distance_scale}): use a typical "
                         f"squared distance between neighbouring keys.")
    distances = np.asarray(neighbours.distances, dtype=np.float64)
    valid = np.isfinite(distances)
    values = np.where(valid, np.asarray(neighbours.values, dtype=np.float64), 0.0)
    _check_delta(delta)
    value = (_kernel_weights(distances, valid, delta) * values).sum(axis=-1)
    count = valid.sum(axis=-1)
    distance_sum = np.where(valid, distances, 0.0).sum(axis=-1)
    mean_distance = distance_sum / np.maximum(count, 1)
    squashed = np.where(count > 0, mean_distance / (mean_distance + distance_scale), 1.0)
    return RetrievalFeatures(values=value.astype(np.float32), counts=count.astype(np.int64),
                             distances=squashed.astype(np.float32), k=distances.shape[-1])


def blend_values(q_learned: np.ndarray, q_memory: np.ndarray, counts: np.ndarray,
                 distances: np.ndarray, lam: float, k: int) -> np.ndarray:
    """EVA's blend, trusting the memory only as much as it has close neighbours.

    ``Q = lam_eff * q_learned + (1 - lam_eff) * q_memory`` with
    ``lam_eff = 1 - (1 - lam) * (min(counts, k) / k) * (1 - distances)``, where ``distances``
    are the squashed mean distances in [0, 1] (:attr:`RetrievalFeatures.distances`). All arrays
    are ``(n, moves)``; ``lam = 1`` ignores the memory. The result is float32 when
    ``q_learned`` is float32 (a network's output), float64 otherwise.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1] (got {lam}): 1 ignores the memory, "
                         f"0 trusts close memories fully.")
    if k < 1:
        raise ValueError(f"k must be >= 1 (got {k}): pass the k the memory was searched with.")
    learned = np.asarray(q_learned, dtype=np.float64)
    memory = np.asarray(q_memory, dtype=np.float64)
    if learned.shape != memory.shape:
        raise ValueError(f"q_learned {learned.shape} and q_memory {memory.shape} must have the "
                         f"same (n, moves) shape.")
    lam_eff = blend_weights(counts, distances, lam, k)
    blended = lam_eff * learned + (1.0 - lam_eff) * memory
    return blended.astype(np.float32 if np.asarray(q_learned).dtype == np.float32 else np.float64)


def blend_weights(counts: np.ndarray, distances: np.ndarray, lam: float,
                  k: int) -> np.ndarray:
    """EVA's effective lambda per query and move, the learned value's weight in
    :func:`blend_values`: ``1 - (1 - lam) * (min(counts, k) / k) * (1 - distances)``."""
    fill = np.minimum(np.asarray(counts), k) / k
    closeness = fill * (1.0 - np.clip(np.asarray(distances, dtype=np.float64), 0.0, 1.0))
    return 1.0 - (1.0 - lam) * closeness


def steering_direction(player_win_rate: ArrayLike, target: ArrayLike, tolerance: ArrayLike,
                       limit: float = DEFAULT_STEER_LIMIT,
                       dead_zone: float = 0.0) -> np.ndarray:
    """How much the boss should press, per query: ``clip((win - target) / tolerance, ±limit)``.

    Positive when the player's recent win rate is above the target (the boss wants effective
    moves), negative below it (gentle moves), 0 on target; ``±1`` at the band's edges
    (``target ± tolerance``), clipped at ``±limit`` beyond. ``dead_zone`` (in tolerances)
    leaves the boss neutral near the target: ``x = (win - target) / tolerance`` becomes
    ``sign(x) * max(|x| - dead_zone, 0)`` before clipping (1: no push inside the band, edges
    included). Arrays broadcast; float64.
    """
    if not (np.isfinite(limit) and limit > 0):
        raise ValueError(f"limit must be a finite number > 0 (got {limit}): 1 caps the "
                         f"direction at the band's edges.")
    if not (np.isfinite(dead_zone) and dead_zone >= 0):
        raise ValueError(f"dead_zone must be a finite number >= 0 (got {dead_zone}): 0 pushes "
                         f"whenever the win rate is off target, 1 only outside the band.")
    spread = np.asarray(tolerance, dtype=np.float64)
    if (spread <= 0).any():
        raise ValueError(f"tolerance must be > 0 (got {spread}): the half-width of the "
                         f"level's target win-rate band, e.g. 0.1.")
    offset = np.asarray(player_win_rate, dtype=np.float64) - np.asarray(target, dtype=np.float64)
    scaled = offset / spread
    beyond = np.abs(scaled) - dead_zone
    pushed = np.where(beyond > BAND_SLACK, np.sign(scaled) * beyond, 0.0)
    return np.clip(np.where(dead_zone > 0, pushed, scaled), -limit, limit)


def steered_values(effects: ArrayLike, direction: ArrayLike) -> np.ndarray:
    """Memory values of moves from their remembered effects: ``direction * effect``.

    ``effects`` is ``(n, moves)`` (e.g. :attr:`RetrievalFeatures.values` of a memory of
    effects), ``direction`` ``(n,)`` from :func:`steering_direction`; returns ``(n, moves)``
    of ``effects``' dtype.
    """
    values = np.asarray(effects)
    weights = np.asarray(direction, dtype=np.float64).reshape(-1)
    if values.ndim != 2 or len(weights) != len(values):
        raise ValueError(f"effects must be (n, moves) and direction (n,), got shapes "
                         f"{values.shape} and {np.shape(direction)}.")
    return (values * weights[:, None]).astype(values.dtype)
