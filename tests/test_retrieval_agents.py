"""Retrieval-augmented bosses (agents.retrieval): features, wrappers, writer, callback, bosses.

Unit tier: the config's validation, the features of an empty and of a close memory, the
returns the writer stores for a hand-made episode (exact numbers), the wrappers' spaces, masks
and batching, each boss's choice. Smoke tier (tiny budgets, in-process): the callback writes
the memory during real PPO and DQN training, MaskablePPO trains through RetrievalVecEnv, and a
boss keeps writing the memory while it fights (online adaptation, no gradient steps).
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.vec_env import DummyVecEnv

import envs  # noqa: F401 (registers the env ids)
from agents.policy import SB3BossPolicy
from agents.retrieval import (
    OUTCOME_BOSS_WON,
    OUTCOME_PLAYER_WON,
    OUTCOME_TIMEOUT,
    EpisodeMemoryWriter,
    MemoryOnlyBoss,
    MemoryWritingCallback,
    RetrievalConfig,
    RetrievalObservation,
    RetrievalPolicyBoss,
    RetrievalVecEnv,
    Steering,
    ValueBlendedBoss,
    discounted_returns,
    dqn_q_values,
    hp_margins,
    margin_changes,
    retrieve,
    writer_for,
)
from agents.vec_env import BossFightVecEnv
from envs.boss_fight import BossFightVectorEnv
from envs.bosses import masked_argmax
from envs.game import GameDefinition, load_game
from envs.observation import ObservationLayout
from rag.embedders import NumericContextEmbedder
from rag.memory import EpisodicMemory, MemoryConfig
from rag.retrieval import steered_values, steering_direction

# Any warning raised while a test runs is a failure.
pytestmark = pytest.mark.filterwarnings("error")

GAME = "duel"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def game() -> GameDefinition:
    return load_game(GAME)


@pytest.fixture(scope="module")
def layout(game: GameDefinition) -> ObservationLayout:
    return ObservationLayout.for_game(game)


@pytest.fixture(scope="module")
def embedder(game: GameDefinition) -> NumericContextEmbedder:
    return NumericContextEmbedder(game)


@pytest.fixture
def memory(embedder: NumericContextEmbedder, layout: ObservationLayout) -> EpisodicMemory:
    return EpisodicMemory(MemoryConfig(dim=embedder.dim, moves=len(layout.moves),
                                       capacity=50_000))


def width(layout: ObservationLayout) -> int:
    """Raw observation plus three features per move."""
    return layout.size + 3 * len(layout.moves)


def observations(n: int, seed: int = 0, player: str = "population") -> np.ndarray:
    """n distinct real observations of the duel."""
    obs, _ = BossFightVectorEnv(n, game=GAME, player=player).reset(seed=seed)
    return obs


def add_at(memory: EpisodicMemory, keys: np.ndarray, move: int, values: Any,
           copies: int = 1) -> None:
    """Store ``copies`` entries of ``move`` at each key (distance 0 from it)."""
    repeated = np.repeat(keys, copies, axis=0)
    memory.add(repeated, np.full(len(repeated), move), np.repeat(np.broadcast_to(
        np.asarray(values, dtype=float), (len(keys),)), copies), outcomes=1.0,
        personas="test", times=0.0)


# --- RetrievalConfig ---------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "message"), [
    ({"k": 0}, "retrieval.k must be an int >= 1"),
    ({"n": 0}, "retrieval.n must be an int >= 1"),
    ({"lam": 1.5}, "retrieval.lam=1.5 must be in [0, 1]"),
    ({"gamma": 0.0}, "retrieval.gamma=0.0 must be in (0, 1]"),
    ({"returns": "td"}, "use one of monte_carlo, n_step"),
    ({"delta": 0.0}, "retrieval.delta=0.0 must be a finite number > 0"),
    ({"value_clip": float("inf")}, "retrieval.value_clip=inf"),
])
def test_config_rejects_bad_values_and_names_the_fix(change: dict[str, Any],
                                                     message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        RetrievalConfig(**change)


def test_config_horizon_is_n_only_for_n_step_returns() -> None:
    assert RetrievalConfig(returns="n_step", n=4).horizon == 4
    assert RetrievalConfig(returns="monte_carlo", n=4).horizon is None
    assert RetrievalConfig(returns="effect", n=4).horizon == 4
    assert RetrievalConfig(returns="effect").steered
    assert not RetrievalConfig(returns="n_step").steered


# --- retrieve ----------------------------------------------------------------------------------


def test_retrieve_on_an_empty_memory_has_no_neighbours(memory: EpisodicMemory,
                                                       embedder: NumericContextEmbedder,
                                                       layout: ObservationLayout) -> None:
    features = retrieve(memory, embedder, observations(5), RetrievalConfig())
    assert features.shape == (5, 3 * len(layout.moves))
    assert features.dtype == np.float32
    per_move = features.reshape(5, len(layout.moves), 3)
    np.testing.assert_array_equal(per_move[..., 0], 0.0)  # values
    np.testing.assert_array_equal(per_move[..., 1], 0.0)  # counts / k
    np.testing.assert_array_equal(per_move[..., 2], 1.0)  # squashed distances


def test_retrieve_reads_close_neighbours_and_clips_their_values(
        memory: EpisodicMemory, embedder: NumericContextEmbedder) -> None:
    obs = observations(3)
    keys = embedder.embed(obs)
    add_at(memory, keys[:1], move=1, values=50.0, copies=2)
    add_at(memory, keys[:1], move=2, values=-0.75, copies=4)
    config = RetrievalConfig(k=4, value_clip=10.0)
    per_move = retrieve(memory, embedder, obs, config).reshape(3, 3, 3)
    np.testing.assert_allclose(per_move[0, 1], [10.0, 0.5, 0.0], atol=1e-5)  # clipped, 2 of 4
    np.testing.assert_allclose(per_move[0, 2], [-0.75, 1.0, 0.0], atol=1e-5)
    np.testing.assert_array_equal(per_move[0, 0], [0.0, 0.0, 1.0])  # move 0: nothing stored
    # Other observations find the same entries, farther away.
    assert (per_move[1:, 1:, 2] > 0.0).all()
    assert (per_move[1:, 1:, 1] > 0.0).all()


# --- RetrievalObservation (one Gymnasium env) --------------------------------------------------


def test_retrieval_observation_passes_sb3_check_env(memory: EpisodicMemory,
                                                    embedder: NumericContextEmbedder,
                                                    layout: ObservationLayout) -> None:
    keys = embedder.embed(observations(16, player="dodger"))
    add_at(memory, keys, move=0, values=1e3)  # beyond value_clip: the bounds must still hold
    add_at(memory, keys, move=2, values=-1e3)
    env = gymnasium.make("bosslab/BossFight-v0", game=GAME, player="dodger")
    wrapped = RetrievalObservation(env, memory, embedder)
    assert wrapped.observation_space.shape == (width(layout),)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb3_check_env(wrapped, warn=True)
    obs, _ = wrapped.reset(seed=1)
    assert obs in wrapped.observation_space
    assert obs[layout.size + 1] > 0.0  # neighbours of move 0 were found
    np.testing.assert_array_equal(wrapped.action_masks(), env.get_wrapper_attr("action_masks")())


def test_retrieval_observation_forwards_masks_to_maskable_ppo(memory: EpisodicMemory,
                                                              embedder: NumericContextEmbedder,
                                                              layout: ObservationLayout) -> None:
    env = RetrievalObservation(gymnasium.make("bosslab/BossFight-v0", game=GAME), memory,
                               embedder)
    env.reset(seed=0)
    assert get_action_masks(env).shape == (len(layout.moves),)
    vec = DummyVecEnv([lambda: RetrievalObservation(
        gymnasium.make("bosslab/BossFight-v0", game=GAME), memory, embedder)])
    vec.reset()
    assert is_masking_supported(vec)
    assert get_action_masks(vec).shape == (1, len(layout.moves))


def test_wrappers_refuse_a_memory_of_another_embedding_or_game(
        embedder: NumericContextEmbedder) -> None:
    wrong_dim = EpisodicMemory(MemoryConfig(dim=embedder.dim + 1, moves=3))
    with pytest.raises(ValueError, match=r"MemoryConfig\(dim=embedder\.dim"):
        RetrievalVecEnv(BossFightVecEnv(2, game=GAME), wrong_dim, embedder)
    wrong_moves = EpisodicMemory(MemoryConfig(dim=embedder.dim, moves=5))
    with pytest.raises(ValueError, match="the game has 3"):
        RetrievalObservation(gymnasium.make("bosslab/BossFight-v0", game=GAME), wrong_moves,
                             embedder)


# --- RetrievalVecEnv ---------------------------------------------------------------------------


def test_vec_wrapper_appends_features_inside_its_space(memory: EpisodicMemory,
                                                       embedder: NumericContextEmbedder,
                                                       layout: ObservationLayout) -> None:
    raw_env = BossFightVecEnv(8, seed=3, game=GAME)
    env = RetrievalVecEnv(BossFightVecEnv(8, seed=3, game=GAME), memory, embedder,
                          RetrievalConfig(value_clip=2.0))
    space = env.observation_space
    assert space.shape == (width(layout),)
    np.testing.assert_array_equal(space.low[layout.size:], [-2.0, 0.0, 0.0] * 3)
    np.testing.assert_array_equal(space.high[layout.size:], [2.0, 1.0, 1.0] * 3)
    assert isinstance(raw_env.observation_space, spaces.Box)
    np.testing.assert_array_equal(space.low[:layout.size], raw_env.observation_space.low)
    raw, obs = raw_env.reset(), env.reset()
    np.testing.assert_array_equal(obs[:, :layout.size], raw)
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(60):
        masks = env.action_masks()
        np.testing.assert_array_equal(masks, raw_env.action_masks())
        moves = masked_argmax(rng.random(masks.shape), masks)
        raw, _, raw_dones, raw_infos = raw_env.step(moves)
        obs, _, dones, infos = env.step(moves)
        np.testing.assert_array_equal(obs[:, :layout.size], raw)
        np.testing.assert_array_equal(dones, raw_dones)
        assert all(row in space for row in obs)
        for i in np.flatnonzero(dones):
            final = infos[i]["terminal_observation"]
            assert final in space
            np.testing.assert_array_equal(final[:layout.size],
                                          raw_infos[i]["terminal_observation"])
            ended += 1
    assert ended > 0


def test_vec_wrapper_features_follow_the_memory(memory: EpisodicMemory,
                                                embedder: NumericContextEmbedder,
                                                layout: ObservationLayout) -> None:
    env = RetrievalVecEnv(BossFightVecEnv(4, seed=7, game=GAME), memory, embedder)
    before = env.reset()
    np.testing.assert_array_equal(before[:, layout.size + 1::3], 0.0)  # no neighbours
    add_at(memory, embedder.embed(before[:, :layout.size]), move=2, values=0.5, copies=8)
    env.seed(7)
    after = env.reset()
    np.testing.assert_array_equal(after[:, :layout.size], before[:, :layout.size])
    move_2 = after[:, layout.size + 6:layout.size + 9]
    np.testing.assert_allclose(move_2, np.tile([0.5, 1.0, 0.0], (4, 1)), atol=1e-5)
    np.testing.assert_array_equal(after[:, layout.size + 1:layout.size + 6:3], 0.0)


class CountingEmbedder:
    """An embedder that counts its calls and the rows it embedded."""

    def __init__(self, inner: NumericContextEmbedder) -> None:
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self.calls: list[int] = []

    def embed(self, contexts: Any) -> np.ndarray:
        keys = self.inner.embed(contexts)
        self.calls.append(len(keys))
        return keys


def test_vec_wrapper_embeds_and_searches_once_per_step(memory: EpisodicMemory,
                                                       embedder: NumericContextEmbedder) -> None:
    counting = CountingEmbedder(embedder)
    searches: list[int] = []
    search = memory.search

    def counted_search(queries: Any, k: int = 8) -> Any:
        searches.append(len(queries))
        return search(queries, k)

    memory.search = counted_search  # type: ignore[method-assign]
    env = RetrievalVecEnv(BossFightVecEnv(64, seed=0, game=GAME), memory, counting)
    env.reset()
    ended = 0
    for _ in range(40):
        _, _, dones, _ = env.step(np.zeros(64, dtype=np.int64))
        ended += int(dones.sum())
    assert ended > 0
    assert len(counting.calls) == len(searches) == 41  # the reset and 40 steps
    assert sum(counting.calls) == 41 * 64 + ended  # terminal observations in the same batch


# --- returns and the writer --------------------------------------------------------------------


def test_discounted_returns_known_answers() -> None:
    rewards = np.array([1.0, 0.0, 2.0])
    np.testing.assert_allclose(discounted_returns(rewards, 0.5), [1.5, 1.0, 2.0])
    np.testing.assert_allclose(discounted_returns(rewards, 0.5, horizon=2), [1.0, 1.0, 2.0])
    np.testing.assert_allclose(discounted_returns(rewards, 0.5, horizon=1), rewards)
    np.testing.assert_allclose(discounted_returns(rewards, 0.5, horizon=9), [1.5, 1.0, 2.0])
    columns = discounted_returns(np.array([[1.0, 0.0], [1.0, 4.0]]), 0.5)
    np.testing.assert_allclose(columns, [[1.5, 2.0], [1.0, 4.0]])


def hand_made_steps(size: int) -> list[dict[str, Any]]:
    """Two envs, four steps, SB3 infos. Env 0: an episode of steps 0-2 (the player wins),
    then one of step 3 (the boss wins). Env 1: steps 0-1 (the boss wins), then 2-3 (a
    timeout). Both envs end at step 3."""
    rng = np.random.default_rng(0)
    extra = np.full((2, 9), 0.25, dtype=np.float32)  # appended features: not part of a key
    steps = []
    for t, (rewards, dones) in enumerate([([1.0, 3.0], [False, False]),
                                          ([0.0, -1.0], [False, True]),
                                          ([2.0, 0.5], [True, False]),
                                          ([9.0, 4.0], [True, True])]):
        infos: list[dict[str, Any]] = [{}, {}]
        if t == 1:
            infos[1] = {"player_won": False, "persona": 0, "TimeLimit.truncated": False}
        if t == 2:
            infos[0] = {"player_won": True, "persona": 1, "TimeLimit.truncated": False}
        if t == 3:
            infos[0] = {"player_won": False, "persona": 0, "TimeLimit.truncated": False}
            infos[1] = {"player_won": False, "persona": 1, "TimeLimit.truncated": True}
        obs = np.concatenate([rng.random((2, size), dtype=np.float32), extra], axis=1)
        steps.append({"observations": obs, "moves": np.array([t % 3, (t + 1) % 3]),
                      "rewards": np.array(rewards, dtype=np.float32),
                      "dones": np.array(dones), "infos": infos})
    return steps


@pytest.mark.parametrize(("returns", "values"), [
    # gamma 0.5, in the order the episodes end (then by env): env 1 [3, -1] -> [2.5, -1];
    # env 0 [1, 0, 2] -> [1.5, 1, 2]; env 0 [9] -> [9]; env 1 [0.5, 4] -> [2.5, 4].
    # n_step (n = 2) differs only in env 0's first episode: [1, 1, 2].
    ("monte_carlo", [2.5, -1.0, 1.5, 1.0, 2.0, 9.0, 2.5, 4.0]),
    ("n_step", [2.5, -1.0, 1.0, 1.0, 2.0, 9.0, 2.5, 4.0]),
])
def test_writer_stores_each_ended_episode_with_exact_returns(
        returns: str, values: list[float], memory: EpisodicMemory,
        embedder: NumericContextEmbedder, layout: ObservationLayout) -> None:
    config = RetrievalConfig(gamma=0.5, returns=returns, n=2)  # type: ignore[arg-type]
    clock = itertools.count(100)
    writer = EpisodeMemoryWriter(memory, embedder, layout=layout,
                                 persona_names=("brawler", "dodger"), config=config,
                                 clock=lambda: float(next(clock)))
    steps = hand_made_steps(layout.size)
    written = [len(writer.record(**step)) for step in steps]
    assert written == [0, 2, 3, 3]
    records = memory.records()
    np.testing.assert_allclose(records.values, values)
    env_of = [1, 1, 0, 0, 0, 0, 1, 1]
    step_of = [0, 1, 0, 1, 2, 3, 2, 3]
    np.testing.assert_array_equal(records.moves, [steps[t]["moves"][e]
                                                  for t, e in zip(step_of, env_of, strict=True)])
    np.testing.assert_array_equal(records.times, np.array(step_of) + 100.0)
    np.testing.assert_array_equal(records.outcomes, [OUTCOME_BOSS_WON] * 2
                                  + [OUTCOME_PLAYER_WON] * 3 + [OUTCOME_BOSS_WON]
                                  + [OUTCOME_TIMEOUT] * 2)
    assert records.personas.tolist() == (["brawler"] * 2 + ["dodger"] * 3 + ["brawler"]
                                         + ["dodger"] * 2)
    raw = np.stack([steps[t]["observations"][e, :layout.size]
                    for t, e in zip(step_of, env_of, strict=True)])
    np.testing.assert_allclose(records.keys, embedder.embed(raw), atol=1e-6)
    assert writer.episodes_written == 4


def test_writer_needs_truncation_flags_with_gymnasium_vector_infos(
        memory: EpisodicMemory, embedder: NumericContextEmbedder,
        layout: ObservationLayout) -> None:
    writer = EpisodeMemoryWriter(memory, embedder, layout=layout, persona_names=("dodger",))
    info = {"final_info": {"player_won": np.array([False, True]),
                           "persona": np.array([0, 0])}, "_final_info": np.array([False, True])}
    args = (observations(2), np.zeros(2), np.ones(2), np.array([False, True]), info)
    with pytest.raises(ValueError, match="pass truncated="):
        writer.record(*args)
    writer.reset()
    writer.record(*args, truncated=np.array([False, False]))
    assert memory.records().outcomes.tolist() == [OUTCOME_PLAYER_WON]


# --- effects and steering ----------------------------------------------------------------------


def column(layout: ObservationLayout, name: str) -> int:
    return next(f.start for f in layout.features if f.name == name)


def with_margins(rows: np.ndarray, layout: ObservationLayout, boss: list[float],
                 player: list[float]) -> np.ndarray:
    """``rows`` with their boss and player HP fractions set."""
    out = rows.copy()
    out[:, column(layout, "boss_health")] = boss
    out[:, column(layout, "health_percentage")] = player
    return out


def test_hp_margins_and_their_changes(layout: ObservationLayout) -> None:
    rows = with_margins(observations(3), layout, [1.0, 0.5, 0.25], [1.0, 0.75, 0.5])
    np.testing.assert_allclose(hp_margins(rows, layout), [0.0, -0.25, -0.25])
    margins = np.array([[0.0, 0.5], [0.25, 0.0], [-0.5, 0.5]])  # 3 steps of 2 envs
    np.testing.assert_allclose(margin_changes(margins, np.array([1.0, 0.0])),
                               [[0.25, -0.5], [-0.75, 0.5], [1.5, -0.5]])


@pytest.mark.parametrize(("n", "values"), [
    # margins before the moves 0, 0.2, -0.1 and 0.3 at the end: effects 0.2, -0.3, 0.4;
    # n = 2 with gamma 0.5: 0.2 - 0.15, -0.3 + 0.2, 0.4.
    (1, [0.2, -0.3, 0.4]),
    (2, [0.05, -0.1, 0.4]),
])
def test_writer_stores_each_move_effect_on_the_hp_margin(
        n: int, values: list[float], memory: EpisodicMemory, embedder: NumericContextEmbedder,
        layout: ObservationLayout) -> None:
    writer = EpisodeMemoryWriter(memory, embedder, layout=layout, persona_names=("dodger",),
                                 config=RetrievalConfig(gamma=0.5, returns="effect", n=n))
    rows = with_margins(observations(3), layout, [1.0, 1.0, 0.8], [1.0, 0.8, 0.9])
    rewards = [5.0, 5.0, 5.0]  # the engagement reward plays no part in an effect
    for t in range(3):
        info = ({"player_won": False, "persona": 0, "hp_margin": 0.3} if t == 2 else {})
        writer.record(rows[t:t + 1], np.array([t]), np.array([rewards[t]]), np.array([t == 2]),
                      [info])
    np.testing.assert_allclose(memory.records().values, values, atol=1e-6)


def test_effects_add_up_to_each_fight_final_margin(memory: EpisodicMemory,
                                                   embedder: NumericContextEmbedder,
                                                   layout: ObservationLayout) -> None:
    """Gymnasium vector infos: a fight starts level, so its effects sum to its final margin
    (and so do those of all the fights that end at one step)."""
    writer = EpisodeMemoryWriter(memory, embedder, layout=layout, persona_names=("dodger",),
                                 config=RetrievalConfig(gamma=1.0, returns="effect", n=1))
    env = BossFightVectorEnv(4, game=GAME, player="dodger")
    obs, _ = env.reset(seed=0)
    rng, ends = np.random.default_rng(0), list[tuple[np.ndarray, float]]()
    while len(ends) < 6:
        masks = env.action_masks()
        moves = masked_argmax(rng.random(masks.shape), masks)
        next_obs, rewards, terminated, truncated, info = env.step(moves)
        dones = terminated | truncated
        ids = writer.record(obs, moves, rewards, dones, info, truncated)
        if dones.any():
            ends.append((ids, float(info["final_info"]["hp_margin"][dones].sum())))
        obs = next_obs
    records = memory.records()
    sums = [float(records.values[np.isin(records.ids, ids)].sum()) for ids, _ in ends]
    np.testing.assert_allclose(sums, [margin for _, margin in ends], atol=1e-5)
    assert len({round(margin, 3) for _, margin in ends}) > 1


def test_writer_needs_the_final_margin_for_effects(memory: EpisodicMemory,
                                                   embedder: NumericContextEmbedder,
                                                   layout: ObservationLayout) -> None:
    writer = EpisodeMemoryWriter(memory, embedder, layout=layout, persona_names=("dodger",),
                                 config=RetrievalConfig(returns="effect"))
    with pytest.raises(ValueError, match="needs the HP margin at each fight's end"):
        writer.record(observations(1), np.zeros(1), np.zeros(1), np.ones(1, dtype=bool),
                      [{"player_won": True}])


def test_steering_direction_sign_scale_and_clipping() -> None:
    wins = np.array([0.9, 0.6, 0.55, 0.5, 0.45, 0.4, 0.0])
    np.testing.assert_allclose(steering_direction(wins, 0.5, 0.1),
                               [1.0, 1.0, 0.5, 0.0, -0.5, -1.0, -1.0])
    np.testing.assert_allclose(steering_direction(wins, 0.5, 0.1, limit=2.0),
                               [2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0])
    np.testing.assert_allclose(steering_direction([0.5, 0.5], [0.3, 0.75], [0.1, 0.05]),
                               [1.0, -1.0])
    # A dead zone of one tolerance: no push inside the band, edges included (float32 reads).
    edges = np.float64(1.0) - np.array([0.4, 0.6], dtype=np.float32)
    np.testing.assert_array_equal(steering_direction(edges, 0.5, 0.1, dead_zone=1.0), [0, 0])
    np.testing.assert_allclose(steering_direction(wins, 0.5, 0.1, limit=2.0, dead_zone=1.0),
                               [2.0, 0.0, 0.0, 0.0, 0.0, 0.0, -2.0])
    np.testing.assert_allclose(steering_direction([0.65, 0.3], 0.5, 0.1, limit=2.0,
                                                  dead_zone=1.0), [0.5, -1.0])
    effects = np.array([[0.2, -0.1], [0.2, -0.1]], dtype=np.float32)
    steered = steered_values(effects, np.array([1.0, -0.5]))
    assert steered.dtype == np.float32
    np.testing.assert_allclose(steered, [[0.2, -0.1], [-0.1, 0.05]])
    with pytest.raises(ValueError, match="tolerance must be > 0"):
        steering_direction(0.5, 0.5, 0.0)
    with pytest.raises(ValueError, match="dead_zone must be a finite number >= 0"):
        steering_direction(0.5, 0.5, 0.1, dead_zone=-1.0)
    with pytest.raises(ValueError, match=r"effects must be \(n, moves\)"):
        steered_values(effects, np.ones(3))


def situations(layout: ObservationLayout, deaths: list[float], level: str) -> np.ndarray:
    """Real observations with the player's recent deaths (share of 5) and the level set."""
    rows = observations(len(deaths))
    start = column(layout, "difficulty")
    rows[:, start:start + len(layout.difficulty_levels)] = 0.0
    rows[:, start + layout.difficulty_levels.index(level)] = 1.0
    rows[:, column(layout, "recent_deaths")] = deaths
    return rows


