"""Persona calibration: bad telemetry is refused with the fix, and a known answer is recovered.

The known answer: players of three shipped personas (dodger, rusher, novice) fight a scripted
bundle through a real server (``experiments.telemetry``), the server's database is exported
(``serving.telemetry``), and ``experiments.calibrate`` must find three clusters, one per
persona, with the identifiable parameters near the truth:

============================  =========
parameter                     tolerance
============================  =========
reaction_time                 ± 0.06 s
aggression                    ± 0.12
preferred_range               ± 0.4 m
equipment_level               exact
============================  =========

(each must also be reported as identified). The other parameters are either not identified
(kept at the nearest shipped persona's value) or fitted with wide uncertainties at this size.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from envs.boss_fight import BossFightEnv
from envs.game import load_game
from envs.persona import PARAMETERS, load_persona
from experiments.calibrate import run
from experiments.calibration_data import check_telemetry, load_telemetry
from experiments.calibration_fit import shipped_values
from experiments.compose import compose_config
from experiments.telemetry import generate
from serving.bundle import write_scripted_bundle
from serving.telemetry import export_telemetry
from tests.server_helpers import sqlite_url, start_server

PERSONAS = ("dodger", "rusher", "novice")
TOLERANCES = {"reaction_time": 0.06, "aggression": 0.12, "preferred_range": 0.4,
              "equipment_level": 0.0}
SMALL_FIT = ("candidates=150", "sessions_per_candidate=3", "rounds=1", "bootstrap=20",
             "fidelity_sessions=8", "min_sessions=6")


@pytest.fixture(scope="module")
def telemetry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(the export, the bundle) of 6 sessions x 3 fights per persona through a real server."""
    tmp = tmp_path_factory.mktemp("calibrate")
    bundle = write_scripted_bundle(tmp / "bundle")
    server = start_server(tmp, bundle)
    try:
        result = generate(server.url, dict.fromkeys(PERSONAS, 6), fights=3, seed=1)
    finally:
        server.stop()
    assert result.sessions == 18 and result.decisions > 18 * 60
    out = tmp / "telemetry.parquet"
    export_telemetry(sqlite_url(tmp), out, result.game_id)
    yield out, bundle


@pytest.fixture
def frame(telemetry: tuple[Path, Path]) -> pd.DataFrame:
    return load_telemetry(str(telemetry[0]))


def check(frame: pd.DataFrame, min_sessions: int = 6, min_decisions: int = 30) -> None:
    check_telemetry(frame, load_game("duel"), min_sessions=min_sessions,
                    min_decisions=min_decisions)


def test_good_telemetry_passes(frame: pd.DataFrame) -> None:
    checked = check_telemetry(frame, load_game("duel"), min_sessions=6, min_decisions=30)
    assert checked.table["session_id"].nunique() == 18 and checked.notes == ()


def test_missing_columns(frame: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match=r"lacks column\(s\) reaction_time, player_hit.*"
                                         r"export-telemetry"):
        check(frame.drop(columns=["reaction_time", "player_hit"]))


def test_nan(frame: pd.DataFrame) -> None:
    frame.loc[frame.index[5], "dodge_frequency"] = np.nan
    with pytest.raises(ValueError, match=r"'dodge_frequency' has 1 empty or NaN.*row 5"):
        check(frame)


def test_out_of_range(frame: pd.DataFrame) -> None:
    frame.loc[frame.index[3], "effectiveness_score"] = 1.7
    with pytest.raises(ValueError, match=r"'effectiveness_score' has 1 value\(s\) outside "
                                         r"\[0, 1\].*1.7"):
        check(frame)


def test_unknown_move(frame: pd.DataFrame) -> None:
    frame.loc[frame.index[0], "boss_move"] = "fireball"
    with pytest.raises(ValueError, match=r"'boss_move'.*'fireball'.*attack, defend, "
                                         r"special_move.*bundle"):
        check(frame)


def test_too_few_sessions(frame: pd.DataFrame) -> None:
    few = frame[frame["session_id"].isin(["dodger-0", "rusher-0"])]
    with pytest.raises(ValueError, match=r"too few sessions: 2 .* needs 6 .*min_sessions"):
        check(few)
    with pytest.raises(ValueError, match=r"too few sessions: 0 with at least 100000"):
        check(frame, min_decisions=100_000)


def test_unanswered_decisions_are_dropped_and_said(frame: pd.DataFrame) -> None:
    columns = ["outcome", "effectiveness_score", "damage_dealt", "player_hit", "execution_time"]
    frame = frame.astype(dict.fromkeys(columns, object))  # as a CSV export with empty cells
    frame.loc[frame.index[:4], columns] = None
    checked = check_telemetry(frame, load_game("duel"), min_sessions=6, min_decisions=30)
    assert checked.notes == (f"dropped 4 of {len(frame)} decisions without a reported outcome",)
    assert len(checked.table) == len(frame) - 4


def test_known_answer(telemetry: tuple[Path, Path], tmp_path: Path) -> None:
    export, bundle = telemetry
    cfg = compose_config("calibrate", [
        f"telemetry={export}", f"policy={bundle}", f"tracking.uri=sqlite:///{tmp_path}/ml.db",
        f"tracking.artifact_location={tmp_path}/mlruns", *SMALL_FIT])
    result = run(cfg, tmp_path / "out")

    assert len(result.personas) == 3, result.clustering.bic
    assert result.clustering.bic["chosen"].sum() == 1
    sessions = pd.read_csv(tmp_path / "out" / "sessions.csv")
    truth = sessions["session_id"].str.split("-").str[0]
    assert (sessions.groupby("persona")["session_id"].count() == 6).all()
    assert (truth.groupby(sessions["persona"]).nunique() == 1).all(), sessions
    for persona in result.personas:
        true_name = truth[sessions["persona"] == persona.name].iloc[0]
        true_values = shipped_values([true_name])[0]
        for parameter, tolerance in TOLERANCES.items():
            k = PARAMETERS.index(parameter)
            assert persona.fit.identified[k], (persona.name, parameter)
            assert abs(persona.fit.values[k] - true_values[k]) <= tolerance + 1e-9, (
                true_name, parameter, persona.fit.values[k], true_values[k])
        fitted = load_persona(persona.path)  # a configs/player/ file, as player= loads it
        assert fitted.name == persona.path.stem
        BossFightEnv(player=persona.path).reset(seed=0)
    for name in ("parameters.csv", "clusters.csv", "fidelity.csv", "fidelity.md",
                 "fidelity.png", "calibration.md"):
        assert (tmp_path / "out" / name).is_file()
    fidelity = pd.read_csv(tmp_path / "out" / "fidelity.csv")
    assert {"response to attack", "context"} <= set(fidelity["kind"])
    assert result.run_id is not None
