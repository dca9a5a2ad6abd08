"""One boss against every persona: the table every evaluation in the lab shares.

:func:`evaluate_boss` plays seeded fights of a boss (scripted or trained) against each persona
(x level) and summarizes each group with :func:`envs.engagement.summarize_fights` (player win
rate with its 95% Wilson interval, duration, HP margin, engagement score, move mix), the boss's
own win rate and two exploit checks; a row is ``flagged`` when either fails:

- ``exploit``: one move is more than ``envs.engagement.EXPLOIT_SHARE`` (40%) of the boss's moves;
- ``no_telegraph``: the boss never used a telegraphed move. A *telegraphed move* is an attack
  (damage > 0) whose wind-up (``windup_ticks / tick_rate``, before phase speed multipliers) is
  the longest of the game's attacks, or at least ``telegraph_seconds`` (0.6 s by default): the
  big readable attacks a fair boss must show. duel: ``special_move``; dragon_keep:
  ``fire_breath`` and ``dive_bomb``; known_answer: ``finisher``.

Used by ``experiments.train`` (after training), ``experiments.evaluate`` and
``experiments.compare``; the tables are saved as CSV (every column), markdown (readable columns)
and a heatmap PNG. :func:`save_replays` records one seeded fight per row as an HTML replay
(:mod:`envs.replay`; a trained boss explains every decision in it) and :func:`with_replays`
adds the ``replay`` column (the page's path relative to the table), which the markdown shows
as a link.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pandas as pd

from envs.bosses import AdaptiveBoss, BossPolicy
from envs.engagement import EXPLOIT_SHARE, summarize_fights
from envs.fights import FightResult, play_fights
from envs.game import GameDefinition
from envs.persona import available_players
from envs.replay import record_fight
from experiments.tournament import (
    check_choices,
    check_counts,
    markdown_table,
    plot_heatmaps,
    readable_table,
)

PERSONAS = ["novice", "button_masher", "turtle", "dodger", "rusher", "adaptive_expert"]
"""The shipped personas (configs/player/), every evaluation's default opponents."""
TELEGRAPH_SECONDS = 0.6
"""Attacks whose wind-up is at least this long (seconds) count as telegraphed."""
EVAL_METRICS = ("engagement_score", "player_win_rate", "mean_duration", "mean_hp_margin",
                "close_share", "duration_share", "timeout_rate", "win_rate_in_band")
"""The fight statistics logged as metrics (mean over personas, and per persona)."""
CHECK_METRICS = ("boss_win_rate", "exploit", "no_telegraph", "flagged", "telegraph_share",
                 "dominant_share")
"""Logged besides EVAL_METRICS: the boss's wins and the exploit checks."""
REPLAY_ENV_ID = "bosslab/BossFight-v0"
REPLAY_DIR = "replays"
"""Folder of the replays, next to the evaluation table (the ``replay`` column is relative)."""


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
            if isinstance(boss, AdaptiveBoss):
                boss.forget()
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


def replay_name(persona: str, level: str, several_levels: bool) -> str:
    """``replay_<persona>.html``, or ``replay_<persona>_<level>.html`` with several levels."""
    return f"replay_{persona}_{level}.html" if several_levels else f"replay_{persona}.html"


def save_replays(boss: BossPolicy, game: GameDefinition, table: pd.DataFrame, out_dir: Path,
                 seed: int = 0) -> list[Path]:
    """One seeded fight per row of ``table`` (persona x level) as an HTML replay.

    Saved as ``<out_dir>/replays/replay_<persona>[_<level>].html``, in the table's row order.
    An adaptive boss starts each replay from the memory it started the evaluation with
    (``forget``); a boss with ``explain`` shows what it weighed at every decision.
    """
    several = table["difficulty"].nunique() > 1
    paths = []
    for persona, level in zip(table["persona"], table["difficulty"], strict=True):
        if isinstance(boss, AdaptiveBoss):
            boss.forget()
        env = gymnasium.make(REPLAY_ENV_ID, game=game, player=str(persona),
                             difficulty=str(level))
        try:
            replay = record_fight(env, boss, seed=seed)
        finally:
            env.close()
        name = replay_name(str(persona), str(level), several)
        paths.append(replay.save_html(out_dir / REPLAY_DIR / name))
    return paths


def with_replays(table: pd.DataFrame, replays: Sequence[Path], out_dir: Path) -> pd.DataFrame:
    """``table`` with a ``replay`` column: each row's replay, relative to ``out_dir``."""
    if len(replays) != len(table):
        raise ValueError(f"{len(replays)} replays for {len(table)} rows: save_replays gives "
                         f"one per row.")
    relative = [Path(path).relative_to(out_dir).as_posix() for path in replays]
    return table.assign(replay=relative)


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
    if "replay" in table.columns:
        readable["replay"] = [f"[fight]({path})" if isinstance(path, str) and path else "-"
                              for path in table["replay"]]
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


def evaluation_metrics(table: pd.DataFrame, prefix: str) -> dict[str, float]:
    """``<prefix>/<metric>`` (mean over rows) and ``<prefix>/<persona>[/<level>]/<metric>``."""
    keys = (*EVAL_METRICS, *CHECK_METRICS)
    several_levels = table["difficulty"].nunique() > 1
    metrics = {f"{prefix}/{k}": float(np.mean(table[k].astype(float))) for k in keys}
    for row in table.itertuples():
        group = f"{row.persona}/{row.difficulty}" if several_levels else str(row.persona)
        metrics.update({f"{prefix}/{group}/{k}": float(getattr(row, k)) for k in keys})
    return metrics
