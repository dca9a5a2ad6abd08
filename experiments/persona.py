"""A persona against every scripted boss: what designers look at while tuning a persona file.

    python -m experiments.persona player=dodger
    python -m experiments.persona player=dodger player.dodge_frequency=0.6 fights=100
    python -m experiments.persona game=dragon_keep difficulty=veteran player=rusher

The persona (``configs/player/<name>.yaml``, the Hydra group ``player``) plays ``fights``
fights against each scripted boss. The table shows how the fights went (player win rate,
duration, HP margin) next to what the game observed of the player at the end of each fight
(dodge frequency, reaction time, movement style, frequent actions, attack patterns), which is
what a boss policy sees. It is printed and saved as ``persona_<name>.csv`` with a bar chart
(``persona_<name>.png``); one fight against ``replay_boss`` is saved as a replay
(``replay_<name>.html`` and ``.gif``). Everything goes into Hydra's output dir.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium
import hydra
import matplotlib
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from envs.bosses import SCRIPTED_BOSSES, make_boss
from envs.engagement import summarize_fights
from envs.fights import FightResult, play_fights
from envs.game import Difficulty, GameDefinition, load_game
from envs.replay import record_fight
from experiments.tournament import (
    Progress,
    check_choices,
    check_counts,
    fight_progress,
    game_from_config,
    hydra_output_dir,
    names,
    one_level,
    win_rates_with_ci,
)

matplotlib.use("Agg")  # files only, no display; chosen before pyplot is imported
import matplotlib.pyplot as plt

REPLAY_ENV_ID = "bosslab/BossFight-v0"
COMMON = 0.5
"""An action or pattern is listed for a boss when the game observed it in this share of fights."""


@dataclass(frozen=True)
class PersonaSettings:
    """What the persona command plays (``configs/persona.yaml``), checked before any fight."""

    bosses: tuple[str, ...]
    """Scripted bosses the persona fights, from envs.bosses.SCRIPTED_BOSSES."""
    fights: int
    """Fights against each boss."""
    series: int
    """Players fighting side by side; each plays ceil(fights / series) fights in a row."""
    difficulty: str
    """The game's difficulty level: the boss's strength and the designer's targets."""
    seed: int
    """Base seed for the fights and the replay."""
    replay_boss: str
    """The boss whose fight against the persona is saved as a replay."""

    @classmethod
    def from_config(cls, cfg: DictConfig) -> PersonaSettings:
        return cls(bosses=names(cfg.bosses), fights=int(cfg.fights), series=int(cfg.series),
                   difficulty=one_level(cfg), seed=int(cfg.seed),
                   replay_boss=str(cfg.replay_boss))

    def validate(self, game: GameDefinition) -> None:
        """Raise ValueError naming the allowed values for anything the game cannot play."""
        check_choices("boss", self.bosses, SCRIPTED_BOSSES, "bosses")
        check_choices("replay boss", [self.replay_boss], SCRIPTED_BOSSES, "replay_boss",
                      listed=False)
        check_counts(self.fights, self.series)
        check_choices("difficulty", [self.difficulty], list(game.difficulty_levels),
                      "difficulty", f"game {game.name!r} has", listed=False)


def persona_report(game: Any, player: Any, bosses: Sequence[str], fights: int, *,
                   series: int = 4, difficulty: str = "normal", seed: int = 0,
                   progress: Progress | None = None) -> pd.DataFrame:
    """One row per boss: how the fights went and what the game observed of the player.

    ``game`` and ``player`` are anything the env takes (names, paths, mappings).
    """
    definition = load_game(game)
    level = definition.difficulty_levels[difficulty]
    rows = []
    for boss_name in bosses:
        results = play_fights(make_boss(boss_name, definition, seed=seed), fights,
                              game=definition, player=player, difficulty=difficulty,
                              series=series, seed=seed, progress=progress)
        rows.append({"boss": boss_name, **_outcome(results, level, definition),
                     **observed_profile(results)})
    return pd.DataFrame(rows)


