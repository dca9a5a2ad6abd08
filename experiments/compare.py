"""Compare several bosses side by side: trained runs, registered models and scripted bosses.

    python -m experiments.compare bosses=[random,reactive]
    python -m experiments.compare bosses=[reactive,runs:/<run id>,<other run id>] fights=100
    python -m experiments.compare bosses=[reactive,models:/boss-duel@champion]

Each boss is named as in ``experiments.evaluate`` (``boss=``) and evaluated with
:func:`experiments.evaluation.evaluate_boss` against the same personas, seeds and difficulty level.
Runs play the game from their logged config; scripted bosses play the first run's game (or the
Hydra group ``game`` when there is no run). Every boss must play the same game (by name and
moves); a differing definition (fingerprint) only warns.

Saved in Hydra's output dir: ``compare.csv`` (one row per boss x persona, every column),
``compare.md`` (rows persona, columns boss, cells ``player win rate [95% CI] / engagement``)
and ``compare.png`` (engagement and player win rate heatmaps, bosses x personas).
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from agents.config import DifficultyConfig
from envs.bosses import SCRIPTED_BOSSES
from envs.game import GameDefinition
from experiments import tracking
from experiments.evaluate import LoadedBoss, check_spec, connect, load_boss
from experiments.evaluation import PERSONAS, TELEGRAPH_SECONDS, check_settings, evaluate_boss
from experiments.tournament import (
    game_from_config,
    hydra_output_dir,
    markdown_table,
    names,
    plot_heatmaps,
    win_rates_with_ci,
)

OUTPUT_STEM = "compare"


@dataclass
class CompareConfig:
    """The schema of ``configs/compare.yaml``."""

    game: Any = MISSING
    """The game scripted bosses play when no run is compared (group ``game``)."""
    difficulty: DifficultyConfig = field(default_factory=DifficultyConfig)
    """The one level every boss plays at (group ``difficulty``)."""
    tracking: tracking.TrackingConfig = field(default_factory=tracking.TrackingConfig)
    """Where the MLflow runs and registered models live (group ``tracking``)."""
    bosses: list[str] = MISSING
    """Boss specs, as experiments.evaluate's boss= (at least two)."""
    personas: list[str] = field(default_factory=lambda: list(PERSONAS))
    """Personas (or populations) from configs/player/ every boss fights."""
    fights: int = 60
    """Seeded fights per boss x persona."""
    series: int = 6
    """Players per pair fighting side by side."""
    seed: int = 0
    """Seeds the players (and scripted bosses): every boss meets the same players."""
    telegraph_seconds: float = TELEGRAPH_SECONDS
    """Attacks with at least this wind-up (or the longest one) count as telegraphed."""


ConfigStore.instance().store(name="compare_schema", node=CompareConfig)


def load_bosses(specs: Sequence[str], default_game: GameDefinition, seed: int,
                work: Path) -> list[LoadedBoss]:
    """Runs first (they fix the game), then scripted bosses on that game; labels made unique."""
    runs = {spec: load_boss(spec, default_game, seed, work) for spec in specs
            if spec.strip() not in SCRIPTED_BOSSES}
    game = next(iter(runs.values())).game if runs else default_game
    bosses = [runs.get(spec) or load_boss(spec, game, seed, work) for spec in specs]
    check_same_game(bosses)
    return unique_labels(bosses)


def check_same_game(bosses: Sequence[LoadedBoss]) -> None:
    """Every boss must play the same game (name and moves); other differences only warn."""
    first = bosses[0].game
    for boss in bosses[1:]:
        if (boss.game.name, boss.game.move_names) != (first.name, first.move_names):
            raise ValueError(f"cannot compare {bosses[0].label} (game {first.name!r}, moves "
                             f"{', '.join(first.move_names)}) with {boss.label} (game "
                             f"{boss.game.name!r}, moves {', '.join(boss.game.move_names)}): "
                             f"compare bosses of one game.")
        if boss.game.fingerprint() != first.fingerprint():
            warnings.warn(f"{boss.label} plays a different version of {first.name!r} than "
                          f"{bosses[0].label} (fingerprints {boss.game.fingerprint()} and "
                          f"{first.fingerprint()}); each boss plays its own.", UserWarning,
                          stacklevel=2)


