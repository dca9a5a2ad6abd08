"""Evaluate one boss against every persona: a trained run, a registered model or a scripted boss.

    python -m experiments.evaluate boss=reactive                        # a scripted boss
    python -m experiments.evaluate boss=runs:/<run id>                  # a training run
    python -m experiments.evaluate boss=<run id> fights=200 name=long   # a bare run id
    python -m experiments.evaluate boss=models:/boss-duel@champion  # the registered champion
    python -m experiments.evaluate boss=rotation game=dragon_keep difficulty=veteran

The boss (``boss=``) is one of:

- a scripted boss name (:data:`envs.bosses.SCRIPTED_BOSSES`), playing the game composed from
  the Hydra group ``game``;
- an MLflow run of ``experiments.train`` (``runs:/<id>`` or the bare id): its ``model/model.zip``
  (with its episodic memory ``memory/`` when it trained with ``rag``, as the run evaluated it)
  plays the game from the run's own logged config (``config/config.yaml``), with a warning when
  that definition's fingerprint differs from today's ``configs/game/<name>.yaml``;
- a registered model (``models:/<name>@<alias>`` or ``models:/<name>/<version>``, e.g. from
  ``python -m experiments.promote``), evaluated as the run it was registered from.

It plays ``fights`` seeded fights against each of ``personas`` at ``difficulty`` (``difficulty=all``
plays each of the game's levels in turn): :func:`experiments.evaluation.evaluate_boss`, whose
docstring lists the columns and the exploit checks (one move over 40% of the boss's moves, or
no telegraphed move: the row is ``flagged``).

The table is saved as ``evaluation_<name>.csv`` (every column), ``.md`` (readable columns) and
``.png`` (heatmaps) in Hydra's output dir. With ``replays=true`` (the default) the first seeded
fight of each row (persona x level) is saved as a self-contained HTML replay,
``replays/replay_<persona>[_<level>].html`` next to the table; a trained boss explains every
decision in it (its values per move and what its memory retrieved). The CSV's ``replay`` column
holds that relative path and the markdown links it. When the boss is a run (or a registered
model's run), the files are also logged to that run under ``evaluation/<name>/`` (the replays
under ``evaluation/<name>/replays/``, so the markdown's links resolve there too) and the numbers
as metrics ``evaluation/<name>/<metric>`` (mean over personas) and
``evaluation/<name>/<persona>[/<level>]/<metric>``; ``name`` defaults to the difficulty level
(``all`` for every level), so set ``name=`` to keep several evaluations of one run apart.
"""

from __future__ import annotations

import re
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import mlflow
import pandas as pd
from hydra.core.config_store import ConfigStore
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import MISSING, DictConfig, OmegaConf

from agents.config import DifficultyConfig
from agents.factory import load_agent
from agents.policy import load_policy
from agents.rag_setup import RagConfig, memory_boss
from agents.retrieval import Steering
from envs.bosses import SCRIPTED_BOSSES, BossPolicy, make_boss
from envs.game import GameDefinition, available_games, load_game
from envs.observation import ObservationLayout
from experiments import tracking
from experiments.evaluation import (
    PERSONAS,
    REPLAY_DIR,
    TELEGRAPH_SECONDS,
    check_settings,
    evaluate_boss,
    evaluation_metrics,
    readable_evaluation,
    save_evaluation,
    save_replays,
    with_replays,
)
from experiments.tournament import (
    game_from_config,
    hydra_output_dir,
    names,
)
from experiments.train import MEMORY_DIR
from rag.embedders import make_embedder
from rag.memory import EpisodicMemory

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
EVAL_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
MODEL_FILE = "model/model.zip"


@dataclass
class EvaluateConfig:
    """The schema of ``configs/evaluate.yaml``."""

    game: Any = MISSING
    """The game a scripted boss plays (group ``game``); a run plays its own logged game."""
    difficulty: DifficultyConfig = field(default_factory=DifficultyConfig)
    """The level fights are played at (group ``difficulty``; ``all``: each level in turn)."""
    tracking: tracking.TrackingConfig = field(default_factory=tracking.TrackingConfig)
    """Where the MLflow runs and registered models live (group ``tracking``)."""
    boss: str = MISSING
    """runs:/<id>, a bare run id, models:/<name>@<alias> or a scripted boss name."""
    personas: list[str] = field(default_factory=lambda: list(PERSONAS))
    """Personas (or populations) from configs/player/ to evaluate against."""
    fights: int = 60
    """Seeded fights per persona (and level)."""
    series: int = 6
    """Players per persona fighting side by side; each plays ceil(fights / series) in a row."""
    seed: int = 0
    """Seeds the players (and a scripted boss): same seed, same table."""
    telegraph_seconds: float = TELEGRAPH_SECONDS
    """Attacks with at least this wind-up (or the longest one) count as telegraphed."""
    name: str | None = None
    """Name of this evaluation (files, artifact folder, metrics); null: the difficulty level."""
    replays: bool = True
    """Save the first seeded fight of each row as an HTML replay, linked from the table."""


ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)


