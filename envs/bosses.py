"""Boss policies: the one Protocol for "picks a boss move", and the scripted baselines."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class BossPolicy(Protocol):
    """Anything that picks boss moves: scripted bosses, trained agents, the served policy.

    Batched: ``observations`` is (n, observation size) float32 and ``action_masks`` is
    (n, moves) bool (legal moves); the result is (n,) integer move indices, each legal.
    """

    name: str

    def select_moves(self, observations: np.ndarray, action_masks: np.ndarray) -> np.ndarray: ...
