"""Train a boss with Stable-Baselines3, tracked in MLflow.

    python -m experiments.train                                   # PPO, duel, population
    python -m experiments.train agent=maskable_ppo budget=smoke
    python -m experiments.train agent=dqn objective=defeat difficulty=all seed=3
    python -m experiments.train game=dragon_keep difficulty.level=veteran
    python -m experiments.train resume=<run id>                   # continue an interrupted run
    python -m experiments.train --multirun seed=0,1,2             # a sweep (experiments.sweep)
    python -m experiments.train --multirun search=ppo             # an Optuna search
    mlflow ui --backend-store-uri sqlite:///mlflow.db             # browse the runs

The config (``configs/train.yaml``) is composed from the groups ``game``, ``player``, ``agent``
(ppo, maskable_ppo, dqn, a2c), ``objective`` (engagement, defeat), ``difficulty`` (easy,
normal, hard, all), ``budget`` (smoke, quick, default, long), ``tracking`` (local, server) and
``search`` (hyperparameter searches for ``--multirun``), each checked against its schema
(:mod:`agents.config`, :class:`TrainConfig`) when composed and validated across fields before
anything runs.

One MLflow run holds: the resolved config (``config/config.yaml``) and its flattened params;
tags ``git_commit``, ``game_fingerprint``, ``algo``, ``game``, ``interrupted``; training
metrics against env steps (``fights/*`` from the fights that ended recently: episode return,
player win rate, duration, timeouts, engagement score; ``time/env_steps_per_second``; SB3's own
``train/*``, ``rollout/*``); checkpoints (``checkpoints/step_<n>.zip``); the model
(``model/model.zip``); the evaluation against every persona (``evaluation/evaluation.csv``,
``.md`` and ``.png``, metrics ``eval/*``; :mod:`experiments.evaluation`); the run's ``score``
(:func:`objective_score`, what a sweeper maximizes); the learning curve
(``plots/learning_curve.png``) and a replay of one evaluation fight
(``replay/replay_<persona>.html``). In a ``--multirun``, the run is a child of the sweep's
parent run (:mod:`experiments.sweep`).

Ctrl-C saves a checkpoint, tags the run ``interrupted=true`` (with ``interrupted_at_step``) and
ends it with status KILLED; ``resume=<run id>`` reopens the same run with its logged config,
loads the last checkpoint and continues the step count (on finishing, ``interrupted=false``).
DQN resumes without its replay buffer, and the envs restart with fresh players.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium
import hydra
import matplotlib
import mlflow
import pandas as pd
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger

from agents.callbacks import (
    CheckpointCallback,
    FightMetricsCallback,
    LoggerForwarder,
    ProgressBarCallback,
    close_all,
)
from agents.config import (
    AGENT_CONFIGS,
    AgentConfig,
    BudgetConfig,
    DifficultyConfig,
    ObjectiveConfig,
    PPOConfig,
    agent_config,
)
from agents.factory import load_agent, make_agent
from agents.policy import SB3BossPolicy
from agents.rag_setup import RagConfig, memory_boss, new_memory
from agents.retrieval import MemoryWritingCallback, RetrievalVecEnv, Steering, writer_for
from agents.vec_env import EPISODES, BossFightVecEnv
from envs.boss_fight import OBJECTIVES
from envs.bosses import BossPolicy
from envs.game import GameDefinition, load_game
from envs.observation import ObservationLayout
from envs.persona import available_players, load_players
from envs.replay import record_fight
from experiments import sweep, tracking
from experiments.evaluation import (
    PERSONAS,
    evaluate_boss,
    evaluation_metrics,
    readable_evaluation,
    save_evaluation,
)
from experiments.tournament import check_choices, interactive
from rag.embedders import Embedder
from rag.memory import EpisodicMemory

matplotlib.use("Agg")  # files only, no display; chosen before pyplot is imported
import matplotlib.pyplot as plt

REPLAY_ENV_ID = "bosslab/BossFight-v0"
OBJECTIVE_SCORES = {"engagement": "engagement_score", "defeat": "boss_win_rate"}
"""The evaluation column each objective is scored by (mean over personas): the run's
``score`` metric and what ``main`` returns to a sweeper."""
MEMORY_DIR = "memory"
"""Artifact folder of the episodic memory after training (rag=...); checkpoints/memory holds
the one saved with the latest checkpoint."""
CURVES = ("fights/episode_return", "fights/engagement_score", "fights/player_win_rate",
          "fights/duration_seconds")


@dataclass
class EvalConfig:
    """The evaluation after training: the trained boss against each persona."""

    fights: int = 60
    """Seeded fights per persona (per difficulty level when training at every level)."""
    series: int = 6
    """Players per persona fighting side by side; each plays ceil(fights / series) in a row."""
    personas: list[str] = field(default_factory=lambda: list(PERSONAS))
    """Personas (or populations) from configs/player/ to evaluate against."""


@dataclass
class TrainConfig:
    """The schema of ``configs/train.yaml``."""

    game: Any = MISSING
    """The game definition (group ``game``): envs.game.GameDefinition's fields."""
    player: Any = MISSING
    """The persona or population trained against (group ``player``)."""
    agent: Any = MISSING
    """The agent (group ``agent``): one of agents.config.AGENT_CONFIGS."""
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    """What the boss is rewarded for (group ``objective``)."""
    difficulty: DifficultyConfig = field(default_factory=DifficultyConfig)
    """The level fights are played at (group ``difficulty``)."""
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    """How long to train (group ``budget``)."""
    tracking: tracking.TrackingConfig = field(default_factory=tracking.TrackingConfig)
    """Where MLflow records the run (group ``tracking``)."""
    rag: RagConfig = field(default_factory=RagConfig)
    """The episodic memory (group ``rag``: none, episodic, blend, memory_only)."""
    seed: int = 0
    """Seeds envs, agent and evaluation: same config and seed, same evaluation table."""
    num_envs: int | None = None
    """Fights stepped side by side while training; null: the agent's own (agent.num_envs)."""
    fights_per_player: int = 10
    """Fights in one synthetic player's series while training."""
    torch_threads: int | None = None
    """Torch CPU threads; null: every core in a single run, 1 per job in a --multirun sweep
    (its jobs run side by side). Runs are reproducible for a given thread count."""
    experiment: str = "bosslab-train"
    """MLflow experiment name."""
    run_name: str | None = None
    """MLflow run name (null: MLflow picks one)."""
    resume: str | None = None
    """Id of an interrupted run to continue, or null."""
    checkpoint_every: int = 5_000_000
    """Env steps between checkpoints."""
    log_every: int = 250_000
    """Env steps between training metric logs."""
    metrics_window: int = 200
    """Recent fights the training metrics are computed over."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """The evaluation after training."""


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore: ``train_schema`` and ``schema/agent/<algo>``."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    for algo, schema in AGENT_CONFIGS.items():
        store.store(group="schema/agent", name=algo, node=schema)


register_configs()


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced."""

    run_id: str
    steps: int
    """Env steps trained in total (resumes included)."""
    interrupted: bool
    evaluation: pd.DataFrame | None = None
    """One row per persona (x level); None when interrupted."""
    score: float | None = None
    """The objective's score (see objective_score); None when interrupted."""
    evaluation_path: str | None = None
    """Where the run's evaluation table (markdown) is stored; None when interrupted."""


