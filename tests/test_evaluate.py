"""Evaluating, comparing and promoting bosses: scripted, trained runs and registered models."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from envs.bosses import masked_argmax
from envs.game import load_game
from experiments import compare, evaluate, evaluation, promote, train

CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")
SMOKE = ["budget=smoke", "log_every=1024", "checkpoint_every=100000", "eval.fights=2",
         "eval.series=2", "eval.personas=[novice]", "num_envs=4", "agent.n_steps=64",
         "agent.batch_size=128"]
PERSONAS = "personas=[novice,dodger]"
FAST = [PERSONAS, "fights=4", "series=2"]
EXPERIMENT = "evaluate-tests"
FILES = ("evaluation_normal.csv", "evaluation_normal.md", "evaluation_normal.png")


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(name, overrides=overrides)


class OneMoveBoss:
    """Always plays one move when it is legal (the first legal move otherwise)."""

    def __init__(self, game: str, move: str) -> None:
        self.index = load_game(game).move_names.index(move)
        self.name = f"always_{move}"

    def select_moves(self, observations: np.ndarray, action_masks: np.ndarray) -> np.ndarray:
        scores = np.zeros(np.shape(action_masks))
        scores[:, self.index] = 1.0
        return masked_argmax(scores, action_masks)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Every entry point sends runs to one SQLite store under tmp (the env variable wins)."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
        yield [f"tracking.artifact_location={root}/mlruns"]


@pytest.fixture(scope="module")
def runs(store: list[str]) -> list[str]:
    """Two tiny PPO training runs (seeds 0 and 1) in EXPERIMENT."""
    return [train.run(compose_config("train", [*SMOKE, *store, f"experiment={EXPERIMENT}",
                                               f"seed={seed}"])).run_id for seed in (0, 1)]


def artifacts(run_id: str, folder: str) -> set[str]:
    return {entry.path for entry in MlflowClient().list_artifacts(run_id, folder)}


def replay_data(path: Path) -> dict[str, Any]:
    """The replay embedded in a replay page."""
    page = path.read_text(encoding="utf-8")
    match = re.search(r'<script type="application/json" id="replay-data">(.*?)</script>', page,
                      re.S)
    assert match, f"no embedded replay in {path}"
    replay = json.loads(match.group(1))["replay"]
    assert isinstance(replay, dict)
    return replay


# --- telegraphs and known answers ------------------------------------------------------------


@pytest.mark.parametrize(("game", "expected"), [
    ("duel", ("special_move",)), ("dragon_keep", ("fire_breath", "dive_bomb")),
    ("known_answer", ("finisher",)),
])
def test_telegraphed_moves_are_the_long_wind_up_attacks(game: str,
                                                        expected: tuple[str, ...]) -> None:
    assert evaluation.telegraphed_moves(load_game(game)) == expected
    # A high threshold leaves only the longest attack.
    assert evaluation.telegraphed_moves(load_game(game), threshold=60.0) == expected[-1:]


def test_known_answer_finisher_boss_always_wins_and_is_flagged_as_one_move() -> None:
    table = evaluation.evaluate_boss(OneMoveBoss("known_answer", "finisher"),
                                   load_game("known_answer"), ["novice", "dodger"], 6, series=3)
    assert list(table["persona"]) == ["novice", "dodger"]
    assert (table["boss_win_rate"] == 1.0).all() and (table["player_win_rate"] == 0.0).all()
    assert (table["mix_finisher"] == 1.0).all() and (table["telegraph_share"] == 1.0).all()
    assert table["exploit"].all() and not table["no_telegraph"].any() and table["flagged"].all()


def test_a_boss_that_never_telegraphs_is_flagged_and_never_wins() -> None:
    table = evaluation.evaluate_boss(OneMoveBoss("known_answer", "wait"),
                                   load_game("known_answer"), ["novice"], 4, series=2)
    row = table.iloc[0]
    assert row["boss_win_rate"] == 0.0 and row["mix_wait"] == 1.0
    assert row["exploit"] and row["no_telegraph"] and row["telegraph_share"] == 0.0
    assert "never telegraphs" in evaluation.readable_evaluation(table)["flags"].iloc[0]


# --- scripted bosses -------------------------------------------------------------------------


def test_scripted_boss_evaluation_table_and_files(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a scripted boss must not create ./mlflow.db
    result = evaluate.run(compose_config("evaluate", ["boss=reactive", *FAST]), tmp_path / "out")
    table = result.table
    assert result.run_id is None and not (tmp_path / "mlflow.db").exists()
    assert table.shape[0] == 2 and list(table["boss"]) == ["reactive", "reactive"]
    assert (table["fights"] == 4).all() and (table["difficulty"] == "normal").all()
    assert ((table["win_rate_low"] <= table["player_win_rate"])
            & (table["player_win_rate"] <= table["win_rate_high"])).all()
    shares = table[["engagement_score", "boss_win_rate", "telegraph_share"]].to_numpy()
    assert ((shares >= 0) & (shares <= 1)).all()
    mix = table[[f"mix_{m}" for m in load_game("duel").move_names]]
    np.testing.assert_allclose(mix.sum(axis=1), 1.0)
    assert (table["mean_duration"] > 0).all()
    assert [p.name for p in result.paths] == list(FILES)
    assert all(p.stat().st_size > 0 for p in result.paths)
    markdown = (tmp_path / "out" / FILES[1]).read_text()
    assert "player win rate [95% CI]" in markdown and "move mix" in markdown
    pd.testing.assert_frame_equal(pd.read_csv(result.paths[0]), table, check_dtype=False)
    # One replay per row, linked from the CSV and the markdown by a relative path.
    assert list(table["replay"]) == ["replays/replay_novice.html", "replays/replay_dodger.html"]
    assert result.replays == [tmp_path / "out" / path for path in table["replay"]]
    for persona, path in zip(table["persona"], table["replay"], strict=True):
        assert f"[fight]({path})" in markdown
        shown = replay_data(tmp_path / "out" / path)
        assert (shown["boss"], shown["persona"]) == ("reactive", persona)
        assert shown["outcome"]["difficulty"] == "normal"
        assert all(step["explanation"] is None for step in shown["steps"])  # scripted


def test_replays_can_be_turned_off(tmp_path: Path) -> None:
    result = evaluate.run(compose_config("evaluate", ["boss=rotation", "replays=false",
                                                      "personas=[novice]", "fights=2",
                                                      "series=2"]), tmp_path)
    assert result.replays == [] and "replay" not in result.table.columns
    assert not (tmp_path / "replays").exists()


def test_every_level_is_evaluated_with_difficulty_all(tmp_path: Path) -> None:
    result = evaluate.run(compose_config("evaluate", ["boss=rotation", "difficulty=all",
                                                      "personas=[novice]", "fights=2",
                                                      "series=2"]), tmp_path)
    assert list(result.table["difficulty"]) == ["easy", "normal", "hard"]
    assert result.paths[0].name == "evaluation_all.csv"
    assert [p.name for p in result.replays] == [
        f"replay_novice_{level}.html" for level in ("easy", "normal", "hard")]
    assert [replay_data(p)["outcome"]["difficulty"] for p in result.replays] == [
        "easy", "normal", "hard"]


@pytest.mark.parametrize(("overrides", "match"), [
    (["boss=nobody"], r"boss='nobody' is not a boss.*random, rotation, reactive.*runs:/"),
    (["boss=rotation", "personas=[nobody]"], r"unknown persona 'nobody'"),
    (["boss=rotation", "fights=0"], r"fights must be >= 1"),
    (["boss=rotation", "difficulty.level=veteran"], r"game 'duel' has easy, normal, hard"),
    (["boss=rotation", "name=a/b"], r"name='a/b' may only hold"),
    (["boss=rotation", "telegraph_seconds=0"], r"telegraph_seconds must be > 0"),
])
def test_evaluate_errors_name_the_fix(overrides: list[str], match: str,
                                      tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=match):
        evaluate.run(compose_config("evaluate", [PERSONAS, "fights=2", *overrides]), tmp_path)


def test_unknown_runs_and_models_are_clear_errors(store: list[str], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no such run"):
        evaluate.run(compose_config("evaluate", [f"boss={'0' * 32}", *FAST]), tmp_path)
    with pytest.raises(ValueError, match=r"no such registered model.*experiments.promote"):
        evaluate.run(compose_config("evaluate", ['boss="models:/boss-nope@champion"', *FAST]),
                     tmp_path)


# --- trained runs ---------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["runs:/{}", "{}"])
def test_evaluating_a_run_logs_artifacts_and_metrics(form: str, runs: list[str],
                                                     tmp_path: Path) -> None:
    run_id = runs[0]
    name = "by_uri" if form.startswith("runs") else "by_id"
    result = evaluate.run(compose_config("evaluate", [f"boss={form.format(run_id)}", *FAST,
                                                      f"name={name}"]), tmp_path)
    assert result.run_id == run_id
    assert result.table["boss"].iloc[0] == f"ppo-{run_id[:8]}"
    folder = f"evaluation/{name}"
    assert artifacts(run_id, folder) == {
        *(f"{folder}/evaluation_{name}.{ext}" for ext in ("csv", "md", "png")),
        f"{folder}/replays"}
    assert artifacts(run_id, f"{folder}/replays") == {
        f"{folder}/replays/replay_{persona}.html" for persona in ("novice", "dodger")}
    # A trained boss explains every decision of its replays: its action probabilities.
    for path in result.replays:
        for step in replay_data(path)["steps"]:
            explained = step["explanation"]
            assert explained["kind"].startswith("action probabilities")
            assert sum(explained["values"].values()) == pytest.approx(1.0, abs=1e-5)
    metrics = MlflowClient().get_run(run_id).data.metrics
    assert metrics[f"evaluation/{name}/engagement_score"] == pytest.approx(
        result.table["engagement_score"].mean())
    assert f"evaluation/{name}/dodger/player_win_rate" in metrics
    assert f"evaluation/{name}/flagged" in metrics
    assert "eval/engagement_score" in metrics  # training's own evaluation is untouched


def test_a_retrieval_run_is_evaluated_with_its_memory_and_its_replays_show_it(
        store: list[str], tmp_path: Path) -> None:
    run_id = train.run(compose_config("train", [
        *SMOKE, *store, "experiment=evaluate-tests-rag", "rag=episodic",
        "rag.capacity=5000"])).run_id
    result = evaluate.run(compose_config("evaluate", [f"boss={run_id}", "personas=[dodger]",
                                                      "fights=2", "series=2"]), tmp_path)
    assert result.table["boss"].iloc[0] == f"ppo-{run_id[:8]}"
    steps = replay_data(result.replays[0])["steps"]
    assert all(set(step["explanation"]["parts"]) == {"memory", "found", "distance"}
               for step in steps)
    neighbours = [n for step in steps for n in step["explanation"]["neighbours"]]
    assert neighbours  # the run's memory answered
    assert {n["persona"] for n in neighbours} <= {"novice", "button_masher", "turtle",
                                                   "dodger", "rusher", "adaptive_expert"}


def test_a_run_plays_its_logged_game_and_warns_on_a_changed_definition(
        runs: list[str], tmp_path: Path) -> None:
    """A run whose logged duel differs from configs/game/duel.yaml: warned, and played as logged."""
    source = runs[0]
    config = OmegaConf.load(mlflow.artifacts.download_artifacts(
        run_id=source, artifact_path="config/config.yaml", dst_path=str(tmp_path)))
    config.game.boss.max_hp = 5000
    model = mlflow.artifacts.download_artifacts(run_id=source, artifact_path="model/model.zip",
                                                dst_path=str(tmp_path))
    experiment = MlflowClient().create_experiment(
        "evaluate-tests-changed", artifact_location=str(tmp_path / "mlruns"))
    with mlflow.start_run(experiment_id=experiment) as run:
        OmegaConf.save(config, tmp_path / "config.yaml")
        mlflow.log_artifact(str(tmp_path / "config.yaml"), artifact_path="config")
        mlflow.log_artifact(model, artifact_path="model")
    with pytest.warns(UserWarning, match=r"differs from configs/game/duel.yaml"):
        result = evaluate.run(compose_config("evaluate", [f"boss={run.info.run_id}", *FAST]),
                              tmp_path / "out")
    # 5000 HP: nobody beats that boss within the time limit.
    assert (result.table["player_win_rate"] == 0.0).all()


def test_compare_a_run_with_a_scripted_boss(runs: list[str], tmp_path: Path) -> None:
    table, paths = compare.run(compose_config("compare", [
        f"bosses=[reactive,{runs[0]},runs:/{runs[0]}]", *FAST]), tmp_path)
    label = f"ppo-{runs[0][:8]}"
    assert list(dict.fromkeys(table["boss"])) == ["reactive", label, f"{label}#2"]
    assert table.shape[0] == 6
    wide = compare.side_by_side(table)
    assert list(wide.columns) == ["persona", "reactive", label, f"{label}#2"]
    assert list(wide["persona"]) == ["novice", "dodger"]
    # The same run twice meets the same players: same cells.
    assert (wide[label] == wide[f"{label}#2"]).all() and " / " in wide[label].iloc[0]
    assert [p.name for p in paths] == ["compare.csv", "compare.md", "compare.png"]
    assert "| persona | reactive |" in paths[1].read_text()


def test_compare_two_scripted_bosses_and_its_errors(tmp_path: Path) -> None:
    table, _ = compare.run(compose_config("compare", ["bosses=[random,rotation]", *FAST]),
                           tmp_path)
    assert compare.side_by_side(table).shape == (2, 3)
    with pytest.raises(ValueError, match=r"one difficulty level.*not difficulty=all"):
        compare.run(compose_config("compare", ["bosses=[random]", "difficulty=all", *FAST]),
                    tmp_path)
    with pytest.raises(ValueError, match=r"boss='robot' is not a boss"):
        compare.run(compose_config("compare", ["bosses=[random,robot]", *FAST]), tmp_path)


# --- promotion -----------------------------------------------------------------------------


def test_promote_registers_the_best_run_and_the_alias_resolves(runs: list[str],
                                                               tmp_path: Path) -> None:
    client = MlflowClient()
    client.log_metric(runs[0], "test/rank", 0.2)
    client.log_metric(runs[1], "test/rank", 0.9)
    best = promote.run(compose_config("promote", [f"experiment={EXPERIMENT}",
                                                  "metric=test/rank"]))
    assert (best.run_id, best.value, best.model_name) == (runs[1], 0.9, "boss-duel")
    assert best.uri == "models:/boss-duel@champion"
    assert "models:/boss-duel@champion" in promote.message(best)
    version = client.get_model_version_by_alias("boss-duel", "champion")
    assert (version.run_id, str(version.version)) == (runs[1], best.version)

    worst = promote.promote(EXPERIMENT, "test/rank", mode="min")  # smoke scores are arbitrary
    assert (worst.run_id, worst.value) == (runs[0], 0.2)
    assert client.get_model_version_by_alias("boss-duel", "champion").run_id == runs[0]
    # The champion is a boss spec.
    result = evaluate.run(compose_config("evaluate", ['boss="models:/boss-duel@champion"',
                                                      *FAST, "name=champion"]), tmp_path)
    assert result.run_id == runs[0] and result.table["boss"].iloc[0] == worst.uri
    assert "evaluation/champion/engagement_score" in client.get_run(runs[0]).data.metrics


def test_promote_errors_name_the_fix(runs: list[str], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown experiment 'nope'.*evaluate-tests"):
        promote.promote("nope", "score")
    with pytest.raises(ValueError, match=r"no finished run has metric 'eval/nope'.*"
                                         r"eval/engagement_score"):
        promote.promote(EXPERIMENT, "eval/nope")
    MlflowClient().create_experiment("evaluate-tests-empty",
                                     artifact_location=str(tmp_path / "mlruns"))
    with pytest.raises(ValueError, match=r"no finished runs to promote"):
        promote.promote("evaluate-tests-empty", "score")
    with pytest.raises(ValueError, match=r"mode='best'.*mode=max"):
        promote.run(compose_config("promote", [f"experiment={EXPERIMENT}", "metric=score",
                                               "mode=best"]))