def _outcome(results: list[FightResult], level: Difficulty,
             game: GameDefinition) -> dict[str, Any]:
    summary = summarize_fights(results, level, game.move_names)
    keep = ("fights", "player_win_rate", "win_rate_low", "win_rate_high", "win_rate_in_band",
            "timeout_rate", "mean_duration", "mean_hp_margin", "close_share", "duration_share",
            "engagement_score", "target_win_rate", "win_rate_tolerance")
    row = summary.as_row()
    low, high = level.target_duration
    return {**{key: row[key] for key in keep}, "target_duration_low": low,
            "target_duration_high": high}


def observed_profile(results: Sequence[FightResult]) -> dict[str, Any]:
    """What the game observed of the player at the end of the fights, summarized."""
    contexts = [r.observed for r in results]
    styles = Counter(c.movement_style for c in contexts)
    style, count = styles.most_common(1)[0]
    return {
        "observed_dodge_frequency": float(np.mean([c.dodge_frequency for c in contexts])),
        "observed_reaction_time": float(np.mean([c.reaction_time for c in contexts])),
        "movement_style": style,
        "movement_style_share": count / len(contexts),
        "frequent_actions": _common([c.frequent_actions for c in contexts]),
        "attack_patterns": _common([c.attack_patterns for c in contexts]),
    }


def _common(groups: Sequence[Sequence[str]]) -> str:
    """Names seen in at least COMMON of the groups, most frequent first, comma-separated."""
    counts = Counter(name for group in groups for name in group)
    common = [name for name, n in counts.most_common() if n >= COMMON * len(groups)]
    return ", ".join(common) or "-"


def readable_report(table: pd.DataFrame) -> pd.DataFrame:
    """The report's columns, formatted for people."""
    return pd.DataFrame({
        "boss": table["boss"],
        "player win rate [95% CI]": win_rates_with_ci(table),
        "duration s": table["mean_duration"].round(1),
        "HP margin": table["mean_hp_margin"].round(2),
        "engagement": table["engagement_score"].round(2),
        "dodge freq": table["observed_dodge_frequency"].round(2),
        "reaction s": table["observed_reaction_time"].round(2),
        "style": [f"{r.movement_style} ({r.movement_style_share:.0%})"
                  for r in table.itertuples()],
        "frequent actions": table["frequent_actions"],
        "attack patterns": table["attack_patterns"],
    })


def plot_report(table: pd.DataFrame, path: Path, title: str,
                persona: Mapping[str, Any]) -> Path:
    """Bars per boss: win rate (with CI and target band), duration, dodge and reaction."""
    fig, axes = plt.subplots(1, 4, figsize=(16, 4), layout="constrained")
    bosses = list(table["boss"])
    _win_rate_panel(axes[0], table, bosses)
    band = (float(table["target_duration_low"].iloc[0]),
            float(table["target_duration_high"].iloc[0]))
    _bars(axes[1], bosses, table["mean_duration"], "mean fight duration (s)", "tab:green",
          band=band)
    _bars(axes[2], bosses, table["observed_dodge_frequency"], "observed dodge frequency",
          "tab:purple", configured=persona.get("dodge_frequency"))
    _bars(axes[3], bosses, table["observed_reaction_time"], "observed reaction time (s)",
          "tab:orange", configured=persona.get("reaction_time"))
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _win_rate_panel(ax: Any, table: pd.DataFrame, bosses: list[str]) -> None:
    rate = table["player_win_rate"].to_numpy()
    errors = np.clip(np.vstack([rate - table["win_rate_low"], table["win_rate_high"] - rate]),
                     0.0, None)
    target = float(table["target_win_rate"].iloc[0])
    tolerance = float(table["win_rate_tolerance"].iloc[0])
    ax.axhspan(target - tolerance, target + tolerance, color="0.85", label="target band")
    bars = ax.bar(bosses, rate, yerr=errors, capsize=4, color="tab:blue")
    ax.bar_label(bars, fmt="%.2f", padding=2)
    ax.set_ylim(0, 1.15)
    ax.set_title("player win rate (95% CI)")
    ax.legend(loc="upper right", fontsize=8)