def test_steering_reads_the_win_rate_and_the_level_band(game: GameDefinition,
                                                        layout: ObservationLayout) -> None:
    steering = Steering.for_game(game)
    deaths = [0.0, 0.4, 0.6, 1.0]  # the player won 5, 3, 2 and 0 of their last 5 fights
    normal = situations(layout, deaths, "normal")  # 0.5 +- 0.1
    np.testing.assert_allclose(steering.player_win_rates(normal), [1.0, 0.6, 0.4, 0.0],
                               atol=1e-6)
    np.testing.assert_allclose(steering.directions(normal), [1.0, 1.0, -1.0, -1.0], atol=1e-5)
    easy = situations(layout, deaths, "easy")  # 0.75 +- 0.1: winning 3 of 5 is too few
    np.testing.assert_allclose(steering.directions(easy), [1.0, -1.0, -1.0, -1.0], atol=1e-5)
    unknown = normal.copy()
    unknown[:, column(layout, "difficulty"):][:, :len(layout.difficulty_levels)] = 0.0
    np.testing.assert_allclose(Steering.uniform(layout, 0.75).directions(normal),
                               steering.directions(easy), atol=1e-5)
    np.testing.assert_allclose(steering.directions(unknown), steering.directions(normal),
                               atol=1e-5)  # no level: 0.5 +- 0.1
    calm = Steering.for_game(game, dead_zone=1.0)  # winning 3 of 5 is inside 0.5 +- 0.1
    np.testing.assert_allclose(calm.directions(normal), [1.0, 0.0, 0.0, -1.0], atol=1e-5)
    with pytest.raises(ValueError, match="a target and a tolerance per difficulty level"):
        Steering(layout, (0.5,), (0.1,))


