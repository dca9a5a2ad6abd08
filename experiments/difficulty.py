"""Difficulty calibration of any boss: the player win rate per persona at each difficulty level.

    python -m experiments.difficulty source=reactive                     # a scripted boss
    python -m experiments.difficulty source=<run id> fights=96           # a training run
    python -m experiments.difficulty source=models:/boss-duel@champion   # a registered model
    python -m experiments.difficulty source=rotation game=dragon_keep personas=[novice,dodger]

``source`` is a boss spec as ``experiments.evaluate`` reads it (a scripted boss name, a run,
``runs:/<id>`` or ``models:/<name>@<alias>``; a run plays its own logged game, with its memory
when it trained with ``rag``). The boss fights ``fights`` seeded fights against each of
``personas`` at each of the game's difficulty levels, in the game's order (easiest first):
:func:`calibration_table` per persona, the same calibration ``experiments.export`` writes into
the model card.

A harder level should not make players win more. A persona is flagged ``non_monotone`` when its
win rate *rises* from a level to a harder one by more than the noise: the harder level's 95%
Wilson interval lies entirely above the easier level's (:func:`flag_non_monotone`; ``rise``
names the first such pair).

Written to Hydra's output dir: ``difficulty.csv`` (every column, one row per persona x level),
``difficulty.md`` (readable, flags included) and ``difficulty.png`` (one line per persona with
its intervals, the levels' target bands in grey, flagged personas dashed and named in the
legend). When the source is a run, the files are logged to it under ``difficulty/`` and the
numbers as metrics ``difficulty/<persona>/<level>/player_win_rate`` and
``difficulty/non_monotone_personas``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import matplotlib
import numpy as np
import pandas as pd
from hydra.core.config_store import ConfigStore
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from omegaconf import MISSING, DictConfig, OmegaConf

from envs.bosses import SCRIPTED_BOSSES, AdaptiveBoss, BossPolicy
from envs.engagement import summarize_fights
from envs.fights import play_fights
from envs.game import GameDefinition
from experiments import tracking
from experiments.evaluate import check_spec, connect, load_boss
from experiments.evaluation import (
    PERSONAS,
    TELEGRAPH_SECONDS,
    check_settings,
    telegraphed_moves,
)
from experiments.tournament import (
    game_from_config,
    hydra_output_dir,
    markdown_table,
    names,
    win_rates_with_ci,
)

matplotlib.use("Agg")  # files only, no display; chosen before pyplot is imported
import matplotlib.pyplot as plt

ARTIFACT_DIR = "difficulty"
"""The run's artifact folder and metric prefix."""
STEM = "difficulty"
"""The files' name: difficulty.csv, .md and .png."""


@dataclass
class DifficultyPlotConfig:
    """The schema of ``configs/difficulty_plot.yaml``."""

    game: Any = MISSING
    """The game a scripted boss plays (group ``game``); a run plays its own logged game."""
    tracking: tracking.TrackingConfig = field(default_factory=tracking.TrackingConfig)
    """Where the MLflow runs and registered models live (group ``tracking``)."""
    source: str = MISSING
    """The boss: a scripted boss name, runs:/<id>, a bare run id or models:/<name>@<alias>."""
    personas: list[str] = field(default_factory=lambda: list(PERSONAS))
    """Personas (or populations) from configs/player/, one line each."""
    fights: int = 48
    """Seeded fights per persona and level."""
    series: int = 8
    """Players per persona fighting side by side."""
    seed: int = 0
    """Seeds the players (and a scripted boss): same seed, same table."""


ConfigStore.instance().store(name="difficulty_plot_schema", node=DifficultyPlotConfig)


@dataclass(frozen=True)
class DifficultyResult:
    """What a difficulty calibration produced."""

    table: pd.DataFrame
    """One row per persona x level (see :func:`difficulty_table`)."""
    paths: list[Path]
    """The CSV, markdown and PNG written."""
    run_id: str | None
    """The run the files were logged to, if the source is a run."""

    @property
    def flagged(self) -> list[str]:
        """The personas whose win rate rises with difficulty beyond the noise."""
        rows = self.table[self.table["non_monotone"]]
        return list(dict.fromkeys(rows["persona"]))


# --- calibration ------------------------------------------------------------------------------


