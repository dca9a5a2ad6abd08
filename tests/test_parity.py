"""The single env and the vector env run one kernel: same seed, same trajectory."""

import re
from typing import Any

import numpy as np
import pytest

import envs.boss_fight as spec
from envs.boss_fight import BossFightEnv, BossFightVectorEnv


@pytest.mark.parametrize("game", ["duel", "dragon_keep"])
@pytest.mark.parametrize("objective", ["engagement", "defeat"])
def test_single_and_vector_env_agree_step_for_step(game: str, objective: str) -> None:
    kwargs: dict[str, Any] = {"game": game, "player": "population", "objective": objective,
              "fights_per_player": 3}
    single = BossFightEnv(**kwargs)
    vector = BossFightVectorEnv(num_envs=1, **kwargs)
    single_obs, _ = single.reset(seed=7)
    vector_obs, _ = vector.reset(seed=7)
    np.testing.assert_array_equal(single_obs, vector_obs[0])
    moves = len(single.layout.moves)
    actions = np.random.default_rng(1).integers(0, moves, size=1500)
    fights = 0
    for action in actions:
        obs, reward, terminated, truncated, _ = single.step(action)
        v_obs, v_reward, v_terminated, v_truncated, v_info = vector.step(np.array([action]))
        assert (reward, terminated, truncated) == (v_reward[0], v_terminated[0], v_truncated[0])
        if terminated or truncated:
            np.testing.assert_array_equal(obs, v_info["final_obs"][0])
            obs, _ = single.reset()
            fights += 1
        np.testing.assert_array_equal(obs, v_obs[0])
        np.testing.assert_array_equal(single.action_masks(), vector.action_masks()[0])
    assert fights >= 20  # the comparison crossed many autoresets and new players


def test_vector_env_rows_follow_their_own_fights() -> None:
    vector = BossFightVectorEnv(num_envs=64, player="population")
    vector.reset(seed=3)
    ended = 0
    for _ in range(300):
        _, _, terminated, truncated, info = vector.step(np.zeros(64, dtype=np.int64))
        if "final_info" in info:
            done = info["_final_info"]
            np.testing.assert_array_equal(done, terminated | truncated)
            margins = info["final_info"]["hp_margin"][done]
            assert np.all(np.abs(margins) <= 1.0)
            ended += int(done.sum())
    assert ended > 64


def test_the_docstring_table_is_the_duel_layout() -> None:
    """The env's spec (its docstring) lists the observation exactly as the encoder lays it out."""
    layout = BossFightEnv(game="duel").layout
    rows = re.findall(r"^\| (\d+)(?:-(\d+))? \| (\w+)", spec.__doc__ or "", flags=re.M)
    documented = [(int(a), int(b or a), name) for a, b, name in rows]
    expected = [(f.start, f.start + f.size - 1, f.name) for f in layout.features]
    assert documented == expected