@pytest.mark.parametrize("kind", ["memory_only", "blend"])
def test_memory_bosses_steer_remembered_effects_by_the_player_win_rate(
        kind: str, memory: EpisodicMemory, embedder: NumericContextEmbedder,
        layout: ObservationLayout, game: GameDefinition) -> None:
    obs = situations(layout, [0.0, 1.0], "normal")  # winning everything, losing everything
    keys = embedder.embed(obs)
    for move, effect in enumerate([0.3, -0.2, 0.05]):  # move 0 hurts the player, move 1 helps
        add_at(memory, keys, move, effect, copies=2)
    every = np.ones((2, 3), dtype=bool)

    def boss(returns: str) -> Any:
        config = RetrievalConfig(k=2, lam=0.0, returns=returns)  # type: ignore[arg-type]
        common: dict[str, Any] = {"layout": layout, "persona_names": (),
                                  "steering": Steering.for_game(game)}
        if kind == "blend":
            return ValueBlendedBoss(fixed_q(np.zeros((2, 3))), memory, embedder, config,
                                    **common)
        return MemoryOnlyBoss(memory, embedder, config, **common)

    steered = boss("effect")
    np.testing.assert_allclose(steered.move_values(obs), [[0.3, -0.2, 0.05],
                                                          [-0.3, 0.2, -0.05]], atol=1e-4)
    np.testing.assert_array_equal(steered.select_moves(obs, every), [0, 1])
    explained = steered.explain(obs, every)
    assert [e.scalars["direction"] for e in explained] == [1.0, -1.0]
    np.testing.assert_allclose(explained[1].parts["effect"], [0.3, -0.2, 0.05], atol=1e-4)
    np.testing.assert_allclose(explained[1].parts["memory"], [-0.3, 0.2, -0.05], atol=1e-4)
    # The same memory read as returns: the highest value, whoever is winning.
    np.testing.assert_array_equal(boss("monte_carlo").select_moves(obs, every), [0, 0])


