"""The tournament: every scripted boss against every persona, measured against the designer.

    python -m experiments.tournament
    python -m experiments.tournament fights=200 personas=[novice,dodger]
    python -m experiments.tournament game=dragon_keep difficulty=veteran game.boss.max_hp=500

Each boss plays ``fights`` fights against each persona at one difficulty level; every group of
fights is summarized by :func:`envs.engagement.summarize_fights` against that level's targets.
The table is printed and saved as ``tournament.csv`` and ``tournament.md``, with a heatmap of
the engagement score and the player win rate (``tournament.png``), in Hydra's output dir. An
interrupted run (Ctrl-C) still saves the pairs it finished.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import matplotlib
import numpy as np
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from envs.bosses import SCRIPTED_BOSSES, make_boss
from envs.engagement import summarize_fights
from envs.fights import play_fights
from envs.game import GameDefinition, load_game
from envs.persona import available_players

matplotlib.use("Agg")  # files only, no display; chosen before pyplot is imported
import matplotlib.pyplot as plt
from matplotlib.colors import TwoSlopeNorm

Progress = Callable[[int], object]
OUTPUT_STEM = "tournament"


@dataclass(frozen=True)
class TournamentSettings:
    """What the tournament plays (``configs/tournament.yaml``), checked before any fight."""

    bosses: tuple[str, ...]
    """Scripted bosses to enter, from envs.bosses.SCRIPTED_BOSSES."""
    personas: tuple[str, ...]
    """Personas (or populations) from configs/player/ that the bosses fight."""
    fights: int
    """Fights per boss x persona pair."""
    series: int
    """Players per pair fighting side by side (each plays ceil(fights / series) in a row)."""
    difficulty: str
    """The game's difficulty level: the boss's strength and the designer's targets."""
    seed: int
    """Base seed; every pair uses it, so bosses meet the same players."""

    @classmethod
    def from_config(cls, cfg: DictConfig) -> TournamentSettings:
        return cls(bosses=names(cfg.bosses), personas=names(cfg.personas),
                   fights=int(cfg.fights), series=int(cfg.series),
                   difficulty=one_level(cfg), seed=int(cfg.seed))

    def validate(self, game: GameDefinition) -> None:
        """Raise ValueError naming the allowed values for anything the game cannot play."""
        check_choices("boss", self.bosses, SCRIPTED_BOSSES, "bosses")
        check_choices("persona", self.personas, available_players(), "personas")
        check_counts(self.fights, self.series)
        check_choices("difficulty", [self.difficulty], list(game.difficulty_levels),
                      "difficulty", f"game {game.name!r} has", listed=False)


def names(value: Any) -> tuple[str, ...]:
    """A config list of names; a single name (``bosses=random``) counts as a list of one."""
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def check_choices(what: str, chosen: Sequence[str], allowed: Sequence[str], key: str,
                  owner: str = "available:", listed: bool = True) -> None:
    """Fail with the allowed values when ``chosen`` is empty or holds an unknown name.

    ``listed`` says whether the config key holds a list (the fix is shown in Hydra's syntax).
    """
    if not chosen:
        raise ValueError(f"no {what} chosen: set {key} to one or more of {', '.join(allowed)}.")
    unknown = [name for name in chosen if name not in allowed]
    if unknown:
        example = f"[{','.join(allowed[:2])}]" if listed else allowed[0]
        raise ValueError(f"unknown {what} {', '.join(map(repr, unknown))}: {owner} "
                         f"{', '.join(allowed)}. Fix it on the command line, e.g. "
                         f"{key}={example}.")


def check_counts(fights: int, series: int) -> None:
    if fights < 1:
        raise ValueError(f"fights must be >= 1 (fights per pair), got {fights}.")
    if series < 1:
        raise ValueError(f"series must be >= 1 (players side by side), got {series}.")


