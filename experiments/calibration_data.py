"""Telemetry for calibration: load it, check it, and summarize each session in numbers.

- :func:`load_telemetry`: an export file (``.parquet``/``.csv`` from ``python -m serving
  export-telemetry``) or the server's database URL, as the export's columns.
- :func:`check_telemetry`: missing columns, NaN, out-of-range values, names the game does not
  know, too few sessions or decisions per session: a ValueError naming the problem and the fix,
  never a silent fit. Decisions without a reported outcome and too-short sessions are dropped
  and said so (:class:`Checked` notes).
- :func:`decision_table`: the export's rows as :mod:`experiments.calibration_sim`'s decision
  table (the lists as 0/1 columns), the form simulated telemetry comes in.
- :class:`SessionSums`: per session, the numerators and denominators of every summary
  statistic (:func:`statistic_names`): means of the player context (dodge frequency, reaction
  time, health, equipment, distance, deaths...), how often each movement style, frequent
  action and attack pattern was seen, and per boss move the players' response (player hit
  rate, effectiveness, damage). Pooling sessions is adding their sums, so bootstrapping
  sessions is a weighted sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from envs.game import GameDefinition
from envs.observation import ATTACK_PATTERNS, MOVEMENT_STYLES, PLAYER_ACTIONS
from experiments.calibration_sim import ACTION_COLUMNS, DECISION_COLUMNS, PATTERN_COLUMNS
from serving.telemetry import COLUMNS, read_telemetry

LIST_COLUMNS = {"frequent_actions": PLAYER_ACTIONS, "attack_patterns": ATTACK_PATTERNS}
REQUIRED = ("session_id", "boss_move", "frequent_actions", "dodge_frequency",
            "attack_patterns", "movement_style", "reaction_time", "health_percentage",
            "session_duration", "recent_deaths", "equipment_level", "boss_health_percentage",
            "outcome", "effectiveness_score", "damage_dealt", "player_hit", "execution_time")
"""Columns calibration reads (the export writes them all, and more)."""
OPTIONAL: dict[str, float | str] = {"distance": 3.0, "difficulty": "", "environment": "",
                                   "battle_phase": ""}
"""Columns filled with a default when absent (a game that sent no environment_factors)."""
RANGES = {"dodge_frequency": (0.0, 1.0), "health_percentage": (0.0, 1.0),
          "boss_health_percentage": (0.0, 1.0), "effectiveness_score": (0.0, 1.0),
          "reaction_time": (0.0, 60.0), "session_duration": (0.0, 100_000.0),
          "recent_deaths": (0.0, 1e6), "equipment_level": (0.0, 1e6),
          "damage_dealt": (0.0, 1e9), "execution_time": (0.0, 3600.0),
          "distance": (0.0, 1000.0)}
"""The protocol's ranges (PROTOCOL.md)."""
OUTCOMES = ("success", "failure", "partial")
CONTEXT_STATISTICS = ("dodge_frequency", "reaction_time", "health_percentage", "equipment_level",
                      "distance", "recent_deaths", "session_duration", "boss_health_percentage")
RESPONSES = ("player_hit", "effectiveness_score", "damage_dealt")
"""Per boss move: the players' response statistics."""


@dataclass(frozen=True)
class Checked:
    """Telemetry that passed :func:`check_telemetry`, and what was dropped on the way."""

    table: pd.DataFrame
    """The decision table (experiments.calibration_sim.DECISION_COLUMNS)."""
    notes: tuple[str, ...]
    """What was dropped and why (printed and written to the report)."""


def load_telemetry(source: str, game_id: str | None = None) -> pd.DataFrame:
    """An export file (``.parquet`` or ``.csv``) or a database URL, as the export's columns."""
    if "://" in source:
        return pd.DataFrame(read_telemetry(source, game_id), columns=list(COLUMNS))
    path = Path(source)
    if path.suffix not in (".parquet", ".csv"):
        raise ValueError(f"telemetry={source!r}: give an export file (.parquet or .csv, from "
                         f"python -m serving export-telemetry) or the server's database URL "
                         f"(sqlite:///PATH, postgresql://...).")
    if not path.is_file():
        raise ValueError(f"telemetry={source!r}: no such file. Export one with python -m "
                         f"serving export-telemetry --database-url URL --out {path.name}.")
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(
        path, keep_default_na=False, na_values={c: [""] for c in COLUMNS if c not in
                                                 (*LIST_COLUMNS, "game_id", "session_id")})
    if game_id is not None and "game_id" in frame:
        frame = frame[frame["game_id"] == game_id]
    return frame