# --- the callback in real SB3 training ---------------------------------------------------------


class EpisodeLog(BaseCallback):
    """Lengths of the episodes that ended, from the env's Monitor-style infos."""

    def __init__(self) -> None:
        super().__init__()
        self.lengths: list[int] = []

    def _on_step(self) -> bool:
        self.lengths += [info["episode"]["l"] for info in self.locals["infos"]
                         if "episode" in info]
        return True


class Captured(KVWriter):
    """Every value SB3's logger dumps."""

    def __init__(self) -> None:
        self.values: list[dict[str, Any]] = []

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any],
              step: int = 0) -> None:
        self.values.append(dict(key_values))

    def close(self) -> None:
        """Nothing to release."""


def train_with_memory(model: Any, memory: EpisodicMemory, embedder: NumericContextEmbedder,
                      steps: int) -> tuple[EpisodeLog, Captured, EpisodeMemoryWriter]:
    writer = writer_for(model.get_env(), memory, embedder)
    episodes, captured = EpisodeLog(), Captured()
    model.set_logger(Logger(folder=None, output_formats=[captured]))
    model.learn(steps, callback=[MemoryWritingCallback(writer), episodes])
    return episodes, captured, writer


def test_callback_writes_every_ended_episode_during_ppo_training(
        memory: EpisodicMemory, embedder: NumericContextEmbedder) -> None:
    env = BossFightVecEnv(8, seed=0, game=GAME, player="population")
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=128, n_epochs=1, seed=0)
    episodes, captured, writer = train_with_memory(model, memory, embedder, 1024)
    assert len(episodes.lengths) > 8
    assert len(memory) == sum(episodes.lengths)  # every decision of every ended fight
    assert writer.episodes_written == len(episodes.lengths)
    records = memory.records()
    assert set(records.personas.tolist()) <= set(env.vector_env.persona_names)
    assert set(records.outcomes.tolist()) <= {OUTCOME_BOSS_WON, OUTCOME_PLAYER_WON,
                                              OUTCOME_TIMEOUT}
    logged = [values["memory/size"] for values in captured.values if "memory/size" in values]
    assert logged and logged[-1] == len(memory)