# --- config ------------------------------------------------------------------------------


def typed_config(cfg: DictConfig) -> TrainConfig:
    """The composed config as typed dataclasses (the agent as its algorithm's config)."""
    merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg)
    config = OmegaConf.to_object(merged)
    assert isinstance(config, TrainConfig)
    if not isinstance(config.agent, AgentConfig):  # untyped, e.g. a resumed run's logged config
        config.agent = agent_config(dict(config.agent))
    return config


def num_envs(config: TrainConfig) -> int:
    """The fights stepped side by side: ``num_envs`` if set, else the agent's own."""
    return config.agent.num_envs if config.num_envs is None else config.num_envs


def validate(config: TrainConfig, game: GameDefinition) -> None:
    """Check everything a schema cannot, before any compute (ValueError with the fix)."""
    config.agent.validate()
    config.budget.validate()
    envs_key = "agent.num_envs" if config.num_envs is None else "num_envs"
    counts = {envs_key: num_envs(config), "checkpoint_every": config.checkpoint_every,
              "log_every": config.log_every, "metrics_window": config.metrics_window,
              "fights_per_player": config.fights_per_player,
              "torch_threads": torch_threads(config.torch_threads),
              "eval.fights": config.eval.fights,
              "eval.series": config.eval.series}
    for key, value in counts.items():
        if value < 1:
            raise ValueError(f"{key} must be >= 1, got {value}: set {key}=<a positive number> "
                             f"(configs/train.yaml has the defaults).")
    check_choices("objective", [config.objective.name], OBJECTIVES, "objective", listed=False)
    check_choices("episode", [config.objective.episode], EPISODES, "objective.episode",
                  listed=False)
    if config.difficulty.level is not None:
        check_choices("difficulty", [config.difficulty.level], list(game.difficulty_levels),
                      "difficulty.level", f"game {game.name!r} has", listed=False)
    check_choices("persona", config.eval.personas, available_players(), "eval.personas")
    config.rag.validate(config.agent.algo)
    _validate_agent_budget(config)


