"""The habit-aware actor-critic policies (agents.habit_policy) and their config switch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from agents.config import DQNConfig, MaskablePPOConfig, PolicyKwargs, PPOConfig
from agents.factory import habit_block, load_agent, make_agent
from agents.habit_policy import HabitAwarePolicy, MaskableHabitAwarePolicy
from agents.vec_env import BossFightVecEnv

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def duel_env() -> BossFightVecEnv:
    return BossFightVecEnv(16, seed=0, game="duel", player="dodger", objective="defeat")


def habit_config(config_class: type[PPOConfig] | type[MaskablePPOConfig],
                 weight: float) -> PPOConfig | MaskablePPOConfig:
    return config_class(n_steps=16, batch_size=64, n_epochs=1,
                        policy_kwargs=PolicyKwargs(habit_weight=weight))


def probabilities(model: object, observations: np.ndarray) -> torch.Tensor:
    policy = model.policy  # type: ignore[attr-defined]
    tensor, _ = policy.obs_to_tensor(observations)
    with torch.no_grad():
        return policy.get_distribution(tensor).distribution.probs


def test_the_habit_block_is_the_observations_move_habits() -> None:
    env = duel_env()
    start, stop = habit_block(env)
    names = env.vector_env.layout.names()[start:stop]
    assert names == ["move_habits[attack]", "move_habits[defend]", "move_habits[special_move]"]


@pytest.mark.parametrize(("config_class", "policy_class"),
                         [(PPOConfig, HabitAwarePolicy),
                          (MaskablePPOConfig, MaskableHabitAwarePolicy)])
def test_a_habitual_move_starts_out_less_likely(config_class: type[PPOConfig],
                                                policy_class: type) -> None:
    env = duel_env()
    model = make_agent(habit_config(config_class, 8.0), env, seed=0)
    assert isinstance(model.policy, policy_class)
    start, _ = habit_block(env)
    calm = env.reset()[:1].copy()
    calm[0, start:start + 3] = 0.0
    habitual = calm.copy()
    habitual[0, start] = 0.8  # the boss has mostly followed its last move with attack
    before, after = probabilities(model, calm)[0], probabilities(model, habitual)[0]
    # Only attack's logit moves, by -8 * 0.8: its odds against each other move shrink so much.
    for other in (1, 2):
        odds_ratio = (after[0] / after[other]) / (before[0] / before[other])
        assert float(odds_ratio) == pytest.approx(np.exp(-8.0 * 0.8), rel=1e-2)
    assert after[1] > before[1] and after[2] > before[2]


def test_the_habit_path_learns_and_survives_save_and_load(tmp_path: Path) -> None:
    env = duel_env()
    model = make_agent(habit_config(PPOConfig, 4.0), env, seed=0)
    action_net = model.policy.action_net
    assert isinstance(action_net, torch.nn.Linear)
    initial = action_net.weight.detach().clone()
    model.learn(2048)
    assert not torch.equal(initial, action_net.weight)
    model.save(tmp_path / "model.zip")
    loaded = load_agent(tmp_path / "model.zip")
    assert isinstance(loaded.policy, HabitAwarePolicy)
    assert loaded.policy.habits == habit_block(env)
    observations = env.reset()
    assert torch.allclose(probabilities(model, observations), probabilities(loaded, observations))


def test_dqn_refuses_a_habit_weight() -> None:
    with pytest.raises(ValueError, match="habit_weight=null"):
        DQNConfig(policy_kwargs=PolicyKwargs(habit_weight=8.0)).validate()


def test_a_blind_actor_sees_the_habits_only_through_the_habit_path() -> None:
    env = duel_env()
    config = PPOConfig(n_steps=16, batch_size=64, n_epochs=1,
                       policy_kwargs=PolicyKwargs(habit_weight=0.0, habit_blind=True))
    model = make_agent(config, env, seed=0)
    start, stop = habit_block(env)
    calm = env.reset()[:1].copy()
    habitual = calm.copy()
    habitual[0, start:stop] = [0.9, 0.05, 0.05]
    # With a zero habit path, changing the habits changes nothing the actor computes...
    assert torch.allclose(probabilities(model, calm), probabilities(model, habitual))
    # ...while a seeing actor's network reacts to them.
    seeing = make_agent(habit_config(PPOConfig, 0.0), env, seed=0)
    assert not torch.allclose(probabilities(seeing, calm), probabilities(seeing, habitual))


def test_habit_blind_needs_a_habit_weight() -> None:
    with pytest.raises(ValueError, match="habit_weight"):
        PPOConfig(policy_kwargs=PolicyKwargs(habit_blind=True)).validate()
