"""Retrieval-augmented bosses: the agents' side of the episodic memory (issue 4).

The memory (:class:`rag.memory.EpisodicMemory`) holds past boss decisions keyed by the
embedding of the player context (:mod:`rag.embedders`) with the return that followed. This
module reads it while a boss decides and writes it while the boss fights, in training and in
evaluation alike. Every number the memory gives goes through :mod:`rag.retrieval`
(``retrieval_features``, ``kernel_weights``, ``blend_values``), which the served policy uses too,
so the lab and the server cannot compute them differently.

## Reading: two routes
- *Extra inputs* (Goyal et al. 2022, Humphreys et al. 2022). :func:`retrieve` embeds raw
  observations, searches the k nearest entries of each move and returns, per move, the
  kernel-weighted neighbour value, the neighbour count and the mean distance. The wrappers
  append them to every observation, so any SB3 algorithm learns to use them:
  :class:`RetrievalObservation` for one Gymnasium env, :class:`RetrievalVecEnv` for any
  ``VecEnv`` (one embedding call and one search per step for all envs; the
  ``terminal_observation`` of ended envs is augmented in the same batch). A model trained so
  plays through :class:`RetrievalPolicyBoss`.
- *Value blending* (Ephemeral Value Adjustments, Hansen et al. 2018).
  :class:`ValueBlendedBoss` plays the legal argmax of
  ``Q = lam_eff * Q_learned + (1 - lam_eff) * Q_memory`` (``rag.retrieval.blend_values``),
  where ``lam_eff`` rises from ``lam`` toward 1 as the memory has fewer or farther neighbours.
  :class:`MemoryOnlyBoss` (Model-Free Episodic Control, Blundell et al. 2016) plays the memory
  value alone.
- *Steering*. With ``returns="effect"`` the memory holds effects, not returns: these two
  bosses turn them into values with :class:`Steering`, ``direction * effect`` where
  ``direction = clip((player win rate - target) / tolerance, -1, 1)``
  (``rag.retrieval.steering_direction``): effective moves when the player has been winning
  more than the level's target, gentle ones when less. The player's recent win rate is read
  off the observation (``1 - recent_deaths``, the share of the last 5 fights they did not
  die in), the target and tolerance from its difficulty level.

Appended features, ``3 * moves`` float32 after the raw observation, per move in the game's
order:

=====================  ============  ==================================================
element                bounds        meaning
=====================  ============  ==================================================
``3 * m``              +-value_clip  kernel-weighted neighbour value (return), clipped
``3 * m + 1``          [0, 1]        neighbours found / k
``3 * m + 2``          [0, 1]        mean squared distance squashed, 1.0 with none
=====================  ============  ==================================================

An empty memory gives values 0, counts 0 and distances 1. Keys are always made from the raw
observation, the first ``ObservationLayout.size`` columns: every function here accepts raw or
augmented observations.

## Writing
:class:`EpisodeMemoryWriter` buffers, per env, the (key, move, reward) of every decision of the
running episode (one embedding call per step for all envs; the buffers are per-step arrays, no
Python loop over envs). When an env's episode ends it stores every decision of it with:

- ``value``: the discounted return that followed (:func:`discounted_returns`): Monte-Carlo to
  the episode's end, or ``n_step``, the discounted sum of the next ``n`` rewards. Without a
  critic an n-step return cannot bootstrap, so it is a truncated sum. Or ``effect``: the
  move's *effectiveness*, the discounted sum of the next ``n`` exchanges' changes of the HP
  margin (:func:`hp_margins`: boss HP fraction minus player HP fraction, read off the
  observations; the fight's last exchange ends at the info's ``hp_margin``), > 0 when the
  boss gained. The engagement reward is paid at a fight's end only, so its returns give every
  move of a fight about the same value; effects tell the moves of one fight apart.
- ``outcome``: in :mod:`rag.memory`'s convention, :data:`OUTCOME_BOSS_WON` (1.0),
  :data:`OUTCOME_PLAYER_WON` (0.0) or :data:`OUTCOME_TIMEOUT` (0.5), from the env's info
  (``TimeLimit.truncated`` or the ``truncated`` flags first, then ``player_won``).
- ``persona``: the persona's name (the info's ``persona`` index looked up in the env's
  ``persona_names``).
- ``time``: the writer's ``clock()`` when the decision was recorded; by default wall-clock
  seconds (``time.time``), comparable between training, evaluation and the server.

Episodes still running when training stops are not written (they have no return yet).
:class:`MemoryWritingCallback` feeds the writer during SB3 training: when callbacks run, in
``collect_rollouts`` of both on-policy and off-policy algorithms, ``model._last_obs`` is still
the observation the actions were chosen on and ``locals`` hold the step's actions, rewards,
dones and infos (unnormalized through a ``VecNormalize``, if any). Evaluation keeps writing
without gradient steps: every boss here has ``observe(...)``, the writer's ``record``, to call
after each env step (online adaptation).

## Explaining
Every boss here has ``explain(observations, action_masks)``: per row an
:class:`envs.replay.Explanation` with the values it ranks (blended, memory or the model's
action probabilities), the per-move parts they came from (``learned``, ``memory``, ``lambda``:
the effective blend weight of each move, ``found``: neighbours found, ``distance``: the squashed
mean distance) and the k nearest entries of each move (:class:`envs.replay.Neighbour`, with
their kernel weights, returns, outcomes and persona tags). Replays show them per decision.

Example::

    memory = EpisodicMemory(MemoryConfig(dim=embedder.dim, moves=3))
    env = RetrievalVecEnv(BossFightVecEnv(1024, seed=0, game="duel"), memory, embedder)
    writer = writer_for(env, memory, embedder)
    PPO("MlpPolicy", env).learn(1_000_000, callback=MemoryWritingCallback(writer))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple, get_args

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs
from stable_baselines3.dqn.policies import DQNPolicy

from agents.policy import SB3BossPolicy
from agents.vec_env import StepReturn
from envs.boss_fight import BossFightVectorEnv
from envs.bosses import masked_argmax
from envs.game import GameDefinition
from envs.observation import ObservationLayout
from envs.replay import Explanation, Neighbour
from rag.embedders import Embedder
from rag.memory import EpisodicMemory, Records
from rag.retrieval import (
    DEFAULT_DELTA,
    DEFAULT_DISTANCE_SCALE,
    DEFAULT_STEER_LIMIT,
    MoveNeighbours,
    RetrievalFeatures,
    blend_values,
    blend_weights,
    kernel_weights,
    retrieval_features,
    steered_values,
    steering_direction,
)

ReturnKind = Literal["monte_carlo", "n_step", "effect"]
RETURN_KINDS: tuple[str, ...] = get_args(ReturnKind)
FEATURES_PER_MOVE = 3
"""Appended per move: value, count / k, squashed distance."""
OUTCOME_BOSS_WON = 1.0
OUTCOME_PLAYER_WON = 0.0
OUTCOME_TIMEOUT = 0.5
"""Outcomes as :mod:`rag.memory` stores them (1 boss won, 0 player won, 0.5 timeout)."""
DEFAULT_TARGET = 0.5
DEFAULT_TOLERANCE = 0.1
"""The win-rate band :class:`Steering` uses for an observation that names no level it knows
(the game schema's defaults)."""
UNKNOWN_PERSONA = "unknown"
"""Persona tag of an ended episode whose info carries no persona."""

QValuesFn = Callable[[np.ndarray], np.ndarray]
"""Learned Q-values: raw observations (n, size) -> (n, moves) float32."""
Clock = Callable[[], float]


@dataclass(frozen=True)
class RetrievalConfig:
    """How the memory is read (features, blending) and written (returns)."""

    k: int = 8
    """Neighbours read per move and query."""
    lam: float = 0.5
    """EVA's lambda: the learned value's weight when the memory has k neighbours at distance
    0; it rises toward 1 as neighbours get fewer or farther (1 ignores the memory)."""
    delta: float = DEFAULT_DELTA
    """Kernel offset of ``rag.retrieval.kernel_weights`` (keeps an exact match from taking all
    the weight)."""
    distance_scale: float = DEFAULT_DISTANCE_SCALE
    """Mean squared distance that squashes to 0.5 (``rag.retrieval.retrieval_features``)."""
    gamma: float = 0.99
    """Discount of the stored returns; match the learned Q-values' gamma when blending."""
    returns: ReturnKind = "monte_carlo"
    """``monte_carlo`` (to the episode's end), ``n_step`` (the next ``n`` rewards only) or
    ``effect`` (the next ``n`` exchanges' changes of the HP margin: each move's effectiveness,
    which :class:`ValueBlendedBoss` and :class:`MemoryOnlyBoss` steer with :class:`Steering`)."""
    n: int = 10
    """n_step and effect: rewards (margin changes) summed per value, the decision's own
    included."""
    value_clip: float = 10.0
    """The value feature is clipped to [-value_clip, value_clip], the observation bounds."""

    def __post_init__(self) -> None:
        _check_positive_int("k", self.k, "neighbours per move, e.g. 8")
        _check_positive_int("n", self.n, "rewards per n-step return, e.g. 10")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"retrieval.lam={self.lam} must be in [0, 1]: 1 ignores the "
                             f"memory, 0 trusts close memories fully; EVA uses 0.5.")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"retrieval.gamma={self.gamma} must be in (0, 1]: use the "
                             f"agent's discount, e.g. 0.99.")
        if self.returns not in RETURN_KINDS:
            raise ValueError(f"retrieval.returns={self.returns!r} is unknown: use one of "
                             f"{', '.join(RETURN_KINDS)}.")
        for name in ("delta", "distance_scale", "value_clip"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"retrieval.{name}={value} must be a finite number > 0 "
                                 f"(defaults: delta {DEFAULT_DELTA}, distance_scale "
                                 f"{DEFAULT_DISTANCE_SCALE}, value_clip 10).")

    @property
    def horizon(self) -> int | None:
        """Rewards per value: ``n`` for n-step returns and effects, None (to the end) for
        Monte-Carlo."""
        return None if self.returns == "monte_carlo" else self.n

    @property
    def steered(self) -> bool:
        """The memory holds effects, which a boss turns into values with :class:`Steering`."""
        return self.returns == "effect"


