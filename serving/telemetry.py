"""``python -m serving export-telemetry``: every served decision with its outcome, as a table.

    python -m serving export-telemetry --database-url sqlite:///bosslab-serving.db \\
        --out telemetry.parquet [--game GAME_ID]

One row per decision (in storage order), joined with the outcome the game reported for it
(outcome columns empty when none was reported). Columns (:data:`COLUMNS`):

=======================  ==================================================================
column                   what
=======================  ==================================================================
game_id, session_id      the game and the player's session
action_id                the decision's id (``boss_action_response``)
time                     when the decision was served, seconds since the epoch
frequent_actions,        the ``player_context`` of the request, flattened: the two lists as
attack_patterns          comma-separated names (``light_attack,dodge``; empty: none)
dodge_frequency ...      the other ``player_context`` fields (PROTOCOL.md), one column each
boss_health_percentage,  the rest of the request (``environment`` and ``distance`` come from
battle_phase,            ``environment_factors``: empty / 3.0 when the game sent none)
difficulty, environment,
distance
boss_move                the move served
policy_version           the policy that chose it
outcome ...              ``action_outcome``: outcome, effectiveness_score, damage_dealt,
execution_time           player_hit, execution_time
=======================  ==================================================================

``.parquet`` needs pyarrow (installed with the lab, not with ``.[serve]``); ``.csv`` needs
nothing. This module reads the tables of :mod:`serving.storage` with SQLAlchemy Core and never
writes to them.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from envs.observation import PlayerContext
from serving.storage import STAND_IN_VERSION, decisions, games, normalise_url, outcomes

LIST_FIELDS = ("frequent_actions", "attack_patterns")
"""player_context fields that are lists: written as comma-separated names."""
CONTEXT_COLUMNS = tuple(f.name for f in fields(PlayerContext))
REQUEST_COLUMNS = ("boss_health_percentage", "battle_phase", "difficulty", "environment",
                   "distance")
OUTCOME_COLUMNS = ("outcome", "effectiveness_score", "damage_dealt", "player_hit",
                   "execution_time")
COLUMNS = ("game_id", "session_id", "action_id", "time", *CONTEXT_COLUMNS, *REQUEST_COLUMNS,
           "boss_move", "policy_version", *OUTCOME_COLUMNS)
"""The export's columns, in order."""
FORMATS = (".parquet", ".csv")
PAGE = 5000
"""Rows fetched from the database at a time."""


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote."""

    path: Path
    rows: int
    """Decisions written (one row each)."""
    with_outcome: int
    """Rows whose decision has a reported outcome."""
    sessions: int
    games: tuple[str, ...]


def export_telemetry(database_url: str, out: str | Path,
                     game_id: str | None = None) -> ExportSummary:
    """Write every decision (of ``game_id``, or of every game) with its outcome to ``out``
    (``.parquet`` or ``.csv``). Raises ValueError for a bad path, URL or unknown game."""
    path = Path(out)
    writer = _writer_for(path)
    rows = read_telemetry(database_url, game_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer(path, rows)
    return ExportSummary(
        path=path, rows=len(rows),
        with_outcome=sum(1 for row in rows if row["outcome"] is not None),
        sessions=len({(row["game_id"], row["session_id"]) for row in rows}),
        games=tuple(dict.fromkeys(row["game_id"] for row in rows)))


def read_telemetry(database_url: str, game_id: str | None = None) -> list[dict[str, Any]]:
    """The export's rows (:data:`COLUMNS`), read from the server's database."""
    engine = open_database(database_url)
    try:
        known = _known_games(engine)
        if game_id is not None and game_id not in known:
            raise ValueError(f"game {game_id!r} is not in {database_url}: it holds "
                             f"{', '.join(known) or 'no game'}. Pass one of them to --game, or "
                             f"leave --game out to export every game.")
        return list(_rows(engine, game_id))
    except SQLAlchemyError as error:
        raise ValueError(f"cannot read {database_url}: {type(error).__name__}: "
                         f"{str(error).splitlines()[0][:200]}") from error
    finally:
        engine.dispose()


def open_database(database_url: str) -> Engine:
    """A read-only use of the server's database (SQLite or PostgreSQL, as the server takes).

    A SQLite file that does not exist is an error (SQLite would create an empty one)."""
    url = normalise_url(database_url)
    if url.get_backend_name() == "sqlite" and not Path(str(url.database or "")).is_file():
        raise ValueError(f"no SQLite database at {url.database!r}: pass the URL the server "
                         f"ran with (BOSSLAB_DATABASE_URL, default sqlite:///bosslab-serving.db "
                         f"in the server's working directory).")
    return sa.create_engine(url)


def _known_games(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        if not sa.inspect(connection).has_table("decisions"):
            raise ValueError("the database has no BossLab tables: point --database-url at the "
                             "database a server wrote (its BOSSLAB_DATABASE_URL).")
        return list(connection.execute(sa.select(games.c.game_id).order_by(games.c.game_id))
                    .scalars())


def _rows(engine: Engine, game_id: str | None) -> Iterator[dict[str, Any]]:
    """Decisions joined with their outcomes, page by page in storage order."""
    last = 0
    while True:
        with engine.connect() as connection:
            page = connection.execute(_page_query(game_id, last)).all()
        if not page:
            return
        for row in page:
            last = row.seq
            yield flatten(dict(row._mapping))


def _page_query(game_id: str | None, after_seq: int) -> sa.Select[Any]:
    joined = decisions.outerjoin(outcomes, sa.and_(
        outcomes.c.game_id == decisions.c.game_id, outcomes.c.action_id == decisions.c.action_id))
    query = (sa.select(decisions.c.seq, decisions.c.game_id, decisions.c.session_id,
                       decisions.c.action_id, decisions.c.created_at, decisions.c.situation,
                       decisions.c.move, decisions.c.policy_version,
                       *(outcomes.c[name] for name in OUTCOME_COLUMNS))
             .select_from(joined)
             .where(decisions.c.seq > after_seq, decisions.c.policy_version != STAND_IN_VERSION)
             .order_by(decisions.c.seq).limit(PAGE))
    if game_id is not None:
        query = query.where(decisions.c.game_id == game_id)
    return query


def flatten(row: Mapping[str, Any]) -> dict[str, Any]:
    """One joined database row as an export row (:data:`COLUMNS`)."""
    situation = row["situation"] or {}
    player = {**_default_context(), **(situation.get("player") or {})}
    context = {name: ",".join(player[name]) if name in LIST_FIELDS else player[name]
               for name in CONTEXT_COLUMNS}
    request = {"boss_health_percentage": situation.get("boss_health_percentage"),
               "battle_phase": situation.get("battle_phase"),
               "difficulty": situation.get("difficulty"),
               "environment": situation.get("environment"),
               "distance": situation.get("distance", 3.0)}
    outcome = {name: row[name] for name in OUTCOME_COLUMNS}
    if outcome["player_hit"] is not None:
        outcome["player_hit"] = bool(outcome["player_hit"])
    return {"game_id": row["game_id"], "session_id": row["session_id"],
            "action_id": row["action_id"], "time": row["created_at"], **context, **request,
            "boss_move": row["move"], "policy_version": row["policy_version"], **outcome}


def _default_context() -> dict[str, Any]:
    return {f.name: getattr(PlayerContext(), f.name) for f in fields(PlayerContext)}


def _writer_for(path: Path) -> Any:
    if path.suffix == ".csv":
        return write_csv
    if path.suffix == ".parquet":
        _require_pyarrow()
        return write_parquet
    raise ValueError(f"--out {path}: unknown format {path.suffix or '(no suffix)'!r}; end the "
                     f"file name with {' or '.join(FORMATS)}.")


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401, PLC0415 (optional: only Parquet needs it)
    except ImportError as error:
        raise ValueError("writing Parquet needs pyarrow, which the server install leaves out: "
                         "pip install pyarrow (the lab install has it), or write CSV instead "
                         "(--out telemetry.csv).") from error


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """CSV with a header of :data:`COLUMNS`; empty cells for missing values."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def write_parquet(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Parquet with a fixed schema (so an empty export still has every column and type)."""
    import pyarrow as pa  # noqa: PLC0415 (optional dependency)
    import pyarrow.parquet as pq  # noqa: PLC0415

    schema = pa.schema([(name, _arrow_type(pa, name)) for name in COLUMNS])
    table = pa.Table.from_pylist(list(rows), schema=schema)
    pq.write_table(table, path)