def tournament_rows(game: Any, bosses: Sequence[str], personas: Sequence[str], fights: int, *,
                    series: int = 6, difficulty: str = "normal", seed: int = 0,
                    progress: Progress | None = None) -> Iterator[dict[str, Any]]:
    """One summary row per boss x persona pair, pair by pair (bosses outer, personas inner)."""
    definition = load_game(game)
    TournamentSettings(tuple(bosses), tuple(personas), fights, series, difficulty,
                       seed).validate(definition)
    level = definition.difficulty_levels[difficulty]
    for boss_name in bosses:
        for persona in personas:
            boss = make_boss(boss_name, definition, seed=seed)
            results = play_fights(boss, fights, game=definition, player=persona,
                                  difficulty=difficulty, series=series, seed=seed,
                                  progress=progress)
            summary = summarize_fights(results, level, definition.move_names)
            yield {"boss": boss_name, "persona": persona, **summary.as_row()}


def run_tournament(game: Any, bosses: Sequence[str], personas: Sequence[str], fights: int, *,
                   series: int = 6, difficulty: str = "normal", seed: int = 0,
                   progress: Progress | None = None) -> pd.DataFrame:
    """Every boss against every persona: one row per pair (see FightSummary for columns).

    ``game`` is anything :func:`envs.game.load_game` takes (a name, a path, a mapping).
    """
    return pd.DataFrame(tournament_rows(game, bosses, personas, fights, series=series,
                                        difficulty=difficulty, seed=seed, progress=progress))


def one_level(cfg: DictConfig) -> str:
    """The difficulty level the fights are scored against (``difficulty=all`` has none)."""
    level = cfg.difficulty.level
    if level is None:
        raise ValueError("these fights are scored against one level's targets, and "
                         "difficulty=all draws a level per fight: pick one, e.g. "
                         "difficulty=normal.")
    return str(level)


def win_rates_with_ci(table: pd.DataFrame) -> list[str]:
    """Each row's player win rate with its 95% interval, e.g. ``0.50 [0.38, 0.62]``."""
    return [f"{r.player_win_rate:.2f} [{r.win_rate_low:.2f}, {r.win_rate_high:.2f}]"
            for r in table.itertuples()]