def unique_labels(bosses: Sequence[LoadedBoss]) -> list[LoadedBoss]:
    """Suffix repeated labels with #2, #3... so every boss is a column of its own."""
    seen: dict[str, int] = {}
    unique = []
    for boss in bosses:
        seen[boss.label] = seen.get(boss.label, 0) + 1
        label = boss.label if seen[boss.label] == 1 else f"{boss.label}#{seen[boss.label]}"
        unique.append(LoadedBoss(boss.policy, boss.game, label, boss.run_id))
    return unique


def compare_bosses(bosses: Sequence[LoadedBoss], personas: Sequence[str], fights: int, *,
                   series: int = 6, difficulty: str = "normal", seed: int = 0,
                   telegraph_seconds: float = TELEGRAPH_SECONDS) -> pd.DataFrame:
    """Every boss against every persona at one level: experiments.evaluate's rows, stacked."""
    if len(bosses) < 1:
        raise ValueError("no boss to compare: set bosses=[reactive,runs:/<run id>].")
    tables = [evaluate_boss(boss.policy, boss.game, personas, fights, series=series,
                            difficulty=difficulty, seed=seed,
                            telegraph_seconds=telegraph_seconds, label=boss.label)
              for boss in bosses]
    return pd.concat(tables, ignore_index=True)


def side_by_side(table: pd.DataFrame) -> pd.DataFrame:
    """Rows persona, columns boss, cells ``player win rate [95% CI] / engagement``."""
    cells = table.assign(cell=[f"{ci} / {score:.2f}" for ci, score in zip(
        win_rates_with_ci(table), table["engagement_score"], strict=True)])
    wide = cells.pivot(index="persona", columns="boss", values="cell")
    wide = wide.reindex(index=list(dict.fromkeys(table["persona"])),
                        columns=list(dict.fromkeys(table["boss"])))
    return wide.reset_index().rename_axis(columns=None)


def save_comparison(table: pd.DataFrame, out_dir: Path, title: str) -> list[Path]:
    """``compare.csv`` (long, every column), ``compare.md`` (side by side), ``compare.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, md, png = (out_dir / f"{OUTPUT_STEM}.{ext}" for ext in ("csv", "md", "png"))
    table.to_csv(csv, index=False)
    md.write_text(f"# {title}\n\nCells: player win rate [95% CI] / engagement score.\n\n"
                  f"{markdown_table(side_by_side(table))}")
    plot_heatmaps(table, png, title)
    return [csv, md, png]


def typed_config(cfg: DictConfig) -> CompareConfig:
    """The composed config checked against the schema."""
    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(CompareConfig), cfg))
    assert isinstance(config, CompareConfig)
    return config


def validate(config: CompareConfig) -> None:
    """Fail before any fight: at least one boss, every spec well-formed, one level."""
    specs = names(config.bosses)
    if not specs:
        raise ValueError("no boss to compare: set bosses=[reactive,runs:/<run id>].")
    for spec in specs:
        check_spec(spec)
    if config.difficulty.level is None:
        raise ValueError("compare plays one difficulty level: set difficulty=normal (or "
                         "difficulty.level=<a level of the game>), not difficulty=all.")
    check_settings(config.personas, config.fights, config.series, config.telegraph_seconds)


def run(cfg: DictConfig, out_dir: Path) -> tuple[pd.DataFrame, list[Path]]:
    """Compare the bosses in ``cfg.bosses``; returns the long table and the files written."""
    config = typed_config(cfg)
    validate(config)
    specs = names(config.bosses)
    level = config.difficulty.level
    assert level is not None
    if any(spec.strip() not in SCRIPTED_BOSSES for spec in specs):
        connect(config.tracking)
    with tempfile.TemporaryDirectory(prefix="bosslab-compare-") as tmp:
        bosses = load_bosses(specs, game_from_config(cfg), config.seed, Path(tmp))
        table = compare_bosses(bosses, names(config.personas), config.fights,
                               series=config.series, difficulty=level, seed=config.seed,
                               telegraph_seconds=config.telegraph_seconds)
    title = (f"{bosses[0].game.name} ({level}): {len(bosses)} bosses, {config.fights} fights "
             f"per persona")
    return table, save_comparison(table, out_dir, title)


@hydra.main(config_path="../configs", config_name="compare", version_base="1.3")
def main(cfg: DictConfig) -> None:
    table, paths = run(cfg, hydra_output_dir())
    with pd.option_context("display.width", 220, "display.max_columns", None):
        print(side_by_side(table).to_string(index=False))
    print("Saved:\n" + "\n".join(f"  {p}" for p in paths))


if __name__ == "__main__":
    main()