def _validate_agent_budget(config: TrainConfig) -> None:
    """Cross-field rules between the agent, num_envs and the budget."""
    agent, envs = config.agent, num_envs(config)
    if isinstance(agent, PPOConfig) and agent.batch_size > agent.n_steps * envs:
        raise ValueError(
            f"agent.batch_size={agent.batch_size} is larger than one rollout (agent.n_steps x "
            f"num_envs = {agent.n_steps} x {envs} = {agent.n_steps * envs}): lower "
            f"agent.batch_size or raise agent.n_steps or num_envs.")
    starts = getattr(agent, "learning_starts", 0)
    if starts >= config.budget.total_timesteps:
        raise ValueError(
            f"agent.learning_starts={starts} is not below budget.total_timesteps="
            f"{config.budget.total_timesteps}, so {agent.algo} would never learn: lower "
            f"agent.learning_starts or choose a larger budget (budget=default).")


def resumed_config(cfg: DictConfig, work: Path) -> DictConfig:
    """The config logged by the run to resume, with this command's tracking and ``resume``.

    A resumed run keeps its own settings; other command-line values are reported and ignored.
    """
    run_id = str(cfg.resume)
    if tracking.existing_run(run_id).info.status == "FINISHED":
        raise ValueError(f"resume={run_id}: that run already finished, so there is nothing to "
                         f"continue. Start a new run (drop resume=), e.g. with budget=long.")
    logged = OmegaConf.load(tracking.download(run_id, "config/config.yaml", work))
    assert isinstance(logged, DictConfig)
    logged.resume = run_id
    logged.tracking = cfg.tracking
    kept = tracking.flatten(_plain(logged))
    ignored = sorted(key for key, value in tracking.flatten(_plain(cfg)).items()
                     if kept.get(key) != value)
    if ignored:
        shown = ", ".join(ignored[:8]) + (f" and {len(ignored) - 8} more" if len(ignored) > 8
                                          else "")
        print(f"Resuming run {run_id} with its logged config; ignoring: {shown}.")
    return logged


def _plain(cfg: DictConfig) -> dict[str, Any]:
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    return {str(k): v for k, v in data.items()}


# --- building --------------------------------------------------------------------------


def configure_torch(threads: int | None) -> None:
    """Deterministic CPU torch with a fixed thread count (same seed, same run)."""
    torch.set_num_threads(torch_threads(threads))
    torch.use_deterministic_algorithms(True)


def torch_threads(configured: int | None) -> int:
    """``torch_threads`` as set, or by default every core, but 1 in a sweep's job."""
    if configured is not None:
        return configured
    return 1 if sweep.job_run_name() is not None else os.cpu_count() or 1


def env_kwargs(config: TrainConfig, game: GameDefinition) -> dict[str, Any]:
    """The arguments of the training envs (envs.boss_fight.BossFightEnv's)."""
    return {"game": game, "player": config.player, "objective": config.objective.name,
            "difficulty": config.difficulty.level,
            "fights_per_player": config.fights_per_player}