def test_callback_writes_the_memory_dqn_reads_during_training(
        memory: EpisodicMemory, embedder: NumericContextEmbedder,
        layout: ObservationLayout) -> None:
    env = RetrievalVecEnv(BossFightVecEnv(4, seed=1, game=GAME), memory, embedder)
    model = DQN("MlpPolicy", env, learning_starts=200, buffer_size=2_000, batch_size=32,
                train_freq=4, target_update_interval=200, seed=0)
    episodes, _, _ = train_with_memory(model, memory, embedder, 800)
    assert len(episodes.lengths) > 0
    assert len(memory) == sum(episodes.lengths)
    # DQN learnt from augmented observations, which showed the memory it was writing.
    assert model.replay_buffer is not None
    stored = model.replay_buffer.observations[:200, 0]
    assert stored.shape[-1] == width(layout)
    assert (stored[:, layout.size + 1::3] > 0).any()  # it saw neighbours while training


class LegalMoves(BaseCallback):
    """Checks that MaskablePPO got masks through the wrapper and only ever chose legal moves."""

    def __init__(self) -> None:
        super().__init__()
        self.checked = 0

    def _on_step(self) -> bool:
        masks, actions = self.locals["action_masks"], self.locals["actions"]
        assert masks is not None
        assert masks.shape == (len(actions), 3)
        assert masks[np.arange(len(actions)), actions].all()
        self.checked += 1
        return True


