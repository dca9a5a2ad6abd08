"""Does memory help a boss adapt? Bosses with and without episodic memory meet a player style
they never trained against (issue 4).

    python -m experiments.adaptation                                  # 5 seeds, held-out dodger
    python -m experiments.adaptation seeds=[0,1,2,3,4] held_out=dodger
    python -m experiments.adaptation seeds=[0,1] ppo_steps=1000000 variants=[ppo,ppo+episodic]
    python -m experiments.adaptation held_out=turtle switch_to=rusher players=32

For every seed (``seeds``), the bosses train against the persona population without the
held-out persona (``held_out``, default ``dodger``: the train overrides ``player=population
~player.members.<held_out>``), objective ``engagement``, at the level ``difficulty`` (normal),
each through :func:`experiments.train.run`, so each training is an ordinary MLflow run with its
own evaluation (kept cheap: ``train_eval_fights`` fights against the held-out persona only).
Then every boss plays two *series* with no gradient step, its memory (if any) still written
after every step (``observe``, online adaptation):

- ``adaptation``: ``players`` players of the held-out persona side by side, each fighting the
  boss ``fights_per_series`` times in a row;
- ``switch``: the same players, who switch to ``switch_to`` (default ``rusher``) after half the
  series (:class:`envs.fights.StyleSwitch`). ``switch_to`` *is* in the training population (only
  ``held_out`` is left out): the switch tests how fast a boss re-adapts to a style it knows
  after a long run against one it does not.

Both series of a seed meet the same players (seeded ``series_seed + seed``, not the training
seed), and every boss meets the same ones. The bosses (``variants``, one table row each):

============  ===================================================  =============
variant       what plays                                           trained with
============  ===================================================  =============
ppo           PPO alone (agents.policy.SB3BossPolicy)              ppo, none
ppo+episodic  PPO trained on memory features: RetrievalPolicyBoss  ppo, episodic
dqn           DQN alone, greedy: dqn+blend's agent without memory  dqn, blend
dqn+blend     that DQN with its memory, EVA: ValueBlendedBoss      dqn, blend
memory_only   MFEC, the memory alone picks: MemoryOnlyBoss         dqn, blend
llm           the LLM boss (agents.llm_boss.llm_baseline)          -
============  ===================================================  =============

A memory boss starts each series from the memory its training run saved (the ``memory``
artifact, loaded afresh per series). What the memory trainings store per decision is
``returns`` (``rag.returns``, default ``effect``: each move's effect on the HP margin over the
next ``returns_n`` exchanges; the engagement reward is paid at a fight's end only, so its
returns give every move of a fight the same value). The blend and memory-only bosses steer
effects by the players' recent win rate against the level's band
(:class:`agents.retrieval.Steering`, with the game's bands and ``dead_zone``): effective moves
when a player has been winning too much, gentle ones when too little.

``llm`` needs a chat endpoint (``llm.*`` are :class:`agents.llm_boss.LLMConfig`'s fields, the
key in its environment variable); without one its row is skipped and the note is printed and
logged (tag ``llm_note``). It asks the model for each decision (~50 per fight, cached by
rounded prompt): mind the cost of ``players x fights_per_series`` fights.

The metrics (:mod:`experiments.adaptation_metrics`, which defines them exactly) per seed and
boss: ``adaptation_fights`` (fights until the ``window``-fight trailing mean of the players'
win rate stays in the level's target band, 0.5 ± 0.1 at normal; the series' length when it
never does, with ``settled`` False), ``win_rate_error`` (mean distance of the win curve from
the target), ``recovery_fights`` and ``recovered`` (the same after the switch) and
``final_win_rate`` (the last ``window`` fights). Over seeds: median and interquartile range,
and the share of seeds that settled / recovered.

The target check: *the best retrieval-augmented boss adapts to the held-out persona in at most
half the fights the same agent without memory needs, with non-overlapping IQRs*, for the pairs
ppo+episodic vs ppo, dqn+blend vs dqn and memory_only vs dqn (each needs both variants run).

Saved in Hydra's output dir and logged to a parent MLflow run (experiment ``experiment``,
default ``bosslab-adaptation``): ``adaptation.csv`` (one row per variant), ``adaptation.md``
(readable, with the target check, the LLM note and the timings), ``adaptation_seeds.csv`` (one
row per seed x variant, with the training run id), ``adaptation_curves.csv`` (every win curve),
``adaptation_timings.csv`` (seconds per training and per series) and ``adaptation.png`` (win
curves, median over seeds with IQR shading and the band; adaptation and recovery fights per
seed); metrics ``<variant>/<metric>_median`` etc. (``+`` written ``-``). The training runs go
to the same experiment and are the parent's children: each is tagged ``mlflow.parentRunId``
(the MLflow UI nests them) and ``bosslab.adaptation_parent`` when its training starts, by a
callback passed to train.run (``experiments.sweep``'s parent lookup only works in a Hydra
multirun).

Config errors (unknown variant, held-out persona outside the population, bad counts, bad
train overrides) fail before any training. Ctrl-C stops: the training under way saves its
checkpoint (experiments.train), the seeds finished so far are reported and logged, and the
parent run ends KILLED with the tag ``interrupted=true``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import hydra
import matplotlib
import mlflow
import numpy as np
import pandas as pd
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from omegaconf import MISSING, DictConfig, OmegaConf
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from tqdm import tqdm

from agents.config import DifficultyConfig
from agents.factory import load_agent
from agents.llm_boss import LLMBoss, LLMConfig, llm_baseline, llm_status
from agents.policy import SB3BossPolicy
from agents.rag_setup import RagConfig, memory_boss
from agents.retrieval import Steering
from envs.bosses import BossPolicy
from envs.fights import StyleSwitch, play_fights
from envs.game import GameDefinition, load_game
from envs.observation import ObservationLayout
from envs.persona import available_personas, load_players
from experiments import tracking, train
from experiments.adaptation_metrics import (
    Band,
    PairVerdict,
    adaptation_fights,
    adapts_twice_as_fast,
    outcome_matrix,
    recovery_fights,
    smoothed,
    spread,
    win_curve,
    win_rate_error,
)
from experiments.compose import compose_config
from experiments.llm_log import log_llm_calls
from experiments.tournament import check_choices, hydra_output_dir, interactive, markdown_table
from rag.embedders import make_embedder
from rag.memory import EpisodicMemory

matplotlib.use("Agg")  # files only, no display; chosen before pyplot is imported
import matplotlib.pyplot as plt

OBJECTIVE = "engagement"
POPULATION = "population"
PARENT_TAG = "bosslab.adaptation_parent"
MLFLOW_PARENT_TAG = "mlflow.parentRunId"
"""MLflow's own nesting tag: the UI shows a run carrying it under its parent."""
MODEL_FILE = "model/model.zip"
DOWNLOAD_BARS = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
SERIES = ("adaptation", "switch")
STEM = "adaptation"


