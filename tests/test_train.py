"""The training lab: config composition and validation, agents, smoke training into MLflow."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig
from stable_baselines3.common.callbacks import BaseCallback

from agents.callbacks import StepTrigger
from agents.config import AGENT_CONFIGS, ALGORITHMS
from agents.factory import algorithm_of, make_agent
from agents.policy import SB3BossPolicy, load_policy
from agents.rag_setup import RAG_MODES
from agents.vec_env import BossFightVecEnv
from envs.fights import play_fights
from envs.game import load_game
from experiments import train
from experiments.tracking import TrackingConfig, tracking_uri

CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")
TINY = ["budget=smoke", "num_envs=8", "log_every=512", "checkpoint_every=1024",
        "eval.fights=4", "eval.series=2", "eval.personas=[novice,dodger]"]
"""A few seconds of training, for any agent."""
PPO_TINY = ["agent.n_steps=64", "agent.batch_size=128"]
SMOKE = [*TINY, *PPO_TINY]
"""A few seconds of the default agent (PPO): 4 rollouts of 8 envs x 64 steps."""
ARTIFACTS = {"model/model.zip", "config/config.yaml", "evaluation/evaluation.csv",
             "evaluation/evaluation.md", "evaluation/evaluation.png", "plots/learning_curve.png",
             "replay/replay_novice.html"}


def compose_train(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Overrides that send runs to one SQLite store (and artifact folder) under tmp."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield [f"tracking.uri=sqlite:///{root}/mlflow.db",
               f"tracking.artifact_location={root}/mlruns"]


def artifacts(run_id: str, folder: str | None = None) -> set[str]:
    """Every artifact path of a run, recursively."""
    found: set[str] = set()
    for entry in MlflowClient().list_artifacts(run_id, folder):
        found |= artifacts(run_id, entry.path) if entry.is_dir else {entry.path}
    return found


# --- composition and validation ------------------------------------------------------------


@pytest.mark.parametrize(("group", "option", "key", "value"), [
    *[("agent", algo, "agent.algo", algo) for algo in ALGORITHMS],
    ("objective", "engagement", "objective.name", "engagement"),
    ("objective", "defeat", "objective.name", "defeat"),
    *[("difficulty", level, "difficulty.level", level) for level in ("easy", "normal", "hard")],
    ("difficulty", "all", "difficulty.level", None),
    ("budget", "smoke", "budget.total_timesteps", 2048),
    ("budget", "default", "budget.total_timesteps", 50_000_000),
    ("budget", "long", "budget.total_timesteps", 250_000_000),
    ("tracking", "local", "tracking.uri", "sqlite:///mlflow.db"),
    ("tracking", "server", "tracking.uri", None),
    ("player", "dodger", "player.name", "dodger"),
    ("game", "dragon_keep", "game.name", "dragon_keep"),
    *[("rag", mode, "rag.mode", mode) for mode in RAG_MODES],
])
def test_every_group_option_composes(group: str, option: str, key: str, value: Any) -> None:
    cfg = compose_train([f"{group}={option}"])
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    assert node == value
    config = train.typed_config(cfg)
    assert isinstance(config.agent, AGENT_CONFIGS[config.agent.algo])


def test_defaults_and_typed_agent() -> None:
    config = train.typed_config(compose_train([]))
    assert (config.agent.algo, config.objective.name, config.difficulty.level) == (
        "ppo", "engagement", "normal")
    assert config.agent.policy_kwargs.net_arch == [64, 64]
    assert config.player["name"] == "population" and config.resume is None
    assert train.num_envs(config) == 1024 and config.num_envs is None


@pytest.mark.parametrize(("agent", "envs", "steps"), [
    ("dqn", 8, 1_000_000), ("a2c", 64, 5_000_000), ("maskable_ppo", 1024, 50_000_000)])
def test_each_agent_brings_its_own_envs_and_default_budget(agent: str, envs: int,
                                                           steps: int) -> None:
    config = train.typed_config(compose_train([f"agent={agent}"]))
    assert train.num_envs(config) == envs and config.budget.total_timesteps == steps
    overridden = train.typed_config(compose_train([f"agent={agent}", "num_envs=3"]))
    assert train.num_envs(overridden) == 3


def test_unknown_agent_names_the_available_agents() -> None:
    with pytest.raises(MissingConfigException) as error:
        compose_train(["agent=ppq"])
    for algo in ALGORITHMS:
        assert algo in str(error.value)


@pytest.mark.parametrize("override", [
    "agent.n_stepz=8", "agent.learning_rate=fast", "budget.total_timesteps=lots",
    "num_envs=many", "eval.fights=some",
])
def test_wrong_keys_and_types_fail_at_composition(override: str) -> None:
    with pytest.raises(ConfigCompositionException):
        compose_train([override])


@pytest.mark.parametrize(("overrides", "match"), [
    (["agent=dqn", "agent.use_masking=true"], r"agent.use_masking.*maskable_ppo.*Fix"),
    (["agent=ppo", "agent.use_masking=true"], r"agent=maskable_ppo"),
    (["num_envs=0"], r"num_envs must be >= 1"),
    (["budget.total_timesteps=0"], r"budget.total_timesteps must be >= 1.*budget=smoke"),
    (["checkpoint_every=0"], r"checkpoint_every must be >= 1"),
    (["difficulty.level=veteran"], r"unknown difficulty 'veteran'.*easy, normal, hard"),
    (["game=dragon_keep"], r"game 'dragon_keep' has story, veteran, nightmare"),
    (["objective.name=win"], r"unknown objective 'win'.*engagement, defeat"),
    (["objective.episode=match"], r"unknown episode 'match'.*fight, series.*objective.episode="),
    (["agent=dqn", "agent.policy_kwargs.habit_weight=8"], r"habit_weight=null"),
    (["eval.personas=[nobody]"], r"unknown persona 'nobody'.*dodger"),
    (["agent.batch_size=20000"], r"agent.batch_size=20000 is larger than one rollout"),
    (["agent=dqn", "budget=smoke", "agent.learning_starts=5000"], r"would never learn"),
    (["agent.policy_kwargs.activation_fn=swish"], r"activation_fn='swish'.*tanh, relu"),
    (["agent.gamma=1.5"], r"agent.gamma must be in \(0, 1\]"),
])
def test_validation_names_the_key_and_the_fix(overrides: list[str], match: str) -> None:
    config = train.typed_config(compose_train(overrides))
    with pytest.raises(ValueError, match=match):
        train.validate(config, load_game(config.game))


def test_invalid_config_fails_before_any_run(store: list[str]) -> None:
    with pytest.raises(ValueError, match="num_envs"):
        train.run(compose_train([*SMOKE, *store, "num_envs=0", "experiment=never-created"]))
    assert mlflow.get_experiment_by_name("never-created") is None


def test_environment_tracking_uri_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking_uri(TrackingConfig(uri="sqlite:///mlflow.db")) == (
        "http://tracking.example:5000")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_uri(TrackingConfig(uri="sqlite:///x.db")) == "sqlite:///x.db"
    with pytest.raises(ValueError, match=r"MLFLOW_TRACKING_URI.*tracking=local"):
        tracking_uri(TrackingConfig(uri=None))


def test_step_trigger_fires_once_per_multiple_and_resumes() -> None:
    trigger = StepTrigger(100)
    assert [s for s in (8, 96, 104, 112, 200, 360) if trigger(s)] == [104, 200, 360]
    trigger.start(250)
    assert not trigger(296) and trigger(304)


# --- agents and the boss policy -------------------------------------------------------------


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_policy_never_picks_an_illegal_move(algo: str) -> None:
    env = BossFightVecEnv(4, seed=0, game="dragon_keep", player="novice")
    policy = SB3BossPolicy(make_agent(AGENT_CONFIGS[algo](), env, seed=0), algo)
    size, n_moves = env.vector_env.layout.size, len(env.vector_env.setup.game.moves)
    rng = np.random.default_rng(1)
    observations = rng.random((500, size)).astype(np.float32)
    masks = rng.random((500, n_moves)) < 0.4
    masks[np.arange(500), rng.integers(0, n_moves, 500)] = True
    moves = policy.select_moves(observations, masks)
    assert moves.dtype == np.int64 and masks[np.arange(500), moves].all()
    # Only one legal move: it is always the one chosen, whatever the network prefers.
    only = np.eye(n_moves)[rng.integers(0, n_moves, 500)] > 0
    assert (policy.select_moves(observations, only) == only.argmax(axis=1)).all()
    # play_fights raises on any illegal move.
    assert len(play_fights(policy, 4, game="dragon_keep", player="dodger", series=2)) == 4


def test_policy_samples_by_default_and_argmaxes_when_deterministic() -> None:
    env = BossFightVecEnv(4, seed=0, game="duel", player="novice")
    model = make_agent(AGENT_CONFIGS["ppo"](), env, seed=0)
    observations = np.tile(env.reset()[:1], (2000, 1))
    masks = np.ones((2000, 3), dtype=bool)
    drawn = SB3BossPolicy(model, "ppo", seed=5).select_moves(observations, masks)
    shares = np.bincount(drawn, minlength=3) / len(drawn)
    probabilities = SB3BossPolicy(model, "ppo").move_values(observations[:1])[0]
    np.testing.assert_allclose(shares, probabilities, atol=0.04)
    again = SB3BossPolicy(model, "ppo", seed=5).select_moves(observations, masks)
    np.testing.assert_array_equal(drawn, again)
    best = SB3BossPolicy(model, "ppo", deterministic=True).select_moves(observations, masks)
    assert (best == probabilities.argmax()).all()


# --- smoke training into MLflow -------------------------------------------------------------


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_smoke_train_records_a_complete_run(algo: str, store: list[str],
                                            tmp_path: Path) -> None:
    ppo_keys = PPO_TINY if algo in ("ppo", "maskable_ppo") else []
    result = train.run(compose_train([*TINY, *ppo_keys, *store, f"agent={algo}"]))
    assert not result.interrupted and result.steps >= 2048
    run = MlflowClient().get_run(result.run_id)
    assert run.info.status == "FINISHED"
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert (params["agent.algo"], params["seed"], params["budget.total_timesteps"]) == (
        algo, "0", "2048")
    assert {"fights/engagement_score", "fights/player_win_rate", "fights/episode_return",
            "fights/duration_seconds", "time/env_steps_per_second"} <= set(metrics)
    assert {"eval/engagement_score", "eval/novice/engagement_score", "eval/boss_win_rate",
            "eval/flagged", "eval/win_rate_in_band",
            "eval/dodger/player_win_rate"} <= set(metrics)
    assert tags["game_fingerprint"] == load_game("duel").fingerprint()
    assert tags["git_commit"] and tags["interrupted"] == "false"
    found = artifacts(result.run_id)
    assert found >= ARTIFACTS and "checkpoints/step_000000001024.zip" in found
    table = pd.read_csv(mlflow.artifacts.download_artifacts(
        run_id=result.run_id, artifact_path="evaluation/evaluation.csv", dst_path=str(tmp_path)))
    assert list(table["persona"]) == ["novice", "dodger"] and (table["fights"] == 4).all()
    model = mlflow.artifacts.download_artifacts(run_id=result.run_id,
                                                artifact_path="model/model.zip",
                                                dst_path=str(tmp_path))
    assert algorithm_of(model) == algo
    assert load_policy(model).name == "model"


class InterruptAt(BaseCallback):
    """Simulates Ctrl-C once training reaches ``step`` env steps."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.step:
            raise KeyboardInterrupt
        return True