def test_maskable_ppo_trains_through_retrieval_vec_env(memory: EpisodicMemory,
                                                       embedder: NumericContextEmbedder,
                                                       layout: ObservationLayout) -> None:
    env = RetrievalVecEnv(BossFightVecEnv(8, seed=2, game=GAME), memory, embedder)
    assert is_masking_supported(env)
    assert get_action_masks(env).shape == (8, 3)
    writer = writer_for(env, memory, embedder)
    legal = LegalMoves()
    model = MaskablePPO("MlpPolicy", env, n_steps=64, batch_size=128, n_epochs=1, seed=0)
    model.learn(1024, callback=[MemoryWritingCallback(writer), legal])
    assert legal.checked == 1024 // 8
    assert len(memory) > 0
    assert (np.asarray(model._last_obs)[:, layout.size + 1::3] > 0).all()


# --- the bosses --------------------------------------------------------------------------------


def fixed_q(values: np.ndarray) -> Any:
    """A learned-Q function that returns ``values`` whatever it is asked."""
    return lambda observations: values.astype(np.float32)


def test_value_blended_boss_plays_the_learned_argmax_with_an_empty_memory(
        memory: EpisodicMemory, embedder: NumericContextEmbedder,
        layout: ObservationLayout) -> None:
    obs = observations(64)
    masks = np.random.default_rng(1).random((64, 3)) < 0.7
    masks[:, 0] = True
    q = np.random.default_rng(2).normal(size=(64, 3))
    boss = ValueBlendedBoss(fixed_q(q), memory, embedder, RetrievalConfig(lam=0.0),
                            layout=layout, persona_names=())
    np.testing.assert_array_equal(boss.move_values(obs), q.astype(np.float32))
    np.testing.assert_array_equal(boss.select_moves(obs, masks), masked_argmax(q, masks))
    dqn = DQN("MlpPolicy", BossFightVecEnv(2, game=GAME), seed=0)
    learned = ValueBlendedBoss(dqn_q_values(dqn), memory, embedder, layout=layout,
                               persona_names=())
    expected = SB3BossPolicy(dqn, "dqn").select_moves(obs, masks)
    np.testing.assert_array_equal(learned.select_moves(obs, masks), expected)