class Training(NamedTuple):
    """One training per seed that some variants play."""

    name: str
    algo: str
    rag: str


PPO_PLAIN = Training("ppo", "ppo", "none")
PPO_EPISODIC = Training("ppo+episodic", "ppo", "episodic")
DQN_BLEND = Training("dqn+blend", "dqn", "blend")
TRAININGS = {t.name: t for t in (PPO_PLAIN, PPO_EPISODIC, DQN_BLEND)}


class Variant(NamedTuple):
    """A boss of the comparison: which training it plays, and how."""

    name: str
    training: Training | None
    """None: not trained here (the LLM boss)."""
    memory: str | None
    """None: the trained model alone; else the rag mode its saved memory is played with."""


VARIANTS = {variant.name: variant for variant in (
    Variant("ppo", PPO_PLAIN, None),
    Variant("ppo+episodic", PPO_EPISODIC, "episodic"),
    Variant("dqn", DQN_BLEND, None),
    Variant("dqn+blend", DQN_BLEND, "blend"),
    Variant("memory_only", DQN_BLEND, "memory_only"),
    Variant("llm", None, None),
)}
PAIRS = (("ppo+episodic", "ppo"), ("dqn+blend", "dqn"), ("memory_only", "dqn"))
"""The target check's pairs: (memory boss, the same agent without memory)."""
SPREAD_METRICS = ("adaptation_fights", "win_rate_error", "recovery_fights", "final_win_rate")
"""Reported as median and IQR over seeds."""
SHARE_METRICS = ("settled", "recovered")
"""Reported as the share of seeds."""


@dataclass
class AdaptationConfig:
    """The schema of ``configs/adaptation.yaml``."""

    tracking: tracking.TrackingConfig = field(default_factory=tracking.TrackingConfig)
    """Where MLflow records the parent run and the trainings (group ``tracking``)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    """Training seeds: one training per seed and needed training, one row per seed in the
    per-seed table."""
    held_out: str = "dodger"
    """The population member left out of training and met in the series."""
    switch_to: str = "rusher"
    """The persona the players of the switch series become after half their series."""
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    """Bosses compared (VARIANTS)."""
    game: Any = MISSING
    """The game (group ``game``), trained and played as composed (e.g. game.boss.max_hp=500)."""
    difficulty: DifficultyConfig = field(default_factory=DifficultyConfig)
    """The level trained and played at (group ``difficulty``, one level): its target win rate
    ± tolerance is the band."""
    ppo_steps: int = 2_000_000
    """Env steps of each PPO training (ppo, ppo+episodic)."""
    dqn_steps: int = 300_000
    """Env steps of each DQN training (dqn, dqn+blend, memory_only)."""
    capacity: int = 5_000
    """rag.capacity of the memory trainings: retrieval searches it for every env every step."""
    returns: str = "effect"
    """rag.returns of the memory trainings: what the memory stores per decision. ``effect``
    (each move's effect on the HP margin, which the blend and memory-only bosses steer by the
    player's recent win rate against the level's band), ``monte_carlo`` or ``n_step`` (returns
    of the engagement reward)."""
    returns_n: int = 3
    """rag.n of the memory trainings: exchanges (rewards) summed per stored value (effect,
    n_step)."""
    dead_zone: float = 0.5
    """With effects: in tolerances around the target, where the blend and memory-only bosses
    do not push (agents.retrieval.Steering; 1: not inside the band)."""
    train_eval_fights: int = 12
    """eval.fights of each training's own evaluation (against the held-out persona only)."""
    train_overrides: list[str] = field(default_factory=list)
    """Extra experiments.train overrides for every training, e.g. [num_envs=256]."""
    ppo_overrides: list[str] = field(default_factory=list)
    """Extra overrides of the PPO trainings only, e.g. [agent.n_steps=32]."""
    dqn_overrides: list[str] = field(default_factory=list)
    """Extra overrides of the DQN training only, e.g. [agent.learning_starts=500]."""
    players: int = 64
    """Players side by side in a series."""
    fights_per_series: int = 40
    """Fights each player plays in a row; the switch comes after half of them."""
    window: int = 5
    """Fights of the trailing mean the band is checked on."""
    series_seed: int = 1000
    """The series' players are seeded series_seed + seed."""
    experiment: str = "bosslab-adaptation"
    """MLflow experiment of the parent run and the trainings."""
    llm: dict[str, Any] = field(default_factory=dict)
    """agents.llm_boss.LLMConfig fields of the llm variant (model, base_url, api_key_env...)."""

    @property
    def level(self) -> str:
        assert self.difficulty.level is not None, "validate() rejects difficulty=all"
        return self.difficulty.level

    @property
    def switch(self) -> int:
        """The first fight (0-based) after the switch."""
        return self.fights_per_series // 2