def _check_positive_int(name: str, value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"retrieval.{name} must be an int >= 1 (got {value!r}): {what}.")


# ---------------------------------------------------------------------------- reading


def raw_observations(observations: np.ndarray, size: int) -> np.ndarray:
    """The first ``size`` columns (the game's own observation) as (n, size) float32 rows."""
    rows = np.asarray(observations, dtype=np.float32)
    if rows.ndim == 1:
        rows = rows[np.newaxis]
    if rows.ndim != 2 or rows.shape[1] < size:
        raise ValueError(f"expected observations of at least {size} columns (the game's "
                         f"ObservationLayout, maybe followed by retrieval features), got shape "
                         f"{np.shape(observations)}.")
    return rows[:, :size]


def neighbour_features(memory: EpisodicMemory, embedder: Embedder, observations: np.ndarray,
                       config: RetrievalConfig) -> RetrievalFeatures:
    """What the k nearest entries of each move say about raw observations (n, size)."""
    keys = embedder.embed(np.asarray(observations, dtype=np.float32))
    hits = memory.search(keys, config.k)
    return retrieval_features(hits, delta=config.delta, distance_scale=config.distance_scale)


def feature_rows(features: RetrievalFeatures, config: RetrievalConfig) -> np.ndarray:
    """``features`` as network inputs: (n, moves * 3) float32, values clipped."""
    stacked = features.as_array()
    stacked[..., 0] = np.clip(stacked[..., 0], -config.value_clip, config.value_clip)
    return stacked.reshape(len(stacked), -1)


def retrieve(memory: EpisodicMemory, embedder: Embedder, observations: np.ndarray,
             config: RetrievalConfig) -> np.ndarray:
    """Retrieval features of raw observations (n, size): (n, moves * 3) float32.

    One embedding call and one memory search for the whole batch; an empty memory gives
    values 0, counts 0 and distances 1 (see the module docstring for the layout).
    """
    return feature_rows(neighbour_features(memory, embedder, observations, config), config)