def calibration_table(boss: BossPolicy, game: GameDefinition, player: Any, *, fights: int,
                      series: int, seed: int = 0,
                      objective: str = "engagement") -> pd.DataFrame:
    """The player win rate at each of the game's levels (in order), against its target band.

    ``player`` is a persona or population name (or a player config, as the env takes it). An
    adaptive boss starts every level from the memory it started with (``forget``). Columns:
    ``difficulty``, ``fights``, ``target_player_win_rate``, ``tolerance``, ``player_win_rate``,
    ``win_rate_low``, ``win_rate_high`` (95% Wilson), ``in_band``, ``engagement_score``,
    ``mean_duration``, ``dominant_move``, ``dominant_share``, ``exploit``, ``telegraph_share``.
    """
    telegraphed = telegraphed_moves(game)
    rows = []
    for level, targets in game.difficulty_levels.items():
        if isinstance(boss, AdaptiveBoss):
            boss.forget()
        results = play_fights(boss, fights, game=game, player=player, difficulty=level,
                              objective=objective, series=series, seed=seed)
        summary = summarize_fights(results, targets, game.move_names)
        rows.append({
            "difficulty": level, "fights": summary.fights,
            "target_player_win_rate": targets.target_player_win_rate,
            "tolerance": targets.win_rate_tolerance,
            "player_win_rate": summary.player_win_rate,
            "win_rate_low": summary.win_rate_low, "win_rate_high": summary.win_rate_high,
            "in_band": summary.win_rate_in_band, "engagement_score": summary.engagement_score,
            "mean_duration": summary.mean_duration, "dominant_move": summary.dominant_move,
            "dominant_share": summary.dominant_share, "exploit": summary.exploit,
            "telegraph_share": sum(summary.move_mix[m] for m in telegraphed),
        })
    return pd.DataFrame(rows)


def difficulty_table(boss: BossPolicy, game: GameDefinition, personas: Sequence[str], *,
                     fights: int, series: int, seed: int = 0,
                     label: str | None = None) -> pd.DataFrame:
    """:func:`calibration_table` for every persona, stacked and flagged.

    Columns: ``boss``, ``persona``, ``level_index`` (0 = the game's first, easiest level), the
    calibration's columns, ``non_monotone`` and ``rise`` (:func:`flag_non_monotone`).
    """
    parts = []
    for persona in personas:
        part = calibration_table(boss, game, persona, fights=fights, series=series, seed=seed)
        part.insert(0, "level_index", range(len(part)))
        part.insert(0, "persona", persona)
        part.insert(0, "boss", label or boss.name)
        parts.append(part)
    return flag_non_monotone(pd.concat(parts, ignore_index=True))