ConfigStore.instance().store(name="adaptation_schema", node=AdaptationConfig)


class Plan(NamedTuple):
    """A validated experiment: what trains (composed configs) and how the series are played."""

    config: AdaptationConfig
    game: GameDefinition
    band: Band
    trainings: dict[str, DictConfig]
    """Training name -> its composed experiments.train config (any seed: see seeded)."""
    llm: LLMConfig
    llm_available: bool
    llm_note: str | None
    """Printed and logged when the llm variant is chosen."""

    @property
    def variants(self) -> list[Variant]:
        return [VARIANTS[name] for name in self.config.variants]

    @property
    def played(self) -> list[Variant]:
        """The variants that play (llm only with an endpoint)."""
        return [v for v in self.variants if v.training is not None or self.llm_available]


class Trained(NamedTuple):
    """A finished training: its run, model and saved memory (None with rag=none)."""

    run_id: str
    model: BaseAlgorithm
    memory_dir: Path | None
    rag: RagConfig
    layout: ObservationLayout


class Timing(NamedTuple):
    seed: int
    task: str
    seconds: float


@dataclass
class Results:
    """Per seed and variant: the metric rows and the curves; the timings of every task."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    curves: list[pd.DataFrame] = field(default_factory=list)
    timings: list[Timing] = field(default_factory=list)
    seeds_done: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class AdaptationResult:
    """What :func:`run` produced."""

    parent_run_id: str
    summary: pd.DataFrame
    """One row per variant (median, IQR, shares over the finished seeds)."""
    per_seed: pd.DataFrame
    curves: pd.DataFrame
    timings: pd.DataFrame
    verdicts: dict[tuple[str, str], PairVerdict]
    files: list[Path]
    interrupted: bool


# --- config ------------------------------------------------------------------------------


def typed_config(cfg: DictConfig) -> AdaptationConfig:
    """The composed config checked against the schema."""
    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(AdaptationConfig), cfg))
    assert isinstance(config, AdaptationConfig)
    return config


def llm_config(values: dict[str, Any]) -> LLMConfig:
    """``llm.*`` as an LLMConfig (its own checks run), or a ValueError naming the fields."""
    known = [f.name for f in dataclasses.fields(LLMConfig)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown llm key(s) {', '.join(unknown)}: llm.* takes LLMConfig's "
                         f"fields: {', '.join(known)}.")
    return LLMConfig(**values)


def validate(config: AdaptationConfig) -> None:
    """Check what needs no composed training config, before anything runs."""
    check_choices("variant", config.variants, list(VARIANTS), "variants")
    if len(set(config.variants)) != len(config.variants):
        raise ValueError(f"variants={config.variants} names a variant twice: list each once.")
    if not config.seeds or len(set(config.seeds)) != len(config.seeds):
        raise ValueError(f"seeds={config.seeds} must list at least one seed, each once, e.g. "
                         f"seeds=[0,1,2,3,4].")
    counts = {"players": (config.players, 1), "fights_per_series": (config.fights_per_series, 2),
              "ppo_steps": (config.ppo_steps, 1), "dqn_steps": (config.dqn_steps, 1),
              "capacity": (config.capacity, 1), "returns_n": (config.returns_n, 1),
              "train_eval_fights": (config.train_eval_fights, 1)}
    for key, (value, low) in counts.items():
        if value < low:
            raise ValueError(f"{key} must be >= {low}, got {value}: set {key}=<a larger number> "
                             f"(configs/adaptation.yaml has the defaults).")
    if not 1 <= config.window <= config.fights_per_series // 2:
        raise ValueError(f"window={config.window} must be between 1 and half the series "
                         f"(fights_per_series // 2 = {config.fights_per_series // 2}), so that "
                         f"both halves of the switch series hold a full window.")
    if not (np.isfinite(config.dead_zone) and config.dead_zone >= 0):
        raise ValueError(f"dead_zone={config.dead_zone} must be a finite number >= 0 (in "
                         f"tolerances; 0 pushes whenever the win rate is off target).")
    check_choices("persona", [config.switch_to], available_personas(), "switch_to",
                  listed=False)
    if config.switch_to == config.held_out:
        raise ValueError(f"switch_to={config.switch_to!r} is the held-out persona: players "
                         f"would not change style. Pick another persona, e.g. switch_to=rusher.")
    game = load_game(config.game)
    if config.difficulty.level is None:
        raise ValueError(f"the series are played at one level: set difficulty=normal (or "
                         f"difficulty.level=<one of {', '.join(game.difficulty_levels)}>), not "
                         f"difficulty=all.")
    check_choices("difficulty", [config.difficulty.level], list(game.difficulty_levels),
                  "difficulty.level", f"game {game.name!r} has", listed=False)
    llm_config(config.llm)


def compose_train(overrides: Sequence[str]) -> DictConfig:
    """``configs/train.yaml`` with ``overrides``, inside a Hydra app or outside one."""
    if GlobalHydra.instance().is_initialized():  # under @hydra.main: its config dir is ours
        return hydra.compose("train", overrides=list(overrides))
    return compose_config("train", overrides)


def base_overrides(config: AdaptationConfig) -> list[str]:
    """What every training shares (the population with the held-out persona still in)."""
    return [f"player={POPULATION}", f"objective={OBJECTIVE}",
            f"difficulty.level={config.level}", f"experiment={config.experiment}",
            f"eval.fights={config.train_eval_fights}", f"eval.personas=[{config.held_out}]",
            *config.train_overrides]


def training_overrides(config: AdaptationConfig, training: Training) -> list[str]:
    """The experiments.train overrides of one training (seed and run name are set per seed)."""
    ppo = training.algo == "ppo"
    overrides = [*base_overrides(config), f"~player.members.{config.held_out}",
                 f"agent={training.algo}", f"rag={training.rag}",
                 f"budget.total_timesteps={config.ppo_steps if ppo else config.dqn_steps}"]
    if training.rag != "none":
        overrides += [f"rag.capacity={config.capacity}", f"rag.returns={config.returns}",
                      f"rag.n={config.returns_n}"]
    return [*overrides, *(config.ppo_overrides if ppo else config.dqn_overrides)]


def training_config(config: AdaptationConfig, training: Training) -> DictConfig:
    """The composed training config, validated as experiments.train would (no compute)."""
    cfg = compose_train(training_overrides(config, training))
    cfg.game = OmegaConf.create(config.game)  # ours, tweaks included
    cfg.tracking.uri = config.tracking.uri
    cfg.tracking.artifact_location = config.tracking.artifact_location
    typed = train.typed_config(cfg)
    load_players(typed.player)
    train.validate(typed, load_game(typed.game))
    return cfg


def seeded(cfg: DictConfig, training: Training, seed: int) -> DictConfig:
    """A training config for one seed, with its run name."""
    one = copy.deepcopy(cfg)
    one.seed = seed
    one.run_name = f"adaptation-s{seed}-{training.name}"
    return one


def needed_trainings(variants: Sequence[Variant]) -> list[Training]:
    return list(dict.fromkeys(v.training for v in variants if v.training is not None))


def prepare(cfg: DictConfig) -> Plan:
    """Type and validate everything, compose every training config: fail before compute."""
    config = typed_config(cfg)
    validate(config)
    base = compose_train(base_overrides(config))
    members = [str(name) for name in base.player.members]
    check_choices("held-out persona", [config.held_out], members, "held_out",
                  "the training population has", listed=False)
    game = load_game(config.game)
    level = game.difficulty_levels[config.level]
    trainings = {t.name: training_config(config, t)
                 for t in needed_trainings([VARIANTS[v] for v in config.variants])}
    llm = llm_config(config.llm)
    status = llm_status(llm) if "llm" in config.variants else None
    return Plan(config, game, Band(level.target_player_win_rate, level.win_rate_tolerance),
                trainings, llm, status is not None and status.available,
                None if status is None else status.note)


# --- MLflow: the parent run ---------------------------------------------------------------


class ChildOf(BaseCallback):
    """Tags the training run as a child of the experiment's parent run when training starts."""

    def __init__(self, parent_run_id: str) -> None:
        super().__init__()
        self.parent_run_id = parent_run_id

    def _on_training_start(self) -> None:
        mlflow.set_tags({MLFLOW_PARENT_TAG: self.parent_run_id,
                         PARENT_TAG: self.parent_run_id})

    def _on_step(self) -> bool:
        return True


