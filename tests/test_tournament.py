"""Fight statistics, the tournament and the persona command: numbers, tables, config, files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from envs.engagement import summarize_fights, wilson_interval, win_rate_score
from envs.fights import FightResult
from envs.game import Difficulty, load_game
from envs.observation import PlayerContext
from envs.persona import load_players
from experiments.persona import persona_report, player_from_config, save_replay, save_report
from experiments.tournament import (
    TournamentSettings,
    game_from_config,
    markdown_table,
    one_level,
    readable_table,
    run_tournament,
)

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
LEVEL = Difficulty(target_player_win_rate=0.5, win_rate_tolerance=0.1, target_hp_margin=0.4,
                   target_duration=(30.0, 120.0))
MOVES = ("attack", "defend", "special_move")


def fight(won: bool = False, seconds: float = 60.0, margin: float = 0.0,
          moves: tuple[int, ...] = (1, 1, 1), timed_out: bool = False) -> FightResult:
    return FightResult(persona="novice", difficulty="normal", environment="arena",
                       player_won=won, timed_out=timed_out, fight_seconds=seconds,
                       hp_margin=margin, moves_used=moves, observed=PlayerContext())


@pytest.mark.parametrize(("wins", "trials", "low", "high"), [
    (0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (3, 60, 0.0171, 0.1370),
])
def test_wilson_interval_matches_known_values(wins: int, trials: int, low: float,
                                              high: float) -> None:
    assert wilson_interval(wins, trials) == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_edge_cases() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    for trials in range(1, 200):
        low, high = wilson_interval(0, trials)
        assert low == 0.0 < high
        low, high = wilson_interval(trials, trials)
        assert low < high == 1.0
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(4, 3)


def test_win_rate_score_is_one_in_band_and_falls_linearly_outside() -> None:
    assert win_rate_score(0.55, 0.5, 0.1) == 1.0
    assert win_rate_score(0.7, 0.5, 0.1) == pytest.approx(0.75)
    assert win_rate_score(0.0, 0.5, 0.1) == 0.0
    assert win_rate_score(1.0, 0.8, 0.1) == pytest.approx(1 - 0.1 / 0.7)


def test_summary_of_hand_made_fights() -> None:
    # 10 fights: 5 player wins, 6 close ones, 7 of the right length, one timeout.
    wins = [True] * 5 + [False] * 5
    margins = [0.1, -0.2, 0.4, 0.0, 0.3, -0.1, 0.9, -0.8, 0.5, 0.7]
    seconds = [30, 60, 120, 90, 45, 50, 70, 10, 150, 200]
    fights = [fight(w, s, m) for w, s, m in zip(wins, seconds, margins, strict=True)]
    fights[-1] = fight(False, 200, 0.7, timed_out=True)
    summary = summarize_fights(fights, LEVEL, MOVES)
    assert summary.fights == 10
    assert summary.player_win_rate == 0.5
    assert (summary.win_rate_low, summary.win_rate_high) == pytest.approx((0.2366, 0.7634),
                                                                          abs=1e-4)
    assert summary.win_rate_in_band
    assert summary.close_share == pytest.approx(0.6)
    assert summary.duration_share == pytest.approx(0.7)
    assert summary.timeout_rate == pytest.approx(0.1)
    assert summary.mean_duration == pytest.approx(82.5)
    assert summary.engagement_score == pytest.approx(0.5 * 1 + 0.25 * 0.6 + 0.25 * 0.7)


def test_summary_flags_a_win_rate_outside_the_band() -> None:
    summary = summarize_fights([fight(won=True)] * 7 + [fight()] * 3, LEVEL, MOVES)
    assert not summary.win_rate_in_band
    assert summary.win_rate_score == pytest.approx(0.75)
    assert summary.engagement_score == pytest.approx(0.5 * 0.75 + 0.25 + 0.25)


def test_move_mix_and_exploit_flag() -> None:
    spammy = summarize_fights([fight(moves=(5, 3, 2)), fight(moves=(5, 3, 2))], LEVEL, MOVES)
    assert spammy.move_mix == pytest.approx({"attack": 0.5, "defend": 0.3, "special_move": 0.2})
    assert (spammy.dominant_move, spammy.exploit) == ("attack", True)
    varied = summarize_fights([fight(moves=(2, 4, 4))], LEVEL, MOVES)
    assert varied.dominant_share == pytest.approx(0.4)
    assert not varied.exploit  # exactly 40% is not "more than 40%"


def test_summary_refuses_no_fights_and_mismatched_moves() -> None:
    with pytest.raises(ValueError, match="no fights"):
        summarize_fights([], LEVEL, MOVES)
    with pytest.raises(ValueError, match="move_names"):
        summarize_fights([fight()], LEVEL, ("attack", "defend"))


def test_run_tournament_on_a_tiny_budget() -> None:
    bosses, personas = ["random", "rotation", "reactive"], ["novice", "dodger"]
    table = run_tournament("duel", bosses, personas, 4, series=2, difficulty="normal")
    assert len(table) == 6
    assert list(zip(table["boss"], table["persona"], strict=True)) == [
        (b, p) for b in bosses for p in personas]
    assert (table["fights"] == 4).all()
    assert ((table["win_rate_low"] <= table["player_win_rate"])
            & (table["player_win_rate"] <= table["win_rate_high"])).all()
    assert table["engagement_score"].between(0, 1).all()
    mix = table[[f"mix_{m}" for m in MOVES]].sum(axis=1)
    np.testing.assert_allclose(mix, 1.0)
    readable = readable_table(table)
    assert "player win rate [95% CI]" in readable.columns
    markdown = markdown_table(readable).splitlines()
    assert len(markdown) == 2 + 6
    assert markdown[0].count("|") == len(readable.columns) + 1


@pytest.mark.parametrize(("change", "message"), [
    ({"bosses": ["berserk"]}, "random, rotation, reactive"),
    ({"personas": ["speedrunner"]}, "adaptive_expert"),
    ({"personas": []}, "no persona"),
    ({"difficulty": "veteran"}, "easy, normal, hard"),
    ({"fights": 0}, "fights must be"),
])
def test_run_tournament_validates_before_playing(change: dict[str, object],
                                                 message: str) -> None:
    arguments: dict[str, object] = {"bosses": ["random"], "personas": ["novice"],
                                    "fights": 2, "difficulty": "normal"}
    arguments.update(change)
    with pytest.raises(ValueError, match=message):
        run_tournament("duel", arguments["bosses"], arguments["personas"],  # type: ignore[arg-type]
                       arguments["fights"], difficulty=arguments["difficulty"])  # type: ignore[arg-type]


def test_tournament_config_composes_with_game_overrides() -> None:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        default = compose("tournament")
        dragon = compose("tournament", overrides=["game=dragon_keep", "game.boss.max_hp=500",
                                                  "difficulty=veteran", "fights=3"])
        wrong_level = compose("tournament", overrides=["game=dragon_keep"])
        one_boss = compose("tournament", overrides=["bosses=reactive", "personas=[dodger]"])
    assert TournamentSettings.from_config(one_boss).bosses == ("reactive",)
    assert game_from_config(default).name == "duel"
    settings = TournamentSettings.from_config(default)
    assert settings.personas == ("novice", "button_masher", "turtle", "dodger", "rusher",
                                 "adaptive_expert")
    assert (settings.fights, settings.series, settings.difficulty) == (60, 6, "normal")
    game = game_from_config(dragon)
    assert (game.name, game.boss.max_hp) == ("dragon_keep", 500)
    TournamentSettings.from_config(dragon).validate(game)
    with pytest.raises(ValueError, match="story, veteran, nightmare"):
        TournamentSettings.from_config(wrong_level).validate(game_from_config(wrong_level))


def test_persona_config_composes_with_player_overrides() -> None:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("persona", overrides=["player=dodger", "player.dodge_frequency=0.6"])
    player = player_from_config(cfg)
    assert (player["name"], player["dodge_frequency"]) == ("dodger", 0.6)
    assert load_players(player).names == ("dodger",)


def test_persona_report_saves_a_table_chart_and_replay(tmp_path: Path) -> None:
    table = persona_report("duel", "dodger", ["rotation", "reactive"], 4, series=2)
    assert list(table["boss"]) == ["rotation", "reactive"]
    assert table["observed_dodge_frequency"].between(0, 1).all()
    assert set(table["movement_style"]) <= {"aggressive", "defensive", "balanced", "evasive"}
    saved = save_report(table, tmp_path, "dodger", "test", {"dodge_frequency": 0.85})
    assert pd.read_csv(saved[0]).shape[0] == 2
    replay = save_replay(load_game("duel"), {"name": "dodger", "dodge_frequency": 0.85},
                         "reactive", "normal", 0, tmp_path, "dodger")
    assert [p.suffix for p in replay] == [".html", ".gif"]
    assert all(p.stat().st_size > 1000 for p in [saved[1], *replay])


def test_tournament_entry_point_writes_its_files(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "experiments.tournament", "fights=6", "series=3",
               "personas=[novice,dodger]", f"hydra.run.dir={run_dir}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CI": "true"}, check=False)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(run_dir / "tournament.csv")
    assert len(table) == 3 * 2
    assert (run_dir / "tournament.png").stat().st_size > 10_000
    assert (run_dir / "tournament.md").read_text().count("\n| ") == 6 + 1
    assert str(run_dir / "tournament.png") in done.stdout


def test_a_tournament_needs_one_difficulty_level() -> None:
    cfg = OmegaConf.create({"difficulty": {"level": None}})
    with pytest.raises(ValueError, match="difficulty=normal"):
        one_level(cfg)
    assert one_level(OmegaConf.create({"difficulty": {"level": "hard"}})) == "hard"
