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
  plays the game from the run's own logged config (``config/config.yaml``), with a warning when
  that definition's fingerprint differs from today's ``configs/game/<name>.yaml``;
- a registered model (``models:/<name>@<alias>`` or ``models:/<name>/<version>``, e.g. from
  ``python -m experiments.promote``), evaluated as the run it was registered from.

It plays ``fights`` seeded fights against each of ``personas`` at ``difficulty`` (``difficulty=all``
plays each of the game's levels in turn). Every group of fights is summarized by
:func:`envs.engagement.summarize_fights` (player win rate with its 95% Wilson interval, duration,
HP margin, engagement score, move mix) plus two exploit checks; a row is ``flagged`` when either
fails:

- ``exploit``: one move is more than ``envs.engagement.EXPLOIT_SHARE`` (40%) of the boss's moves;
- ``no_telegraph``: the boss never used a telegraphed move. A *telegraphed move* is an attack
  (damage > 0) whose wind-up (``windup_ticks / tick_rate``, before phase speed multipliers) is
  the longest of the game's attacks, or at least ``telegraph_seconds`` (0.6 s by default): the
  big readable attacks a fair boss must show. duel: ``special_move``; dragon_keep:
  ``fire_breath`` and ``dive_bomb``; known_answer: ``finisher``.

The table is saved as ``evaluation_<name>.csv`` (every column), ``.md`` (readable columns) and
``.png`` (heatmaps) in Hydra's output dir. When the boss is a run (or a registered model's run),
the three files are also logged to that run under ``evaluation/<name>/`` and the numbers as
metrics ``evaluation/<name>/<metric>`` (mean over personas) and
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
import numpy as np
import pandas as pd
from hydra.core.config_store import ConfigStore
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import MISSING, DictConfig, OmegaConf

from agents.config import DifficultyConfig
from agents.policy import load_policy
from envs.bosses import SCRIPTED_BOSSES, BossPolicy, make_boss
from envs.engagement import EXPLOIT_SHARE, summarize_fights
from envs.fights import FightResult, play_fights
from envs.game import GameDefinition, available_games, load_game
from envs.persona import available_players
from experiments import tracking
from experiments.tournament import (
    check_choices,
    check_counts,
    game_from_config,
    hydra_output_dir,
    markdown_table,
    names,
    plot_heatmaps,
    readable_table,
)
from experiments.train import EVAL_METRICS, PERSONAS

TELEGRAPH_SECONDS = 0.6
"""Attacks whose wind-up is at least this long (seconds) count as telegraphed."""
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
EVAL_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
MODEL_FILE = "model/model.zip"
EXTRA_METRICS = ("boss_win_rate", "exploit", "no_telegraph", "flagged", "telegraph_share",
                 "dominant_share")
"""Metrics logged besides train.EVAL_METRICS: the boss's wins and the exploit checks."""


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
    return LoadedBoss(load_policy(model, name=label), run_game(run_id, work), label, run_id)


# --- the evaluation --------------------------------------------------------------------


def telegraphed_moves(game: GameDefinition,
                      threshold: float = TELEGRAPH_SECONDS) -> tuple[str, ...]:
    """Attacks whose wind-up is the game's longest among attacks or >= ``threshold`` seconds."""
    windups = {name: move.windup_ticks / game.tick_rate
               for name, move in game.moves.items() if move.damage > 0}
    if not windups:
        return ()
    longest = max(windups.values())
    return tuple(name for name, seconds in windups.items()
                 if seconds >= longest - 1e-12 or seconds >= threshold)


def levels_of(game: GameDefinition, difficulty: str | None) -> list[str]:
    """The level asked for, or every level of the game for ``None`` (difficulty=all)."""
    if difficulty is None:
        return list(game.difficulty_levels)
    check_choices("difficulty", [difficulty], list(game.difficulty_levels), "difficulty.level",
                  f"game {game.name!r} has", listed=False)
    return [difficulty]


def check_settings(personas: Sequence[str], fights: int, series: int,
                   telegraph_seconds: float) -> None:
    """Fail before any fight, naming the key to fix."""
    check_choices("persona", personas, available_players(), "personas")
    check_counts(fights, series)
    if telegraph_seconds <= 0:
        raise ValueError(f"telegraph_seconds must be > 0, got {telegraph_seconds}: e.g. "
                         f"telegraph_seconds={TELEGRAPH_SECONDS}.")


def evaluate_boss(boss: BossPolicy, game: GameDefinition, personas: Sequence[str],
                  fights: int, *, series: int = 6, difficulty: str | None = "normal",
                  seed: int = 0, telegraph_seconds: float = TELEGRAPH_SECONDS,
                  label: str | None = None) -> pd.DataFrame:
    """``boss`` against every persona (x level): one row per group of fights.

    Columns: ``boss``, ``persona``, ``difficulty``, every :class:`envs.engagement.FightSummary`
    field (``mix_<move>`` for the move mix), ``boss_win_rate`` and the checks ``telegraph_share``,
    ``no_telegraph`` and ``flagged`` (see the module docstring).
    """
    check_settings(personas, fights, series, telegraph_seconds)
    levels = levels_of(game, difficulty)
    telegraphed = telegraphed_moves(game, telegraph_seconds)
    rows = []
    for persona in personas:
        for level in levels:
            results = play_fights(boss, fights, game=game, player=persona, difficulty=level,
                                  series=series, seed=seed)
            summary = summarize_fights(results, game.difficulty_levels[level], game.move_names)
            row = {"boss": label or boss.name, "persona": persona, "difficulty": level,
                   **summary.as_row(), "boss_win_rate": boss_win_rate(results)}
            rows.append({**row, **exploit_checks(row, telegraphed)})
    return pd.DataFrame(rows)