def _arrow_type(pa: Any, name: str) -> Any:
    integers = ("recent_deaths", "equipment_level")
    floats = ("time", "dodge_frequency", "reaction_time", "health_percentage",
              "session_duration", "boss_health_percentage", "distance", "effectiveness_score",
              "damage_dealt", "execution_time")
    if name in integers:
        return pa.int64()
    if name in floats:
        return pa.float64()
    return pa.bool_() if name == "player_hit" else pa.string()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m serving export-telemetry",
        description="Export every served decision with its outcome (one row per decision).")
    parser.add_argument("--database-url", required=True,
                        help="the server's database (BOSSLAB_DATABASE_URL), e.g. "
                             "sqlite:///bosslab-serving.db")
    parser.add_argument("--out", required=True, help="FILE.parquet or FILE.csv")
    parser.add_argument("--game", default=None, help="export one game_id only (default: all)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``export-telemetry`` command; returns the exit code (2: a mistake, explained)."""
    args = parse_args(argv)
    try:
        summary = export_telemetry(args.database_url, args.out, args.game)
    except ValueError as error:
        print(f"export-telemetry: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {summary.rows} decisions ({summary.with_outcome} with an outcome) of "
          f"{summary.sessions} sessions, games {', '.join(summary.games) or '-'}, to "
          f"{summary.path}")
    return 0
