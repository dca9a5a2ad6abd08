"""What the server remembers: games, sessions, every decision and every outcome.

An embedded SQLite database by default (WAL journal, ``synchronous=FULL``: an acknowledged
write survives ``kill -9`` and power loss), or PostgreSQL by URL (``postgresql://...``, driven
by psycopg 3). SQLAlchemy Core, four tables:

==========  =====================================================  =========================
table       holds                                                  key
==========  =====================================================  =========================
games       name, description, vocabulary (JSON), policy, the      game_id
            API key's hash, created_at
sessions    one player's fight session of a game                   (game_id, session_id)
decisions   every move served: situation (JSON), move, policy      seq; unique (game_id,
            version, session, created_at                           action_id)
outcomes    what the game reported for a decision                  seq; unique (game_id,
                                                                   action_id) -> decisions
==========  =====================================================  =========================

``seq`` numbers rows in storage order; :meth:`Storage.lessons` replays outcomes in it.

The hot path (:meth:`Storage.store`: decisions and outcomes of one group commit, in one
transaction) talks to the driver directly (sqlite3 or psycopg, statements prepared once per
dialect by :class:`_SqliteStatements` / :class:`_PostgresStatements`): SQLAlchemy's compilation
and result machinery cost several times the database's own work per commit. Everything else
goes through SQLAlchemy Core.

Errors: every database failure surfaces as :class:`StorageUnavailable` (nothing was stored,
send again). :class:`GameExists`, :class:`UnknownAction` and :class:`RecordRejected` are the
caller's mistakes. A :class:`Storage` is safe to share between threads.

Example::

    storage = Storage("sqlite:///bosslab-serving.db")
    storage.create_schema()
    storage.add_outcome(outcome)  # True: stored now; False: a resend, already stored
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    IntegrityError,
    SQLAlchemyError,
    StatementError,
)
from sqlalchemy.pool import StaticPool

LESSON_PAGE = 1000
"""Rows fetched per query while replaying lessons."""
LOOKUP_CHUNK = 500
"""action_ids looked up per query (SQLite allows 32,766 parameters per statement)."""
SQLITE_BUSY_TIMEOUT_MS = 10_000
PG_CONNECT_TIMEOUT_S = 5


class StorageError(Exception):
    """Base of everything this module raises."""


class StorageUnavailable(StorageError):  # noqa: N818 (the names the web layer codes against)
    """The database failed or could not be reached: nothing was stored; send again."""


class GameExists(StorageError):  # noqa: N818 (the names the web layer codes against)
    """A game with this game_id is already registered."""


class UnknownAction(StorageError):  # noqa: N818 (the names the web layer codes against)
    """An outcome names an action_id that is not a stored decision of its game."""


class RecordRejected(StorageError):  # noqa: N818 (the names the web layer codes against)
    """A record breaks a constraint (unknown game, a decision's action_id stored twice)."""


@dataclass(frozen=True)
class GameRecord:
    """A registered game (``POST /api/v1/games/register``)."""

    game_id: str
    name: str
    description: str
    vocabulary: dict[str, Any]
    """boss_actions, action_types, environments, difficulty_levels (lists of names)."""
    policy: str
    """The bundle name serving the game."""
    api_key_hash: str
    """``serving.auth.hash_api_key`` of the key shown once at registration."""
    created_at: float
    """Seconds since the epoch."""


@dataclass(frozen=True)
class DecisionRecord:
    """One move served to a game (a ``boss_action_response``)."""

    action_id: str
    game_id: str
    session_id: str
    situation: dict[str, Any]
    """What the decision saw (JSON-serialisable): the brain rebuilds its memory key from it."""
    move: str
    policy_version: str
    created_at: float


@dataclass(frozen=True)
class OutcomeRecord:
    """What the game reported about a decision (an ``action_outcome``)."""

    action_id: str
    game_id: str
    outcome: str
    """success, failure or partial."""
    effectiveness_score: float
    damage_dealt: float
    player_hit: bool
    execution_time: float
    created_at: float
    stand_in: DecisionRecord | None = None
    """What to store in place of its decision if the game never got that stored (a decision
    the server answered, then lost in a crash before committing it; the server signed its
    action_id, so it knows it issued it). None: an unknown action_id is refused."""


STAND_IN_VERSION = "(lost: the server stopped before storing this decision)"
"""The policy_version of a stand-in decision. Stand-ins keep their outcomes (never refused as
``unknown_action``) but have no context: lessons and telemetry leave them out."""


@dataclass(frozen=True)
class GameStats:
    """Totals of one game, for ``realtime-stats``."""

    decisions: int
    outcomes: int
    mean_effectiveness: float | None
    """Mean effectiveness_score of the stored outcomes; None before the first."""
    action_mix: dict[str, int] = field(default_factory=dict)
    """Decisions per move."""


metadata = sa.MetaData()
_json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

games = sa.Table(
    "games",
    metadata,
    sa.Column("game_id", sa.String, primary_key=True),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("vocabulary", _json, nullable=False),
    sa.Column("policy", sa.String, nullable=False),
    sa.Column("api_key_hash", sa.String, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
)
sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("game_id", sa.String, sa.ForeignKey("games.game_id"), primary_key=True),
    sa.Column("session_id", sa.String, primary_key=True),
    sa.Column("created_at", sa.Double, nullable=False),
)
decisions = sa.Table(
    "decisions",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("game_id", sa.String, sa.ForeignKey("games.game_id"), nullable=False),
    sa.Column("action_id", sa.String, nullable=False),
    sa.Column("session_id", sa.String, nullable=False),
    sa.Column("situation", _json, nullable=False),
    sa.Column("move", sa.String, nullable=False),
    sa.Column("policy_version", sa.String, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.UniqueConstraint("game_id", "action_id", name="uq_decisions_game_action"),
)
outcomes = sa.Table(
    "outcomes",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("game_id", sa.String, nullable=False),
    sa.Column("action_id", sa.String, nullable=False),
    sa.Column("outcome", sa.String, nullable=False),
    sa.Column("effectiveness_score", sa.Double, nullable=False),
    sa.Column("damage_dealt", sa.Double, nullable=False),
    sa.Column("player_hit", sa.Boolean, nullable=False),
    sa.Column("execution_time", sa.Double, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.UniqueConstraint("game_id", "action_id", name="uq_outcomes_game_action"),
    sa.ForeignKeyConstraint(["game_id", "action_id"], ["decisions.game_id", "decisions.action_id"]),
    sa.Index("ix_outcomes_game_seq", "game_id", "seq"),
)


def normalise_url(url: str) -> sa.URL:
    """``url`` as SQLAlchemy should open it: ``postgresql://`` and ``postgres://`` use
    psycopg 3. Raises ValueError for anything but SQLite and PostgreSQL."""
    try:
        parsed = make_url(url)
    except ArgumentError as error:
        raise ValueError(
            f"database URL {url!r} is not a URL: use sqlite:///PATH or "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        ) from error
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgres", "postgresql"):
        backend = "postgresql"
        parsed = parsed.set(drivername=f"postgresql+{driver or 'psycopg'}")
    if backend not in ("sqlite", "postgresql"):
        raise ValueError(
            f"database backend {backend!r} is not supported: use sqlite:///PATH or "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    return parsed


def _is_memory(url: sa.URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def _make_engine(url: sa.URL) -> Engine:
    if url.get_backend_name() == "postgresql":
        return sa.create_engine(
            url,
            pool_size=10,
            max_overflow=20,
            pool_pre_ping=True,
            pool_timeout=PG_CONNECT_TIMEOUT_S,
            connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S},
        )
    if _is_memory(url):
        engine = sa.create_engine(
            url, poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        Path(str(url.database)).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url,
            pool_size=8,
            max_overflow=16,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        )
    sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL for concurrent readers, FULL sync so a commit is on disk when it returns."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@contextlib.contextmanager
def _database_errors(doing: str, dbapi: Any = None) -> Iterator[None]:
    """Turn any database failure into :class:`StorageUnavailable` naming what failed, and a
    record the database cannot take (a constraint, a value that is not JSON) into
    :class:`RecordRejected`. ``dbapi``: the driver module, for errors raised by its own
    connections (the hot path bypasses SQLAlchemy)."""
    driver_error = dbapi.Error if dbapi is not None else ()
    try:
        yield
    except StorageError:
        raise
    except (TypeError, ValueError, StatementError) as error:
        if isinstance(error, DBAPIError) and not isinstance(error, (IntegrityError, DataError)):
            raise _unavailable(doing, error) from error
        # A constraint, or a value the database cannot take (not JSON, NaN in JSONB...).
        raise _rejected(doing, error) from error
    except SQLAlchemyError as error:
        raise _unavailable(doing, error) from error
    except driver_error as error:
        if isinstance(error, (dbapi.IntegrityError, dbapi.DataError)):
            raise _rejected(doing, error) from error
        raise _unavailable(doing, error) from error


def _rejected(doing: str, error: Exception) -> RecordRejected:
    return RecordRejected(
        f"a record was rejected while {doing} ({_first_line(error)}); nothing was stored"
    )


def _unavailable(doing: str, error: Exception) -> StorageUnavailable:
    cause = getattr(error, "orig", None) or error
    return StorageUnavailable(
        f"storage unavailable while {doing} ({type(cause).__name__}: {_first_line(error)}); "
        "nothing was stored: send again"
    )


def _first_line(error: Exception) -> str:
    """The database's own message, first line only (no SQL, no parameters)."""
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


_DECISION_COLUMNS = "game_id, action_id, session_id, situation, move, policy_version, created_at"
_OUTCOME_COLUMNS = ("game_id, action_id, outcome, effectiveness_score, damage_dealt, player_hit, "
                    "execution_time, created_at")


class _SqliteStatements:
    """The hot path's statements for sqlite3 (``?`` parameters). sqlite3 lets go of the GIL
    for every step of a statement, and a busy event loop makes the writer wait for it each
    time, so a batch is a few multi-row statements whose answers are one row, not one statement
    or row per record."""

    rows_per_insert = 400  # 8 parameters a row: well under SQLite's 32,766
    decisions_into = f"INSERT INTO decisions ({_DECISION_COLUMNS}) VALUES "
    outcomes_into = f"INSERT INTO outcomes ({_OUTCOME_COLUMNS}) VALUES "

    @staticmethod
    def begin(cursor: Any) -> None:
        """Take the write lock at once: a transaction that reads, then writes, must not find
        another writer's commit in between (SQLite would refuse it, not wait)."""
        cursor.execute("BEGIN IMMEDIATE")

    def insert_decisions(self, cursor: Any, rows: Sequence[tuple[Any, ...]]) -> None:
        self._insert_rows(cursor, self.decisions_into, rows)

    def known(self, cursor: Any, game_id: str, action_ids: Sequence[str]) -> list[str]:
        """Which of ``action_ids`` (distinct) are stored decisions of ``game_id``."""
        return self._stored(cursor, "decisions", game_id, action_ids, expect_all=True)

    def insert_outcomes(
        self, cursor: Any, rows: Sequence[tuple[Any, ...]]
    ) -> set[tuple[str, str]]:
        """Insert outcome rows (distinct keys) not stored yet; the (game_id, action_id) pairs
        inserted. Within the transaction's write lock, what is not stored now is new."""
        by_game: dict[str, list[str]] = {}
        for row in rows:
            by_game.setdefault(row[0], []).append(row[1])
        stored = {(game_id, action_id) for game_id, action_ids in by_game.items()
                  for chunk in _chunks(action_ids, LOOKUP_CHUNK)
                  for action_id in self._stored(cursor, "outcomes", game_id, chunk,
                                                expect_all=False)}
        fresh = [row for row in rows if (row[0], row[1]) not in stored]
        self._insert_rows(cursor, self.outcomes_into, fresh)
        return {(row[0], row[1]) for row in fresh}

    def _insert_rows(self, cursor: Any, into: str, rows: Sequence[tuple[Any, ...]]) -> None:
        for start in range(0, len(rows), self.rows_per_insert):
            chunk = rows[start:start + self.rows_per_insert]
            row_marks = "(" + ", ".join("?" * len(chunk[0])) + ")"
            cursor.execute(into + ", ".join([row_marks] * len(chunk)),
                           [value for row in chunk for value in row])

    @staticmethod
    def _stored(cursor: Any, table: str, game_id: str, action_ids: Sequence[str], *,
                expect_all: bool) -> list[str]:
        """Which of ``action_ids`` (distinct) ``table`` holds for ``game_id``: first counted
        (one row), then listed only when the count is neither the expected all nor none."""
        marks = ", ".join("?" * len(action_ids))
        where = f"FROM {table} WHERE game_id = ? AND action_id IN ({marks})"
        params = (game_id, *action_ids)
        count = cursor.execute(f"SELECT count(*) {where}", params).fetchone()[0]
        if count == (len(action_ids) if expect_all else 0):
            return list(action_ids) if expect_all else []
        return [action_id for (action_id,) in cursor.execute(f"SELECT action_id {where}", params)]


class _PostgresStatements:
    """The hot path's statements for psycopg 3 (``%s`` parameters, one round trip per batch)."""

    insert_decision = (f"INSERT INTO decisions ({_DECISION_COLUMNS}) "
                       "VALUES (%s, %s, %s, %s::jsonb, %s, %s, %s)")
    insert_outcome = (f"INSERT INTO outcomes ({_OUTCOME_COLUMNS}) "
                      "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                      "ON CONFLICT DO NOTHING RETURNING game_id, action_id")

    @staticmethod
    def begin(cursor: Any) -> None:
        """psycopg opens the transaction with the first statement."""

    def insert_decisions(self, cursor: Any, rows: Sequence[tuple[Any, ...]]) -> None:
        cursor.executemany(self.insert_decision, rows)  # pipelined

    def known(self, cursor: Any, game_id: str, action_ids: Sequence[str]) -> list[str]:
        cursor.execute("SELECT action_id FROM decisions WHERE game_id = %s AND "
                       "action_id = ANY(%s)", (game_id, list(action_ids)))
        return [action_id for (action_id,) in cursor.fetchall()]

    def insert_outcomes(
        self, cursor: Any, rows: Sequence[tuple[Any, ...]]
    ) -> set[tuple[str, str]]:
        inserted: set[tuple[str, str]] = set()
        if not rows:
            return inserted
        cursor.executemany(self.insert_outcome, rows, returning=True)  # pipelined
        while True:
            for game_id, action_id in cursor.fetchall():
                inserted.add((game_id, action_id))
            if not cursor.nextset():
                return inserted


def _decision_params(record: DecisionRecord) -> tuple[Any, ...]:
    return (record.game_id, record.action_id, record.session_id, json.dumps(record.situation),
            record.move, record.policy_version, record.created_at)


def _outcome_params(record: OutcomeRecord) -> tuple[Any, ...]:
    return (record.game_id, record.action_id, record.outcome, record.effectiveness_score,
            record.damage_dealt, record.player_hit, record.execution_time, record.created_at)


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    return (items[start:start + size] for start in range(0, len(items), size))


class Storage:
    """Games, sessions, decisions and outcomes in SQLite or PostgreSQL. Thread-safe."""

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        self.dialect = self.url.get_backend_name()
        self._engine = _make_engine(self.url)
        self._dbapi = self._engine.dialect.loaded_dbapi
        self._statements = (_PostgresStatements() if self.dialect == "postgresql"
                            else _SqliteStatements())
        # One shared connection (in-memory SQLite) must not be used by two threads at once.
        self._serial = threading.RLock() if _is_memory(self.url) else None

    def __repr__(self) -> str:
        return f"Storage({self.url.render_as_string(hide_password=True)!r})"

    @property
    def shareable(self) -> bool:
        """Whether another process can open this database (not an in-memory SQLite one)."""
        return not _is_memory(self.url)

    @contextlib.contextmanager
    def _transaction(self, doing: str) -> Iterator[Connection]:
        """A connection in a transaction, committed on success; failures become
        :class:`StorageUnavailable`."""
        lock = self._serial if self._serial is not None else contextlib.nullcontext()
        with lock, _database_errors(doing), self._engine.begin() as connection:
            yield connection

    @contextlib.contextmanager
    def _driver_transaction(self, doing: str) -> Iterator[Any]:
        """A driver cursor in a transaction, committed on success (the hot path); failures
        become :class:`StorageUnavailable` or :class:`RecordRejected`."""
        lock = self._serial if self._serial is not None else contextlib.nullcontext()
        with lock, _database_errors(doing, self._dbapi):
            connection = self._engine.raw_connection()
            try:
                cursor = connection.cursor()
                self._statements.begin(cursor)
                yield cursor
                connection.commit()
            except BaseException:
                _roll_back(connection)
                raise
            finally:
                connection.close()  # back to the pool

    def _insert(self, table: sa.Table) -> Any:
        """An INSERT that can say ON CONFLICT DO NOTHING in this dialect. (Whether it inserted
        is read from RETURNING: psycopg reports no rowcount for it.)"""
        return postgresql.insert(table) if self.dialect == "postgresql" else sqlite.insert(table)

    def create_schema(self) -> None:
        """Create the tables and indexes that do not exist yet."""
        with self._transaction("creating the schema") as connection:
            metadata.create_all(connection, checkfirst=True)

    def ping(self) -> None:
        """Raise :class:`StorageUnavailable` unless the database answers a query."""
        with self._transaction("checking the database") as connection:
            connection.execute(sa.select(1))

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    # --- games and sessions -----------------------------------------------------------------

    def add_game(self, record: GameRecord) -> None:
        """Store a new game; raises :class:`GameExists` if its game_id is taken."""
        statement = (
            self._insert(games)
            .values(**_row(record))
            .on_conflict_do_nothing()
            .returning(games.c.game_id)
        )
        with self._transaction("registering a game") as connection:
            inserted = connection.execute(statement).first() is not None
        if not inserted:
            raise GameExists(f"game {record.game_id!r} is already registered: pick another game_id")

    def get_game(self, game_id: str) -> GameRecord | None:
        """The game registered as ``game_id``, or None."""
        with self._transaction("reading a game") as connection:
            row = connection.execute(sa.select(games).where(games.c.game_id == game_id)).first()
        return None if row is None else GameRecord(**row._mapping)

    def game_ids(self) -> list[str]:
        """Every registered game, oldest first."""
        query = sa.select(games.c.game_id).order_by(games.c.created_at, games.c.game_id)
        with self._transaction("listing games") as connection:
            return list(connection.execute(query).scalars())

    def add_session(self, game_id: str, session_id: str, created_at: float | None = None) -> None:
        """Record a session of a game (idempotent); raises :class:`RecordRejected` for an
        unregistered game. ``created_at`` defaults to now."""
        started = time.time() if created_at is None else created_at
        statement = (
            self._insert(sessions)
            .values(game_id=game_id, session_id=session_id, created_at=started)
            .on_conflict_do_nothing()
        )
        with self._transaction("recording a session") as connection:
            self._require_game(connection, game_id)
            connection.execute(statement)

    @staticmethod
    def _require_game(connection: Connection, game_id: str) -> None:
        query = sa.select(games.c.game_id).where(games.c.game_id == game_id)
        if connection.execute(query).first() is None:
            raise RecordRejected(f"game {game_id!r} is not registered: register it first")

    # --- decisions and outcomes -------------------------------------------------------------

    def add_decisions(self, records: Sequence[DecisionRecord]) -> None:
        """Store decisions in one transaction (all or none); committed when this returns.

        Raises :class:`RecordRejected` if one names an unregistered game or repeats a stored
        action_id (then none is stored), :class:`StorageUnavailable` if the database fails.
        """
        self.store(records, ())

    def get_decision(self, game_id: str, action_id: str) -> DecisionRecord | None:
        """The decision ``action_id`` of ``game_id``, or None."""
        query = sa.select(*_decision_columns()).where(
            decisions.c.game_id == game_id, decisions.c.action_id == action_id
        )
        with self._transaction("reading a decision") as connection:
            row = connection.execute(query).first()
        return None if row is None else DecisionRecord(**row._mapping)

    def add_outcome(self, record: OutcomeRecord) -> bool:
        """Store an outcome, committed before this returns. True: newly stored; False: its
        action_id already has an outcome (a resend; nothing changed). Raises
        :class:`UnknownAction` if the action_id is not a stored decision of the game."""
        result = self.add_outcomes([record])[0]
        if isinstance(result, UnknownAction):
            raise result
        return result

    def add_outcomes(self, records: Sequence[OutcomeRecord]) -> list[bool | UnknownAction]:
        """Store outcomes in one transaction (group commit). One result per record, in order:
        True (stored), False (duplicate, including a repeat within the batch) or an
        :class:`UnknownAction` (not stored). Raises :class:`StorageUnavailable` for the whole
        batch if the database fails (then nothing was stored)."""
        return self.store((), records)

    def store(
        self, decisions: Sequence[DecisionRecord], outcomes: Sequence[OutcomeRecord]
    ) -> list[bool | UnknownAction]:
        """Store decisions, then outcomes, in one transaction: one group commit of both, so a
        decision is durable before or together with any outcome that refers to it. Returns one
        result per outcome as :meth:`add_outcomes`. Raises :class:`RecordRejected` if a
        decision is rejected and :class:`StorageUnavailable` if the database fails (then
        nothing of either was stored).

        Statements: the decisions' insert, a lookup of the outcomes' decisions per game, the
        outcomes' insert (multi-row on SQLite, pipelined on PostgreSQL), the commit.
        """
        if not decisions and not outcomes:
            return []
        with self._driver_transaction("storing decisions and outcomes") as cursor:
            if decisions:
                rows = [_decision_params(record) for record in decisions]
                self._statements.insert_decisions(cursor, rows)
            return self._store_outcomes(cursor, outcomes) if outcomes else []

    def _store_outcomes(
        self, cursor: Any, records: Sequence[OutcomeRecord]
    ) -> list[bool | UnknownAction]:
        """Insert the outcomes of known decisions (the first of each action_id); one result
        per record."""
        keys = [(record.game_id, record.action_id) for record in records]
        known = self._known_decisions(cursor, keys)
        stand_ins = {key: record.stand_in for key, record in zip(keys, records, strict=True)
                     if key not in known and record.stand_in is not None}
        if stand_ins:
            self._statements.insert_decisions(
                cursor, [_decision_params(record) for record in stand_ins.values()])
            known.update(stand_ins)
        first: dict[tuple[str, str], int] = {}
        for index, key in enumerate(keys):
            first.setdefault(key, index)
        fresh = [_outcome_params(records[index]) for key, index in first.items() if key in known]
        inserted = self._statements.insert_outcomes(cursor, fresh)
        return [
            _unknown_action(record) if key not in known else (key in inserted and first[key] == i)
            for i, (key, record) in enumerate(zip(keys, records, strict=True))
        ]

    def _known_decisions(
        self, cursor: Any, keys: Iterable[tuple[str, str]]
    ) -> set[tuple[str, str]]:
        """Which (game_id, action_id) pairs are stored decisions."""
        by_game: dict[str, list[str]] = {}
        for game_id, action_id in set(keys):
            by_game.setdefault(game_id, []).append(action_id)
        known: set[tuple[str, str]] = set()
        for game_id, action_ids in by_game.items():
            for chunk in _chunks(action_ids, LOOKUP_CHUNK):
                known.update((game_id, a) for a in self._statements.known(cursor, game_id, chunk))
        return known

    def lessons(self, game_id: str) -> Iterator[tuple[DecisionRecord, OutcomeRecord]]:
        """Every stored outcome of a game with its decision, in storage order (outcomes of
        stand-in decisions left out: they have no context to learn from).

        Reads in pages of ``LESSON_PAGE`` rows, each in its own short transaction, so a long
        replay holds no connection or lock between pages.
        """
        last_seq = 0
        while True:
            page = self._lesson_page(game_id, last_seq)
            if not page:
                return
            for seq, decision, outcome in page:
                last_seq = seq
                yield decision, outcome

    def _lesson_page(
        self, game_id: str, after_seq: int
    ) -> list[tuple[int, DecisionRecord, OutcomeRecord]]:
        decision_columns = [column.label(f"d_{column.name}") for column in _decision_columns()]
        query = (
            sa.select(outcomes, *decision_columns)
            .join(
                decisions,
                sa.and_(
                    decisions.c.game_id == outcomes.c.game_id,
                    decisions.c.action_id == outcomes.c.action_id,
                ),
            )
            .where(outcomes.c.game_id == game_id, outcomes.c.seq > after_seq,
                   decisions.c.policy_version != STAND_IN_VERSION)
            .order_by(outcomes.c.seq)
            .limit(LESSON_PAGE)
        )
        with self._transaction("reading lessons") as connection:
            rows = connection.execute(query).all()
        return [_lesson(row._mapping) for row in rows]

    def stats(self, game_id: str) -> GameStats:
        """Decisions, outcomes, mean effectiveness and decisions per move of a game."""
        mix_query = (
            sa.select(decisions.c.move, sa.func.count())
            .where(decisions.c.game_id == game_id)
            .group_by(decisions.c.move)
        )
        outcome_query = sa.select(
            sa.func.count(), sa.func.avg(outcomes.c.effectiveness_score)
        ).where(outcomes.c.game_id == game_id)
        with self._transaction("reading stats") as connection:
            mix = {move: int(count) for move, count in connection.execute(mix_query)}
            outcome_count, mean = connection.execute(outcome_query).one()
        return GameStats(
            decisions=sum(mix.values()),
            outcomes=int(outcome_count),
            mean_effectiveness=None if mean is None else float(mean),
            action_mix=mix,
        )


def _roll_back(connection: Any) -> None:
    """Undo a failed transaction; a connection that cannot even roll back is discarded."""
    try:
        connection.rollback()
    except Exception:  # the connection is broken: the pool must not hand it out again
        connection.invalidate()


def _unknown_action(record: OutcomeRecord) -> UnknownAction:
    return UnknownAction(
        f"action_id {record.action_id!r} was never issued to game {record.game_id!r}: "
        "send the action_id of a boss_action_response this game received"
    )


def _row(record: GameRecord | DecisionRecord | OutcomeRecord) -> dict[str, Any]:
    return dict(record.__dict__)


def _decision_columns() -> list[sa.Column[Any]]:
    return [column for column in decisions.c if column.name != "seq"]


def _lesson(row: Any) -> tuple[int, DecisionRecord, OutcomeRecord]:
    decision = DecisionRecord(
        **{column.name: row[f"d_{column.name}"] for column in _decision_columns()}
    )
    outcome = OutcomeRecord(
        **{column.name: row[column.name] for column in outcomes.c if column.name != "seq"}
    )
    return row["seq"], decision, outcome