def test_value_blended_boss_follows_a_close_memory_when_lam_is_zero(
        memory: EpisodicMemory, embedder: NumericContextEmbedder,
        layout: ObservationLayout) -> None:
    obs = observations(32)
    keys = embedder.embed(obs)
    q_learned = np.tile([3.0, 2.0, 1.0], (32, 1))  # learned: move 0
    memory_values = [0.0, 1.0, 5.0]  # memory: move 2, then move 1
    for move, value in enumerate(memory_values):
        add_at(memory, keys, move, value, copies=2)
    config = RetrievalConfig(k=2, lam=0.0)
    boss = ValueBlendedBoss(fixed_q(q_learned), memory, embedder, config, layout=layout,
                            persona_names=())
    np.testing.assert_allclose(boss.move_values(obs), np.tile(memory_values, (32, 1)),
                               atol=1e-4)
    every = np.ones((32, 3), dtype=bool)
    np.testing.assert_array_equal(boss.select_moves(obs, every), 2)
    no_2 = every.copy()
    no_2[:, 2] = False
    np.testing.assert_array_equal(boss.select_moves(obs, no_2), 1)
    ignoring = ValueBlendedBoss(fixed_q(q_learned), memory, embedder,
                                RetrievalConfig(k=2, lam=1.0), layout=layout, persona_names=())
    np.testing.assert_array_equal(ignoring.select_moves(obs, every), 0)


def test_dqn_q_values_refuses_an_actor_critic() -> None:
    with pytest.raises(TypeError, match="needs a DQN model"):
        dqn_q_values(PPO("MlpPolicy", BossFightVecEnv(2, game=GAME), n_steps=8, batch_size=16))


def test_memory_only_boss_plays_the_best_remembered_move(memory: EpisodicMemory,
                                                         embedder: NumericContextEmbedder,
                                                         layout: ObservationLayout) -> None:
    obs = observations(16)
    keys = embedder.embed(obs)
    add_at(memory, keys, move=0, values=1.0)
    add_at(memory, keys, move=1, values=3.0)  # move 2: never stored
    every = np.ones((16, 3), dtype=bool)
    boss = MemoryOnlyBoss(memory, embedder, RetrievalConfig(k=1), layout=layout,
                          persona_names=())
    np.testing.assert_allclose(boss.move_values(obs), np.tile([1.0, 3.0, 2.0], (16, 1)),
                               atol=1e-5)  # unvisited: the mean of the visited moves
    np.testing.assert_array_equal(boss.select_moves(obs, every), 1)
    optimistic = MemoryOnlyBoss(memory, embedder, RetrievalConfig(k=1), layout=layout,
                                persona_names=(), unvisited_value=10.0)
    np.testing.assert_array_equal(optimistic.select_moves(obs, every), 2)