def make_env(config: TrainConfig, game: GameDefinition, seed: int,
             memory: TrainingMemory | None = None) -> BossFightVecEnv | RetrievalVecEnv:
    """The batched training envs, seeded; with rag=episodic, with the retrieval features."""
    env = BossFightVecEnv(num_envs(config), seed=seed, episode=config.objective.episode,
                          **env_kwargs(config, game))
    if memory is None or config.rag.mode != "episodic":
        return env
    return RetrievalVecEnv(env, memory.memory, memory.embedder, config.rag.retrieval())


class TrainingMemory(NamedTuple):
    """The episodic memory a run writes (rag=...), and the embedder of its keys."""

    memory: EpisodicMemory
    embedder: Embedder


def build_memory(config: TrainConfig, game: GameDefinition,
                 work: Path) -> TrainingMemory | None:
    """None without rag; else a new memory, or the resumed run's checkpointed one."""
    if not config.rag.enabled:
        return None
    memory, embedder = new_memory(config.rag, ObservationLayout.for_game(game))
    if config.resume is not None:
        saved = tracking.download(config.resume, f"{tracking.CHECKPOINT_DIR}/{MEMORY_DIR}",
                                  work)
        memory = EpisodicMemory.load(saved)
    return TrainingMemory(memory, embedder)


def build_model(config: TrainConfig, game: GameDefinition, work: Path,
                memory: TrainingMemory | None = None) -> BaseAlgorithm:
    """A new agent, or the resumed run's last checkpoint with fresh (re-seeded) envs."""
    if config.resume is None:
        return make_agent(config.agent, make_env(config, game, config.seed, memory),
                          config.seed)
    checkpoint, step = tracking.latest_checkpoint(config.resume, work)
    model = load_agent(checkpoint, env=make_env(config, game, config.seed + step, memory))
    print(f"Resuming from {checkpoint.name} at {model.num_timesteps} env steps.")
    return model


# --- training --------------------------------------------------------------------------


def save_checkpoint(work: Path, memory: TrainingMemory | None = None) -> Any:
    """A ``save(model, step)`` that logs the model as ``checkpoints/step_<n>.zip`` (and the
    memory as ``checkpoints/memory``, replaced each time)."""

    def save(model: BaseAlgorithm, step: int) -> None:
        path = work / Path(tracking.checkpoint_name(step)).name
        model.save(path)
        mlflow.log_artifact(str(path), artifact_path=tracking.CHECKPOINT_DIR)
        path.unlink()
        if memory is not None:
            saved = memory.memory.save(work / "checkpoint_memory")
            mlflow.log_artifacts(str(saved), f"{tracking.CHECKPOINT_DIR}/{MEMORY_DIR}")

    return save


def training_callbacks(config: TrainConfig, work: Path, model: BaseAlgorithm,
                       memory: TrainingMemory | None) -> list[BaseCallback]:
    callbacks: list[BaseCallback] = [
        FightMetricsCallback(tracking.log_metrics, config.log_every, config.metrics_window),
        CheckpointCallback(save_checkpoint(work, memory), config.checkpoint_every),
        ProgressBarCallback(config.budget.total_timesteps, enabled=interactive()),
    ]
    if memory is not None:
        env = model.get_env()
        assert env is not None
        writer = writer_for(env, memory.memory, memory.embedder, config.rag.retrieval())
        callbacks.append(MemoryWritingCallback(writer))
    return callbacks


def train(model: BaseAlgorithm, config: TrainConfig, work: Path,
          extra_callbacks: Sequence[BaseCallback] = (),
          memory: TrainingMemory | None = None) -> bool:
    """Train to the budget; returns False if interrupted (Ctrl-C), after a checkpoint."""
    model.set_logger(Logger(folder=None, output_formats=[
        LoggerForwarder(tracking.log_metrics, config.log_every)]))
    callbacks = [*training_callbacks(config, work, model, memory), *extra_callbacks]
    remaining = config.budget.total_timesteps - model.num_timesteps
    try:
        if remaining > 0:
            model.learn(remaining, callback=callbacks, reset_num_timesteps=False,
                        progress_bar=False)
    except KeyboardInterrupt:
        save_checkpoint(work, memory)(model, model.num_timesteps)
        mlflow.set_tags({"interrupted": "true",
                         "interrupted_at_step": str(model.num_timesteps)})
        return False
    finally:
        close_all(callbacks)
    return True


