"""Stable-Baselines3's ``VecEnv`` API over the batched boss-fight simulator.

SB3's ``DummyVecEnv`` steps its envs one by one in Python, which makes the env the bottleneck
of PPO on a fast simulator. :class:`BossFightVecEnv` wraps one
:class:`envs.boss_fight.BossFightVectorEnv` (one numpy kernel call steps every fight) and
adapts it to what SB3's algorithms, wrappers and helpers rely on:

- ``reset()`` returns the observations only and uses the seed set by ``seed()`` (or the
  constructor) once: SB3 semantics, the seed is consumed by that reset.
- ``step_wait()`` returns ``(obs, rewards float32, dones bool, infos)``. A done env's returned
  observation already starts its next fight; ``infos[i]`` then holds ``terminal_observation``
  (the fight's last observation), ``TimeLimit.truncated`` (True for a timeout, False for a
  knock-out: SB3 bootstraps only from truncations), the fight info of
  :mod:`envs.boss_fight` (``player_won``, ``fight_seconds``, ``hp_margin``, ``persona``,
  ``difficulty``, ``environment``) and ``episode = {"r", "l", "t"}`` as SB3's ``Monitor``
  writes it, so SB3's logger shows ``ep_rew_mean`` without any wrapper. Other envs get an
  empty dict (a fresh one each, as SB3 may mutate them).
- ``episode="series"`` makes a player's whole series of fights one episode for the learner:
  ``dones`` is True only when a series ends (the next fight has a new player), so the learner
  bootstraps across the fights of a series and is credited with what a move does to later
  fights (players learn a boss's patterns from fight to fight). Every fight still reports its
  fight info and ``episode`` statistics when it ends; ``terminal_observation`` comes with the
  dones only. ``episode="fight"`` (the default) ends an episode with every fight.
- ``action_masks()`` returns the legal moves of every env, ``(num_envs, moves)`` bools, and
  ``env_method("action_masks")`` the same rows as a list, which sb3-contrib's
  ``MaskablePPO`` stacks (``sb3_contrib.common.maskable.utils.get_action_masks``).
- The envs share one simulator: ``get_attr`` reports the vector env's attribute for every
  index, ``set_attr`` and methods other than ``action_masks`` act on all envs at once.
- ``env_is_wrapped(Monitor)`` is True, because the episode statistics are built in (so
  ``evaluate_policy`` trusts ``info["episode"]`` and does not warn); nothing else is wrapped.
- ``render()`` and ``get_images()`` show the first env.

Example:
>>> from stable_baselines3 import PPO
>>> env = BossFightVecEnv(64, seed=0, game="duel", player="population")
>>> model = PPO("MlpPolicy", env, n_steps=64, batch_size=1024).learn(8192)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices

import envs
from envs.boss_fight import BossFightVectorEnv

# What step() returns: observations, rewards, dones, infos (narrower than SB3's union type).
StepReturn = tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]

# What can end an episode for the learner: every fight, or the last fight of a player's series.
EPISODES = ("fight", "series")

# Methods whose batched result has one row per env: env_method returns the rows.
ROW_METHODS = ("action_masks",)


class BossFightVecEnv(VecEnv):
    """``num_envs`` boss fights behind SB3's ``VecEnv`` API (see the module docstring).

    :param num_envs: fights stepped together.
    :param seed: the seed of the first ``reset()`` (as ``seed(seed)`` would set it);
        None for a random start.
    :param episode: what ends an episode for the learner: ``"fight"`` or ``"series"``.
    :param env_kwargs: :class:`envs.boss_fight.BossFightVectorEnv` arguments (``game``,
        ``player``, ``objective``, ``difficulty``, ``environment``, ``fights_per_player``,
        ``render_mode``, ``max_episode_steps``). ``max_episode_steps`` defaults to the
        registered ``envs.MAX_EPISODE_STEPS``, like ``gymnasium.make("bosslab/BossFight-v0")``.
    """

    def __init__(self, num_envs: int, *, seed: int | None = None, episode: str = "fight",
                 **env_kwargs: Any) -> None:
        if episode not in EPISODES:
            raise ValueError(f"unknown episode {episode!r}: use one of {', '.join(EPISODES)} "
                             f"(what ends an episode for the learner).")
        self.episode = episode
        env_kwargs.setdefault("max_episode_steps", envs.MAX_EPISODE_STEPS)
        self.vector_env = BossFightVectorEnv(num_envs, **env_kwargs)
        super().__init__(num_envs, self.vector_env.single_observation_space,
                         self.vector_env.single_action_space)
        self._actions = np.zeros(num_envs, dtype=np.int64)
        self._returns = np.zeros(num_envs)
        self._lengths = np.zeros(num_envs, dtype=np.int64)
        self._t_start = time.time()
        if seed is not None:
            self.seed(seed)

    # --- stepping ---------------------------------------------------------------------------

    def reset(self) -> np.ndarray:
        """Start new fights (and players) in every env; the seed set by ``seed()`` is used once.

        The simulator takes one seed: ``seed(s)`` sets ``s, s + 1, ...`` per env as in SB3,
        and the vector env is seeded with the first.
        """
        options = self._options[0] or None
        obs, _ = self.vector_env.reset(seed=self._seeds[0], options=options)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        self._returns[:] = 0.0
        self._lengths[:] = 0
        return obs

    def step(self, actions: np.ndarray) -> StepReturn:
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> StepReturn:
        obs, rewards, terminated, truncated, info = self.vector_env.step(self._actions)
        self._returns += rewards
        self._lengths += 1
        ended = terminated | truncated
        dones = ended
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if "final_obs" in info:
            self._report_fights(infos, np.flatnonzero(ended), info["final_info"])
            if self.episode == "series":
                # The series' last fight ends the player's episode for good: no bootstrap.
                dones = ended & info["final_info"]["series_ended"]
                truncated = np.zeros_like(truncated)
            self._report_dones(infos, np.flatnonzero(dones), truncated, info["final_obs"])
        return obs, rewards.astype(np.float32), dones, infos

    def _report_fights(self, infos: list[dict[str, Any]], ended: np.ndarray,
                       final_info: dict[str, Any]) -> None:
        """Fill the fight info of the ``ended`` fights and restart their fight statistics."""
        columns = {key: value[ended].tolist() for key, value in final_info.items()}
        returns = self._returns[ended].round(6).tolist()
        lengths = self._lengths[ended].tolist()
        seconds = round(time.time() - self._t_start, 6)
        for j, i in enumerate(ended.tolist()):
            entry = infos[i]
            for key, column in columns.items():
                entry[key] = column[j]
            entry["episode"] = {"r": returns[j], "l": lengths[j], "t": seconds}
        self._returns[ended] = 0.0
        self._lengths[ended] = 0

    @staticmethod
    def _report_dones(infos: list[dict[str, Any]], dones: np.ndarray, truncated: np.ndarray,
                      final_obs: np.ndarray) -> None:
        """SB3's episode end: the last observation, and whether it was a timeout."""
        for i in dones.tolist():
            infos[i]["terminal_observation"] = final_obs[i]
            infos[i]["TimeLimit.truncated"] = bool(truncated[i])

    def action_masks(self) -> np.ndarray:
        """Legal moves of every env, ``(num_envs, moves)`` bools (MaskablePPO's convention)."""
        return np.asarray(self.vector_env.action_masks(), dtype=bool)

    def close(self) -> None:
        self.vector_env.close()

    # --- rendering --------------------------------------------------------------------------

    def render(self, mode: str | None = None) -> Any:
        """The first env's frame: an RGB array or, in ``"ansi"`` mode, a text frame.

        Other modes follow SB3's ``VecEnv.render`` (``"human"`` shows RGB frames with OpenCV;
        a mode other than the env's ``render_mode`` warns and returns None).
        """
        if self.render_mode is not None and mode in (None, self.render_mode):
            return self.vector_env.render()
        return super().render(mode=mode)

    def get_images(self) -> Sequence[np.ndarray | None]:
        """The first env's RGB frame (None unless ``render_mode="rgb_array"``)."""
        if self.render_mode != "rgb_array":
            return [None]
        return [self.vector_env.render()]

    # --- SB3's per-env accessors over one shared simulator ----------------------------------

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The vector env's attribute, once per index (raises AttributeError if missing)."""
        value = getattr(self.vector_env, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute of the shared simulator: only for all envs at once."""
        self._require_all(indices, f"set_attr({attr_name!r})")
        setattr(self.vector_env, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        """Call a method of the vector env.

        For ``action_masks`` the result is split into per-env rows (any ``indices``); any
        other method acts on every env at once, so ``indices`` must cover them all and its one
        result is returned for each env.
        """
        method = getattr(self.vector_env, method_name)
        if method_name in ROW_METHODS:
            rows = method(*method_args, **method_kwargs)
            return [rows[i] for i in self._get_indices(indices)]
        self._require_all(indices, f"env_method({method_name!r})")
        result = method(*method_args, **method_kwargs)
        return [result for _ in range(self.num_envs)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper],
                       indices: VecEnvIndices = None) -> list[bool]:
        """True only for SB3's ``Monitor``, whose episode statistics are built in."""
        wrapped = wrapper_class is Monitor
        return [wrapped for _ in self._get_indices(indices)]

    def _require_all(self, indices: VecEnvIndices, what: str) -> None:
        if indices is None or sorted(self._get_indices(indices)) == list(range(self.num_envs)):
            return
        raise ValueError(f"{what} acts on the simulator shared by all {self.num_envs} envs: "
                         f"pass indices=None (got {indices!r}).")
