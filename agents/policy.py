"""A trained Stable-Baselines3 agent as a :class:`envs.bosses.BossPolicy`.

An actor-critic boss (PPO, A2C, MaskablePPO) plays the way it was trained: it draws each move
from its action probabilities renormalized over the legal moves, from its own seeded generator
(same seed, same fights). ``deterministic=True`` plays the most probable legal move instead;
a DQN boss always plays its highest-valued legal move. Illegal moves are masked out first, so
the boss never picks one, whatever the network learnt. Deterministic play is not what the
policy was optimized for: a boss that mixes moves to keep a fight close turns into one that
always blocks, and an adaptive player learns its fixed pattern.

``explain(observations, action_masks)`` says what the boss weighed at each decision (an
:class:`envs.replay.Explanation`: the action probabilities or Q-values per move and, for an
actor-critic, the critic's state value); replays (:func:`envs.replay.record_fight`) show it.

>>> boss = load_policy("model.zip")
>>> moves = boss.select_moves(observations, action_masks)
>>> boss.explain(observations, action_masks)[0].values  # what it weighed, per move
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.dqn.policies import DQNPolicy

from agents.factory import load_agent
from envs.bosses import masked_argmax, masked_sample
from envs.replay import Explanation

ACTOR_CRITICS = ActorCriticPolicy | MaskableActorCriticPolicy
"""Policies whose action probabilities rank the moves (PPO, A2C; MaskablePPO)."""


class SB3BossPolicy:
    """Batched, masked move choice of an SB3 model (PPO, A2C, MaskablePPO, DQN)."""

    def __init__(self, model: BaseAlgorithm, name: str, *, deterministic: bool = False,
                 seed: int = 0) -> None:
        if not isinstance(model.policy, ACTOR_CRITICS | DQNPolicy):
            raise TypeError(f"SB3BossPolicy needs an actor-critic (PPO, A2C, MaskablePPO) or "
                            f"DQN model, got a {type(model.policy).__name__} policy.")
        self.model = model
        self.name = name
        self.deterministic = deterministic or isinstance(model.policy, DQNPolicy)
        self.rng = np.random.default_rng(seed)

    def move_values(self, observations: np.ndarray) -> np.ndarray:
        """(n, moves): action probabilities (actor-critic) or Q-values (DQN), unmasked."""
        policy = self.model.policy
        policy.set_training_mode(False)
        obs, _ = policy.obs_to_tensor(np.asarray(observations, dtype=np.float32))
        with torch.no_grad():
            if isinstance(policy, DQNPolicy):
                values = policy.q_net(obs)
            else:
                assert isinstance(policy, ACTOR_CRITICS)
                distribution = policy.get_distribution(obs).distribution
                assert isinstance(distribution, torch.distributions.Categorical)
                values = distribution.probs
        return values.cpu().numpy().astype(np.float64)

    def state_values(self, observations: np.ndarray) -> np.ndarray | None:
        """(n,): the critic's value of each observation; None for a DQN (it has no critic)."""
        policy = self.model.policy
        if isinstance(policy, DQNPolicy):
            return None
        assert isinstance(policy, ACTOR_CRITICS)
        policy.set_training_mode(False)
        obs, _ = policy.obs_to_tensor(np.asarray(observations, dtype=np.float32))
        with torch.no_grad():
            values = policy.predict_values(obs)
        return values.cpu().numpy().astype(np.float64).reshape(-1)

    @property
    def value_kind(self) -> str:
        """What :meth:`move_values` are and how they are played, for explanations."""
        if isinstance(self.model.policy, DQNPolicy):
            return "Q-values (plays the highest legal)"
        if self.deterministic:
            return "action probabilities (plays the most probable legal)"
        return "action probabilities (draws among the legal moves)"

    def explain(self, observations: np.ndarray,
                action_masks: np.ndarray) -> list[Explanation]:
        """Per row, the values :meth:`select_moves` weighs (unmasked) and the state value."""
        values = self.move_values(observations)
        states = self.state_values(observations)
        return [Explanation(kind=self.value_kind, values=tuple(map(float, row)),
                            scalars={} if states is None else {"state value": float(states[i])})
                for i, row in enumerate(values)]

    def select_moves(self, observations: np.ndarray, action_masks: np.ndarray) -> np.ndarray:
        """Per env, a legal move (drawn, or the most valued one), as (n,) int64."""
        values = self.move_values(observations)
        if self.deterministic:
            return masked_argmax(values, action_masks)
        return masked_sample(values, action_masks, self.rng)


def load_policy(path: str | Path, name: str | None = None, *, deterministic: bool = False,
                seed: int = 0) -> SB3BossPolicy:
    """A saved model (``model.save``) as a boss policy, named after the file by default."""
    return SB3BossPolicy(load_agent(path), name or Path(path).stem,
                         deterministic=deterministic, seed=seed)
