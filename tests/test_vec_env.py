"""``agents.vec_env.BossFightVecEnv`` against what SB3's algorithms rely on (unit + smoke tiers).

SB3 has no checker for a ``VecEnv``, so this module tests the contract directly: spaces, dtypes
and shapes; auto-reset (``terminal_observation``, the next fight's first observation);
``TimeLimit.truncated`` exactly on timeouts; Monitor-style ``episode`` stats; SB3 seeding;
step-for-step parity with the Gymnasium vector env; action masks both ways (the method and
``env_method``); then PPO, MaskablePPO, ``VecNormalize``, ``VecMonitor`` and
``evaluate_policy`` on tiny budgets. The whole module runs in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gymnasium
import numpy as np
import pytest
import yaml
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported
from stable_baselines3 import PPO
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

import envs
from agents.vec_env import BossFightVecEnv, StepReturn
from envs.boss_fight import BossFightVectorEnv
from envs.game import GAME_DIR

# Any warning raised while a test runs is a failure.
pytestmark = pytest.mark.filterwarnings("error")

N = 8
MOVES = 3  # the duel's moves: attack, defend, special_move
OBS_SIZE = 43  # the duel's observation (envs.boss_fight docstring)
FIGHT_ENDS = ("player_won", "fight_seconds", "hp_margin", "persona", "difficulty",
              "environment", "series_ended")



pytestmark = pytest.mark.usefixtures("one_torch_thread")


def short_duel(max_fight_seconds: float) -> dict[str, Any]:
    """The duel as a mapping, with a fight timer short enough to truncate many fights."""
    game = yaml.safe_load((GAME_DIR / "duel.yaml").read_text())
    game["max_fight_seconds"] = max_fight_seconds
    return dict(game)


def actions_for(steps: int, seed: int = 0, num_envs: int = N) -> np.ndarray:
    """Uniform moves, illegal ones included, shape (steps, num_envs)."""
    return np.random.default_rng(seed).integers(0, MOVES, size=(steps, num_envs))


def play(env: BossFightVecEnv, actions: np.ndarray) -> tuple[np.ndarray, list[StepReturn]]:
    """``reset()`` then one ``step`` per row of ``actions``."""
    first = env.reset()
    return first, [env.step(batch) for batch in actions]


def feature(env: BossFightVecEnv, name: str) -> slice:
    f = {f.name: f for f in env.vector_env.layout.features}[name]
    return slice(f.start, f.start + f.size)


# --- the API's shapes and types --------------------------------------------------------------


def test_spaces_dtypes_and_shapes() -> None:
    env = BossFightVecEnv(N, seed=0)
    assert env.num_envs == N
    assert env.observation_space == spaces.Box(0.0, 1.0, (OBS_SIZE,), np.float32)
    assert env.action_space == spaces.Discrete(MOVES)
    obs = env.reset()
    assert obs.shape == (N, OBS_SIZE) and obs.dtype == np.float32
    for batch in actions_for(50):
        obs, rewards, dones, infos = env.step(batch)
        assert obs.shape == (N, OBS_SIZE) and obs.dtype == np.float32
        assert all(env.observation_space.contains(row) for row in obs)
        assert rewards.shape == (N,) and rewards.dtype == np.float32
        assert dones.shape == (N,) and dones.dtype == np.bool_
        assert isinstance(infos, list) and len(infos) == N
        assert len({id(info) for info in infos}) == N, "infos must be distinct dicts"


def test_infos_only_filled_for_ended_fights() -> None:
    env = BossFightVecEnv(N, seed=1, game=short_duel(10.0))
    _, steps = play(env, actions_for(60, seed=1))
    ended = 0
    for _, _, dones, infos in steps:
        for done, info in zip(dones, infos, strict=True):
            if not done:
                assert info == {}
                continue
            ended += 1
            assert set(FIGHT_ENDS) <= set(info)
            assert {"terminal_observation", "TimeLimit.truncated", "episode"} <= set(info)
    assert ended >= N


# --- auto-reset, truncation and episode statistics -------------------------------------------


def lockstep(kwargs: dict[str, Any], seed: int, steps: int) -> Iterator[tuple[Any, Any]]:
    """Our VecEnv and a ``BossFightVectorEnv`` on the same seed and actions, step by step."""
    ours = BossFightVecEnv(N, seed=seed, **kwargs)
    theirs = BossFightVectorEnv(N, max_episode_steps=envs.MAX_EPISODE_STEPS, **kwargs)
    ours_obs = ours.reset()
    theirs_obs, _ = theirs.reset(seed=seed)
    yield ours_obs, theirs_obs
    for batch in actions_for(steps, seed=seed):
        yield ours.step(batch), theirs.step(batch)


def test_auto_reset_reports_final_obs_and_starts_a_fresh_fight() -> None:
    probe = BossFightVecEnv(1)
    boss, last = feature(probe, "boss_health"), feature(probe, "last_boss_action")
    ended = 0
    for ours, theirs in list(lockstep({"game": short_duel(20.0)}, seed=2, steps=80))[1:]:
        obs, _, dones, infos = ours
        _, _, terminated, truncated, info = theirs
        np.testing.assert_array_equal(dones, terminated | truncated)
        for i in np.flatnonzero(dones):
            np.testing.assert_array_equal(infos[i]["terminal_observation"], info["final_obs"][i])
            assert not np.array_equal(infos[i]["terminal_observation"], obs[i])
            assert obs[i, boss].item() == 1.0, "the next fight starts with the boss at full HP"
            assert obs[i, last].tolist() == [1.0, 0.0, 0.0, 0.0], "no move yet in a new fight"
            ended += 1
    assert ended >= N


def test_time_limit_truncated_exactly_for_timeouts() -> None:
    timeouts = knockouts = 0
    for ours, theirs in list(lockstep({"game": short_duel(30.0)}, seed=3, steps=80))[1:]:
        _, _, dones, infos = ours
        _, _, terminated, truncated, _ = theirs
        for i in np.flatnonzero(dones):
            assert infos[i]["TimeLimit.truncated"] is bool(truncated[i] and not terminated[i])
        timeouts += int(truncated.sum())
        knockouts += int(terminated.sum())
    assert timeouts > 0 and knockouts > 0, "the game must produce both kinds of ends"


def test_episode_stats_match_summed_rewards_and_counted_steps() -> None:
    env = BossFightVecEnv(N, seed=4, objective="defeat", game=short_duel(15.0))
    _, steps = play(env, actions_for(100, seed=4))
    returns, lengths, checked = np.zeros(N), np.zeros(N, dtype=int), 0
    for _, rewards, dones, infos in steps:
        returns += rewards
        lengths += 1
        for i in np.flatnonzero(dones):
            episode = infos[i]["episode"]
            assert episode["r"] == pytest.approx(returns[i], abs=1e-4)
            assert episode["l"] == lengths[i]
            assert episode["t"] >= 0.0
            returns[i], lengths[i], checked = 0.0, 0, checked + 1
    assert checked >= N


def test_series_episodes_end_only_with_a_players_last_fight() -> None:
    fights_per_player = 3
    env = BossFightVecEnv(N, seed=6, episode="series", fights_per_player=fights_per_player,
                          game=short_duel(15.0))
    _, steps = play(env, actions_for(300, seed=6))
    fights, returns = np.zeros(N, dtype=int), np.zeros(N)
    for _, rewards, dones, infos in steps:
        returns += rewards
        for i, info in enumerate(infos):
            if "episode" not in info:
                assert not dones[i]
                continue
            fights[i] += 1
            assert info["episode"]["r"] == pytest.approx(returns[i], abs=1e-4)
            returns[i] = 0.0
            assert info["series_ended"] == (fights[i] % fights_per_player == 0)
            assert bool(dones[i]) == info["series_ended"]
            assert ("terminal_observation" in info) == info["series_ended"]
            if dones[i]:
                assert info["TimeLimit.truncated"] is False
    assert fights.min() >= 2 * fights_per_player


def test_an_unknown_episode_kind_names_the_choices() -> None:
    with pytest.raises(ValueError, match="fight, series"):
        BossFightVecEnv(N, episode="match")


# --- seeding and parity ----------------------------------------------------------------------


def trajectory(env: BossFightVecEnv, steps: int = 60) -> list[np.ndarray]:
    first, transitions = play(env, actions_for(steps, seed=5))
    return [first] + [np.concatenate([o.ravel(), r]) for o, r, _, _ in transitions]


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_same_seed_same_trajectory_different_seed_different() -> None:
    reference = trajectory(BossFightVecEnv(N, seed=7))
    assert same(reference, trajectory(BossFightVecEnv(N, seed=7)))
    assert not same(reference, trajectory(BossFightVecEnv(N, seed=8)))
    reseeded = BossFightVecEnv(N)
    assert reseeded.seed(7) == list(range(7, 7 + N))  # SB3: one seed per env, consecutive
    assert same(reference, trajectory(reseeded))


def test_the_seed_is_consumed_by_one_reset() -> None:
    env = BossFightVecEnv(N, seed=9)
    first = env.reset()
    np.testing.assert_array_equal(first, BossFightVecEnv(N, seed=9).reset())
    assert not np.array_equal(first, env.reset()), "a second reset must not reuse the seed"


def test_parity_with_the_gymnasium_vector_env() -> None:
    seed, steps = 11, 300
    ours = BossFightVecEnv(N, seed=seed, player="population")
    theirs = gymnasium.make_vec("bosslab/BossFight-v0", num_envs=N, player="population",
                                vectorization_mode="vector_entry_point")
    np.testing.assert_array_equal(ours.reset(), theirs.reset(seed=seed)[0])
    for batch in actions_for(steps, seed=seed):
        obs, rewards, dones, _ = ours.step(batch)
        g_obs, g_rewards, terminated, truncated, _ = theirs.step(batch)
        np.testing.assert_array_equal(obs, g_obs)
        np.testing.assert_array_equal(rewards, g_rewards.astype(np.float32))
        np.testing.assert_array_equal(dones, terminated | truncated)


# --- masks and SB3's per-env accessors -------------------------------------------------------


def test_action_masks_as_array_and_through_env_method() -> None:
    env = BossFightVecEnv(N, seed=12)
    env.reset()
    for batch in actions_for(40, seed=12):
        env.step(batch)
        masks = env.action_masks()
        assert masks.shape == (N, MOVES) and masks.dtype == np.bool_
        np.testing.assert_array_equal(masks, env.vector_env.action_masks())
        rows = env.env_method("action_masks")
        assert isinstance(rows, list) and len(rows) == N
        np.testing.assert_array_equal(np.stack(rows), masks)
        np.testing.assert_array_equal(np.stack(env.env_method("action_masks", indices=[2, 5])),
                                      masks[[2, 5]])
        np.testing.assert_array_equal(get_action_masks(env), masks)
    assert is_masking_supported(env)
    assert not env.action_masks().all(), "some move must have been illegal at some point"


def test_get_set_attr_env_method_and_env_is_wrapped() -> None:
    env = BossFightVecEnv(N, fights_per_player=3)
    env.reset()
    assert env.get_attr("persona_names") == [env.vector_env.persona_names] * N
    assert env.get_attr("render_mode", indices=1) == [None]
    with pytest.raises(AttributeError):
        env.get_attr("no_such_attribute")
    env.set_attr("max_episode_steps", 5)
    assert env.vector_env.max_episode_steps == 5
    with pytest.raises(ValueError, match="indices=None"):
        env.set_attr("max_episode_steps", 6, indices=[0])
    assert len(env.env_method("context_columns")) == N
    assert env.env_is_wrapped(Monitor) == [True] * N
    assert env.env_is_wrapped(gymnasium.wrappers.TimeLimit, indices=[0, 1]) == [False, False]


def test_max_episode_steps_cuts_fights_as_truncations() -> None:
    env = BossFightVecEnv(N, seed=13, max_episode_steps=3)
    _, steps = play(env, actions_for(3, seed=13))
    _, _, dones, infos = steps[-1]
    assert dones.all()
    assert all(info["TimeLimit.truncated"] and info["episode"]["l"] == 3 for info in infos)


@pytest.mark.parametrize("render_mode", ["rgb_array", "ansi"])
def test_render_shows_the_first_env(render_mode: str) -> None:
    env = BossFightVecEnv(N, seed=14, render_mode=render_mode)
    env.reset()
    env.step(np.zeros(N, dtype=np.int64))
    frame = env.render()
    if render_mode == "ansi":
        assert isinstance(frame, str) and frame
        assert env.get_images() == [None]
    else:
        assert isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[2] == 3
        (image,) = env.get_images()
        np.testing.assert_array_equal(image, frame)


# --- SB3 and sb3-contrib on it ---------------------------------------------------------------


def test_ppo_learns_on_it_and_logs_episodes() -> None:
    env = BossFightVecEnv(16, seed=15, game=short_duel(10.0))
    model = PPO("MlpPolicy", env, n_steps=16, batch_size=64, seed=15).learn(256)
    assert model.num_timesteps == 256
    assert model.ep_info_buffer is not None and len(model.ep_info_buffer) > 0


def test_maskable_ppo_learns_on_it_and_plays_legal_moves() -> None:
    env = BossFightVecEnv(16, seed=16, game=short_duel(10.0))
    model = MaskablePPO("MlpPolicy", env, n_steps=16, batch_size=64, seed=16).learn(256)
    assert model.num_timesteps == 256
    obs = env.reset()
    for _ in range(30):
        actions, _ = model.predict(obs, action_masks=get_action_masks(env))
        legal = env.vector_env.action_masks()
        assert legal[np.arange(16), actions].all(), "MaskablePPO chose an illegal move"
        obs, *_ = env.step(actions)


def test_vec_normalize_wraps_it() -> None:
    env = VecNormalize(BossFightVecEnv(N, seed=17, game=short_duel(10.0)))
    env.reset()
    seen_terminal = False
    for batch in actions_for(60, seed=17):
        obs, rewards, _, infos = env.step(batch)
        assert isinstance(obs, np.ndarray) and obs.shape == (N, OBS_SIZE)
        assert rewards.shape == (N,)
        seen_terminal |= any("terminal_observation" in info for info in infos)
    assert seen_terminal
    assert isinstance(env.obs_rms, RunningMeanStd)
    assert env.obs_rms.count > 60 * N, "VecNormalize updated its statistics"
    inner = env.unwrapped
    assert isinstance(inner, BossFightVecEnv)
    np.testing.assert_array_equal(get_action_masks(env), inner.action_masks())


def test_vec_monitor_wraps_it_and_overwrites_the_built_in_stats() -> None:
    with pytest.warns(UserWarning, match="already wrapped with a `Monitor`"):
        env = VecMonitor(BossFightVecEnv(N, seed=18, game=short_duel(10.0)))
    env.reset()
    episodes = 0
    for batch in actions_for(60, seed=18):
        _, _, dones, infos = env.step(batch)
        episodes += sum("episode" in infos[i] for i in np.flatnonzero(dones))
    assert episodes == env.episode_count > 0


def test_evaluate_policy_counts_whole_fights() -> None:
    env = BossFightVecEnv(4, seed=19, game=short_duel(10.0))
    model = PPO("MlpPolicy", env, n_steps=16, batch_size=64, seed=19)
    calls = 0

    def bounded(_locals: dict[str, Any], _globals: dict[str, Any]) -> None:
        # evaluate_policy waits for info["episode"] (we say Monitor): never hang without it.
        nonlocal calls
        calls += 1
        assert calls < 4 * 1000, "evaluate_policy saw no episode ends"

    rewards, lengths = evaluate_policy(model, env, n_eval_episodes=8, callback=bounded,
                                       return_episode_rewards=True)
    assert isinstance(rewards, list) and isinstance(lengths, list)
    assert len(rewards) == len(lengths) == 8
    assert all(length >= 1 for length in lengths)
