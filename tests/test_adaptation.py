"""The adaptation experiment: its metrics on hand-made curves, config checks, a tiny run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig
from stable_baselines3 import DQN

from agents.rag_setup import new_memory
from agents.retrieval import MemoryOnlyBoss, Steering, ValueBlendedBoss
from agents.vec_env import BossFightVecEnv
from envs.observation import ObservationLayout
from experiments import adaptation, train
from experiments.adaptation_metrics import (
    Band,
    Settling,
    Spread,
    adaptation_fights,
    adapts_twice_as_fast,
    outcome_matrix,
    recovery_fights,
    smoothed,
    spread,
    win_curve,
    win_rate_error,
)
from experiments.compose import compose_config
from tests.openai_stub_server import OpenAIStubServer

BAND = Band(0.5, 0.1)
TINY = ["ppo_steps=2048", "dqn_steps=2048", "train_eval_fights=2",
        "train_overrides=['num_envs=8','log_every=512','eval.series=2']",
        "ppo_overrides=['agent.n_steps=64','agent.batch_size=128']",
        "players=4", "fights_per_series=6", "window=2"]
"""Seconds per training (see tests/test_train.py), 4 players x 6 fights per series."""


def compose(overrides: list[str]) -> DictConfig:
    return compose_config("adaptation", overrides)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Overrides that send runs to one SQLite store (and artifact folder) under tmp."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("OPENAI_API_KEY", raising=False)  # the llm row is skipped with a note
        yield [f"tracking.uri=sqlite:///{root}/mlflow.db",
               f"tracking.artifact_location={root}/mlruns"]


# --- metrics on hand-made data ---------------------------------------------------------------


def test_outcome_matrix_and_win_curve() -> None:
    player = np.array([0, 1, 0, 1, 0, 1])
    fight = np.array([0, 0, 1, 1, 2, 2])
    won = np.array([True, False, True, True, False, False])
    outcomes = outcome_matrix(player, fight, won, players=2, fights=3)
    np.testing.assert_array_equal(outcomes, [[True, True, False], [False, True, False]])
    np.testing.assert_array_equal(win_curve(outcomes), [0.5, 1.0, 0.0])
    with pytest.raises(ValueError, match="1 missing, 0 repeated"):
        outcome_matrix(player[:-1], fight[:-1], won[:-1], players=2, fights=3)
    with pytest.raises(ValueError, match="1 missing, 1 repeated"):
        outcome_matrix(player, np.array([0, 0, 1, 1, 2, 1]), won, players=2, fights=3)


def test_smoothed_is_a_trailing_mean_over_the_fights_so_far_at_first() -> None:
    curve = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(smoothed(curve, 1), curve)
    np.testing.assert_allclose(smoothed(curve, 2), [0.0, 0.5, 1.0, 0.5, 0.5])
    np.testing.assert_allclose(smoothed(curve, 3), [0.0, 0.5, 2 / 3, 2 / 3, 2 / 3])


@pytest.mark.parametrize(("curve", "expected"), [
    ([0.5] * 6, Settling(0, True)),                            # on target from the start
    ([1.0, 0.0, 1.0, 0.0], Settling(0, True)),                 # i < window - 1 is not judged
    ([0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0], Settling(2, True)),  # smoothed 0.5 from i=2
    ([0.5, 0.5, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5], Settling(5, True)),  # leaves, comes back
    ([0.6, 0.6, 0.4, 0.4], Settling(0, True)),                 # band edges are inside
    ([0.5, 0.5, 0.5, 0.5, 1.0, 1.0], Settling(6, False)),      # out at the end: censored
    ([0.9] * 5, Settling(5, False)),                           # never in: censored
])
def test_adaptation_fights(curve: list[float], expected: Settling) -> None:
    assert adaptation_fights(np.array(curve), BAND, window=2) == expected


def test_adaptation_fights_window_checks() -> None:
    assert adaptation_fights(np.array([0.0, 1.0, 0.5, 0.5]), BAND, window=1) == (2, True)
    with pytest.raises(ValueError, match="window"):
        adaptation_fights(np.array([0.5, 0.5]), BAND, window=3)


@pytest.mark.parametrize(("curve", "window", "expected"), [
    ([0.5] * 8, 2, Settling(0, True)),                         # the switch changed nothing
    ([0.5] * 4 + [1.0, 1.0, 0.5, 0.5, 0.5, 0.5], 2, Settling(3, True)),  # smoothed in at i=7
    ([0.5] * 4 + [1.0] * 4, 2, Settling(4, False)),            # censored: remaining length
    ([0.0] * 4 + [0.5] * 4, 3, Settling(2, True)),             # the window lags 2 fights
])
def test_recovery_fights_after_the_switch(curve: list[float], window: int,
                                          expected: Settling) -> None:
    assert recovery_fights(np.array(curve), BAND, window, switch=4) == expected


def test_recovery_needs_a_switch_inside_the_series() -> None:
    with pytest.raises(ValueError, match="switch must be inside"):
        recovery_fights(np.array([0.5] * 4), BAND, 2, switch=4)


def test_win_rate_error_and_spread() -> None:
    assert win_rate_error(np.array([0.0, 0.5, 1.0, 0.4]), 0.5) == pytest.approx(0.275)
    assert spread([5, 1, 3, 2, 4]) == Spread(3.0, 2.0, 4.0)
    assert spread([0, 10]) == Spread(5.0, 2.5, 7.5)
    with pytest.raises(ValueError, match="at least one"):
        spread([])


@pytest.mark.parametrize(("memory", "baseline", "half", "apart"), [
    ([2, 3, 4, 5, 6], [8, 10, 12, 14, 40], True, True),       # 4 <= 6 and 5 < 10
    ([1, 2, 5, 11, 12], [10, 11, 12, 13, 14], True, False),    # q75 11 touches q25 11
    ([7, 7, 7], [12, 12, 12], False, True),                    # 7 > 12 / 2
])
def test_twice_as_fast_needs_half_the_median_and_apart_iqrs(memory: list[int],
                                                            baseline: list[int], half: bool,
                                                            apart: bool) -> None:
    verdict = adapts_twice_as_fast(memory, baseline)
    assert (verdict.at_most_half, verdict.iqrs_apart, verdict.passed) == (
        half, apart, half and apart)


def test_summary_over_seeds_and_the_target_check() -> None:
    rows: list[dict[str, Any]] = []
    for seed, (plain, blend) in enumerate([(40, 4), (30, 6), (40, 5)]):
        for variant, fights in (("dqn", plain), ("dqn+blend", blend), ("memory_only", 40)):
            rows.append({"seed": seed, "variant": variant, "adaptation_fights": fights,
                         "settled": fights < 40, "win_rate_error": 0.1 * (seed + 1),
                         "recovery_fights": seed, "recovered": True, "final_win_rate": 0.5})
    summary = adaptation.summary_table(pd.DataFrame(rows)).set_index("variant")
    assert list(summary.index) == ["dqn", "dqn+blend", "memory_only"]
    assert list(summary.loc["dqn+blend", ["adaptation_fights_median", "adaptation_fights_q25",
                                          "adaptation_fights_q75"]]) == [5.0, 4.5, 5.5]
    assert summary.loc["dqn", "settled_share"] == pytest.approx(1 / 3)
    assert summary.loc["dqn", "win_rate_error_median"] == pytest.approx(0.2)
    assert summary.loc["dqn", "recovered_share"] == 1.0
    verdicts = adaptation.target_check(pd.DataFrame(rows))
    assert set(verdicts) == {("dqn+blend", "dqn"), ("memory_only", "dqn")}
    assert verdicts["dqn+blend", "dqn"].passed and not verdicts["memory_only", "dqn"].passed
    lines = adaptation.verdict_lines(verdicts, fights=40)
    assert lines[-1] == "Target met by: dqn+blend vs dqn"
    assert "lower bound" in lines[0] and lines[1].endswith("-> fail")


# --- config checks, before any compute -----------------------------------------------------


@pytest.mark.parametrize(("overrides", "match"), [
    (["variants=[ppo,lstm]"], r"unknown variant 'lstm'.*ppo, ppo\+episodic, dqn"),
    (["held_out=nobody"], r"unknown held-out persona 'nobody'.*novice, button_masher"),
    (["switch_to=nobody"], r"unknown persona 'nobody'.*rusher"),
    (["switch_to=dodger"], r"switch_to='dodger' is the held-out persona"),
    (["seeds=[]"], r"seeds=\[\] must list at least one seed"),
    (["players=0"], r"players must be >= 1"),
    (["window=21"], r"window=21 must be between 1 and half the series"),
    (["difficulty=veteran"], r"unknown difficulty 'veteran'.*easy, normal, hard"),
    (["difficulty=all"], r"one level: set difficulty=normal"),
    (["+llm.modle=x"], r"unknown llm key\(s\) modle.*model, base_url"),
    (["variants=[dqn]", "dqn_steps=500"], r"learning_starts=1000.*would never learn"),
    (["variants=[ppo]", "train_overrides=['num_envs=0']"], r"num_envs must be >= 1"),
])
def test_config_errors_name_the_fix(overrides: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        adaptation.prepare(compose(["seeds=[0]", *overrides]))


def test_invalid_config_fails_before_any_run(store: list[str], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown variant"):
        adaptation.run(compose([*store, "variants=[nope]", "experiment=never-created"]),
                       tmp_path)
    mlflow.set_tracking_uri(store[0].removeprefix("tracking.uri="))
    assert mlflow.get_experiment_by_name("never-created") is None
    assert not list(tmp_path.iterdir())


def test_trainings_leave_the_held_out_persona_out() -> None:
    plan = adaptation.prepare(compose(["seeds=[0]", "held_out=turtle", "capacity=300"]))
    assert set(plan.trainings) == {"ppo", "ppo+episodic", "dqn+blend"}
    for name, cfg in plan.trainings.items():
        training = adaptation.TRAININGS[name]
        config = train.typed_config(adaptation.seeded(cfg, training, 7))
        assert "turtle" not in config.player["members"] and "rusher" in config.player["members"]
        assert (config.seed, config.objective.name, config.difficulty.level) == (
            7, "engagement", "normal")
        assert config.eval.personas == ["turtle"] and config.experiment == "bosslab-adaptation"
        assert (config.agent.algo, config.rag.mode) == (training.algo, training.rag)
        assert config.rag.capacity == (300 if config.rag.enabled else 20_000)
    assert plan.band == Band(0.5, 0.1)


def test_memory_trainings_store_effects_that_the_bosses_steer_by_the_level_band(
        tmp_path: Path) -> None:
    plan = adaptation.prepare(compose(["seeds=[0]", "variants=[dqn,dqn+blend,memory_only]",
                                       "returns_n=2", "difficulty=hard", "dead_zone=0.25"]))
    typed = train.typed_config(plan.trainings["dqn+blend"])
    assert (typed.rag.returns, typed.rag.n) == ("effect", 2)
    as_returns = adaptation.prepare(compose(["seeds=[0]", "variants=[dqn+blend]",
                                             "returns=monte_carlo"]))
    assert train.typed_config(as_returns.trainings["dqn+blend"]).rag.returns == "monte_carlo"
    with pytest.raises(ValueError, match="use one of monte_carlo, n_step, effect"):
        adaptation.prepare(compose(["seeds=[0]", "variants=[dqn+blend]", "returns=td"]))
    with pytest.raises(ValueError, match=r"dead_zone=-1\.0 must be a finite number >= 0"):
        adaptation.prepare(compose(["seeds=[0]", "dead_zone=-1"]))
    layout = ObservationLayout.for_game(plan.game)
    memory, _ = new_memory(typed.rag, layout)
    trained = adaptation.Trained("run", DQN("MlpPolicy", BossFightVecEnv(2, game="duel")),
                                 memory.save(tmp_path / "memory"), typed.rag, layout)
    for name in ("dqn+blend", "memory_only"):
        boss = adaptation.build_boss(adaptation.VARIANTS[name], trained, plan, seed=0)
        assert isinstance(boss, ValueBlendedBoss | MemoryOnlyBoss)
        assert boss.config.steered
        assert boss.steering == Steering.for_game(plan.game, dead_zone=0.25)
        hard = plan.game.difficulty_levels["hard"]
        assert boss.steering.targets[2] == hard.target_player_win_rate == 0.3


# --- a tiny run into MLflow ---------------------------------------------------------------


def artifacts(run_id: str, folder: str | None = None) -> set[str]:
    found: set[str] = set()
    for entry in MlflowClient().list_artifacts(run_id, folder):
        found |= artifacts(run_id, entry.path) if entry.is_dir else {entry.path}
    return found


def test_tiny_run_reports_every_variant_and_logs_a_parent(store: list[str],
                                                          tmp_path: Path) -> None:
    variants = ["ppo+episodic", "dqn", "dqn+blend", "memory_only", "llm"]  # 2 trainings
    result = adaptation.run(compose([*store, *TINY, "seeds=[0]",
                                     f"variants=[{','.join(variants)}]"]), tmp_path)
    assert not result.interrupted
    assert list(result.summary["variant"]) == variants[:-1]  # llm: no endpoint, skipped
    assert list(result.summary.columns) == [
        "variant", "seeds", "adaptation_fights_median", "adaptation_fights_q25",
        "adaptation_fights_q75", "settled_share", "win_rate_error_median",
        "win_rate_error_q25", "win_rate_error_q75", "recovery_fights_median",
        "recovery_fights_q25", "recovery_fights_q75", "recovered_share",
        "final_win_rate_median", "final_win_rate_q25", "final_win_rate_q75"]
    assert (result.summary["seeds"] == 1).all()
    assert result.summary["adaptation_fights_median"].between(0, 6).all()
    assert result.summary["recovery_fights_median"].between(0, 3).all()
    # Every player played the whole series: each curve is 6 fights of win rates in quarters.
    curves = result.curves.groupby(["variant", "series"])["win_rate"]
    assert (curves.size() == 6).all() and len(curves.size()) == 8
    assert np.all(np.isin(result.curves["win_rate"], [0, 0.25, 0.5, 0.75, 1]))
    assert set(result.verdicts) == {("dqn+blend", "dqn"), ("memory_only", "dqn")}
    assert {p.name for p in result.files} == {
        "adaptation.csv", "adaptation.md", "adaptation.png", "adaptation_seeds.csv",
        "adaptation_curves.csv", "adaptation_timings.csv"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in result.files)
    assert "LLM baseline skipped" in (tmp_path / "adaptation.md").read_text()
    # The parent run: its files, metrics and tags; the two trainings are its children.
    client = MlflowClient()
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert artifacts(result.parent_run_id) >= {f"adaptation/{p.name}" for p in result.files}
    medians = dict(zip(result.summary["variant"], result.summary["adaptation_fights_median"],
                       strict=True))
    assert parent.data.metrics["dqn-blend/adaptation_fights_median"] == medians["dqn+blend"]
    assert parent.data.tags["llm_note"].startswith("LLM baseline skipped")
    assert parent.data.tags["interrupted"] == "false" and "target_met" in parent.data.tags
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    assert sorted(c.info.run_name for c in children) == [
        "adaptation-s0-dqn+blend", "adaptation-s0-ppo+episodic"]
    assert all(c.data.tags[adaptation.PARENT_TAG] == result.parent_run_id
               and c.info.status == "FINISHED" for c in children)
    assert set(result.per_seed["run_id"]) == {c.info.run_id for c in children}


def test_the_llm_variant_plays_through_a_chat_server_and_logs_every_call(
        store: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOSSLAB_TEST_KEY", "sk-adaptation")
    with OpenAIStubServer(api_key="sk-adaptation") as server:
        result = adaptation.run(compose([
            *store, *TINY, "seeds=[0]", "variants=[llm]", f"llm.base_url={server.base_url}",
            "llm.model=stub-chat", "llm.api_key_env=BOSSLAB_TEST_KEY", "+llm.cache_path=null"]),
            tmp_path)
        requests = len(server.chat_requests)
    assert list(result.summary["variant"]) == ["llm"] and requests > 0
    client = MlflowClient()
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert not parent.data.tags.get("llm_note", "").startswith("LLM baseline skipped")
    found = artifacts(result.parent_run_id, "llm")
    assert found == {"llm/seed_0_adaptation/calls.jsonl", "llm/seed_0_switch/calls.jsonl"}
    calls = parent.data.metrics["llm/seed_0_adaptation/calls"]
    assert calls >= 4 * 6 and parent.data.metrics["llm/seed_0_adaptation/requests"] > 0


def test_ctrl_c_in_a_training_stops_and_ends_the_parent_killed(
        store: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted_training(cfg: DictConfig, **_: Any) -> train.TrainResult:
        return train.TrainResult("not-a-run", 1024, interrupted=True)

    monkeypatch.setattr(train, "run", interrupted_training)
    result = adaptation.run(compose([*store, *TINY, "seeds=[0,1]", "variants=[ppo]"]),
                            tmp_path)
    assert result.interrupted and result.per_seed.empty
    parent = MlflowClient().get_run(result.parent_run_id)
    assert parent.info.status == "KILLED" and parent.data.tags["interrupted"] == "true"
    assert "(interrupted)" in (tmp_path / "adaptation.md").read_text()