@dataclass(frozen=True)
class LoadedBoss:
    """A boss ready to fight: its policy, the game it plays, a label and its run (if any)."""

    policy: BossPolicy
    game: GameDefinition
    label: str
    run_id: str | None = None


@dataclass(frozen=True)
class EvaluationResult:
    """What an evaluation produced."""

    table: pd.DataFrame
    paths: list[Path]
    """The CSV, markdown and PNG written."""
    run_id: str | None
    """The run the evaluation was logged to, if the boss is a run."""
    replays: list[Path] = field(default_factory=list)
    """One HTML replay per row of ``table`` (empty with ``replays=false``)."""


# --- the boss spec -----------------------------------------------------------------------


def run_id_of(spec: str, client: MlflowClient | None = None) -> str | None:
    """The MLflow run behind a boss spec, or None for a scripted boss (ValueError otherwise)."""
    spec = spec.strip()
    if spec in SCRIPTED_BOSSES:
        return None
    if spec.startswith("runs:/"):
        run_id = spec.removeprefix("runs:/").split("/", maxsplit=1)[0]
        if run_id:
            return run_id
    elif spec.startswith("models:/"):
        return registered_run(spec, client or MlflowClient())
    elif RUN_ID.match(spec):
        return spec
    raise ValueError(f"boss={spec!r} is not a boss: use a scripted boss "
                     f"({', '.join(SCRIPTED_BOSSES)}), a run (runs:/<run id> or the bare 32-hex "
                     f"id) or a registered model (models:/boss-duel@champion).")


def check_spec(spec: str) -> None:
    """Fail on a malformed boss spec before touching MLflow (a models:/ URI is checked later)."""
    if not spec.strip().startswith("models:/"):
        run_id_of(spec)


def registered_run(uri: str, client: MlflowClient) -> str:
    """The run a ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` came from."""
    path = uri.removeprefix("models:/")
    try:
        if "@" in path:
            name, alias = path.split("@", maxsplit=1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, _, number = path.partition("/")
            version = client.get_model_version(name, number)
    except MlflowException as error:
        raise ValueError(f"boss={uri!r}: no such registered model version in "
                         f"{mlflow.get_tracking_uri()} ({error.message}). Promote a "
                         f"run first: python -m experiments.promote experiment=<name> "
                         f"metric=eval/engagement_score.") from error
    if not version.run_id:
        raise ValueError(f"boss={uri!r}: that model version has no source run to load.")
    return str(version.run_id)


def existing_run(run_id: str, client: MlflowClient) -> Any:
    """The run, or a ValueError saying where it was looked for."""
    try:
        return client.get_run(run_id)
    except MlflowException as error:
        raise ValueError(f"boss run {run_id!r}: no such run in "
                         f"{mlflow.get_tracking_uri()}. Check the id and the tracking "
                         f"settings (tracking=local uses ./mlflow.db).") from error


def run_game(run_id: str, work: Path) -> GameDefinition:
    """The game definition the run was trained on (its logged config), checked against today's.

    Warns when ``configs/game/<name>.yaml`` now has a different fingerprint: the boss was
    trained on another version of the game.
    """
    logged = OmegaConf.load(tracking.download(run_id, "config/config.yaml", work))
    assert isinstance(logged, DictConfig)
    data = OmegaConf.to_container(logged.game, resolve=True)
    assert isinstance(data, dict)
    game = load_game({str(k): v for k, v in data.items()})
    if game.name in available_games():
        current = load_game(game.name).fingerprint()
        if current != game.fingerprint():
            warnings.warn(f"run {run_id} was trained on a version of game {game.name!r} "
                          f"(fingerprint {game.fingerprint()}) that differs from "
                          f"configs/game/{game.name}.yaml ({current}); evaluating on the run's "
                          f"own definition.", UserWarning, stacklevel=2)
    return game


def load_boss(spec: str, game: GameDefinition, seed: int, work: Path) -> LoadedBoss:
    """The boss a spec names; a run brings its own game, a scripted boss plays ``game``."""
    if spec.strip() in SCRIPTED_BOSSES:
        return LoadedBoss(make_boss(spec.strip(), game, seed=seed), game, spec.strip())
    client = MlflowClient()
    run_id = run_id_of(spec, client)
    assert run_id is not None
    run = existing_run(run_id, client)
    label = spec.strip() if spec.startswith("models:/") else (
        f"{run.data.tags.get('algo', 'run')}-{run_id[:8]}")
    try:
        model = tracking.download(run_id, MODEL_FILE, work / run_id)
    except (MlflowException, OSError) as error:
        raise ValueError(f"run {run_id} has no {MODEL_FILE}: it did not finish training. "
                         f"Resume it (python -m experiments.train resume={run_id}) or pick a "
                         f"finished run.") from error
    game = run_game(run_id, work)
    return LoadedBoss(run_policy(run_id, model, game, label, seed, work), game, label, run_id)


def logged_rag(run_id: str, work: Path) -> RagConfig:
    """The run's ``rag`` settings (its logged config; no ``rag`` section: no memory)."""
    logged = OmegaConf.load(tracking.download(run_id, "config/config.yaml", work))
    assert isinstance(logged, DictConfig)
    node = logged.get("rag")
    typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RagConfig),
                                                node if node is not None else {}))
    assert isinstance(typed, RagConfig)
    return typed


