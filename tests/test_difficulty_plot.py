"""The difficulty calibration plot (experiments.difficulty): table, flags, files, config."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from envs.game import load_game
from experiments import difficulty

CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")
FAST = ["personas=[novice,dodger]", "fights=4", "series=2"]


def compose_config(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose("difficulty_plot", overrides=overrides)


def curve(persona: str, rates: list[tuple[float, float, float]]) -> pd.DataFrame:
    """A persona's rows at easy, normal, hard: (win rate, interval low, interval high)."""
    return pd.DataFrame({
        "boss": "hand-made", "persona": persona, "level_index": range(len(rates)),
        "difficulty": ["easy", "normal", "hard"][:len(rates)],
        "player_win_rate": [r[0] for r in rates], "win_rate_low": [r[1] for r in rates],
        "win_rate_high": [r[2] for r in rates], "target_player_win_rate": [0.75, 0.5, 0.3],
        "tolerance": 0.1, "in_band": False, "engagement_score": 0.5, "mean_duration": 40.0,
        "fights": 40})


@pytest.fixture
def constructed() -> pd.DataFrame:
    return difficulty.flag_non_monotone(pd.concat([
        curve("falls", [(0.8, 0.7, 0.9), (0.5, 0.4, 0.6), (0.2, 0.1, 0.3)]),
        curve("noisy_rise", [(0.3, 0.1, 0.5), (0.45, 0.25, 0.65), (0.4, 0.2, 0.6)]),
        curve("rises", [(0.1, 0.02, 0.2), (0.15, 0.05, 0.3), (0.8, 0.6, 0.9)]),
    ], ignore_index=True))


def test_a_scripted_boss_gives_one_row_per_persona_and_level(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a scripted boss must not create ./mlflow.db
    result = difficulty.run(compose_config(["source=rotation", *FAST]), tmp_path / "out")
    table = result.table
    levels = list(load_game("duel").difficulty_levels)
    assert result.run_id is None and not (tmp_path / "mlflow.db").exists()
    assert list(zip(table["persona"], table["difficulty"], strict=True)) == [
        (persona, level) for persona in ("novice", "dodger") for level in levels]
    assert list(table["level_index"]) == [0, 1, 2, 0, 1, 2]
    assert (table["fights"] == 4).all() and (table["boss"] == "rotation").all()
    assert ((table["win_rate_low"] <= table["player_win_rate"])
            & (table["player_win_rate"] <= table["win_rate_high"])).all()
    assert list(table["target_player_win_rate"][:3]) == [
        load_game("duel").difficulty_levels[level].target_player_win_rate for level in levels]
    assert [p.name for p in result.paths] == ["difficulty.csv", "difficulty.md",
                                             "difficulty.png"]
    assert all(p.stat().st_size > 0 for p in result.paths)
    pd.testing.assert_frame_equal(pd.read_csv(result.paths[0], keep_default_na=False), table,
                                  check_dtype=False)
    markdown = result.paths[1].read_text()
    assert "player win rate [95% CI]" in markdown and markdown.count("| dodger |") == 3


def test_the_same_seed_gives_the_same_table(tmp_path: Path) -> None:
    first, second = (difficulty.run(compose_config(["source=random", *FAST]), tmp_path / name)
                     for name in ("a", "b"))
    pd.testing.assert_frame_equal(first.table, second.table)


def test_a_rise_beyond_the_intervals_is_flagged_and_noise_is_not(
        constructed: pd.DataFrame) -> None:
    flags = constructed.groupby("persona", sort=False)[["non_monotone", "rise"]].first()
    assert flags.loc["rises", "non_monotone"]
    assert flags.loc["rises", "rise"] == "easy 0.10 -> hard 0.80"
    assert not flags.loc["falls", "non_monotone"] and flags.loc["falls", "rise"] == ""
    # 0.30 -> 0.45 is a rise, but inside the intervals' noise.
    assert not flags.loc["noisy_rise", "non_monotone"]
    metrics = difficulty.difficulty_metrics(constructed)
    assert metrics["difficulty/non_monotone_personas"] == 1.0
    assert metrics["difficulty/rises/hard/player_win_rate"] == 0.8


def test_the_flag_reads_levels_in_the_games_order_not_the_rows(
        constructed: pd.DataFrame) -> None:
    shuffled = constructed.drop(columns=["non_monotone", "rise"]).iloc[::-1]
    flags = difficulty.flag_non_monotone(shuffled)
    assert set(flags.loc[flags["non_monotone"], "persona"]) == {"rises"}


def test_flagged_personas_are_named_in_the_files(constructed: pd.DataFrame,
                                                 tmp_path: Path) -> None:
    csv, md, png = difficulty.save_difficulty(constructed, tmp_path, "hand-made curves")
    text = md.read_text()
    assert "**Non-monotone**" in text and "rises." in text
    rows = [line for line in text.splitlines() if line.startswith("| rises |")]
    assert len(rows) == 3 and all("non-monotone: easy 0.10 -> hard 0.80" in r for r in rows)
    assert not any("non-monotone" in line for line in text.splitlines()
                   if line.startswith("| falls |"))
    assert png.stat().st_size > 10_000
    assert pd.read_csv(csv)["non_monotone"].sum() == 3


@pytest.mark.parametrize(("overrides", "match"), [
    (["source=nobody"], r"source='nobody' names no boss.*random, rotation, reactive"),
    (["source=rotation", "personas=[nobody]"], r"unknown persona 'nobody'"),
    (["source=rotation", "fights=0"], r"fights must be >= 1"),
])
def test_errors_name_the_fix(overrides: list[str], match: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=match):
        difficulty.run(compose_config([*FAST, *overrides]), tmp_path)


def test_the_source_is_required() -> None:
    with pytest.raises(Exception, match=r"source"):
        difficulty.typed_config(compose_config([]))