def feature_bounds(moves: int, config: RetrievalConfig) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of the appended features, each (moves * 3,) float32."""
    low = np.tile(np.array([-config.value_clip, 0.0, 0.0], dtype=np.float32), moves)
    high = np.tile(np.array([config.value_clip, 1.0, 1.0], dtype=np.float32), moves)
    return low, high


def augmented_space(space: spaces.Space[Any], moves: int, config: RetrievalConfig) -> spaces.Box:
    """``space`` (a flat Box) with the retrieval features' bounds appended."""
    if not isinstance(space, spaces.Box) or len(space.shape) != 1:
        raise TypeError(f"retrieval features extend a flat Box observation space, not {space}.")
    low, high = feature_bounds(moves, config)
    return spaces.Box(np.concatenate([space.low.astype(np.float32), low]),
                      np.concatenate([space.high.astype(np.float32), high]), dtype=np.float32)


def check_compatible(memory: EpisodicMemory, embedder: Embedder, moves: int) -> None:
    """Raise ValueError unless ``memory`` holds ``embedder``'s keys and ``moves`` moves."""
    if memory.config.dim != embedder.dim:
        raise ValueError(f"the memory's keys have dim {memory.config.dim} but the embedder "
                         f"{embedder.name!r} makes keys of dim {embedder.dim}: build the memory "
                         f"with MemoryConfig(dim=embedder.dim, ...).")
    if memory.config.moves != moves:
        raise ValueError(f"the memory has {memory.config.moves} moves but the game has {moves}: "
                         f"build it with MemoryConfig(moves=len(game.moves), ...).")


def _moves_of(space: spaces.Space[Any]) -> int:
    if not isinstance(space, spaces.Discrete):
        raise TypeError(f"retrieval needs a Discrete action space (one index per boss move), "
                        f"not {space}.")
    return int(space.n)


class RetrievalObservation(gym.ObservationWrapper[np.ndarray, np.int64, np.ndarray]):
    """One env's observations with the retrieval features appended (SB3's ``check_env`` holds).

    ``action_masks()`` is forwarded, so MaskablePPO (``get_action_masks``) works through it.
    """

    def __init__(self, env: gym.Env[np.ndarray, np.int64], memory: EpisodicMemory,
                 embedder: Embedder, config: RetrievalConfig | None = None) -> None:
        super().__init__(env)
        self.memory = memory
        self.embedder = embedder
        self.retrieval = config or RetrievalConfig()
        moves = _moves_of(env.action_space)
        check_compatible(memory, embedder, moves)
        self.raw_size = int(env.observation_space.shape[0])  # type: ignore[index]
        self.observation_space = augmented_space(env.observation_space, moves, self.retrieval)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        raw = raw_observations(observation, self.raw_size)
        features = retrieve(self.memory, self.embedder, raw, self.retrieval)
        return np.concatenate([raw, features], axis=1)[0]

    def action_masks(self) -> np.ndarray:
        """The wrapped env's legal moves, (moves,) bool."""
        return np.asarray(self.env.get_wrapper_attr("action_masks")(), dtype=bool)


class RetrievalVecEnv(VecEnvWrapper):
    """Any VecEnv's observations with the retrieval features appended, batched.

    Each step makes one embedding call and one memory search for the new observations of
    every env and the ``terminal_observation`` of the envs that ended, which is augmented too
    (SB3 bootstraps from it and DQN stores it). ``action_masks()`` and
    ``env_method("action_masks")`` reach the wrapped env (MaskablePPO).
    """

    observation_space: spaces.Box

    def __init__(self, venv: VecEnv, memory: EpisodicMemory, embedder: Embedder,
                 config: RetrievalConfig | None = None) -> None:
        retrieval = config or RetrievalConfig()
        moves = _moves_of(venv.action_space)
        check_compatible(memory, embedder, moves)
        super().__init__(venv, observation_space=augmented_space(venv.observation_space, moves,
                                                                 retrieval))
        self.memory = memory
        self.embedder = embedder
        self.retrieval = retrieval
        self.raw_size = int(venv.observation_space.shape[0])  # type: ignore[index]

    def reset(self) -> np.ndarray:
        return self.augment(_as_array(self.venv.reset()))

    def step(self, actions: np.ndarray) -> StepReturn:
        self.step_async(actions)
        return self.step_wait()

    def step_wait(self) -> StepReturn:
        observations, rewards, dones, infos = self.venv.step_wait()
        rows = _as_array(observations)
        ended = [int(i) for i in np.flatnonzero(dones) if "terminal_observation" in infos[i]]
        if ended:
            finals = np.stack([infos[i]["terminal_observation"] for i in ended])
            rows = np.concatenate([rows, finals.astype(np.float32)])
        augmented = self.augment(rows)
        for j, i in enumerate(ended):
            infos[i]["terminal_observation"] = augmented[self.num_envs + j]
        return augmented[:self.num_envs], rewards, dones, infos

    def augment(self, observations: np.ndarray) -> np.ndarray:
        """Raw observations (n, raw_size) with their retrieval features appended."""
        raw = raw_observations(observations, self.raw_size)
        return np.concatenate([raw, retrieve(self.memory, self.embedder, raw, self.retrieval)],
                              axis=1)

    def action_masks(self) -> np.ndarray:
        """Legal moves of every env, (num_envs, moves) bool."""
        return np.stack(self.venv.env_method("action_masks")).astype(bool)


def _as_array(observations: VecEnvObs) -> np.ndarray:
    if not isinstance(observations, np.ndarray):
        raise TypeError(f"retrieval features extend flat array observations, not "
                        f"{type(observations).__name__}.")
    return observations.astype(np.float32, copy=False)


# ---------------------------------------------------------------------------- writing


