"""The server on PostgreSQL: ``BOSSLAB_DATABASE_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``), in a schema of its own per test run
(dropped afterwards). Skipped, saying why, when no PostgreSQL server answers."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from serving.bundle import write_scripted_bundle
from serving.storage import normalise_url
from tests.server_helpers import (
    ServerProcess,
    ask,
    connect,
    move_request,
    outcome,
    register,
    run,
    start_server,
)

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def postgres_url() -> str:
    url = os.environ.get("BOSSLAB_DATABASE_URL", "")
    return url if url.startswith("postgres") else DEFAULT_URL


@pytest.fixture(scope="module")
def schema_url() -> Iterator[str]:
    """A URL whose connections use a fresh schema (search_path), dropped after the run."""
    url = postgres_url()
    engine = sa.create_engine(normalise_url(url), connect_args={"connect_timeout": 3})
    schema = f"serving_test_{uuid.uuid4().hex[:12]}"
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    except sa.exc.OperationalError as error:
        engine.dispose()
        pytest.skip(f"no PostgreSQL server answers at {url} ({str(error.orig).strip()[:120]}); "
                    "set BOSSLAB_DATABASE_URL=postgresql+psycopg://USER@HOST:PORT/DB to run "
                    "this test")
    try:
        yield f"{url}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        engine.dispose()


@pytest.fixture
def server(tmp_path: Path, schema_url: str) -> Iterator[ServerProcess]:
    running = start_server(tmp_path, write_scripted_bundle(tmp_path / "bundle"),
                           database_url=schema_url)
    yield running
    running.stop()


def test_decisions_and_outcomes_survive_a_restart_on_postgres(server: ServerProcess,
                                                              schema_url: str) -> None:
    game = register(server.url)

    async def decide_then_report(count: int) -> tuple[list[str], list[bool]]:
        ws, _ = await connect(server.ws_url, game, session_id="pg-player")
        ids = [(await ask(ws, "boss_action_request", move_request()))["data"]["action_id"]
               for _ in range(count)]
        flags = [(await ask(ws, "action_outcome", outcome(a)))["data"]["duplicate"]
                 for a in ids[:1]]
        await ws.close()
        return ids, flags

    async def report(ids: list[str]) -> list[bool]:
        ws, _ = await connect(server.ws_url, game)
        flags = [(await ask(ws, "action_outcome", outcome(a)))["data"]["duplicate"]
                 for a in ids]
        await ws.close()
        return flags

    ids, first = run(decide_then_report(3))
    assert first == [False]
    server.stop()
    server.restart()
    assert run(report(ids)) == [True, False, False]  # one resend, two decided before restart
    engine = sa.create_engine(normalise_url(schema_url))
    with engine.connect() as connection:
        count = connection.exec_driver_sql("SELECT count(*) FROM outcomes").scalar_one()
    engine.dispose()
    assert count == 3  # in the isolated schema