def boss_win_rate(results: Sequence[FightResult]) -> float:
    """Share of the fights the boss won (the player down; timeouts are nobody's win)."""
    return float(np.mean([result.boss_won for result in results]))


def exploit_checks(row: dict[str, Any], telegraphed: Sequence[str]) -> dict[str, Any]:
    """Telegraphed share of the moves, and the flags (one move > 40%, no telegraphed move)."""
    share = float(sum(row[f"mix_{move}"] for move in telegraphed))
    no_telegraph = bool(telegraphed) and share == 0.0
    return {"telegraph_share": share, "no_telegraph": no_telegraph,
            "flagged": bool(row["exploit"]) or no_telegraph}


# --- tables, files and metrics -----------------------------------------------------------


def move_mix_text(table: pd.DataFrame) -> list[str]:
    """Each row's move mix, e.g. ``attack 50% / defend 20% / special_move 30%``."""
    columns = [c for c in table.columns if c.startswith("mix_")]
    return [" / ".join(f"{c.removeprefix('mix_')} {row[c]:.0%}" for c in columns)
            for _, row in table.iterrows()]


def readable_evaluation(table: pd.DataFrame) -> pd.DataFrame:
    """The tournament's readable columns with the level, the move mix and the checks."""
    readable = readable_table(table)
    readable.insert(2, "difficulty", table["difficulty"])
    readable.insert(4, "boss win rate", table["boss_win_rate"].round(2))
    readable["move mix"] = move_mix_text(table)
    readable["telegraphed"] = table["telegraph_share"].round(2)
    readable["flags"] = [_flags(r) for r in table.itertuples()]
    return readable


def _flags(row: Any) -> str:
    found = [f"one move > {EXPLOIT_SHARE:.0%}"] if row.exploit else []
    found += ["never telegraphs"] if row.no_telegraph else []
    return ", ".join(found) or "-"


def heatmap_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as plot_heatmaps wants it: one row per boss (x level when several)."""
    if table["difficulty"].nunique() <= 1:
        return table
    plotted = table.copy()
    plotted["boss"] = [f"{b} ({d})" for b, d in zip(table["boss"], table["difficulty"],
                                                      strict=True)]
    return plotted


def save_evaluation(table: pd.DataFrame, out_dir: Path, stem: str, title: str) -> list[Path]:
    """``<stem>.csv`` (every column), ``<stem>.md`` (readable columns), ``<stem>.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, md, png = (out_dir / f"{stem}.{ext}" for ext in ("csv", "md", "png"))
    table.to_csv(csv, index=False)
    md.write_text(f"# {title}\n\n{markdown_table(readable_evaluation(table))}")
    plot_heatmaps(heatmap_table(table), png, title)
    return [csv, md, png]


def evaluation_metrics(table: pd.DataFrame, name: str) -> dict[str, float]:
    """``evaluation/<name>/<metric>`` (mean over rows) and per persona (x level)."""
    keys = (*EVAL_METRICS, *EXTRA_METRICS)
    prefix = f"evaluation/{name}"
    several_levels = table["difficulty"].nunique() > 1
    metrics = {f"{prefix}/{k}": float(np.mean(table[k].astype(float))) for k in keys}
    for row in table.itertuples():
        group = f"{row.persona}/{row.difficulty}" if several_levels else str(row.persona)
        metrics.update({f"{prefix}/{group}/{k}": float(getattr(row, k)) for k in keys})
    return metrics


def log_to_run(run_id: str, paths: Sequence[Path], metrics: dict[str, float],
               name: str) -> None:
    """Files under ``evaluation/<name>/`` and the metrics, into an existing (ended) run."""
    client = MlflowClient()
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path=f"evaluation/{name}")
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
        title = (f"{boss.label} on {boss.game.name} ({name}): {config.fights} fights per "
                 f"persona")
        paths = save_evaluation(table, out_dir, f"evaluation_{name}", title)
        if boss.run_id is not None:
            log_to_run(boss.run_id, paths, evaluation_metrics(table, name), name)
    return EvaluationResult(table, paths, boss.run_id)


def report(result: EvaluationResult) -> None:
    """Print the table and where it went."""
    with pd.option_context("display.width", 220, "display.max_columns", None):
        print(readable_evaluation(result.table).to_string(index=False))
    print("Saved:\n" + "\n".join(f"  {p}" for p in result.paths))
    if result.run_id is not None:
        print(f"Logged to run {result.run_id} (artifacts evaluation/..., metrics evaluation/...).")


@hydra.main(config_path="../configs", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    report(run(cfg, hydra_output_dir()))


if __name__ == "__main__":
    main()