def test_memory_only_boss_breaks_ties_with_its_seed(memory: EpisodicMemory,
                                                    embedder: NumericContextEmbedder,
                                                    layout: ObservationLayout) -> None:
    obs = np.repeat(observations(1), 300, axis=0)  # an empty memory: every move ties
    masks = np.ones((300, 3), dtype=bool)
    masks[:, 1] = False

    def moves(seed: int) -> np.ndarray:
        boss = MemoryOnlyBoss(memory, embedder, layout=layout, persona_names=(), seed=seed)
        return boss.select_moves(obs, masks)

    np.testing.assert_array_equal(moves(0), moves(0))
    assert not np.array_equal(moves(0), moves(1))
    counts = np.bincount(moves(0), minlength=3)
    assert counts[1] == 0 and counts[0] > 100 and counts[2] > 100


def test_retrieval_policy_boss_asks_the_model_with_features_appended(
        memory: EpisodicMemory, embedder: NumericContextEmbedder,
        layout: ObservationLayout) -> None:
    env = RetrievalVecEnv(BossFightVecEnv(4, game=GAME), memory, embedder)
    model = PPO("MlpPolicy", env, n_steps=8, batch_size=32, seed=0)
    obs = observations(64)
    add_at(memory, embedder.embed(obs[:32]), move=1, values=2.0)
    masks = np.ones((64, 3), dtype=bool)
    masks[::2, 2] = False
    boss = RetrievalPolicyBoss(model, memory, embedder, layout=layout, persona_names=(),
                               seed=5)
    expected = SB3BossPolicy(model, "ppo", seed=5).select_moves(env.augment(obs), masks)
    np.testing.assert_array_equal(boss.select_moves(obs, masks), expected)
    assert masks[np.arange(64), boss.select_moves(obs, masks)].all()
    raw_model = PPO("MlpPolicy", BossFightVecEnv(4, game=GAME), n_steps=8, batch_size=32)
    with pytest.raises(ValueError, match="train it on RetrievalVecEnv"):
        RetrievalPolicyBoss(raw_model, memory, embedder, layout=layout, persona_names=())


def test_bosses_keep_writing_the_memory_while_they_fight(memory: EpisodicMemory,
                                                         embedder: NumericContextEmbedder,
                                                         layout: ObservationLayout) -> None:
    dqn = DQN("MlpPolicy", BossFightVecEnv(2, game=GAME), seed=0)
    weights = [p.detach().clone() for p in dqn.policy.parameters()]
    env = BossFightVectorEnv(8, game=GAME, player="dodger")
    boss = ValueBlendedBoss(dqn_q_values(dqn), memory, embedder, layout=layout,
                            persona_names=env.persona_names)
    obs, _ = env.reset(seed=0)
    lengths, running, player_wins = [], np.zeros(8, dtype=np.int64), 0
    for _ in range(120):
        moves = boss.select_moves(obs, env.action_masks())
        next_obs, rewards, terminated, truncated, info = env.step(moves)
        dones = terminated | truncated
        boss.observe(obs, moves, rewards, dones, info, truncated=truncated)
        running += 1
        lengths += running[dones].tolist()
        running[dones] = 0
        if dones.any():
            player_wins += int(info["final_info"]["player_won"][dones].sum())
        obs = next_obs
    assert len(lengths) > 8
    assert len(memory) == sum(lengths)
    records = memory.records()
    assert set(records.personas.tolist()) == {"dodger"}
    starts = np.cumsum([0, *lengths[:-1]])  # the first decision of each stored fight
    assert int((records.outcomes[starts] == OUTCOME_PLAYER_WON).sum()) == player_wins
    # The boss now blends in what it remembers, without a gradient step.
    assert not np.allclose(boss.move_values(obs), dqn_q_values(dqn)(obs))
    for before, after in zip(weights, dqn.policy.parameters(), strict=True):
        assert torch.equal(before, after)


def test_memory_only_boss_follows_steered_memories_with_probability_of_the_direction(
        memory: EpisodicMemory, embedder: NumericContextEmbedder, layout: ObservationLayout,
        game: GameDefinition) -> None:
    obs = np.repeat(situations(layout, [0.4], "normal"), 600, axis=0)  # won 3 of 5: the edge
    for move, effect in enumerate([0.3, -0.2, 0.05]):
        add_at(memory, embedder.embed(obs[:1]), move, effect, copies=2)
    every = np.ones((600, 3), dtype=bool)
    config = RetrievalConfig(k=2, returns="effect")

    def share_of_move_0(dead_zone: float) -> float:
        boss = MemoryOnlyBoss(memory, embedder, config, layout=layout, persona_names=(),
                              steering=Steering.for_game(game, dead_zone=dead_zone), seed=3)
        return float(np.mean(boss.select_moves(obs, every) == 0))

    assert share_of_move_0(0.0) == 1.0  # direction 1: always the most effective move
    assert 0.58 < share_of_move_0(0.5) < 0.75  # direction 0.5: half, plus a third of the rest
    assert 0.25 < share_of_move_0(1.0) < 0.42  # inside the band: at random