def open_parent(plan: Plan, cfg: DictConfig, work: Path) -> str:
    """Create the parent run (not made active: the trainings open their own runs)."""
    config = plan.config
    experiment_id = tracking.connect(config.tracking, config.experiment)
    client = MlflowClient()
    tags = {"bosslab.kind": "adaptation", "held_out": config.held_out,
            "switch_to": config.switch_to, "variants": ",".join(config.variants),
            "game": plan.game.name, "game_fingerprint": plan.game.fingerprint(),
            "git_commit": tracking.git_commit(Path(__file__).parent), "interrupted": "false"}
    if plan.llm_note is not None:
        tags["llm_note"] = plan.llm_note[:5000]
    run = client.create_run(experiment_id, run_name=f"adaptation held_out={config.held_out} "
                            f"seeds={len(config.seeds)}", tags=tags)
    run_id = run.info.run_id
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    params = tracking.flatten({str(k): v for k, v in data.items()})
    client.log_batch(run_id, params=[Param(k, str(v)[:tracking.MAX_PARAM_LENGTH])
                                     for k, v in params.items()])
    path = work / "config.yaml"
    OmegaConf.save(cfg, path, resolve=True)
    client.log_artifact(run_id, str(path), artifact_path="config")
    return run_id


def metric_key(variant: str) -> str:
    """MLflow metric names allow no ``+``."""
    return variant.replace("+", "-")