def _bars(ax: Any, bosses: list[str], values: Any, title: str, colour: str,
          configured: float | None = None, band: tuple[float, float] | None = None) -> None:
    """Bars with their values, and the persona file's setting or a target band behind them."""
    ax.bar_label(ax.bar(bosses, values, color=colour), fmt="%.3g")
    top = float(np.max(values))
    if configured is not None:
        ax.axhline(float(configured), color="black", linestyle="--",
                   label=f"persona file: {float(configured):g}")
        top = max(top, float(configured))
    if band is not None:
        ax.axhspan(*band, color="0.85", zorder=0, label="target")
        top = max(top, band[1])
    if configured is not None or band is not None:
        ax.legend(loc="upper right", fontsize=8)
    ax.set_ylim(0, 1.3 * top if top > 0 else 1.0)  # headroom for the labels and legend
    ax.set_title(title)


def save_report(table: pd.DataFrame, out_dir: Path, name: str, title: str,
                persona: Mapping[str, Any]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv = out_dir / f"persona_{name}.csv"
    table.to_csv(csv, index=False)
    return [csv, plot_report(table, out_dir / f"persona_{name}.png", title, persona)]


def save_replay(game: GameDefinition, player: Mapping[str, Any], boss: str, difficulty: str,
                seed: int, out_dir: Path, name: str) -> list[Path]:
    """Record one fight of ``boss`` against the player; save it as an HTML page and a GIF."""
    env = gymnasium.make(REPLAY_ENV_ID, game=game, player=dict(player), difficulty=difficulty)
    try:
        replay = record_fight(env, make_boss(boss, game, seed=seed), seed=seed)
    finally:
        env.close()
    return [replay.save_html(out_dir / f"replay_{name}.html"),
            replay.save_gif(out_dir / f"replay_{name}.gif")]


def player_from_config(cfg: DictConfig) -> dict[str, Any]:
    """The persona (or population) the Hydra group ``player`` composed, with overrides."""
    data = OmegaConf.to_container(cfg.player, resolve=True)
    assert isinstance(data, dict)
    return {str(k): v for k, v in data.items()}


def describe_persona(player: Mapping[str, Any]) -> str:
    """One paragraph: the persona's name, description and the knobs designers turn most."""
    knobs = ("reaction_time", "dodge_frequency", "block_frequency", "aggression",
             "pattern_learning")
    settings = ", ".join(f"{k} {player[k]}" for k in knobs if k in player)
    return f"{player.get('name', 'player')}: {player.get('description', '')} ({settings})"


@hydra.main(config_path="../configs", config_name="persona", version_base="1.3")
def main(cfg: DictConfig) -> None:
    game = game_from_config(cfg)
    player = player_from_config(cfg)
    settings = PersonaSettings.from_config(cfg)
    settings.validate(game)
    name = str(player.get("name", "player"))
    title = (f"{name} vs the scripted bosses: {game.name}, {settings.difficulty}, "
             f"{settings.fights} fights each")
    with fight_progress(len(settings.bosses) * settings.fights) as progress:
        table = persona_report(game, player, settings.bosses, settings.fights,
                               series=settings.series, difficulty=settings.difficulty,
                               seed=settings.seed, progress=progress)
    with pd.option_context("display.width", 220, "display.max_columns", None):
        print(f"{describe_persona(player)}\n\n{title}\n"
              f"{readable_report(table).to_string(index=False)}")
    out_dir = hydra_output_dir()
    paths = save_report(table, out_dir, name, title, player)
    paths += save_replay(game, player, settings.replay_boss, settings.difficulty, settings.seed,
                         out_dir, name)
    print("Saved:\n" + "\n".join(f"  {p}" for p in paths))


if __name__ == "__main__":
    main()
