"""``python -m serving export-telemetry``: a real server's SQLite database, exported, read back."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from serving.bundle import write_scripted_bundle
from serving.telemetry import COLUMNS, export_telemetry
from tests.server_helpers import (
    CONTEXT,
    REPO,
    Game,
    ServerProcess,
    ask,
    connect,
    move_request,
    outcome,
    register,
    run,
    sqlite_url,
    start_server,
)


async def _play(server: ServerProcess, game: Game) -> list[dict[str, Any]]:
    """Three decisions in session s1 (two with outcomes), one in s2 without an outcome."""
    served = []
    ws, _ = await connect(server.ws_url, game, session_id="s1")
    for effectiveness in (0.9, 0.2):
        answer = await ask(ws, "boss_action_request", move_request(
            difficulty="hard", environment_factors={"environment": "cave", "distance": 4.5}))
        action_id = answer["data"]["action_id"]
        stored = await ask(ws, "action_outcome", outcome(action_id, effectiveness))
        assert stored["type"] == "learning_update", stored
        served.append({"action_id": action_id, "session": "s1", "effectiveness": effectiveness,
                       "move": answer["data"]["boss_action"]["boss_action"]})
    await ws.close()
    ws, _ = await connect(server.ws_url, game, session_id="s2")
    answer = await ask(ws, "boss_action_request", move_request())
    served.append({"action_id": answer["data"]["action_id"], "session": "s2",
                   "effectiveness": None, "move": answer["data"]["boss_action"]["boss_action"]})
    await ws.close()
    return served


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Game, list[Any]]]:
    tmp = tmp_path_factory.mktemp("export")
    server = start_server(tmp, write_scripted_bundle(tmp / "bundle"))
    try:
        game = register(server.url)
        other = register(server.url)
        served = run(_play(server, game))
        run(_play(server, other))
    finally:
        server.stop()
    yield tmp, game, served


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_round_trip(played: tuple[Path, Game, list[Any]], suffix: str) -> None:
    tmp, game, served = played
    out = tmp / f"telemetry{suffix}"
    summary = export_telemetry(sqlite_url(tmp), out, game.game_id)
    assert (summary.rows, summary.with_outcome, summary.sessions) == (3, 2, 2)
    table = pd.read_csv(out, keep_default_na=False) if suffix == ".csv" else pd.read_parquet(out)
    assert list(table.columns) == list(COLUMNS)
    assert list(table["action_id"]) == [s["action_id"] for s in served]
    assert set(table["game_id"]) == {game.game_id}
    assert list(table["boss_move"]) == [s["move"] for s in served]
    first = table.iloc[0]
    assert first["frequent_actions"] == ",".join(CONTEXT["frequent_actions"])
    assert first["attack_patterns"] == "hit_and_run"
    for name in ("dodge_frequency", "reaction_time", "health_percentage", "session_duration"):
        assert float(first[name]) == pytest.approx(CONTEXT[name])
    assert int(first["equipment_level"]) == 4 and first["movement_style"] == "evasive"
    assert (first["difficulty"], first["environment"]) == ("hard", "cave")
    assert float(first["distance"]) == pytest.approx(4.5)
    assert [float(x) for x in table["effectiveness_score"][:2]] == [0.9, 0.2]
    assert [str(x) for x in table["outcome"][:2]] == ["partial", "partial"]
    assert [str(x).lower() for x in table["player_hit"][:2]] == ["true", "false"]
    assert table["policy_version"].iloc[0] == "scripted-reactive"
    last = table.iloc[2]
    assert last["session_id"] == "s2" and (last["outcome"] == "" or pd.isna(last["outcome"]))


def test_every_game_by_default(played: tuple[Path, Game, list[Any]]) -> None:
    tmp, _, _ = played
    summary = export_telemetry(sqlite_url(tmp), tmp / "all.csv")
    assert summary.rows == 6 and len(summary.games) == 2


def test_command_line(played: tuple[Path, Game, list[Any]]) -> None:
    """The subcommand through ``python -m serving``, and its refusals (exit 2, a message)."""
    tmp, game, _ = played
    out = tmp / "cli.csv"

    def export(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "serving", "export-telemetry", *args],
                              cwd=REPO, capture_output=True, text=True, timeout=120,
                              check=False)

    done = export("--database-url", sqlite_url(tmp), "--out", str(out), "--game", game.game_id)
    assert done.returncode == 0, done.stderr
    assert "Wrote 3 decisions (2 with an outcome)" in done.stdout
    assert len(pd.read_csv(out)) == 3
    unknown = export("--database-url", sqlite_url(tmp), "--out", str(out), "--game", "nope")
    assert unknown.returncode == 2 and "game 'nope' is not in" in unknown.stderr
    suffix = export("--database-url", sqlite_url(tmp), "--out", str(tmp / "x.json"))
    assert suffix.returncode == 2 and ".parquet or .csv" in suffix.stderr
    missing = export("--database-url", f"sqlite:///{tmp / 'none.db'}", "--out", str(out))
    assert missing.returncode == 2 and "no SQLite database" in missing.stderr
    assert not (tmp / "none.db").exists()


def test_parquet_without_pyarrow(played: tuple[Path, Game, list[Any]],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    tmp, _, _ = played
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as in a server-only install
    with pytest.raises(ValueError, match=r"pip install pyarrow.*telemetry\.csv"):
        export_telemetry(sqlite_url(tmp), tmp / "t.parquet")