def log_parent(run_id: str, summary: pd.DataFrame, verdicts: dict[tuple[str, str], PairVerdict],
               files: Sequence[Path], interrupted: bool) -> None:
    """Metrics, tags and files of the parent run, which then ends."""
    client = MlflowClient()
    stamp = int(time.time() * 1000)
    metrics = [Metric(f"{metric_key(row['variant'])}/{column}", float(row[column]), stamp, 0)
               for row in summary.to_dict("records") for column in summary.columns
               if column not in ("variant",)]
    passed = [f"{memory} vs {baseline}" for (memory, baseline), v in verdicts.items()
              if v.passed]
    tags = [RunTag("target_met", ", ".join(passed) or "none"),
            RunTag("interrupted", str(interrupted).lower())]
    client.log_batch(run_id, metrics=metrics, tags=tags)
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path=STEM)
    client.set_terminated(run_id, status="KILLED" if interrupted else "FINISHED")


# --- training and playing ------------------------------------------------------------------


@contextmanager
def quiet_downloads() -> Iterator[None]:
    """MLflow's download bars only for a person at a terminal (not into a log file)."""
    if interactive():
        yield
        return
    previous = os.environ.get(DOWNLOAD_BARS)
    os.environ[DOWNLOAD_BARS] = "false"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[DOWNLOAD_BARS]
        else:
            os.environ[DOWNLOAD_BARS] = previous


def train_one(cfg: DictConfig, parent_run_id: str, work: Path) -> Trained:
    """One training through experiments.train (a normal run), with its model and memory."""
    result = train.run(cfg, extra_callbacks=[ChildOf(parent_run_id)])
    if result.interrupted:
        raise KeyboardInterrupt
    typed = train.typed_config(cfg)
    into = work / result.run_id
    with quiet_downloads():
        model = load_agent(tracking.download(result.run_id, MODEL_FILE, into))
        memory = (tracking.download(result.run_id, train.MEMORY_DIR, into)
                  if typed.rag.enabled else None)
    return Trained(result.run_id, model, memory, typed.rag,
                   ObservationLayout.for_game(load_game(typed.game)))


def build_boss(variant: Variant, trained: Trained | None, plan: Plan, seed: int) -> BossPolicy:
    """A fresh boss for one series: memory bosses start from the training run's memory."""
    if trained is None:
        boss, _ = llm_baseline(plan.game, plan.llm, seed=seed)
        assert boss is not None, "the llm variant only plays with an endpoint"
        return boss
    if variant.memory is None:
        return SB3BossPolicy(trained.model, variant.name, seed=seed)
    assert trained.memory_dir is not None, f"{variant.name} needs a training with a memory"
    rag = dataclasses.replace(trained.rag, mode=variant.memory)
    steering = Steering.for_game(plan.game, dead_zone=plan.config.dead_zone)
    return memory_boss(rag, trained.model, EpisodicMemory.load(trained.memory_dir),
                       make_embedder(rag.embedder, trained.layout), trained.layout,
                       name=variant.name, seed=seed, steering=steering)


def record_llm_calls(boss: LLMBoss, parent_run_id: str, name: str) -> None:
    """Every chat call of one series (prompt, answer, latency, tokens) into the parent run:
    ``llm/<name>/calls.jsonl`` and metrics ``llm/<name>/...``."""
    mlflow.start_run(run_id=parent_run_id)
    try:
        log_llm_calls(boss.calls, artifact_dir=f"llm/{name}", prefix=f"llm/{name}/")
    finally:
        mlflow.end_run(status="RUNNING")  # the parent goes on; run() ends it