def flag_non_monotone(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with ``non_monotone`` and ``rise`` per persona (the same on all its rows).

    Rows of a persona are read in ``level_index`` order. A persona is non-monotone when for
    some easier level ``a`` and harder level ``b``, ``win_rate_low[b] > win_rate_high[a]``: the
    win rate rises with difficulty by more than both 95% intervals allow. ``rise`` names the
    first such pair, e.g. ``easy 0.10 -> hard 0.80``; empty otherwise.
    """
    rises = {persona: _first_rise(rows.sort_values("level_index"))
             for persona, rows in table.groupby("persona", sort=False)}
    return table.assign(non_monotone=[bool(rises[p]) for p in table["persona"]],
                        rise=[rises[p] for p in table["persona"]])


def _first_rise(rows: pd.DataFrame) -> str:
    levels = list(rows["difficulty"])
    rate, low, high = (rows[c].to_numpy(dtype=float)
                       for c in ("player_win_rate", "win_rate_low", "win_rate_high"))
    for b in range(len(levels)):
        for a in range(b):
            if low[b] > high[a]:
                return f"{levels[a]} {rate[a]:.2f} -> {levels[b]} {rate[b]:.2f}"
    return ""


# --- files ------------------------------------------------------------------------------------


def readable_difficulty(table: pd.DataFrame) -> pd.DataFrame:
    """The columns a designer reads: the win rate with its interval, the band, the flag."""
    return pd.DataFrame({
        "persona": table["persona"], "difficulty": table["difficulty"],
        "player win rate [95% CI]": win_rates_with_ci(table),
        "target": [f"{t:.2f} ± {w:.2f}" for t, w in
                   zip(table["target_player_win_rate"], table["tolerance"], strict=True)],
        "in band": np.where(table["in_band"], "yes", "no"),
        "engagement": table["engagement_score"].round(2),
        "duration s": table["mean_duration"].round(1),
        "flag": [f"non-monotone: {rise}" if flagged else "-"
                 for flagged, rise in zip(table["non_monotone"], table["rise"], strict=True)],
    })


def plot_difficulty(table: pd.DataFrame, path: Path, title: str) -> Path:
    """One line per persona across the levels (x in the game's order), with its intervals."""
    levels = list(dict.fromkeys(table.sort_values("level_index")["difficulty"]))
    fig, ax = plt.subplots(figsize=(max(6.5, 1.6 * len(levels) + 3.5), 4.6),
                           layout="constrained")
    first = table[table["persona"] == table["persona"].iloc[0]].sort_values("level_index")
    ax.bar(range(len(levels)), 2 * first["tolerance"].to_numpy(dtype=float),
           bottom=(first["target_player_win_rate"] - first["tolerance"]).to_numpy(dtype=float),
           width=0.5, color="0.85", label="target band", zorder=0)
    for persona, rows in table.groupby("persona", sort=False):
        _plot_persona(ax, str(persona), rows.sort_values("level_index"))
    ax.set_xticks(range(len(levels)), levels)
    ax.set_xlabel("difficulty (game order: easiest first)")
    ax.set_ylabel("player win rate (95% CI)")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    flagged = list(dict.fromkeys(table.loc[table["non_monotone"], "persona"]))
    warning = f"\nNON-MONOTONE (dashed): {', '.join(flagged)}" if flagged else ""
    ax.set_title(title + warning, fontsize=10, color="firebrick" if flagged else "black")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_persona(ax: Any, persona: str, rows: pd.DataFrame) -> None:
    flagged = bool(rows["non_monotone"].iloc[0])
    rate = rows["player_win_rate"].to_numpy(dtype=float)
    errors = np.stack([rate - rows["win_rate_low"].to_numpy(dtype=float),
                       rows["win_rate_high"].to_numpy(dtype=float) - rate])
    label = f"{persona} (NON-MONOTONE: {rows['rise'].iloc[0]})" if flagged else persona
    ax.errorbar(rows["level_index"], rate, yerr=np.clip(errors, 0.0, None), marker="o",
                capsize=3, linestyle="--" if flagged else "-", linewidth=2.2 if flagged else 1.4,
                label=label)


def save_difficulty(table: pd.DataFrame, out_dir: Path, title: str) -> list[Path]:
    """``difficulty.csv`` (every column), ``difficulty.md`` (readable) and ``difficulty.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, md, png = (out_dir / f"{STEM}.{ext}" for ext in ("csv", "md", "png"))
    table.to_csv(csv, index=False)
    flagged = list(dict.fromkeys(table.loc[table["non_monotone"], "persona"]))
    verdict = (f"**Non-monotone** (win rate rises with difficulty beyond the 95% intervals): "
               f"{', '.join(flagged)}." if flagged else
               "Every persona's win rate is monotone in difficulty (within the 95% intervals).")
    md.write_text(f"# {title}\n\n{verdict}\n\n{markdown_table(readable_difficulty(table))}")
    plot_difficulty(table, png, title)
    return [csv, md, png]


def difficulty_metrics(table: pd.DataFrame) -> dict[str, float]:
    """``difficulty/<persona>/<level>/player_win_rate`` and ``difficulty/non_monotone_personas``."""
    metrics = {f"{ARTIFACT_DIR}/{persona}/{level}/player_win_rate": float(rate)
               for persona, level, rate in zip(table["persona"], table["difficulty"],
                                               table["player_win_rate"], strict=True)}
    metrics[f"{ARTIFACT_DIR}/non_monotone_personas"] = float(
        table.loc[table["non_monotone"], "persona"].nunique())
    return metrics


def log_to_run(run_id: str, paths: Sequence[Path], metrics: dict[str, float]) -> None:
    """The files under ``difficulty/`` and the metrics, into an existing (ended) run."""
    client = MlflowClient()
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path=ARTIFACT_DIR)
    stamp = int(pd.Timestamp.now().timestamp() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, stamp, 0) for k, v in metrics.items()])


# --- the entry point --------------------------------------------------------------------------


def typed_config(cfg: DictConfig) -> DifficultyPlotConfig:
    """The composed config checked against the schema."""
    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DifficultyPlotConfig),
                                                 cfg))
    assert isinstance(config, DifficultyPlotConfig)
    return config


def run(cfg: DictConfig, out_dir: Path) -> DifficultyResult:
    """Calibrate the boss in ``cfg.source`` per persona and level; save, and log to its run."""
    config = typed_config(cfg)
    personas = names(config.personas)
    check_settings(personas, config.fights, config.series, TELEGRAPH_SECONDS)
    try:
        check_spec(config.source)
    except ValueError as error:
        raise ValueError(f"source={config.source!r} names no boss: {error}") from error
    if config.source.strip() not in SCRIPTED_BOSSES:
        connect(config.tracking)
    with tempfile.TemporaryDirectory(prefix="bosslab-difficulty-") as tmp:
        boss = load_boss(config.source, game_from_config(cfg), config.seed, Path(tmp))
        table = difficulty_table(boss.policy, boss.game, personas, fights=config.fights,
                                 series=config.series, seed=config.seed, label=boss.label)
        title = (f"{boss.label} on {boss.game.name}: player win rate by difficulty, "
                 f"{config.fights} fights per persona and level")
        paths = save_difficulty(table, out_dir, title)
        if boss.run_id is not None:
            log_to_run(boss.run_id, paths, difficulty_metrics(table))
    return DifficultyResult(table, paths, boss.run_id)


def report(result: DifficultyResult) -> None:
    """Print the table, the flags and where it went."""
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(readable_difficulty(result.table).to_string(index=False))
    if result.flagged:
        print(f"\nNON-MONOTONE: {', '.join(result.flagged)} win more at a harder level.")
    print("Saved:\n" + "\n".join(f"  {p}" for p in result.paths))
    if result.run_id is not None:
        print(f"Logged to run {result.run_id} (artifacts {ARTIFACT_DIR}/, metrics "
              f"{ARTIFACT_DIR}/...).")


@hydra.main(config_path="../configs", config_name="difficulty_plot", version_base="1.3")
def main(cfg: DictConfig) -> None:
    report(run(cfg, hydra_output_dir()))


if __name__ == "__main__":
    main()