def readable_table(table: pd.DataFrame) -> pd.DataFrame:
    """The columns a designer reads first, formatted, one row per boss x persona."""
    ci = win_rates_with_ci(table)
    return pd.DataFrame({
        "boss": table["boss"], "persona": table["persona"],
        "player win rate [95% CI]": ci,
        "in band": np.where(table["win_rate_in_band"], "yes", "no"),
        "duration s": table["mean_duration"].round(1),
        "HP margin": table["mean_hp_margin"].round(2),
        "close": table["close_share"].round(2),
        "in time": table["duration_share"].round(2),
        "engagement": table["engagement_score"].round(2),
        "top move": [f"{r.dominant_move} {r.dominant_share:.0%}{' (!)' if r.exploit else ''}"
                     for r in table.itertuples()],
    })


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table of ``table`` (no extra dependency)."""
    header = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    rows = ["| " + " | ".join(map(_cell, row)) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def _cell(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def plot_heatmaps(table: pd.DataFrame, path: Path, title: str) -> Path:
    """Engagement score and player win rate side by side, bosses x personas, as a PNG."""
    bosses = list(dict.fromkeys(table["boss"]))
    personas = list(dict.fromkeys(table["persona"]))
    target = float(table["target_win_rate"].iloc[0])
    tolerance = float(table["win_rate_tolerance"].iloc[0])
    width = max(9.0, 2.0 + 2.4 * len(personas))  # room for both panel titles
    fig, axes = plt.subplots(1, 2, figsize=(width, 1.6 + 0.75 * len(bosses)), squeeze=False,
                             layout="constrained")
    engagement = _grid(table, "engagement_score", bosses, personas)
    win_rate = _grid(table, "player_win_rate", bosses, personas)
    _heatmap(axes[0, 0], engagement, bosses, personas, "viridis", None,
             "engagement score (1 = on target)")
    norm = TwoSlopeNorm(vcenter=min(max(target, 1e-3), 1 - 1e-3), vmin=0.0, vmax=1.0)
    _heatmap(axes[0, 1], win_rate, bosses, personas, "coolwarm", norm,
             f"player win rate (target {target:.2f} ± {tolerance:.2f}, * = in band)",
             marks=np.abs(win_rate - target) <= tolerance + 1e-12)
    fig.suptitle(title)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _grid(table: pd.DataFrame, column: str, rows: list[str], columns: list[str]) -> np.ndarray:
    pivot = table.pivot(index="boss", columns="persona", values=column)
    return pivot.reindex(index=rows, columns=columns).to_numpy(dtype=float)


def _heatmap(ax: Any, values: np.ndarray, rows: list[str], columns: list[str], cmap: str,
             norm: Any, title: str, marks: np.ndarray | None = None) -> None:
    image = ax.imshow(values, cmap=cmap, norm=norm, vmin=None if norm else 0.0,
                      vmax=None if norm else 1.0, aspect="auto")
    ax.set_xticks(range(len(columns)), [c.replace("_", "\n") for c in columns])
    ax.set_yticks(range(len(rows)), rows)
    ax.set_title(title, fontsize=10)
    for (i, j), value in np.ndenumerate(values):
        mark = "*" if marks is not None and marks[i, j] else ""
        ax.text(j, i, f"{value:.2f}{mark}", ha="center", va="center", fontsize=10,
                color=_text_colour(image.cmap(image.norm(value))))
    plt.colorbar(image, ax=ax, shrink=0.85)


def _text_colour(background: tuple[float, ...]) -> str:
    """Black on light cells, white on dark ones (by the cell colour's luminance)."""
    red, green, blue = background[:3]
    return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"


def save_tournament(table: pd.DataFrame, out_dir: Path, title: str) -> list[Path]:
    """Write the CSV (every column), the markdown (readable columns) and the heatmap."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, md, png = (out_dir / f"{OUTPUT_STEM}.{ext}" for ext in ("csv", "md", "png"))
    table.to_csv(csv, index=False)
    md.write_text(f"# {title}\n\n{markdown_table(readable_table(table))}")
    plot_heatmaps(table, png, title)
    return [csv, md, png]


def interactive() -> bool:
    """Progress bars only for a person at a terminal: not in CI, not into a pipe or file."""
    return sys.stdout.isatty() and os.environ.get("CI", "").lower() != "true"


@contextmanager
def fight_progress(total: int, label: str = "fights") -> Iterator[Progress | None]:
    """A tqdm bar over ``total`` fights, or None when nobody is watching."""
    if not interactive():
        yield None
        return
    with tqdm(total=total, unit=" fights", desc=label, dynamic_ncols=True) as bar:
        yield bar.update


def game_from_config(cfg: DictConfig) -> GameDefinition:
    """The game definition the Hydra group ``game`` composed (with any overrides)."""
    data = OmegaConf.to_container(cfg.game, resolve=True)
    assert isinstance(data, dict)
    return load_game({str(k): v for k, v in data.items()})


def hydra_output_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


@hydra.main(config_path="../configs", config_name="tournament", version_base="1.3")
def main(cfg: DictConfig) -> None:
    game = game_from_config(cfg)
    settings = TournamentSettings.from_config(cfg)
    settings.validate(game)
    title = (f"{game.name}: scripted bosses x personas, {settings.difficulty}, "
             f"{settings.fights} fights per pair")
    rows: list[dict[str, Any]] = []
    total = len(settings.bosses) * len(settings.personas) * settings.fights
    try:
        with fight_progress(total) as progress:
            for row in tournament_rows(game, settings.bosses, settings.personas,
                                       settings.fights, series=settings.series,
                                       difficulty=settings.difficulty, seed=settings.seed,
                                       progress=progress):
                rows.append(row)
    except KeyboardInterrupt:
        print(f"Interrupted: saving the {len(rows)} pairs that finished.")
    if not rows:
        return
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(f"{title}\n{readable_table(table).to_string(index=False)}")
    paths = save_tournament(table, hydra_output_dir(), title)
    print("Saved:\n" + "\n".join(f"  {p}" for p in paths))


if __name__ == "__main__":
    main()
