"""Storage and group commit, on SQLite and on a real PostgreSQL server.

The PostgreSQL cases use ``BOSSLAB_TEST_POSTGRES_URL`` (default: the local server's
database ``test`` as user ``postgres``, else ``root``), each test in a schema of its own so
parallel workers never meet; they skip, saying why, when no server answers.

Run as a script (``python -m tests.test_storage URL MODE``) this module is the crash child of
:func:`test_acknowledged_outcomes_survive_kill_9`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from serving import storage as storage_module
from serving.loop_writer import LoopWriter
from serving.storage import (
    STAND_IN_VERSION,
    DecisionRecord,
    GameExists,
    GameRecord,
    OutcomeRecord,
    RecordRejected,
    Storage,
    StorageUnavailable,
    UnknownAction,
    normalise_url,
)
from serving.telemetry import read_telemetry
from serving.writer import StorageWriter

REPO = Path(__file__).resolve().parents[1]
POSTGRES_CANDIDATES = (
    [os.environ["BOSSLAB_TEST_POSTGRES_URL"]]
    if os.environ.get("BOSSLAB_TEST_POSTGRES_URL")
    else [
        "postgresql+psycopg://postgres@127.0.0.1:5432/test",
        "postgresql+psycopg://root@127.0.0.1:5432/test",
    ]
)
CRASH_GAME = "crash-game"
CREATED_AT = 1_700_000_000.123456


def _find_postgres() -> tuple[str | None, str]:
    """The first PostgreSQL URL that answers, or None and why none did."""
    try:
        import psycopg  # noqa: PLC0415 (optional: only these tests need it)
    except ImportError:
        return None, "psycopg is not installed (pip install 'psycopg[binary]')"
    problems = []
    for url in POSTGRES_CANDIDATES:
        plain = normalise_url(url).set(drivername="postgresql").render_as_string(False)
        try:
            psycopg.connect(plain, connect_timeout=2).close()
        except psycopg.Error as error:
            problems.append(f"{url} ({type(error).__name__})")
            continue
        return url, ""
    return None, (
        f"no PostgreSQL server answers at {', '.join(problems)}; "
        "set BOSSLAB_TEST_POSTGRES_URL to run these tests"
    )


@pytest.fixture(scope="session")
def postgres_server() -> tuple[str | None, str]:
    return _find_postgres()


@pytest.fixture
def postgres_url(postgres_server: tuple[str | None, str]) -> Iterator[str]:
    """A URL whose connections live in a fresh schema, dropped after the test."""
    server, problem = postgres_server
    if server is None:
        pytest.skip(problem)
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(normalise_url(server))
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield f"{server}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'serving.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def storage(database_url: str) -> Iterator[Storage]:
    opened = Storage(database_url)
    opened.create_schema()
    yield opened
    opened.close()


def _game(game_id: str = "game-a") -> GameRecord:
    return GameRecord(
        game_id=game_id,
        name="Knight's Keep",
        description="a test game",
        vocabulary={"boss_actions": ["slash", "slam"], "difficulty_levels": ["normal"]},
        policy="knight",
        api_key_hash="scrypt$hash",
        created_at=CREATED_AT,
    )


def _decision(action_id: str, game_id: str = "game-a", move: str = "slash") -> DecisionRecord:
    return DecisionRecord(
        action_id=action_id,
        game_id=game_id,
        session_id="s1",
        situation={"player": {"dodge_frequency": 0.25, "frequent_actions": ["dodge"]}},
        move=move,
        policy_version="v1",
        created_at=CREATED_AT,
    )


def _outcome(action_id: str, game_id: str = "game-a", score: float = 0.5) -> OutcomeRecord:
    return OutcomeRecord(
        action_id=action_id,
        game_id=game_id,
        outcome="success",
        effectiveness_score=score,
        damage_dealt=12.5,
        player_hit=True,
        execution_time=0.75,
        created_at=time.time(),
    )


def _with_game(storage: Storage, *action_ids: str, game_id: str = "game-a") -> None:
    storage.add_game(_game(game_id))
    storage.add_session(game_id, "s1")
    storage.add_decisions([_decision(action_id, game_id) for action_id in action_ids])


# --- records --------------------------------------------------------------------------------


def test_game_round_trip_and_duplicate(storage: Storage) -> None:
    game = _game()
    storage.add_game(game)
    assert storage.get_game("game-a") == game
    assert storage.get_game("nobody") is None
    with pytest.raises(GameExists, match="game-a"):
        storage.add_game(_game())
    storage.add_game(_game("game-b"))
    assert storage.game_ids() == ["game-a", "game-b"]


def test_sessions_are_idempotent_and_need_a_game(storage: Storage) -> None:
    storage.add_game(_game())
    storage.add_session("game-a", "s1")
    storage.add_session("game-a", "s1")
    with pytest.raises(RecordRejected, match="not registered"):
        storage.add_session("nobody", "s1")


def test_decisions_round_trip(storage: Storage) -> None:
    _with_game(storage, "a1", "a2")
    assert storage.get_decision("game-a", "a1") == _decision("a1")
    assert storage.get_decision("game-a", "a2") == _decision("a2")
    assert storage.get_decision("game-a", "missing") is None
    assert storage.get_decision("other-game", "a1") is None


def test_a_rejected_decision_batch_stores_nothing(storage: Storage) -> None:
    _with_game(storage, "a1")
    with pytest.raises(RecordRejected):
        storage.add_decisions([_decision("fresh"), _decision("a1")])
    with pytest.raises(RecordRejected):
        storage.add_decisions([_decision("other", game_id="nobody")])
    assert storage.get_decision("game-a", "fresh") is None
    assert storage.stats("game-a").decisions == 1


def test_a_situation_that_is_not_json_is_rejected(storage: Storage) -> None:
    _with_game(storage, "a1")
    unstorable = dataclasses.replace(_decision("a2"), situation={"when": object()})
    with pytest.raises(RecordRejected, match="not JSON serializable"):
        storage.add_decisions([unstorable])
    assert storage.get_decision("game-a", "a2") is None


def test_outcome_is_stored_once(storage: Storage) -> None:
    _with_game(storage, "a1")
    assert storage.add_outcome(_outcome("a1", score=0.9)) is True
    assert storage.add_outcome(_outcome("a1", score=0.1)) is False
    assert storage.add_outcomes([_outcome("a1")]) == [False]
    [(decision, outcome)] = list(storage.lessons("game-a"))
    assert decision.action_id == "a1" and outcome.effectiveness_score == 0.9


def test_outcome_for_an_action_never_issued_is_refused(storage: Storage) -> None:
    _with_game(storage, "a1")
    _with_game(storage, "b1", game_id="game-b")
    with pytest.raises(UnknownAction, match="never issued"):
        storage.add_outcome(_outcome("nope"))
    with pytest.raises(UnknownAction):
        storage.add_outcome(_outcome("b1", game_id="game-a"))  # another game's action
    assert storage.stats("game-a").outcomes == 0


def test_outcome_batch_reports_each_record(storage: Storage) -> None:
    _with_game(storage, "a1", "a2")
    results = storage.add_outcomes([_outcome("a1"), _outcome("zz"), _outcome("a1"), _outcome("a2")])
    assert results[0] is True and results[2] is False and results[3] is True
    assert isinstance(results[1], UnknownAction)


def test_large_mixed_batch_stores_each_new_outcome_once(storage: Storage) -> None:
    """More records than one multi-row statement or lookup holds, mixing new outcomes,
    outcomes stored before, repeats within the batch and unknown actions."""
    action_ids = [f"a{i}" for i in range(1200)]
    _with_game(storage, *action_ids)
    storage.add_outcomes([_outcome(a) for a in action_ids[::3]])  # stored before
    batch = [_outcome(a) for a in action_ids] + [_outcome("a1"), _outcome("nope")]
    results = storage.add_outcomes(batch)
    assert results[:1200] == [i % 3 != 0 for i in range(1200)]
    assert results[1200] is False and isinstance(results[1201], UnknownAction)
    assert storage.stats("game-a").outcomes == 1200
    assert len(list(storage.lessons("game-a"))) == 1200


def test_a_stand_in_keeps_the_outcome_of_a_lost_decision_out_of_lessons_and_telemetry(
    storage: Storage, database_url: str
) -> None:
    _with_game(storage, "a1")
    stand_in = dataclasses.replace(_decision("lost"), situation={},
                                   policy_version=STAND_IN_VERSION)
    results = storage.add_outcomes([
        dataclasses.replace(_outcome("lost"), stand_in=stand_in),
        _outcome("a1"),
        _outcome("never"),  # no stand-in: an action the server never issued
    ])
    assert results[:2] == [True, True] and isinstance(results[2], UnknownAction)
    again = dataclasses.replace(_outcome("lost", score=0.9), stand_in=stand_in)
    assert storage.add_outcomes([again, _outcome("lost")]) == [False, False]
    assert storage.stats("game-a").outcomes == 2
    assert [d.action_id for d, _ in storage.lessons("game-a")] == ["a1"]
    assert [row["action_id"] for row in read_telemetry(database_url)] == ["a1"]


def test_lessons_replay_in_storage_order_across_pages(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage_module, "LESSON_PAGE", 3)
    ids = [f"a{i}" for i in range(10)]
    _with_game(storage, *ids)
    _with_game(storage, "b1", game_id="game-b")
    storage.add_outcome(_outcome("b1", game_id="game-b"))
    order = ids[::-1][:4] + ids[:6]  # outcomes arrive in another order than decisions
    for index, action_id in enumerate(order):
        storage.add_outcome(_outcome(action_id, score=index / 10))
    replay = list(storage.lessons("game-a"))
    assert [decision.action_id for decision, _ in replay] == order
    assert all(decision.action_id == outcome.action_id for decision, outcome in replay)
    assert [outcome.effectiveness_score for _, outcome in replay] == [i / 10 for i in range(10)]
    assert list(storage.lessons("nobody")) == []


def test_stats(storage: Storage) -> None:
    _with_game(storage, "a1", "a2")
    storage.add_decisions([_decision("a3", move="slam")])
    assert storage.stats("game-a").mean_effectiveness is None
    storage.add_outcome(_outcome("a1", score=0.2))
    storage.add_outcome(_outcome("a3", score=0.6))
    stats = storage.stats("game-a")
    assert (stats.decisions, stats.outcomes) == (3, 2)
    assert stats.mean_effectiveness == pytest.approx(0.4)
    assert stats.action_mix == {"slash": 2, "slam": 1}


def test_everything_survives_reopening(database_url: str) -> None:
    first = Storage(database_url)
    first.create_schema()
    _with_game(first, "a1", "a2")
    first.add_outcome(_outcome("a2"))
    first.close()
    second = Storage(database_url)
    second.create_schema()  # idempotent on an existing database
    try:
        assert second.get_game("game-a") == _game()
        assert second.get_decision("game-a", "a1") == _decision("a1")
        assert second.add_outcome(_outcome("a2")) is False, "the resend is still a duplicate"
        assert second.add_outcome(_outcome("a1")) is True, "a pre-restart action is known"
        assert [d.action_id for d, _ in second.lessons("game-a")] == ["a2", "a1"]
    finally:
        second.close()


def test_sqlite_is_durable_by_configuration(tmp_path: Path) -> None:
    opened = Storage(f"sqlite:///{tmp_path / 'nested' / 'dir' / 'serving.db'}")
    opened.create_schema()
    try:
        with opened._engine.connect() as connection:
            pragma = connection.exec_driver_sql
            assert pragma("PRAGMA journal_mode").scalar() == "wal"
            assert pragma("PRAGMA synchronous").scalar() == 2  # FULL
            assert pragma("PRAGMA foreign_keys").scalar() == 1
            assert pragma("PRAGMA busy_timeout").scalar() == storage_module.SQLITE_BUSY_TIMEOUT_MS
    finally:
        opened.close()


def test_decisions_and_outcomes_commit_together(storage: Storage) -> None:
    _with_game(storage, "a1")
    results = storage.store([_decision("a2"), _decision("a3")],
                            [_outcome("a1"), _outcome("a2"), _outcome("a1"), _outcome("nope")])
    assert results[:3] == [True, True, False] and isinstance(results[3], UnknownAction)
    assert [d.action_id for d, _ in storage.lessons("game-a")] == ["a1", "a2"]
    with pytest.raises(RecordRejected):  # a rejected decision: neither kind is stored
        storage.store([_decision("a1"), _decision("a4")], [_outcome("a3")])
    assert storage.get_decision("game-a", "a4") is None
    assert storage.stats("game-a").outcomes == 2


def test_concurrent_resends_store_one_outcome(storage: Storage) -> None:
    ids = [f"a{i}" for i in range(40)]
    _with_game(storage, *ids)
    work = [action_id for action_id in ids for _ in range(3)]  # each sent three times
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda action_id: storage.add_outcome(_outcome(action_id)), work))
    assert sum(results) == len(ids), "exactly one of the three copies is new"
    assert storage.stats("game-a").outcomes == len(ids)


# --- failures -------------------------------------------------------------------------------


def test_unreachable_postgres_is_unavailable() -> None:
    down = Storage("postgresql://postgres@127.0.0.1:1/none")
    with pytest.raises(StorageUnavailable, match="nothing was stored"):
        down.ping()
    with pytest.raises(StorageUnavailable):
        down.add_outcome(_outcome("a1"))
    down.close()


def test_unopenable_sqlite_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "a-directory.db").mkdir()
    broken = Storage(f"sqlite:///{tmp_path / 'a-directory.db'}")
    with pytest.raises(StorageUnavailable, match="send again"):
        broken.create_schema()
    broken.close()


def test_missing_tables_are_unavailable_not_a_crash(tmp_path: Path) -> None:
    empty = Storage(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(StorageUnavailable, match="no such table"):
        empty.get_game("game-a")
    empty.close()


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgresql://u@h/db", "postgresql+psycopg"),
        ("postgres://u@h/db", "postgresql+psycopg"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg"),
        ("sqlite:///x.db", "sqlite"),
    ],
)
def test_url_normalisation(url: str, driver: str) -> None:
    assert normalise_url(url).drivername == driver


@pytest.mark.parametrize("url", ["mysql://u@h/db", "not a url"])
def test_unsupported_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="sqlite:///PATH"):
        Storage(url)


def test_password_is_hidden_in_repr() -> None:
    assert "hunter2" not in repr(Storage("postgresql://u:hunter2@127.0.0.1:1/db"))


# --- group commit ---------------------------------------------------------------------------

def test_decision_writer_commits_in_batches(storage: Storage) -> None:
    storage.add_game(_game())
    writer = StorageWriter(storage, min_interval=0.002)
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = list(pool.map(lambda i: writer.submit(_decision(f"w{i}")), range(400)))
    for future in futures:
        assert future.result(timeout=10) is None
        # resolved means committed: visible to any other connection
    assert storage.stats("game-a").decisions == 400
    assert writer.records == 400 and writer.batches < 400
    writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(_decision("late"))


def test_decision_writer_close_flushes_pending(storage: Storage) -> None:
    storage.add_game(_game())
    writer = StorageWriter(storage, min_interval=0.05)
    futures = [writer.submit(_decision(f"w{i}")) for i in range(50)]
    writer.close()
    assert all(future.done() and future.exception() is None for future in futures)
    assert storage.stats("game-a").decisions == 50


def test_a_bad_decision_fails_alone(storage: Storage) -> None:
    _with_game(storage, "taken")
    writer = StorageWriter(storage, min_interval=0.05)
    unstorable = dataclasses.replace(_decision("odd"), situation={"when": object()})
    records = [_decision("ok1"), _decision("taken"), unstorable, _decision("ok2")]
    futures = [writer.submit(record) for record in records]
    writer.close()
    assert futures[0].exception() is None and futures[3].exception() is None
    assert isinstance(futures[1].exception(), RecordRejected)
    assert isinstance(futures[2].exception(), RecordRejected)
    assert storage.get_decision("game-a", "ok2") is not None


def test_outcome_writer_reports_each_outcome(storage: Storage) -> None:
    _with_game(storage, "a1", "a2")
    with StorageWriter(storage, min_interval=0.05) as writer:
        futures = [writer.submit(_outcome(a)) for a in ("a1", "a1", "nope", "a2")]
    assert [futures[i].result() for i in (0, 1, 3)] == [True, False, True]
    assert isinstance(futures[2].exception(), UnknownAction)


def test_storage_writer_commits_both_kinds_and_isolates_a_bad_record(
    storage: Storage,
) -> None:
    _with_game(storage, "taken")
    writer = StorageWriter(storage, min_interval=0.05)
    unstorable = dataclasses.replace(_decision("odd"), situation={"when": object()})
    records: list[DecisionRecord | OutcomeRecord] = [
        _decision("d1"), _outcome("taken"), unstorable, _outcome("taken"), _outcome("nope"),
        _decision("d2")]
    futures = [writer.submit(record) for record in records]
    writer.close()
    assert [futures[i].result() for i in (0, 1, 3, 5)] == [None, True, False, None]
    assert isinstance(futures[2].exception(), RecordRejected)
    assert isinstance(futures[4].exception(), UnknownAction)
    assert storage.stats("game-a").decisions == 3 and storage.stats("game-a").outcomes == 1


def test_a_cancelled_submission_is_not_stored(storage: Storage) -> None:
    _with_game(storage, "a1", "a2")
    writer = StorageWriter(storage, min_interval=0.2)
    writer.submit(_outcome("a1")).result(timeout=5)  # the next batch waits min_interval
    cancelled = writer.submit(_outcome("a2"))
    assert cancelled.cancel()
    writer.close()
    assert storage.stats("game-a").outcomes == 1


def test_submissions_from_an_event_loop_resolve_there_once_committed(
    storage: Storage,
) -> None:
    _with_game(storage, "a1")
    writer = StorageWriter(storage, min_interval=0.05)

    async def submit_all() -> tuple[list[Any], asyncio.Future[Any]]:
        futures = [writer.submit_soon(record) for record in (
            _decision("d1"), _outcome("a1"), _outcome("a1"), _outcome("nope"))]
        cancelled = writer.submit_soon(_decision("d2"))
        cancelled.cancel()  # before its batch starts: not stored
        answers = await asyncio.gather(*futures, return_exceptions=True)
        assert all(future.get_loop() is asyncio.get_running_loop() for future in futures)
        return answers, cancelled

    answers, cancelled = asyncio.run(submit_all())
    writer.close()
    assert answers[:3] == [None, True, False]
    assert isinstance(answers[3], UnknownAction)
    assert cancelled.cancelled()
    assert storage.get_decision("game-a", "d1") is not None
    assert storage.get_decision("game-a", "d2") is None


def test_writer_failures_reach_every_waiting_caller() -> None:
    down = Storage("postgresql://postgres@127.0.0.1:1/none")
    with StorageWriter(down) as writer:
        futures = [writer.submit(_decision(f"d{i}")) for i in range(5)]
        for future in futures:
            assert isinstance(future.exception(timeout=10), StorageUnavailable)
    down.close()



# --- group commit from the event loop (serving.loop_writer) -------------------------------------


def test_loop_writer_commits_in_batches_and_answers_each_record(storage: Storage) -> None:
    _with_game(storage, "a1", "taken")
    unstorable = dataclasses.replace(_decision("odd"), situation={"when": object()})
    unpicklable = dataclasses.replace(_decision("lambda"), situation={"f": lambda: 0})

    async def submit_all() -> tuple[list[Any], LoopWriter]:
        writer = LoopWriter(storage, min_interval=0.002)
        many = [writer.submit_soon(_decision(f"w{i}")) for i in range(300)]
        records: list[DecisionRecord | OutcomeRecord] = [
            _decision("d1"), _outcome("a1"), _outcome("a1"), _outcome("nope"), _decision("taken"),
            unstorable, _decision("d2"), unpicklable]
        futures = [writer.submit_soon(record) for record in records]
        cancelled = writer.submit_soon(_decision("never"))
        cancelled.cancel()  # before its batch leaves: not stored
        assert await asyncio.gather(*many) == [None] * 300
        answers = await asyncio.gather(*futures, return_exceptions=True)
        assert all(future.get_loop() is asyncio.get_running_loop() for future in futures)
        await writer.aclose()
        return answers, writer

    answers, writer = asyncio.run(submit_all())
    assert answers[:3] == [None, True, False] and answers[6] is None
    assert isinstance(answers[3], UnknownAction)
    assert isinstance(answers[4], RecordRejected) and isinstance(answers[5], RecordRejected)
    assert isinstance(answers[7], RecordRejected)  # could not be pickled: fails alone
    assert writer.records == 307 and writer.batches < 100  # many records per commit
    assert storage.stats("game-a").decisions == 2 + 302 and storage.stats("game-a").outcomes == 1
    assert storage.get_decision("game-a", "never") is None
    assert writer.pid is None  # aclose stopped the storage process


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="niceness is a Unix notion")
def test_loop_writer_runs_its_storage_process_nicer_by_what_it_is_told(storage: Storage) -> None:
    storage.add_game(_game())
    own = os.getpriority(os.PRIO_PROCESS, 0)

    async def niceness(nice: int) -> int:
        writer = LoopWriter(storage, nice=nice)
        await writer.submit_soon(_decision(f"n{nice}"))  # the process is up and working
        assert writer.pid is not None
        seen = os.getpriority(os.PRIO_PROCESS, writer.pid)
        await writer.aclose()
        return seen

    assert asyncio.run(niceness(0)) == own
    assert asyncio.run(niceness(7)) == min(19, own + 7)


def test_loop_writer_aclose_commits_what_is_queued_then_refuses_more(storage: Storage) -> None:
    storage.add_game(_game())

    async def close_early() -> list[asyncio.Future[Any]]:
        writer = LoopWriter(storage, min_interval=0.2)
        first = [writer.submit_soon(_decision(f"w{i}")) for i in range(5)]
        await asyncio.sleep(0)  # the first batch leaves; the next must wait 0.2 s
        queued = [writer.submit_soon(_decision(f"q{i}")) for i in range(5)]
        await writer.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            writer.submit_soon(_decision("late"))
        return first + queued

    futures = asyncio.run(close_early())
    assert all(future.done() and future.exception() is None for future in futures)
    assert storage.stats("game-a").decisions == 10


def test_a_killed_storage_process_fails_at_most_its_batch_and_is_replaced(
    storage: Storage,
) -> None:
    _with_game(storage, "a1", "a2")

    async def kill_midway() -> tuple[Any, Any, int, int | None]:
        writer = LoopWriter(storage, min_interval=0.0)
        assert await writer.submit_soon(_outcome("a1")) is True
        first = writer.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        tried = (await asyncio.gather(writer.submit_soon(_outcome("a2")),
                                      return_exceptions=True))[0]
        again = await writer.submit_soon(_outcome("a2"))  # the game's resend
        replaced = writer.pid
        await writer.aclose()
        return tried, again, first, replaced

    tried, again, first, replaced = asyncio.run(kill_midway())
    if isinstance(tried, StorageUnavailable):  # sent to the dead process: not stored
        assert "send again" in str(tried) and again is True
    else:  # the death was noticed first: a new process stored it, the resend is a duplicate
        assert tried is True and again is False
    assert replaced not in (None, first)
    assert storage.stats("game-a").outcomes == 2


def test_loop_writer_needs_a_database_another_process_can_open() -> None:
    memory = Storage("sqlite://")
    with pytest.raises(ValueError, match="in-memory SQLite"):
        LoopWriter(memory)
    memory.close()


# --- crash safety ---------------------------------------------------------------------------


def _crash_child(url: str, mode: str) -> None:
    """Store outcomes forever, printing each action_id once it is acknowledged."""
    storage = Storage(url)
    storage.create_schema()
    storage.add_game(_game(CRASH_GAME))
    storage.add_session(CRASH_GAME, "s1")
    if mode == "direct":
        for i in range(1_000_000):
            action_id = f"c{i}"
            storage.add_decisions([_decision(action_id, CRASH_GAME)])
            storage.add_outcome(_outcome(action_id, CRASH_GAME))
            print(action_id, flush=True)
        return
    if mode == "loop":
        asyncio.run(_crash_through_the_loop_writer(storage))
        return
    decisions: StorageWriter
    outcomes: StorageWriter
    if mode == "combined":
        decisions = outcomes = StorageWriter(storage)
    else:
        decisions, outcomes = StorageWriter(storage), StorageWriter(storage)
    for start in range(0, 1_000_000, 20):
        ids = [f"c{i}" for i in range(start, start + 20)]
        for stored in [decisions.submit(_decision(a, CRASH_GAME)) for a in ids]:
            stored.result()
        acknowledged = [outcomes.submit(_outcome(a, CRASH_GAME)) for a in ids]
        for action_id, future in zip(ids, acknowledged, strict=True):
            future.result()
            print(action_id, flush=True)


async def _crash_through_the_loop_writer(storage: Storage) -> None:
    """As the server does: decisions and outcomes through one LoopWriter."""
    writer = LoopWriter(storage)
    for start in range(0, 1_000_000, 20):
        ids = [f"c{i}" for i in range(start, start + 20)]
        decided = [writer.submit_soon(_decision(a, CRASH_GAME)) for a in ids]
        acknowledged = [writer.submit_soon(_outcome(a, CRASH_GAME)) for a in ids]
        await asyncio.gather(*decided)
        for action_id, future in zip(ids, acknowledged, strict=True):
            await future
            print(action_id, flush=True)


@pytest.mark.parametrize("mode", ["direct", "writer", "combined", "loop"])
def test_acknowledged_outcomes_survive_kill_9(database_url: str, mode: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.test_storage", database_url, mode],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    acknowledged: list[str] = []
    deadline = time.monotonic() + 60
    while len(acknowledged) < 300 and time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        acknowledged.append(line.strip())
    os.kill(child.pid, signal.SIGKILL)  # mid-stream: the child is still writing
    rest, errors = child.communicate(timeout=30)
    acknowledged += rest.split()
    assert child.returncode == -signal.SIGKILL, errors
    assert len(acknowledged) >= 300, errors
    reopened = Storage(database_url)
    try:
        stored = {decision.action_id for decision, _ in reopened.lessons(CRASH_GAME)}
    finally:
        reopened.close()
    missing = [action_id for action_id in acknowledged if action_id not in stored]
    assert not missing, f"{len(missing)} acknowledged outcomes lost, e.g. {missing[:5]}"


# --- measurement (pytest -m benchmark -s tests/test_storage.py) ------------------------------


def _paced_load(
    submit: Callable[[Any], Future[Any]], make: Callable[[int], Any], rate: float, seconds: float
) -> list[float]:
    """Submit ``rate`` records a second for ``seconds``; submit->commit latencies (ms)."""
    latencies: list[float] = []
    lock = threading.Lock()
    futures = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        submitted = time.perf_counter()
        future = submit(make(i))

        def done(_: Future[Any], submitted: float = submitted) -> None:
            with lock:
                latencies.append((time.perf_counter() - submitted) * 1000)

        future.add_done_callback(done)
        futures.append(future)
    for future in futures:
        future.result(timeout=30)
    return latencies


@pytest.mark.benchmark
@pytest.mark.parametrize("kind", ["decisions", "outcomes"])
def test_group_commit_at_1000_records_per_second(storage: Storage, kind: str) -> None:
    rate, seconds = 1000.0, 3.0
    count = int(rate * seconds)
    ids = [f"b{i}" for i in range(count)]
    storage.add_game(_game())
    writer: StorageWriter
    make: Callable[[int], Any]
    if kind == "outcomes":
        storage.add_decisions([_decision(action_id) for action_id in ids])
        writer, make = StorageWriter(storage), (lambda i: _outcome(ids[i]))
    else:
        writer, make = StorageWriter(storage), (lambda i: _decision(ids[i]))
    started = time.perf_counter()
    latencies = _paced_load(writer.submit, make, rate, seconds)
    elapsed = time.perf_counter() - started
    writer.close()
    percentiles = statistics.quantiles(latencies, n=100)
    p50, p99 = percentiles[49], percentiles[98]
    print(
        f"\n{storage.dialect} {kind}: {count / elapsed:.0f} records/s, "
        f"{writer.batches / elapsed:.0f} commits/s, {writer.records / writer.batches:.1f} "
        f"records/commit, submit->commit p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    )
    assert len(latencies) == count


if __name__ == "__main__":
    _crash_child(sys.argv[1], sys.argv[2])