# --- evaluation and artifacts -------------------------------------------------------------


def evaluate(policy: BossPolicy, game: GameDefinition, config: TrainConfig) -> pd.DataFrame:
    """The trained boss against every persona: one row per persona (x level).

    Fights are at the training level; a boss trained at every level (difficulty=all) is
    evaluated at each level in turn. See :func:`experiments.evaluation.evaluate_boss`.
    """
    return evaluate_boss(policy, game, config.eval.personas, config.eval.fights,
                         series=config.eval.series, difficulty=config.difficulty.level,
                         seed=config.seed)


def plot_learning_curve(history: dict[str, list[tuple[int, float]]], path: Path,
                        title: str) -> Path:
    """One panel per training metric against env steps."""
    fig, axes = plt.subplots(1, len(history), figsize=(4.2 * len(history), 3.4),
                             layout="constrained", squeeze=False)
    for ax, (key, points) in zip(axes[0], history.items(), strict=True):
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="." if len(points) < 30 else None)
        ax.set_title(key.split("/")[-1].replace("_", " "))
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_replay(policy: BossPolicy, game: GameDefinition, config: TrainConfig,
                out: Path) -> Path:
    """One evaluation fight (first persona, training level) as a self-contained HTML page."""
    persona = config.eval.personas[0]
    level = config.difficulty.level or next(iter(game.difficulty_levels))
    env = gymnasium.make(REPLAY_ENV_ID, game=game, player=persona, difficulty=level,
                         objective=config.objective.name)
    moves = game.move_names

    def values(observation: Any, mask: Any) -> dict[str, Any]:
        row = policy.move_values(observation[None])[0]  # type: ignore[attr-defined]
        return {"values": {m: float(v) for m, v in zip(moves, row, strict=True)}}

    try:
        replay = record_fight(env, policy, seed=config.seed,
                              extras=values if hasattr(policy, "move_values") else None)
    finally:
        env.close()
    return replay.save_html(out / f"replay_{persona}.html")


def record_setup(cfg: DictConfig, config: TrainConfig, game: GameDefinition,
                 work: Path) -> None:
    """Resolved config, flattened params and tags of a new run (a resumed run keeps them)."""
    path = work / "config.yaml"
    OmegaConf.save(cfg, path, resolve=True)
    mlflow.log_artifact(str(path), artifact_path="config")
    tracking.log_params(tracking.flatten(_plain(cfg)))
    mlflow.set_tags({"git_commit": tracking.git_commit(Path(__file__).parent),
                     "game_fingerprint": game.fingerprint(), "game": game.name,
                     "algo": config.agent.algo, "interrupted": "false"})


def trained_boss(model: BaseAlgorithm, game: GameDefinition, config: TrainConfig,
                 memory: TrainingMemory | None) -> BossPolicy:
    """The boss the run trained: the model alone, or with its memory (rag=...)."""
    if memory is None:
        return SB3BossPolicy(model, name=config.agent.algo, seed=config.seed)
    return memory_boss(config.rag, model, memory.memory, memory.embedder,
                       ObservationLayout.for_game(game),
                       name=f"{config.agent.algo}+{config.rag.mode}", seed=config.seed,
                       steering=Steering.for_game(game))


def record_results(model: BaseAlgorithm, game: GameDefinition, config: TrainConfig,
                   run_id: str, work: Path,
                   memory: TrainingMemory | None = None) -> pd.DataFrame:
    """Model (and memory), evaluation (table and metrics), learning curve and replay."""
    model_path = work / "model.zip"
    model.save(model_path)
    mlflow.log_artifact(str(model_path), artifact_path="model")
    if memory is not None:
        mlflow.log_artifacts(str(memory.memory.save(work / MEMORY_DIR)), MEMORY_DIR)
        tracking.log_metrics({"memory/entries": float(len(memory.memory))},
                             model.num_timesteps)
    policy = trained_boss(model, game, config, memory)
    table = evaluate(policy, game, config)
    title = (f"{config.agent.algo} on {game.name} ({config.objective.name}), "
             f"{model.num_timesteps} env steps: {config.eval.fights} fights per persona")
    for path in save_evaluation(table, work, "evaluation", title):
        mlflow.log_artifact(str(path), artifact_path="evaluation")
    tracking.log_metrics(evaluation_metrics(table, "eval"), model.num_timesteps)
    curve = plot_learning_curve(tracking.metric_history(run_id, list(CURVES)),
                                work / "learning_curve.png", title.split(":", maxsplit=1)[0])
    mlflow.log_artifact(str(curve), artifact_path="plots")
    mlflow.log_artifact(str(save_replay(policy, game, config, work)), artifact_path="replay")
    return table