def play_series(boss: BossPolicy, plan: Plan, seed: int, kind: str) -> np.ndarray:
    """One series (``adaptation`` or ``switch``) of every player; returns the win curve."""
    config = plan.config
    switch = StyleSwitch(config.switch, config.switch_to) if kind == "switch" else None
    results = play_fights(boss, config.players * config.fights_per_series, game=plan.game,
                          player=config.held_out, difficulty=config.level,
                          objective=OBJECTIVE, series=config.players,
                          seed=config.series_seed + seed, switch=switch)
    outcomes = outcome_matrix(np.array([r.player for r in results]),
                              np.array([r.series_fight for r in results]),
                              np.array([r.player_won for r in results]),
                              config.players, config.fights_per_series)
    return win_curve(outcomes)


def metric_row(curves: dict[str, np.ndarray], band: Band, config: AdaptationConfig
               ) -> dict[str, Any]:
    """The metrics of one seed x variant, from its two win curves."""
    settling = adaptation_fights(curves["adaptation"], band, config.window)
    recovery = recovery_fights(curves["switch"], band, config.window, config.switch)
    return {"adaptation_fights": settling.fights, "settled": settling.settled,
            "win_rate_error": win_rate_error(curves["adaptation"], band.target),
            "recovery_fights": recovery.fights, "recovered": recovery.settled,
            "final_win_rate": float(curves["adaptation"][-config.window:].mean())}


def curve_frame(seed: int, variant: str, kind: str, curve: np.ndarray,
                window: int) -> pd.DataFrame:
    return pd.DataFrame({"seed": seed, "variant": variant, "series": kind,
                         "series_fight": np.arange(len(curve)), "win_rate": curve,
                         "smoothed": smoothed(curve, window)})


class Tasks:
    """The progress bar over trainings and series (quiet when nobody is watching)."""

    def __init__(self, bar: tqdm[Any] | None) -> None:
        self.bar = bar

    @contextmanager
    def task(self, label: str, seed: int, results: Results) -> Iterator[None]:
        """Time one task; the bar shows it while it runs."""
        if self.bar is not None:
            self.bar.set_postfix_str(label)
        start = time.perf_counter()
        yield
        results.timings.append(Timing(seed, label, time.perf_counter() - start))
        if self.bar is not None:
            self.bar.update(1)


@contextmanager
def task_bar(total: int) -> Iterator[Tasks]:
    if not interactive():
        yield Tasks(None)
        return
    with tqdm(total=total, unit=" tasks", desc="adaptation", dynamic_ncols=True,
              position=0) as bar:
        yield Tasks(bar)


def run_seed(plan: Plan, seed: int, parent_run_id: str, work: Path, tasks: Tasks,
             results: Results) -> None:
    """Train what the variants need, then play both series with every variant."""
    trained: dict[str, Trained] = {}
    for training in needed_trainings(plan.played):
        with tasks.task(f"train {training.name}", seed, results):
            cfg = seeded(plan.trainings[training.name], training, seed)
            trained[training.name] = train_one(cfg, parent_run_id, work)
    rows, frames = [], []
    for variant in plan.played:
        run = trained[variant.training.name] if variant.training is not None else None
        curves = {}
        for kind in SERIES:
            with tasks.task(f"{variant.name} {kind}", seed, results):
                boss = build_boss(variant, run, plan, seed)
                curves[kind] = play_series(boss, plan, seed, kind)
                if isinstance(boss, LLMBoss):
                    record_llm_calls(boss, parent_run_id, f"seed_{seed}_{kind}")
            frames.append(curve_frame(seed, variant.name, kind, curves[kind],
                                      plan.config.window))
        rows.append({"seed": seed, "variant": variant.name,
                     **metric_row(curves, plan.band, plan.config),
                     "run_id": run.run_id if run is not None else ""})
    results.rows += rows  # a seed counts once all its variants played
    results.curves += frames
    results.seeds_done.append(seed)


# --- tables, plot, report -------------------------------------------------------------------