def test_interrupted_run_saves_and_resumes_in_the_same_run(store: list[str]) -> None:
    interrupted = train.run(compose_train([*SMOKE, *store, "checkpoint_every=100000"]),
                            extra_callbacks=[InterruptAt(1000)])
    assert interrupted.interrupted and 1000 <= interrupted.steps < 2048
    client = MlflowClient()
    run = client.get_run(interrupted.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["interrupted"] == "true"
    assert run.data.tags["interrupted_at_step"] == str(interrupted.steps)
    assert f"checkpoints/step_{interrupted.steps:012d}.zip" in artifacts(interrupted.run_id)

    resumed = train.run(compose_train([*store, f"resume={interrupted.run_id}"]))
    assert resumed.run_id == interrupted.run_id and not resumed.interrupted
    assert resumed.steps >= 2048 > interrupted.steps
    run = client.get_run(resumed.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["interrupted"] == "false"
    steps = [m.step for m in client.get_metric_history(run.info.run_id,
                                                       "fights/engagement_score")]
    assert min(steps) <= interrupted.steps < max(steps)
    assert artifacts(resumed.run_id) >= ARTIFACTS
    with pytest.raises(ValueError, match="already finished"):
        train.run(compose_train([*store, f"resume={resumed.run_id}"]))


def test_same_seed_gives_the_same_evaluation_table(store: list[str]) -> None:
    first = train.run(compose_train([*SMOKE, *store, "seed=3"]))
    second = train.run(compose_train([*SMOKE, *store, "seed=3"]))
    assert first.run_id != second.run_id
    assert first.evaluation is not None and second.evaluation is not None
    pd.testing.assert_frame_equal(first.evaluation, second.evaluation)


# --- with an episodic memory (rag=...) ------------------------------------------------------

MEMORY_FILES = {"memory/memory.json", "memory/entries.npz"}


@pytest.mark.parametrize(("mode", "algo"), [("episodic", "ppo"), ("blend", "dqn"),
                                            ("memory_only", "ppo")])
def test_a_memory_run_writes_the_memory_and_plays_with_it(mode: str, algo: str,
                                                          store: list[str],
                                                          tmp_path: Path) -> None:
    ppo_keys = PPO_TINY if algo == "ppo" else []
    result = train.run(compose_train([*TINY, *ppo_keys, *store, f"agent={algo}",
                                      f"rag={mode}", "rag.capacity=5000"]))
    assert not result.interrupted and result.evaluation is not None
    run = MlflowClient().get_run(result.run_id)
    # Every decision of every fight that ended while training is remembered.
    entries = run.data.metrics["memory/entries"]
    assert 500 < entries <= 2048
    found = artifacts(result.run_id)
    assert found >= ARTIFACTS | MEMORY_FILES
    assert set(result.evaluation["boss"]) == {f"{algo}+{mode}"}
    model = load_policy(mlflow.artifacts.download_artifacts(
        run_id=result.run_id, artifact_path="model/model.zip", dst_path=str(tmp_path))).model
    extra = 3 * 3 if mode == "episodic" else 0  # value, count, distance per move
    assert model.observation_space.shape == (43 + extra,)


def test_blending_needs_a_dqn() -> None:
    config = train.typed_config(compose_train([*SMOKE, "rag=blend"]))
    with pytest.raises(ValueError, match=r"rag=blend .* needs agent=dqn .* use rag=episodic"):
        train.validate(config, load_game("duel"))


def test_a_resumed_memory_run_continues_its_memory(store: list[str]) -> None:
    overrides = [*SMOKE, *store, "rag=episodic", "checkpoint_every=100000"]
    interrupted = train.run(compose_train(overrides), extra_callbacks=[InterruptAt(1000)])
    assert interrupted.interrupted
    assert {p.replace("checkpoints/", "") for p in
                            artifacts(interrupted.run_id, "checkpoints")} >= MEMORY_FILES
    resumed = train.run(compose_train([*store, f"resume={interrupted.run_id}"]))
    assert not resumed.interrupted
    history = MlflowClient().get_metric_history(resumed.run_id, "memory/size")
    # The memory grew from where the interrupted part left it, not from empty.
    before = [m.value for m in history if m.step <= interrupted.steps]
    after = [m.value for m in history if m.step > interrupted.steps]
    assert before and after and min(after) >= max(before) > 0