# --- the entry point ---------------------------------------------------------------------


def prepare(cfg: DictConfig, work: Path) -> tuple[DictConfig, TrainConfig, GameDefinition]:
    """Connect to the tracking store, load a resumed run's config, type and validate it all."""
    tracking_config = tracking.settings(cfg.tracking)
    mlflow.set_tracking_uri(tracking.tracking_uri(tracking_config))
    if cfg.resume is not None:
        cfg = resumed_config(cfg, work)
    config = typed_config(cfg)
    game = load_game(config.game)
    load_players(config.player)
    validate(config, game)
    if config.resume is None:
        tracking.connect(tracking_config, config.experiment)
    return cfg, config, game


def run(cfg: DictConfig, extra_callbacks: Sequence[BaseCallback] = ()) -> TrainResult:
    """Train, evaluate and record one run (or resume one); see the module docstring."""
    with tempfile.TemporaryDirectory(prefix="bosslab-train-") as tmp:
        work = Path(tmp)
        cfg, config, game = prepare(cfg, work)
        configure_torch(config.torch_threads)
        parent = None if config.resume else sweep.parent_run_id(config.experiment)
        name = config.run_name or sweep.job_run_name()
        with tracking.open_run(config.resume, name, parent) as active:
            run_id = active.info.run_id
            if config.resume is None:
                record_setup(cfg, config, game, work)
            memory = build_memory(config, game, work)
            model = build_model(config, game, work, memory)
            if not train(model, config, work, extra_callbacks, memory):
                tracking.finish("KILLED")
                return TrainResult(run_id, model.num_timesteps, interrupted=True)
            table = record_results(model, game, config, run_id, work, memory)
            score = objective_score(table, config.objective.name)
            tracking.log_metrics({sweep.SCORE_METRIC: score}, model.num_timesteps)
            mlflow.set_tag("interrupted", "false")
            eval_md = tracking.artifact_path("evaluation/evaluation.md")
            tracking.finish()
    report(run_id, eval_md, table, score)
    return TrainResult(run_id, model.num_timesteps, interrupted=False, evaluation=table,
                       score=score, evaluation_path=eval_md)


def objective_score(table: pd.DataFrame, objective: str) -> float:
    """What a sweep maximizes: the evaluation's mean of the objective's score column."""
    return float(table[OBJECTIVE_SCORES[objective]].mean())


def report(run_id: str, eval_md: str, table: pd.DataFrame, score: float) -> None:
    """Print the evaluation and where to look."""
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(readable_evaluation(table).to_string(index=False))
    print(f"\nRun {run_id} finished: score {score:.3f}.\n  Evaluation table: {eval_md}\n"
          f"  Browse the runs: {tracking.browse_command()}")


def interrupted_message(result: TrainResult) -> str:
    return (f"\nInterrupted at {result.steps} env steps: checkpoint saved in run "
            f"{result.run_id} (status KILLED, tag interrupted=true).\n"
            f"  Continue it: python -m experiments.train resume={result.run_id}")


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """One run; returns its score, which Hydra's Optuna sweeper maximizes (search=...)."""
    result = run(cfg)
    if result.interrupted or result.score is None:
        print(interrupted_message(result))
        raise SystemExit(130)
    return result.score


if __name__ == "__main__":
    # Run the importable module's main, not this __main__ copy: sweep workers (joblib, Ray)
    # unpickle the task and its config classes by module name.
    from experiments import train as importable  # noqa: PLW0406

    importable.main()