def summary_table(per_seed: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: median and IQR of each metric over seeds, shares of settled seeds."""
    rows = []
    for variant, group in per_seed.groupby("variant", sort=False):
        row: dict[str, Any] = {"variant": variant, "seeds": len(group)}
        for metric in SPREAD_METRICS:
            middle = spread(group[metric].to_numpy(dtype=float))
            row |= {f"{metric}_median": middle.median, f"{metric}_q25": middle.q25,
                    f"{metric}_q75": middle.q75}
            if metric == "adaptation_fights":
                row["settled_share"] = float(group["settled"].mean())
            if metric == "recovery_fights":
                row["recovered_share"] = float(group["recovered"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def target_check(per_seed: pd.DataFrame) -> dict[tuple[str, str], PairVerdict]:
    """The pairs whose both variants ran: adaptation fights over seeds, memory vs none."""
    played = set(per_seed["variant"]) if len(per_seed) else set()
    fights = {v: g.sort_values("seed")["adaptation_fights"].to_numpy(dtype=float)
              for v, g in per_seed.groupby("variant")} if len(per_seed) else {}
    return {(memory, baseline): adapts_twice_as_fast(fights[memory], fights[baseline])
            for memory, baseline in PAIRS if {memory, baseline} <= played}


def _cell(middle: float, low: float, high: float, digits: int) -> str:
    return f"{middle:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def readable_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """Cells ``median [q25, q75]``; shares as seeds out of seeds."""
    readable = pd.DataFrame({"variant": summary["variant"], "seeds": summary["seeds"]})
    digits = {"adaptation_fights": 1, "win_rate_error": 3, "recovery_fights": 1,
              "final_win_rate": 2}
    for metric, places in digits.items():
        readable[metric.replace("_", " ")] = [
            _cell(r[f"{metric}_median"], r[f"{metric}_q25"], r[f"{metric}_q75"], places)
            for r in summary.to_dict("records")]
        share = {"adaptation_fights": "settled", "recovery_fights": "recovered"}.get(metric)
        if share is not None:
            readable[share] = [f"{round(r[f'{share}_share'] * r['seeds'])}/{r['seeds']}"
                               for r in summary.to_dict("records")]
    return readable


def verdict_lines(verdicts: dict[tuple[str, str], PairVerdict], fights: int) -> list[str]:
    """The target check, pair by pair, and overall."""
    lines = []
    for (memory, baseline), v in verdicts.items():
        censored = " (the baseline never settled in some seeds: a lower bound)" if (
            v.baseline.q75 >= fights) else ""
        lines.append(
            f"- {memory} vs {baseline}: adaptation fights {_cell(*v.memory, 1)} vs "
            f"{_cell(*v.baseline, 1)}{censored}; at most half: "
            f"{'yes' if v.at_most_half else 'no'}; IQRs apart: "
            f"{'yes' if v.iqrs_apart else 'no'} -> {'PASS' if v.passed else 'fail'}")
    passed = [f"{m} vs {b}" for (m, b), v in verdicts.items() if v.passed]
    if not verdicts:
        lines.append("- no pair to check: run a memory variant with its baseline (variants).")
    lines.append(f"Target met by: {', '.join(passed)}" if passed else
                 "Target not met by any pair.")
    return lines


def timings_text(timings: pd.DataFrame) -> str:
    if timings.empty:
        return "no task finished"
    by_task = timings.groupby("task", sort=False)["seconds"].agg(["median", "sum", "count"])
    return "\n".join(f"- {task}: {r['median']:.1f} s median ({int(r['count'])} x, "
                     f"{r['sum']:.0f} s in all)" for task, r in by_task.iterrows())


def plot_results(curves: pd.DataFrame, per_seed: pd.DataFrame, plan: Plan, path: Path) -> Path:
    """Win curves (median over seeds, IQR shaded, band drawn) and the fights per seed."""
    config, band = plan.config, plan.band
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), layout="constrained", squeeze=False)
    for ax, kind in zip(axes[0], SERIES, strict=True):
        ax.axhspan(band.target - band.tolerance, band.target + band.tolerance, color="0.88",
                   label=f"target band {band.target:g} ± {band.tolerance:g}")
        for variant, group in curves[curves["series"] == kind].groupby("variant", sort=False):
            grid = group.pivot(index="seed", columns="series_fight", values="smoothed")
            q25, median, q75 = np.percentile(grid.to_numpy(), [25, 50, 75], axis=0)
            x = np.arange(1, grid.shape[1] + 1)
            (line,) = ax.plot(x, median, label=str(variant))
            ax.fill_between(x, q25, q75, color=line.get_color(), alpha=0.18)
        if kind == "switch":
            ax.axvline(config.switch + 0.5, color="k", ls=":",
                       label=f"switch to {config.switch_to}")
        ax.set(title=f"{kind} series vs {config.held_out}: {config.window}-fight trailing "
                     f"win rate", xlabel="fight in the series", ylabel="player win rate",
               ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    remaining = config.fights_per_series - config.switch
    for ax, metric, settled, limit in (
            (axes[1, 0], "adaptation_fights", "settled", config.fights_per_series),
            (axes[1, 1], "recovery_fights", "recovered", remaining)):
        _box(ax, per_seed, metric, settled, limit)
    fig.suptitle(f"Adaptation to the held-out {config.held_out} ({plan.game.name}, "
                 f"{config.level}): seeds {sorted(set(per_seed['seed']))}, "
                 f"{config.players} players x {config.fights_per_series} fights")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _box(ax: Any, per_seed: pd.DataFrame, metric: str, settled: str, limit: int) -> None:
    """A box per variant with each seed as a dot (an x where it never settled)."""
    groups = list(per_seed.groupby("variant", sort=False))
    ax.boxplot([g[metric].to_numpy(dtype=float) for _, g in groups])
    rng = np.random.default_rng(0)
    for i, (_, group) in enumerate(groups, start=1):
        x = i + rng.uniform(-0.12, 0.12, len(group))
        done = group[settled].to_numpy(dtype=bool)
        values = group[metric].to_numpy(dtype=float)
        ax.scatter(x[done], values[done], s=14, color="C0", zorder=3)
        ax.scatter(x[~done], values[~done], s=22, marker="x", color="C3", zorder=3)
    ax.set_xticks(range(1, len(groups) + 1), [str(v) for v, _ in groups])
    ax.set(title=f"{metric.replace('_', ' ')} per seed (x: never {settled}, censored)",
           ylabel="fights", ylim=(-0.5, limit + 0.5))
    ax.grid(alpha=0.3, axis="y")


def write_results(plan: Plan, results: Results, out_dir: Path,
                  interrupted: bool) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame,
                                              pd.DataFrame, dict[tuple[str, str], PairVerdict],
                                              list[Path], str]:
    """Every table, the plot and the markdown report; returns them with the report text."""
    out_dir.mkdir(parents=True, exist_ok=True)
    per_seed = pd.DataFrame(results.rows)
    curves = (pd.concat(results.curves, ignore_index=True) if results.curves
              else pd.DataFrame(columns=["seed", "variant", "series", "series_fight",
                                         "win_rate", "smoothed"]))
    timings = pd.DataFrame(results.timings, columns=list(Timing._fields))
    summary = summary_table(per_seed) if len(per_seed) else pd.DataFrame()
    verdicts = target_check(per_seed)
    paths = {name: out_dir / f"{STEM}{name}" for name in
             (".csv", "_seeds.csv", "_curves.csv", "_timings.csv", ".md", ".png")}
    summary.to_csv(paths[".csv"], index=False)
    per_seed.to_csv(paths["_seeds.csv"], index=False)
    curves.to_csv(paths["_curves.csv"], index=False)
    timings.to_csv(paths["_timings.csv"], index=False)
    text = report_text(plan, summary, verdicts, timings, results, interrupted)
    paths[".md"].write_text(text)
    files = [p for k, p in paths.items() if k != ".png"]
    if len(per_seed):
        files.append(plot_results(curves, per_seed, plan, paths[".png"]))
    return summary, per_seed, curves, timings, verdicts, files, text


def report_text(plan: Plan, summary: pd.DataFrame, verdicts: dict[tuple[str, str], PairVerdict],
                timings: pd.DataFrame, results: Results, interrupted: bool) -> str:
    config, band = plan.config, plan.band
    head = (f"# Adaptation to the held-out persona {config.held_out} ({plan.game.name}, "
            f"{config.level}, band {band.target:g} ± {band.tolerance:g})\n\n"
            f"Seeds {results.seeds_done} of {config.seeds}"
            f"{' (interrupted)' if interrupted else ''}; {config.players} players x "
            f"{config.fights_per_series} fights per series; switch to {config.switch_to} after "
            f"fight {config.switch}; trailing window {config.window}.\n\n")
    table = markdown_table(readable_summary(summary)) if len(summary) else "No results.\n"
    check = "\n".join(verdict_lines(verdicts, config.fights_per_series))
    note = f"\n\n{plan.llm_note}" if plan.llm_note else ""
    return (f"{head}{table}\n## Target check (adaptation fights, median [IQR])\n\n{check}"
            f"{note}\n\n## Timings\n\n{timings_text(timings)}\n")


# --- the entry point ---------------------------------------------------------------------


def run(cfg: DictConfig, out_dir: Path) -> AdaptationResult:
    """The whole experiment (see the module docstring); files go to ``out_dir``."""
    plan = prepare(cfg)
    if plan.llm_note is not None:
        print(plan.llm_note)
    results, interrupted = Results(), False
    with tempfile.TemporaryDirectory(prefix="bosslab-adaptation-") as tmp:
        parent = open_parent(plan, cfg, Path(tmp))
        trainings = len(needed_trainings(plan.played))
        total = len(plan.config.seeds) * (trainings + len(SERIES) * len(plan.played))
        try:
            with task_bar(total) as tasks:
                for seed in plan.config.seeds:
                    run_seed(plan, seed, parent, Path(tmp), tasks, results)
        except KeyboardInterrupt:
            interrupted = True
        except BaseException:
            MlflowClient().set_terminated(parent, status="FAILED")
            raise
    summary, per_seed, curves, timings, verdicts, files, text = write_results(
        plan, results, out_dir, interrupted)
    log_parent(parent, summary, verdicts, files, interrupted)
    print_report(text, parent, files, interrupted, results)
    return AdaptationResult(parent, summary, per_seed, curves, timings, verdicts, files,
                            interrupted)


def print_report(text: str, parent: str, files: Sequence[Path], interrupted: bool,
                 results: Results) -> None:
    if interrupted:
        print(f"\nInterrupted (Ctrl-C): stopped after {len(results.seeds_done)} finished "
              f"seed(s); reporting those. Parent run {parent} ended KILLED "
              f"(tag interrupted=true).")
    print("\n" + text)
    print(f"Parent run {parent}; files:\n" + "\n".join(f"  {p}" for p in files)
          + f"\n  Browse the runs: {tracking.browse_command()}")


@hydra.main(config_path="../configs", config_name="adaptation", version_base="1.3")
def main(cfg: DictConfig) -> None:
    result = run(cfg, hydra_output_dir())
    if result.interrupted:
        raise SystemExit(130)


if __name__ == "__main__":
    main()