def check_telemetry(frame: pd.DataFrame, game: GameDefinition, *, min_sessions: int,
                    min_decisions: int, game_id: str | None = None) -> Checked:
    """Validate the export's rows and turn them into a decision table (see the module doc)."""
    _check_columns(frame)
    frame = frame.copy()
    for column, default in OPTIONAL.items():
        if column not in frame:
            frame[column] = default
    _check_one_game(frame, game_id)
    frame, notes = _without_unanswered(frame)
    _check_missing(frame)
    _check_ranges(frame)
    _check_names(frame, game)
    frame, short = _without_short_sessions(frame, min_decisions)
    notes += short
    sessions = frame["session_id"].nunique()
    if sessions < min_sessions:
        raise ValueError(f"too few sessions: {sessions} with at least {min_decisions} decisions "
                         f"each, calibration needs {min_sessions} (min_sessions). Collect more "
                         f"telemetry (more players, longer sessions), or lower min_sessions / "
                         f"min_decisions if you accept a noisier fit.")
    return Checked(decision_table(frame), tuple(notes))


def _check_columns(frame: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ValueError(f"telemetry lacks column(s) {', '.join(missing)}: calibration needs "
                         f"{', '.join(REQUIRED)}. Export it with python -m serving "
                         f"export-telemetry, which writes every one of them.")


def _check_one_game(frame: pd.DataFrame, game_id: str | None) -> None:
    games = sorted(frame["game_id"].dropna().unique()) if "game_id" in frame else []
    if len(games) > 1 and game_id is None:
        raise ValueError(f"the telemetry holds {len(games)} games ({', '.join(games[:5])}): "
                         f"players of different games cannot be calibrated together. Pick one "
                         f"with game_id=<id> (or export --game <id>).")


def _without_unanswered(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Drop decisions the game never reported an outcome for (all outcome columns empty)."""
    outcome = ["outcome", "effectiveness_score", "damage_dealt", "player_hit", "execution_time"]
    unanswered = frame[outcome].isna().all(axis=1)
    if not unanswered.any():
        return frame, []
    note = (f"dropped {int(unanswered.sum())} of {len(frame)} decisions without a reported "
            f"outcome")
    return frame[~unanswered], [note]


def _check_missing(frame: pd.DataFrame) -> None:
    for column in (*REQUIRED, "distance"):
        if column in LIST_COLUMNS:
            continue
        empty = frame[column].isna()
        if empty.any():
            where = _where(frame, empty)
            raise ValueError(f"column {column!r} has {int(empty.sum())} empty or NaN value(s) "
                             f"({where}): every decision needs it. Fix the game's telemetry "
                             f"(the server refuses NaN, so the file was edited or written by "
                             f"another tool), or drop those rows.")


def _check_ranges(frame: pd.DataFrame) -> None:
    for column, (low, high) in RANGES.items():
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() | (values < low) | (values > high)
        if bad.any():
            example = frame.loc[bad, column].iloc[0]
            raise ValueError(f"column {column!r} has {int(bad.sum())} value(s) outside "
                             f"[{low:g}, {high:g}] or not numbers (e.g. {example!r}, "
                             f"{_where(frame, bad)}): the protocol's range is [{low:g}, "
                             f"{high:g}] (PROTOCOL.md). Fix the telemetry, or drop those rows.")


def _check_names(frame: pd.DataFrame, game: GameDefinition) -> None:
    names = {"boss_move": game.move_names, "movement_style": MOVEMENT_STYLES,
             "outcome": OUTCOMES, "player_hit": (True, False)}
    for column, allowed in names.items():
        bad = ~frame[column].isin(list(allowed))
        if bad.any():
            raise ValueError(f"column {column!r} has {int(bad.sum())} unknown value(s) (e.g. "
                             f"{frame.loc[bad, column].iloc[0]!r}, {_where(frame, bad)}): "
                             f"allowed are {', '.join(map(str, allowed))}. Calibrate against "
                             f"the bundle (game {game.name!r}) the server served this "
                             f"telemetry with.")
    for column, vocabulary in LIST_COLUMNS.items():
        listed = frame[column].fillna("").astype(str).str.split(",").explode()
        unknown = sorted(set(listed) - set(vocabulary) - {""})
        if unknown:
            raise ValueError(f"column {column!r} names {', '.join(unknown[:5])}, not in the "
                             f"protocol's vocabulary ({', '.join(vocabulary)}): write the "
                             f"list as comma-separated names from it.")


def _without_short_sessions(frame: pd.DataFrame,
                            min_decisions: int) -> tuple[pd.DataFrame, list[str]]:
    sizes = frame.groupby("session_id")["session_id"].transform("size")
    short = sizes < min_decisions
    if not short.any():
        return frame, []
    dropped = frame.loc[short, "session_id"].nunique()
    return frame[~short], [f"dropped {dropped} session(s) with fewer than {min_decisions} "
                           f"decisions (min_decisions)"]


def _where(frame: pd.DataFrame, mask: pd.Series) -> str:
    first = mask.to_numpy().nonzero()[0][0]
    return f"first at row {first}, session {frame['session_id'].iloc[first]!r}"


def decision_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Checked export rows as a decision table (lists as 0/1 columns, ``persona`` empty)."""
    table = frame.reset_index(drop=True).copy()
    for column, vocabulary, prefix in (("frequent_actions", PLAYER_ACTIONS, "fa:"),
                                       ("attack_patterns", ATTACK_PATTERNS, "ap:")):
        listed = table[column].fillna("").astype(str).str.split(",")
        for name in vocabulary:
            table[f"{prefix}{name}"] = listed.map(lambda names, n=name: float(n in names))
    if "persona" not in table:
        table["persona"] = ""
    table["player_hit"] = table["player_hit"].astype(bool)
    for column in RANGES:
        table[column] = table[column].astype(float)
    return table[list(DECISION_COLUMNS)]


def statistic_names(moves: Sequence[str]) -> list[str]:
    """Every summary statistic, in order: context means, shares, per-move responses."""
    shares = [f"style:{s}" for s in MOVEMENT_STYLES] + list(ACTION_COLUMNS) + list(
        PATTERN_COLUMNS)
    responses = [f"{move}:{r}" for move in moves for r in RESPONSES]
    return [*CONTEXT_STATISTICS, *shares, *responses]


@dataclass(frozen=True)
class SessionSums:
    """Per session: numerator and denominator of every statistic (rows: ``sessions``)."""

    sessions: tuple[str, ...]
    personas: tuple[str, ...]
    """Each session's persona name (empty for real players)."""
    names: tuple[str, ...]
    numerators: np.ndarray
    denominators: np.ndarray
    decisions: np.ndarray
    """Decisions per session."""

    @classmethod
    def of(cls, table: pd.DataFrame, moves: Sequence[str]) -> SessionSums:
        values, weights = _decision_values(table, moves)
        key = table["session_id"].to_numpy()
        numerators = (values * weights).groupby(key, sort=True).sum()
        denominators = weights.groupby(key, sort=True).sum()
        personas = table.groupby("session_id", sort=True)["persona"].first()
        sizes = table.groupby("session_id", sort=True).size()
        return cls(tuple(numerators.index), tuple(personas.reindex(numerators.index)),
                   tuple(values.columns), numerators.to_numpy(float),
                   denominators.to_numpy(float), sizes.reindex(numerators.index).to_numpy())

    def pooled(self, weights: np.ndarray | None = None) -> np.ndarray:
        """Statistics of the sessions pooled, each counted ``weights`` times (default once);
        a statistic no pooled decision informs (a move never played) is NaN."""
        w = np.ones(len(self.sessions)) if weights is None else weights
        numerator, denominator = w @ self.numerators, w @ self.denominators
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denominator > 0, numerator / np.maximum(denominator, 1e-12),
                            np.nan)

    def per_session(self) -> np.ndarray:
        """(sessions, statistics): each session's own statistics (NaN where uninformed)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.denominators > 0, self.numerators
                            / np.maximum(self.denominators, 1e-12), np.nan)

    def subset(self, index: np.ndarray) -> SessionSums:
        return SessionSums(tuple(np.asarray(self.sessions)[index]),
                           tuple(np.asarray(self.personas)[index]), self.names,
                           self.numerators[index], self.denominators[index],
                           self.decisions[index])

    def by_persona(self) -> dict[str, SessionSums]:
        names = np.asarray(self.personas)
        return {name: self.subset(np.flatnonzero(names == name)) for name in dict.fromkeys(
            self.personas)}


def _decision_values(table: pd.DataFrame,
                     moves: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per decision, each statistic's value and whether the decision counts for it."""
    values: dict[str, np.ndarray] = {name: table[name].to_numpy(float)
                                     for name in CONTEXT_STATISTICS}
    style = table["movement_style"].to_numpy()
    values.update({f"style:{s}": (style == s).astype(float) for s in MOVEMENT_STYLES})
    values.update({c: table[c].to_numpy(float) for c in (*ACTION_COLUMNS, *PATTERN_COLUMNS)})
    ones = np.ones(len(table))
    weights = dict.fromkeys(values, ones)
    move = table["boss_move"].to_numpy()
    for name in moves:
        played = (move == name).astype(float)
        for response in RESPONSES:
            values[f"{name}:{response}"] = table[response].to_numpy(float)
            weights[f"{name}:{response}"] = played
    return pd.DataFrame(values), pd.DataFrame(weights)


def fights_per_session(table: pd.DataFrame) -> float:
    """Median fights per session: a fight starts when the boss's HP goes back up."""
    ordered = table.sort_values("session_id", kind="stable")  # each session's rows in order
    health = ordered["boss_health_percentage"].to_numpy(float)
    same = ordered["session_id"].to_numpy()
    restarts = np.r_[False, (health[1:] > health[:-1] + 1e-9) & (same[1:] == same[:-1])]
    counts = pd.Series(restarts.astype(int)).groupby(same).sum()
    return float(counts.median()) + 1.0