def discounted_returns(rewards: np.ndarray, gamma: float,
                       horizon: int | None = None) -> np.ndarray:
    """Per step (axis 0 is time), the discounted sum of the rewards from that step on.

    ``horizon=None``: to the end (Monte-Carlo, ``G_t = r_t + gamma G_{t+1}``); otherwise only
    the next ``horizon`` rewards, ``sum_{j < horizon} gamma**j r_{t+j}`` (an n-step return
    without a bootstrap). Other axes (envs) are computed side by side; float64.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    returns = np.zeros_like(rewards)
    steps = len(rewards)
    if horizon is None:
        following = np.zeros(rewards.shape[1:])
        for t in range(steps - 1, -1, -1):
            following = rewards[t] + gamma * following
            returns[t] = following
        return returns
    for j in range(min(horizon, steps)):
        returns[:steps - j] += gamma**j * rewards[j:]
    return returns


class EpisodeEnds(NamedTuple):
    """What the memory stores about episodes that just ended, one row per ended env."""

    envs: np.ndarray
    """int64 env indices."""
    outcomes: np.ndarray
    """float32 outcomes (OUTCOME_BOSS_WON, OUTCOME_PLAYER_WON, OUTCOME_TIMEOUT)."""
    personas: np.ndarray
    """str persona tags."""
    margins: np.ndarray
    """float64 HP margins at the end (the info's ``hp_margin``); NaN where the info has none."""


def episode_ends(dones: np.ndarray, infos: Sequence[Mapping[str, Any]] | Mapping[str, Any],
                 persona_names: Sequence[str],
                 truncated: np.ndarray | None = None) -> EpisodeEnds:
    """Outcomes and personas of the envs whose episode ended.

    ``infos`` is SB3's list of per-env dicts (``player_won``, ``persona``,
    ``TimeLimit.truncated``) or a Gymnasium vector env's info dict (``final_info`` columns),
    which does not say which fights timed out: pass ``truncated`` with it.
    """
    envs = np.flatnonzero(np.asarray(dones, dtype=bool))
    if isinstance(infos, Mapping):
        player_won, persona, timed_out = _vector_ends(envs, infos, truncated)
        margins = _vector_margins(envs, infos)
    else:
        rows = [infos[i] for i in envs.tolist()]
        player_won = np.array([bool(info.get("player_won", False)) for info in rows], dtype=bool)
        persona = [info.get("persona") for info in rows]
        timed_out = np.array([bool(info.get("TimeLimit.truncated", False)) for info in rows],
                             dtype=bool)
        margins = np.array([float(info.get("hp_margin", np.nan)) for info in rows],
                           dtype=np.float64)
        if truncated is not None:
            timed_out |= np.asarray(truncated, dtype=bool)[envs]
    outcomes = np.where(timed_out, OUTCOME_TIMEOUT,
                        np.where(player_won, OUTCOME_PLAYER_WON, OUTCOME_BOSS_WON))
    tags = np.array([_persona_tag(p, persona_names) for p in persona], dtype=str)
    return EpisodeEnds(envs.astype(np.int64), outcomes.astype(np.float32), tags, margins)


def _vector_margins(envs: np.ndarray, info: Mapping[str, Any]) -> np.ndarray:
    final = info.get("final_info", {})
    if not len(envs) or "hp_margin" not in final:
        return np.full(len(envs), np.nan)
    return np.asarray(final["hp_margin"], dtype=np.float64)[envs]


def _vector_ends(envs: np.ndarray, info: Mapping[str, Any],
                 truncated: np.ndarray | None) -> tuple[np.ndarray, list[Any], np.ndarray]:
    if not len(envs):
        return np.zeros(0, dtype=bool), [], np.zeros(0, dtype=bool)
    if truncated is None:
        raise ValueError("a Gymnasium vector env's info does not say which fights timed out: "
                         "pass truncated=<the step's truncated flags> with it.")
    if "final_info" not in info:
        raise ValueError("fights ended but the info has no final_info: pass the info dict of "
                         "the step (BossFightVectorEnv.step), or SB3's list of infos.")
    final = info["final_info"]
    won = np.asarray(final["player_won"], dtype=bool)[envs]
    personas = final.get("persona")
    persona = [None] * len(envs) if personas is None else list(np.asarray(personas)[envs])
    return won, persona, np.asarray(truncated, dtype=bool)[envs]


def _persona_tag(persona: Any, names: Sequence[str]) -> str:
    if persona is None:
        return UNKNOWN_PERSONA
    if isinstance(persona, str | np.str_):
        return str(persona)
    index = int(persona)
    if not 0 <= index < len(names):
        raise ValueError(f"persona index {index} is not one of the env's {len(names)} "
                         f"persona_names: build the writer with the env's persona_names.")
    return str(names[index])


def hp_margins(observations: np.ndarray, layout: ObservationLayout) -> np.ndarray:
    """Boss HP fraction minus player HP fraction (``boss_health - health_percentage``) of raw
    or augmented observations, (n,) float64: > 0 when the boss is ahead."""
    rows = raw_observations(observations, layout.size)
    return (rows[:, feature_start(layout, "boss_health")].astype(np.float64)
            - rows[:, feature_start(layout, "health_percentage")].astype(np.float64))


def feature_start(layout: ObservationLayout, name: str) -> int:
    """The column where the layout's feature ``name`` starts."""
    return next(feature.start for feature in layout.features if feature.name == name)


def margin_changes(margins: np.ndarray, final: np.ndarray) -> np.ndarray:
    """Per step (axis 0 is time), the change of the HP margin the step's exchange made.

    ``margins`` are (steps, envs) margins *before* each step's move, ``final`` the (envs,)
    margins after the last step (every episode ends there): ``margins[t + 1] - margins[t]``,
    and ``final - margins[-1]`` for the last step. float64.
    """
    before = np.asarray(margins, dtype=np.float64)
    after = np.concatenate([before[1:], np.asarray(final, dtype=np.float64)[np.newaxis]])
    return after - before


class EpisodeMemoryWriter:
    """Buffers the running episode of every env and stores each episode when it ends.

    :param memory: the memory written (shared with the wrappers and bosses that read it).
    :param embedder: makes the keys, from the raw observation.
    :param layout: the game's observation layout (``layout.size`` raw columns).
    :param persona_names: the env's ``persona_names``, to turn info persona indices into tags.
    :param config: gamma and the kind of return.
    :param clock: the time stored with a decision (see the module docstring).
    """

    def __init__(self, memory: EpisodicMemory, embedder: Embedder, *, layout: ObservationLayout,
                 persona_names: Sequence[str], config: RetrievalConfig | None = None,
                 clock: Clock = time.time) -> None:
        check_compatible(memory, embedder, len(layout.moves))
        self.memory = memory
        self.embedder = embedder
        self.size = layout.size
        self.layout = layout
        self.persona_names = tuple(persona_names)
        self.config = config or RetrievalConfig()
        self.clock = clock
        self.episodes_written = 0
        self.reset()

    def reset(self) -> None:
        """Forget the running episodes (e.g. after the envs were reset)."""
        self._keys: list[np.ndarray] = []
        self._moves: list[np.ndarray] = []
        self._rewards: list[np.ndarray] = []
        self._margins: list[np.ndarray] = []
        self._times: list[float] = []
        self._first = 0  # the step of _keys[0]
        self._step = 0  # the step the next record() is
        self._starts: np.ndarray | None = None  # the step each env's running episode began

    def record(self, observations: np.ndarray, moves: np.ndarray, rewards: np.ndarray,
               dones: np.ndarray, infos: Sequence[Mapping[str, Any]] | Mapping[str, Any],
               truncated: np.ndarray | None = None) -> np.ndarray:
        """Record one step of every env; store the episodes that ended. Returns the new ids.

        ``observations`` are those the moves were chosen on (raw or augmented);
        ``infos`` are SB3's per-env dicts or a Gymnasium vector env's info dict (then pass
        ``truncated``, see :func:`episode_ends`).
        """
        raw = raw_observations(observations, self.size)
        n = len(raw)
        step_moves = _column(moves, n, np.int64, "moves")
        step_rewards = _column(rewards, n, np.float64, "rewards")
        step_dones = _column(dones, n, bool, "dones")
        self._check_envs(n)
        self._keys.append(self.embedder.embed(raw))
        self._moves.append(step_moves)
        self._rewards.append(step_rewards)
        self._margins.append(hp_margins(raw, self.layout))
        self._times.append(float(self.clock()))
        self._step += 1
        if not step_dones.any():
            return np.zeros(0, dtype=np.int64)
        ends = episode_ends(step_dones, infos, self.persona_names, truncated)
        ids = self._store(ends)
        self._forget(ends.envs)
        return ids

    def _check_envs(self, n: int) -> None:
        if self._starts is None:
            self._starts = np.full(n, self._step, dtype=np.int64)
        elif n != len(self._starts):
            raise ValueError(f"record() got {n} envs but earlier steps had "
                             f"{len(self._starts)}: use one writer per env batch.")

    def _store(self, ends: EpisodeEnds) -> np.ndarray:
        """Add every decision of the ended episodes, episode by episode, in time order."""
        assert self._starts is not None
        starts = self._starts[ends.envs]
        window = slice(int(starts.min()) - self._first, None)
        rewards = self._step_values(ends, window)  # (steps, ended)
        steps = np.arange(int(starts.min()), self._step)
        valid = steps[:, None] >= starts[None, :]
        returns = discounted_returns(np.where(valid, rewards, 0.0), self.config.gamma,
                                     self.config.horizon)
        episode, time_index = np.nonzero(valid.T)  # episode by episode, each in time order
        keys = np.stack([k[ends.envs] for k in self._keys[window]])
        moves = np.stack([m[ends.envs] for m in self._moves[window]])
        times = np.asarray(self._times[window])
        self.episodes_written += len(ends.envs)
        return self.memory.add(
            keys[time_index, episode], moves[time_index, episode],
            values=returns[time_index, episode], outcomes=ends.outcomes[episode],
            personas=ends.personas[episode], times=times[time_index])

    def _step_values(self, ends: EpisodeEnds, window: slice) -> np.ndarray:
        """What is summed into the stored values, (steps, ended): the rewards, or with
        ``returns="effect"`` the HP margin's changes (:func:`margin_changes`)."""
        if not self.config.steered:
            return np.stack([r[ends.envs] for r in self._rewards[window]])
        if np.isnan(ends.margins).any():
            raise ValueError("returns='effect' needs the HP margin at each fight's end: pass "
                             "infos with hp_margin (the boss-fight envs report it).")
        margins = np.stack([m[ends.envs] for m in self._margins[window]])
        return margin_changes(margins, ends.margins)

    def _forget(self, ended: np.ndarray) -> None:
        """Start the ended envs' next episode and drop steps no running episode needs."""
        assert self._starts is not None
        self._starts[ended] = self._step
        drop = int(self._starts.min()) - self._first
        if drop > 0:
            for buffer in (self._keys, self._moves, self._rewards, self._margins, self._times):
                del buffer[:drop]
            self._first += drop


def _column(values: Any, n: int, dtype: Any, name: str) -> np.ndarray:
    array = np.array(values, dtype=dtype).reshape(-1)  # a copy: SB3 edits rewards in place
    if len(array) != n:
        raise ValueError(f"{name} has {len(array)} entries for {n} observations: pass one "
                         f"per env.")
    return array


def writer_for(env: VecEnv | gym.Env[Any, Any] | BossFightVectorEnv, memory: EpisodicMemory,
               embedder: Embedder, config: RetrievalConfig | None = None,
               clock: Clock = time.time) -> EpisodeMemoryWriter:
    """A writer for a boss-fight env: an SB3 VecEnv, a (wrapped) Gymnasium env or vector env.

    The layout and the persona names are read from the env (``layout``, ``persona_names``).
    """
    return EpisodeMemoryWriter(memory, embedder, layout=_env_attr(env, "layout"),
                               persona_names=_env_attr(env, "persona_names"), config=config,
                               clock=clock)


def _env_attr(env: Any, name: str) -> Any:
    if isinstance(env, VecEnv):
        return env.get_attr(name)[0]
    if isinstance(env, gym.Env):
        return env.get_wrapper_attr(name)
    return getattr(env, name)


class MemoryWritingCallback(BaseCallback):
    """Feeds an :class:`EpisodeMemoryWriter` every env step of SB3 training.

    Works with on-policy (PPO, A2C, MaskablePPO) and off-policy (DQN) algorithms, on raw or
    :class:`RetrievalVecEnv` observations, and logs ``memory/size`` and
    ``memory/episodes_written``. Episodes running when a ``learn()`` call starts are dropped
    (SB3 may just have reset the envs); the rest of them is written, with exact returns.
    """

    def __init__(self, writer: EpisodeMemoryWriter, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.writer = writer

    def _on_training_start(self) -> None:
        self.writer.reset()

    def _on_step(self) -> bool:
        self.writer.record(self._observations(), self.locals["actions"], self.locals["rewards"],
                           self.locals["dones"], self.locals["infos"])
        self.logger.record("memory/size", len(self.writer.memory))
        self.logger.record("memory/episodes_written", self.writer.episodes_written)
        return True

    def _observations(self) -> np.ndarray:
        """The observations the step's actions were chosen on, unnormalized."""
        model: BaseAlgorithm = self.model
        normalize = model.get_vec_normalize_env()
        if normalize is None:
            return np.asarray(model._last_obs)
        original = getattr(model, "_last_original_obs", None)  # off-policy keeps it
        if original is not None:
            return np.asarray(original)
        return np.asarray(normalize.unnormalize_obs(np.asarray(model._last_obs)))


# ---------------------------------------------------------------------------- bosses


def dqn_q_values(model: BaseAlgorithm) -> QValuesFn:
    """A DQN model's Q-values as a function: raw observations -> (n, moves) float32."""
    if not isinstance(model.policy, DQNPolicy):
        raise TypeError(f"dqn_q_values needs a DQN model, got a {type(model.policy).__name__} "
                        f"policy; for actor-critics use RetrievalPolicyBoss.")
    policy = SB3BossPolicy(model, "q_values")

    def q_values(observations: np.ndarray) -> np.ndarray:
        return policy.move_values(observations).astype(np.float32)

    return q_values


@dataclass(frozen=True)
class Steering:
    """Turns remembered effects into values: :func:`rag.retrieval.steering_direction` read off
    raw observations.

    The player's recent win rate is ``1 - recent_deaths`` (the observation's share of the last
    5 fights the player died in; a player with fewer than 5 fights counts the missing ones as
    not lost, so a new player reads as winning and meets effective moves first); the target
    and tolerance are those of the observation's difficulty level (``targets`` and
    ``tolerances`` in the layout's level order), :data:`DEFAULT_TARGET` ±
    :data:`DEFAULT_TOLERANCE` when it names none.
    """

    layout: ObservationLayout
    targets: tuple[float, ...]
    """Target player win rate per difficulty level, in ``layout.difficulty_levels`` order."""
    tolerances: tuple[float, ...]
    """Half-width of the band per level (> 0)."""
    limit: float = DEFAULT_STEER_LIMIT
    """The direction is clipped to [-limit, limit] (1: full strength at the band's edges)."""
    dead_zone: float = 0.0
    """In tolerances around the target, where the boss does not push (1: inside the band)."""

    def __post_init__(self) -> None:
        levels = len(self.layout.difficulty_levels)
        if not len(self.targets) == len(self.tolerances) == levels:
            raise ValueError(f"Steering needs a target and a tolerance per difficulty level "
                             f"({levels}: {', '.join(self.layout.difficulty_levels)}), got "
                             f"{len(self.targets)} and {len(self.tolerances)}: build it with "
                             f"Steering.for_game(game).")
        if min(self.tolerances, default=1.0) <= 0:
            raise ValueError(f"Steering tolerances must be > 0, got {self.tolerances}.")

    @classmethod
    def for_game(cls, game: GameDefinition, limit: float = DEFAULT_STEER_LIMIT,
                 dead_zone: float = 0.0) -> Steering:
        """The game's own bands (``difficulty_levels``' target win rates and tolerances)."""
        levels = game.difficulty_levels.values()
        return cls(ObservationLayout.for_game(game),
                   tuple(level.target_player_win_rate for level in levels),
                   tuple(level.win_rate_tolerance for level in levels), limit, dead_zone)

    @classmethod
    def uniform(cls, layout: ObservationLayout, target: float = DEFAULT_TARGET,
                tolerance: float = DEFAULT_TOLERANCE) -> Steering:
        """One band for every level (when the game's bands are not at hand)."""
        levels = len(layout.difficulty_levels)
        return cls(layout, (target,) * levels, (tolerance,) * levels)

    def player_win_rates(self, observations: np.ndarray) -> np.ndarray:
        """``1 - recent_deaths`` per row, (n,) float64."""
        rows = raw_observations(observations, self.layout.size)
        return 1.0 - rows[:, feature_start(self.layout, "recent_deaths")].astype(np.float64)

    def bands(self, observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row, the target and tolerance of its difficulty level, each (n,) float64."""
        rows = raw_observations(observations, self.layout.size)
        start = feature_start(self.layout, "difficulty")
        one_hot = rows[:, start:start + len(self.targets)]
        known = one_hot.max(axis=1) > 0.5
        level = one_hot.argmax(axis=1)
        targets = np.where(known, np.asarray(self.targets)[level], DEFAULT_TARGET)
        tolerances = np.where(known, np.asarray(self.tolerances)[level], DEFAULT_TOLERANCE)
        return targets, tolerances

    def directions(self, observations: np.ndarray) -> np.ndarray:
        """The steering direction per row, (n,) float64 in [-limit, limit]."""
        targets, tolerances = self.bands(observations)
        return steering_direction(self.player_win_rates(observations), targets, tolerances,
                                  self.limit, self.dead_zone)


class _MemoryBoss:
    """What the three bosses share: reading the memory, and writing it in ``observe``."""

    def __init__(self, memory: EpisodicMemory, embedder: Embedder,
                 config: RetrievalConfig | None, name: str, layout: ObservationLayout,
                 persona_names: Sequence[str], clock: Clock,
                 steering: Steering | None = None) -> None:
        self.name = name
        self.memory = memory
        self.embedder = embedder
        self.config = config or RetrievalConfig()
        self.layout = layout
        self.steering = steering or Steering.uniform(layout)
        self.writer = EpisodeMemoryWriter(memory, embedder, layout=layout,
                                          persona_names=persona_names, config=self.config,
                                          clock=clock)
        self._start = memory.records()

    def start_fights(self) -> None:
        """New envs: forget the decisions of fights in progress (they have no return)."""
        self.writer.reset()

    def forget(self) -> None:
        """Back to the memory this boss started with (each evaluation starts from it)."""
        self.memory = EpisodicMemory.from_records(self.memory.config, self._start)
        self.writer = EpisodeMemoryWriter(self.memory, self.embedder, layout=self.layout,
                                          persona_names=self.writer.persona_names,
                                          config=self.config, clock=self.writer.clock)

    def features(self, observations: np.ndarray) -> RetrievalFeatures:
        """What the memory says about each move, for raw or augmented observations."""
        raw = raw_observations(observations, self.layout.size)
        return neighbour_features(self.memory, self.embedder, raw, self.config)

    def search(self, observations: np.ndarray) -> tuple[MoveNeighbours, RetrievalFeatures]:
        """The k nearest entries of each move and what they say (the same as :meth:`features`)."""
        raw = raw_observations(observations, self.layout.size)
        hits = self.memory.search(self.embedder.embed(raw), self.config.k)
        return hits, retrieval_features(hits, delta=self.config.delta,
                                        distance_scale=self.config.distance_scale)

    def neighbours(self, hits: MoveNeighbours) -> list[tuple[Neighbour, ...]]:
        """Per query, the entries found: move, distance, kernel weight, return, outcome, persona."""
        records = self.memory.records()
        weights = kernel_weights(hits.distances, self.config.delta)
        return [tuple(_neighbour(records, hits, weights, (q, int(move), int(j)))
                      for move, j in zip(*np.nonzero(hits.ids[q] >= 0), strict=True))
                for q in range(len(hits.ids))]

    def memory_values(self, features: RetrievalFeatures, observations: np.ndarray) -> np.ndarray:
        """What the memory says each move is worth, (n, moves): the neighbours' values, or
        with ``returns="effect"`` their effects steered (:class:`Steering`)."""
        if not self.config.steered:
            return features.values
        return steered_values(features.values, self.steering.directions(observations))

    def memory_parts(self, features: RetrievalFeatures, row: int) -> dict[str, tuple[float, ...]]:
        """The memory's per-move numbers for one query: value, neighbours found, distance."""
        return {"memory": _floats(features.values[row]), "found": _floats(features.counts[row]),
                "distance": _floats(features.distances[row])}

    def steering_parts(self, features: RetrievalFeatures, observations: np.ndarray,
                       row: int) -> tuple[dict[str, tuple[float, ...]], dict[str, float]]:
        """With effects: the steered memory values (``memory``), the remembered effects
        (``effect``) and the scalar ``direction``; otherwise :meth:`memory_parts` alone."""
        parts = self.memory_parts(features, row)
        if not self.config.steered:
            return parts, {}
        raw = raw_observations(observations, self.layout.size)[row:row + 1]
        direction = float(self.steering.directions(raw)[0])
        steered = steered_values(features.values[row:row + 1], np.array([direction]))
        return {**parts, "memory": _floats(steered[0]), "effect": parts["memory"]}, {
            "direction": direction}

    def observe(self, observations: np.ndarray, moves: np.ndarray, rewards: np.ndarray,
                dones: np.ndarray, infos: Sequence[Mapping[str, Any]] | Mapping[str, Any],
                truncated: np.ndarray | None = None) -> np.ndarray:
        """Online adaptation: record a step (:meth:`EpisodeMemoryWriter.record`); no gradients."""
        return self.writer.record(observations, moves, rewards, dones, infos, truncated)


class ValueBlendedBoss(_MemoryBoss):
    """EVA: the legal argmax of the learned Q-values blended with the memory's values.

    ``q_values_fn`` gets raw observations (e.g. :func:`dqn_q_values` of a DQN trained without
    retrieval features).
    """

    def __init__(self, q_values_fn: QValuesFn, memory: EpisodicMemory, embedder: Embedder,
                 config: RetrievalConfig | None = None, name: str = "value_blended", *,
                 layout: ObservationLayout, persona_names: Sequence[str],
                 clock: Clock = time.time, steering: Steering | None = None) -> None:
        super().__init__(memory, embedder, config, name, layout, persona_names, clock, steering)
        self.q_values_fn = q_values_fn

    def move_values(self, observations: np.ndarray) -> np.ndarray:
        """The blended Q-values, (n, moves), unmasked."""
        raw = raw_observations(observations, self.layout.size)
        features = self.features(raw)
        q_learned = np.asarray(self.q_values_fn(raw))
        return blend_values(q_learned, self.memory_values(features, raw), features.counts,
                            features.distances, lam=self.config.lam, k=self.config.k)

    def select_moves(self, observations: np.ndarray, action_masks: np.ndarray) -> np.ndarray:
        return masked_argmax(self.move_values(observations), action_masks)

    def explain(self, observations: np.ndarray,
                action_masks: np.ndarray) -> list[Explanation]:
        """Per row: the blended values, the learned and memory values, lambda, the neighbours."""
        raw = raw_observations(observations, self.layout.size)
        hits, features = self.search(raw)
        learned = np.asarray(self.q_values_fn(raw))
        blended = blend_values(learned, self.memory_values(features, raw), features.counts,
                               features.distances, lam=self.config.lam, k=self.config.k)
        lam_eff = blend_weights(features.counts, features.distances, self.config.lam,
                                self.config.k)
        found = self.neighbours(hits)
        explanations = []
        for i in range(len(raw)):
            parts, steer = self.steering_parts(features, raw, i)
            explanations.append(Explanation(
                kind="blended Q-values (plays the highest legal)", values=_floats(blended[i]),
                parts={"learned": _floats(learned[i]), "lambda": _floats(lam_eff[i]), **parts},
                scalars={"lam": self.config.lam, "k": self.config.k, **steer},
                neighbours=found[i]))
        return explanations


class MemoryOnlyBoss(_MemoryBoss):
    """MFEC: the legal move with the highest kernel-weighted memory value.

    With effects (``returns="effect"``) the values are steered (:class:`Steering`) and the
    argmax has no use for their scale, so the direction's size is used as a probability: a
    decision follows the memory with probability ``|direction|`` and is otherwise a legal move
    drawn uniformly (with the default ``dead_zone`` 0 the direction is ±1 whenever the
    player's recent win rate is off target, so every decision follows the memory).

    A move without neighbours (never stored yet) is worth ``unvisited_value``; None means the
    mean value of the moves that do have neighbours for the same observation (0 if none has),
    so untried moves are neither favoured nor shunned. Ties are broken uniformly at random
    from the boss's seeded generator.
    """

    def __init__(self, memory: EpisodicMemory, embedder: Embedder,
                 config: RetrievalConfig | None = None, name: str = "memory_only", *,
                 layout: ObservationLayout, persona_names: Sequence[str],
                 unvisited_value: float | None = None, seed: int = 0,
                 clock: Clock = time.time, steering: Steering | None = None) -> None:
        super().__init__(memory, embedder, config, name, layout, persona_names, clock, steering)
        self.unvisited_value = unvisited_value
        self.rng = np.random.default_rng(seed)

    def move_values(self, observations: np.ndarray) -> np.ndarray:
        """The memory's value of every move, (n, moves) float64, unmasked."""
        return self._values(self.features(observations), observations)

    def explain(self, observations: np.ndarray,
                action_masks: np.ndarray) -> list[Explanation]:
        """Per row: the values played (unvisited moves filled in), the memory's, the neighbours."""
        hits, features = self.search(observations)
        values = self._values(features, observations)
        found = self.neighbours(hits)
        scalars: dict[str, float] = {"k": self.config.k}
        if self.unvisited_value is not None:
            scalars["unvisited value"] = self.unvisited_value
        explanations = []
        for i in range(len(values)):
            parts, steer = self.steering_parts(features, observations, i)
            explanations.append(Explanation(
                kind="memory values (plays the highest legal, ties drawn)",
                values=_floats(values[i]), parts=parts, scalars={**scalars, **steer},
                neighbours=found[i]))
        return explanations

    def _values(self, features: RetrievalFeatures, observations: np.ndarray) -> np.ndarray:
        values = self.memory_values(features, observations).astype(np.float64)
        visited = features.counts > 0
        if self.unvisited_value is None:
            seen = visited.sum(axis=1, keepdims=True)
            total = np.where(visited, values, 0.0).sum(axis=1, keepdims=True)
            default = np.divide(total, seen, out=np.zeros_like(total), where=seen > 0)
        else:
            default = np.full((len(values), 1), float(self.unvisited_value))
        return np.where(visited, values, default)

    def select_moves(self, observations: np.ndarray, action_masks: np.ndarray) -> np.ndarray:
        values = self.move_values(observations)
        if self.config.steered:  # press with probability |direction|, else a legal move at random
            pressing = self.rng.random(len(values)) < np.abs(self.steering.directions(observations))
            values = np.where(pressing[:, None], values, 0.0)
        masks = np.asarray(action_masks, dtype=bool)
        best = values[np.arange(len(values)), masked_argmax(values, masks)]
        tied = masks & (values == best[:, None])
        return masked_argmax(self.rng.random(values.shape), tied)


class RetrievalPolicyBoss(_MemoryBoss):
    """An SB3 model trained on :class:`RetrievalVecEnv` observations, as a boss.

    Appends :func:`retrieve` features to each raw observation and plays like
    :class:`agents.policy.SB3BossPolicy`: a draw over the legal moves from the action
    probabilities (seeded), the most probable legal move with ``deterministic``, or a DQN's
    highest-valued legal move.
    """

    def __init__(self, model: BaseAlgorithm, memory: EpisodicMemory, embedder: Embedder,
                 config: RetrievalConfig | None = None, name: str = "retrieval_policy", *,
                 layout: ObservationLayout, persona_names: Sequence[str],
                 deterministic: bool = False, seed: int = 0, clock: Clock = time.time) -> None:
        super().__init__(memory, embedder, config, name, layout, persona_names, clock)
        expected = layout.size + FEATURES_PER_MOVE * len(layout.moves)
        shape = model.observation_space.shape
        if shape != (expected,):
            raise ValueError(f"the model sees observations of shape {shape}, not ({expected},) "
                             f"= the game's {layout.size} plus {FEATURES_PER_MOVE} retrieval "
                             f"features per move: train it on RetrievalVecEnv, or play a model "
                             f"trained on raw observations with SB3BossPolicy.")
        self.policy = SB3BossPolicy(model, name, deterministic=deterministic, seed=seed)

    def augmented(self, observations: np.ndarray) -> np.ndarray:
        """Raw (or augmented) observations with the memory's current features appended."""
        raw = raw_observations(observations, self.layout.size)
        features = retrieve(self.memory, self.embedder, raw, self.config)
        return np.concatenate([raw, features], axis=1)

    def move_values(self, observations: np.ndarray) -> np.ndarray:
        """The model's action probabilities (Q-values for a DQN), (n, moves), unmasked."""
        return self.policy.move_values(self.augmented(observations))

    def select_moves(self, observations: np.ndarray, action_masks: np.ndarray) -> np.ndarray:
        return self.policy.select_moves(self.augmented(observations), action_masks)

    def explain(self, observations: np.ndarray,
                action_masks: np.ndarray) -> list[Explanation]:
        """Per row: the model's explanation of the augmented input, the memory's side of it."""
        raw = raw_observations(observations, self.layout.size)
        hits, features = self.search(raw)
        inputs = np.concatenate([raw, feature_rows(features, self.config)], axis=1)
        found = self.neighbours(hits)
        return [replace(model, parts={**model.parts, **self.memory_parts(features, i)},
                        scalars={**model.scalars, "k": self.config.k}, neighbours=found[i])
                for i, model in enumerate(self.policy.explain(inputs, action_masks))]


def _neighbour(records: Records, hits: MoveNeighbours, weights: np.ndarray,
               at: tuple[int, int, int]) -> Neighbour:
    """The entry at (query, move, rank) of ``hits``, its outcome and persona from ``records``."""
    entry = int(hits.ids[at])
    row = int(np.searchsorted(records.ids, entry))
    known = row < len(records.ids) and int(records.ids[row]) == entry
    return Neighbour(move=at[1], distance=float(hits.distances[at]), weight=float(weights[at]),
                     value=float(hits.values[at]),
                     outcome=float(records.outcomes[row]) if known else float("nan"),
                     persona=str(records.personas[row]) if known else UNKNOWN_PERSONA,
                     id=entry)


def _floats(row: np.ndarray) -> tuple[float, ...]:
    return tuple(float(x) for x in np.asarray(row).reshape(-1))


__all__ = [
    "FEATURES_PER_MOVE",
    "OUTCOME_BOSS_WON",
    "OUTCOME_PLAYER_WON",
    "OUTCOME_TIMEOUT",
    "RETURN_KINDS",
    "EpisodeEnds",
    "EpisodeMemoryWriter",
    "MemoryOnlyBoss",
    "MemoryWritingCallback",
    "QValuesFn",
    "RetrievalConfig",
    "RetrievalObservation",
    "RetrievalPolicyBoss",
    "RetrievalVecEnv",
    "Steering",
    "ValueBlendedBoss",
    "augmented_space",
    "check_compatible",
    "discounted_returns",
    "dqn_q_values",
    "episode_ends",
    "feature_bounds",
    "feature_rows",
    "hp_margins",
    "margin_changes",
    "neighbour_features",
    "raw_observations",
    "retrieve",
    "writer_for",
]
