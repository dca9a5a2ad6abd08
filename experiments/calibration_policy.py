"""The served boss, batched for simulation: what calibration plays candidate players against.

:func:`served_policy` turns ``policy=`` (a bundle, or a scripted boss name) into a batched
:class:`envs.bosses.BossPolicy` deciding as the server's brain (``serving/brain.py``) does,
less the online memory (which starts empty in a fresh bundle and only nudges choices):

- a scripted bundle or name: the scripted boss, with the brain's exploration
  (``serving.brain.SCRIPTED_EXPLORATION`` of the preference spread over the legal moves);
- ``actor_critic``: the ONNX policy's masked softmax, sampled; ``q_values``: its legal argmax;
- ``memory_only``: uniform over the legal moves (the memory alone decides on the server).

Bundles whose network reads retrieval inputs (``rag=episodic``) need the memory to decide
and are refused with an explanation.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from envs.bosses import (
    SCRIPTED_BOSSES,
    BossPolicy,
    RandomBoss,
    make_boss,
    masked_argmax,
    masked_sample,
)
from envs.game import GameDefinition
from serving.brain import SCRIPTED_EXPLORATION, onnx_session
from serving.bundle import Bundle, load_bundle


class OnnxBoss:
    """A bundle's ONNX policy over a batch of observations."""

    def __init__(self, bundle: Bundle, seed: int) -> None:
        assert bundle.policy is not None, "scripted bundles have no network"
        self.name = bundle.manifest.policy_version
        self.session = onnx_session(bundle.policy)
        self.sample = bundle.manifest.policy.kind == "actor_critic"
        self.rng = np.random.default_rng(seed)

    def select_moves(self, observations: np.ndarray, action_masks: np.ndarray) -> np.ndarray:
        scores = self.session.run(["scores"], {
            "observation": np.asarray(observations, dtype=np.float32)})[0].astype(np.float64)
        if not self.sample:
            return masked_argmax(scores, action_masks)
        logits = np.where(action_masks, scores, -np.inf)
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        return masked_sample(weights / weights.sum(axis=1, keepdims=True), action_masks,
                             self.rng)


def served_policy(policy: str, game: Callable[[], GameDefinition],
                  seed: int) -> tuple[GameDefinition, BossPolicy, float]:
    """(the game, the batched boss, its exploration) for ``policy=``; ``game`` gives the game
    a scripted boss name plays."""
    if policy in SCRIPTED_BOSSES:
        definition = game()
        return definition, make_boss(policy, definition, seed), SCRIPTED_EXPLORATION
    try:
        bundle = load_bundle(policy)
    except ValueError as error:
        raise ValueError(f"policy={policy!r} is neither a scripted boss ("
                         f"{', '.join(SCRIPTED_BOSSES)}) nor a loadable bundle: {error}"
                         ) from error
    spec = bundle.manifest.policy
    if spec.retrieval_inputs:
        raise ValueError(f"policy={policy!r}: its network reads retrieval inputs (rag=episodic), "
                         f"which need the server's memory; calibrate against a bundle without "
                         f"them, or against the scripted boss closest to it.")
    if spec.kind == "scripted":
        assert spec.scripted is not None  # read_manifest checks it
        return bundle.game, make_boss(spec.scripted, bundle.game, seed), SCRIPTED_EXPLORATION
    if bundle.manifest.retrieval.mode == "memory_only":
        return bundle.game, RandomBoss(seed), 0.0
    return bundle.game, OnnxBoss(bundle, seed), 0.0
