"""Build and load the Stable-Baselines3 agents that learn to be bosses.

>>> from agents.config import PPOConfig
>>> from agents.vec_env import BossFightVecEnv
>>> model = make_agent(PPOConfig(), BossFightVecEnv(8, seed=0), seed=0)
>>> model.learn(4096)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.save_util import load_from_zip_file
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.dqn.policies import DQNPolicy

from agents.config import AgentConfig
from agents.habit_policy import HabitAwarePolicy, MaskableHabitAwarePolicy

ALGORITHM_CLASSES: dict[str, type[BaseAlgorithm]] = {
    "ppo": PPO, "maskable_ppo": MaskablePPO, "dqn": DQN, "a2c": A2C,
}
"""The SB3 class of each agent name (agents.config.ALGORITHMS)."""
ACTIVATION_FUNCTIONS: dict[str, type[torch.nn.Module]] = {
    "tanh": torch.nn.Tanh, "relu": torch.nn.ReLU, "elu": torch.nn.ELU,
    "leaky_relu": torch.nn.LeakyReLU,
}


def make_agent(config: AgentConfig, env: VecEnv, seed: int) -> BaseAlgorithm:
    """A fresh agent for ``env``, seeded (torch, numpy and the action space) with ``seed``."""
    config.validate()
    algorithm = ALGORITHM_CLASSES[config.algo]
    network = config.policy_kwargs
    policy_kwargs: dict[str, Any] = {"net_arch": list(network.net_arch),
                                     "activation_fn": ACTIVATION_FUNCTIONS[network.activation_fn]}
    policy: str | type[BasePolicy] = config.policy
    if network.habit_weight is not None:
        policy = MaskableHabitAwarePolicy if config.algo == "maskable_ppo" else HabitAwarePolicy
        policy_kwargs |= {"habits": habit_block(env), "habit_weight": network.habit_weight,
                          "habit_blind": network.habit_blind}
    return algorithm(policy, env, policy_kwargs=policy_kwargs, seed=seed,
                     device=config.device, verbose=0, **config.hyperparameters())


def habit_block(env: VecEnv) -> tuple[int, int]:
    """(start, stop) of the ``move_habits`` block in the env's observations."""
    layout = env.get_attr("layout")[0]
    feature = next(f for f in layout.features if f.name == "move_habits")
    return feature.start, feature.start + feature.size


def algorithm_of(path: str | Path) -> str:
    """The agent name a saved model belongs to, read from the SB3 zip itself.

    The policy class tells MaskablePPO and DQN apart; PPO and A2C share their policy class and
    differ in PPO-only attributes (``n_epochs``).
    """
    data, _, _ = load_from_zip_file(path, load_data=True, device="cpu")
    if data is None or "policy_class" not in data:
        raise ValueError(f"{path} is not a Stable-Baselines3 model zip (no policy_class).")
    policy_class = data["policy_class"]
    if issubclass(policy_class, MaskableActorCriticPolicy):
        return "maskable_ppo"
    if issubclass(policy_class, DQNPolicy):
        return "dqn"
    return "ppo" if "n_epochs" in data else "a2c"


def load_agent(path: str | Path, env: VecEnv | None = None, **kwargs: Any) -> BaseAlgorithm:
    """Load a model saved by ``model.save`` (any of the four agents), on the CPU.

    Pass ``env`` to keep training it (``learn(..., reset_num_timesteps=False)``).
    """
    algorithm = ALGORITHM_CLASSES[algorithm_of(path)]
    return algorithm.load(path, env=env, device="cpu", **kwargs)