def run_policy(run_id: str, model: Path, game: GameDefinition, label: str, seed: int,
               work: Path) -> BossPolicy:
    """The run's boss as its training evaluated it: the model, with its memory for rag=..."""
    rag = logged_rag(run_id, work)
    if not rag.enabled:
        return load_policy(model, name=label, seed=seed)
    try:
        memory = EpisodicMemory.load(tracking.download(run_id, MEMORY_DIR, work / "memory"))
    except (MlflowException, OSError) as error:
        raise ValueError(f"run {run_id} trained with rag={rag.mode} but has no {MEMORY_DIR}/ "
                         f"artifact: it did not finish training. Resume it (python -m "
                         f"experiments.train resume={run_id}) or pick a finished run.") from error
    layout = ObservationLayout.for_game(game)
    return memory_boss(rag, load_agent(model), memory, make_embedder(rag.embedder, layout),
                       layout, name=label, seed=seed, steering=Steering.for_game(game))


# --- logging to the run ------------------------------------------------------------------


def log_to_run(run_id: str, paths: Sequence[Path], metrics: dict[str, float],
               name: str, replays: Sequence[Path] = ()) -> None:
    """Files under ``evaluation/<name>/`` (replays in its ``replays/``) and the metrics, into
    an existing (ended) run."""
    client = MlflowClient()
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path=f"evaluation/{name}")
    for path in replays:
        client.log_artifact(run_id, str(path), artifact_path=f"evaluation/{name}/{REPLAY_DIR}")
    stamp = int(pd.Timestamp.now().timestamp() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, stamp, 0) for k, v in metrics.items()])


# --- the entry point ---------------------------------------------------------------------


def typed_config(cfg: DictConfig) -> EvaluateConfig:
    """The composed config checked against the schema."""
    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EvaluateConfig), cfg))
    assert isinstance(config, EvaluateConfig)
    return config


def connect(config: tracking.TrackingConfig) -> None:
    """Point MLflow at the tracking store (runs and registered models)."""
    mlflow.set_tracking_uri(tracking.tracking_uri(config))


def evaluation_name(name: str | None, difficulty: str | None) -> str:
    """The evaluation's name: the one given, or the level (``all`` for every level)."""
    chosen = name or difficulty or "all"
    if not EVAL_NAME.match(chosen):
        raise ValueError(f"name={chosen!r} may only hold letters, digits, '_', '-' and '.': "
                         f"it names files, an artifact folder and metrics, e.g. name=long_eval.")
    return chosen


def run(cfg: DictConfig, out_dir: Path) -> EvaluationResult:
    """Evaluate the boss in ``cfg.boss``, save the files in ``out_dir`` and log to its run."""
    config = typed_config(cfg)
    name = evaluation_name(config.name, config.difficulty.level)
    check_settings(config.personas, config.fights, config.series, config.telegraph_seconds)
    check_spec(config.boss)
    if config.boss.strip() not in SCRIPTED_BOSSES:
        connect(config.tracking)
    with tempfile.TemporaryDirectory(prefix="bosslab-evaluate-") as tmp:
        boss = load_boss(config.boss, game_from_config(cfg), config.seed, Path(tmp))
        table = evaluate_boss(boss.policy, boss.game, names(config.personas), config.fights,
                              series=config.series, difficulty=config.difficulty.level,
                              seed=config.seed, telegraph_seconds=config.telegraph_seconds,
                              label=boss.label)
        replays = (save_replays(boss.policy, boss.game, table, out_dir, seed=config.seed)
                   if config.replays else [])
        if replays:
            table = with_replays(table, replays, out_dir)
        title = (f"{boss.label} on {boss.game.name} ({name}): {config.fights} fights per "
                 f"persona")
        paths = save_evaluation(table, out_dir, f"evaluation_{name}", title)
        if boss.run_id is not None:
            log_to_run(boss.run_id, paths, evaluation_metrics(table, f"evaluation/{name}"),
                       name, replays)
    return EvaluationResult(table, paths, boss.run_id, replays)


def report(result: EvaluationResult) -> None:
    """Print the table and where it went."""
    with pd.option_context("display.width", 220, "display.max_columns", None):
        print(readable_evaluation(result.table).to_string(index=False))
    print("Saved:\n" + "\n".join(f"  {p}" for p in result.paths))
    if result.replays:
        print(f"Replays (one fight per row, linked from the table): "
              f"{result.replays[0].parent}/")
    if result.run_id is not None:
        print(f"Logged to run {result.run_id} (artifacts evaluation/..., metrics evaluation/...).")


@hydra.main(config_path="../configs", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    report(run(cfg, hydra_output_dir()))


if __name__ == "__main__":
    main()
