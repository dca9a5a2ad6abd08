"""Exporting trained bosses as policy bundles (experiments.export, agents.onnx_export)."""

from __future__ import annotations

import copy
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from agents.config import AGENT_CONFIGS
from agents.factory import make_agent
from agents.onnx_export import (
    ParityError,
    check_parity,
    export_onnx,
    onnx_outputs,
    torch_outputs,
)
from agents.policy import SB3BossPolicy
from agents.vec_env import BossFightVecEnv
from envs import game as game_module
from envs.game import load_game
from envs.observation import ObservationLayout, PlayerContext, Situation
from experiments import export, promote, train
from experiments.compose import compose_config
from serving.brain import BundleBrain
from serving.bundle import load_bundle
from tests.bundles import export_tiny, tiny_config

EXPERIMENT = "bosslab-export-test"
TRAIN_SMOKE = ["budget=smoke", "num_envs=8", "log_every=512", "checkpoint_every=100000",
               "eval.fights=4", "eval.series=2", "eval.personas=[novice,dodger]",
               "agent.n_steps=64", "agent.batch_size=128", f"experiment={EXPERIMENT}"]
"""A few seconds of PPO into MLflow (tests/test_train.py's SMOKE)."""
FAST_EXPORT = ["calibration_fights=4", "calibration_series=4", "record_envs=512"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Overrides that send runs to one SQLite store (and artifact folder) under tmp."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield [f"tracking.uri=sqlite:///{root}/mlflow.db",
               f"tracking.artifact_location={root}/mlruns"]


@pytest.fixture(scope="module")
def ppo_run(store: list[str], one_torch_thread: None) -> str:
    return train.run(compose_config("train", [*TRAIN_SMOKE, *store])).run_id


def export_config(store: list[str], out: Path, *overrides: str) -> export.ExportConfig:
    return export.typed_config(compose_config("export", [*store, f"out={out}", *FAST_EXPORT,
                                                         *overrides]))


def artifacts(run_id: str, folder: str | None = None) -> set[str]:
    found: set[str] = set()
    for entry in MlflowClient().list_artifacts(run_id, folder):
        found |= artifacts(run_id, entry.path) if entry.is_dir else {entry.path}
    return found


# --- the entry point, from MLflow -----------------------------------------------------------


def test_a_run_exports_as_a_checked_bundle_logged_to_the_run(
        ppo_run: str, store: list[str], tmp_path: Path) -> None:
    exported = export.export(export_config(store, tmp_path, f"source=runs:/{ppo_run}"))
    manifest = exported.manifest
    run = MlflowClient().get_run(ppo_run)
    assert exported.path == tmp_path / f"boss-duel-run-{ppo_run[:8]}"
    assert exported.archive == tmp_path / f"boss-duel-run-{ppo_run[:8]}.tar.gz"
    assert {p.name for p in exported.path.iterdir()} == {
        "manifest.json", "policy.onnx", "memory", "MODEL_CARD.md"}
    assert (manifest.name, manifest.policy_version) == ("boss-duel", f"boss-duel/run-{ppo_run[:8]}")
    assert manifest.game_fingerprint == run.data.tags["game_fingerprint"]
    assert (manifest.policy.kind, manifest.policy.file, manifest.policy.input_size,
            manifest.policy.retrieval_inputs) == ("actor_critic", "policy.onnx", 43, False)
    assert manifest.retrieval.mode == "none" and manifest.retrieval.embedder["kind"] == "numeric"
    lo, hi = manifest.retrieval.value_range
    assert lo < hi
    assert (manifest.source.run_id, manifest.source.experiment, manifest.source.git_commit) == (
        ppo_run, EXPERIMENT, run.data.tags["git_commit"])
    assert manifest.metrics["score"] == run.data.metrics["score"]
    assert manifest.metrics["eval/engagement_score"] == run.data.metrics["eval/engagement_score"]
    assert {f"calibration/{level}/player_win_rate" for level in ("easy", "normal", "hard")} <= set(
        manifest.metrics)
    assert exported.parity.rows >= 10_000 and manifest.metrics["parity/rows"] >= 10_000
    assert exported.parity.max_score_difference <= 1e-4
    assert list(exported.calibration["difficulty"]) == ["easy", "normal", "hard"]
    assert f"python -m serving --bundle {exported.path}" in export.message(exported)
    assert load_bundle(exported.archive).manifest == load_bundle(exported.path).manifest
    logged = artifacts(ppo_run, "bundle")
    name = exported.path.name
    assert {f"bundle/{name}/manifest.json", f"bundle/{name}/policy.onnx",
            f"bundle/{name}.tar.gz"} <= logged


def test_the_model_card_says_what_and_how_well(ppo_run: str, store: list[str],
                                               tmp_path: Path) -> None:
    exported = export.export(export_config(store, tmp_path, f"source={ppo_run}",
                                           "log_to_run=false"))
    card = (exported.path / "MODEL_CARD.md").read_text()
    for heading in ("Trained against", "Evaluation", "Exploit checks", "Difficulty calibration",
                    "Export checks", "Serving"):
        assert f"## {heading}" in card
    assert "| agent.algo | ppo |" in card and "| player.name | population |" in card
    assert "dodger" in card and "novice" in card  # the run's evaluation table
    for level, target in (("easy", "0.75 ± 0.10"), ("normal", "0.50 ± 0.10"),
                          ("hard", "0.30 ± 0.10")):
        assert f"| {level} | {target} |" in card
    assert "10,240 recorded observations" in card


def test_the_served_brain_plays_the_exported_policy_s_probabilities(
        tmp_path: Path, one_torch_thread: None) -> None:
    exported = export_tiny(tmp_path)
    brain = load_bundle(exported.path).new_brain()
    assert isinstance(brain, BundleBrain)
    # The server encodes a request with the simulator's encoder; with an empty memory the
    # blend keeps the policy's own probabilities.
    layout = ObservationLayout.for_game(load_game("duel"))
    situation = Situation(PlayerContext(dodge_frequency=0.6, movement_style="evasive"),
                          battle_phase="mid_battle", environment="forest", difficulty="easy")
    observation = layout.encode_situation(situation)[None]
    scores = onnx_outputs(exported.path / "policy.onnx", observation)["scores"][0]
    probabilities = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    for _ in range(20):
        decision = brain.decide(situation)
        index = list(brain.boss_actions).index(decision.move)
        assert decision.confidence == pytest.approx(probabilities[index], abs=1e-5)
        assert decision.retrieved == 0


def test_registered_models_and_best_runs_are_sources(ppo_run: str, store: list[str],
                                                     tmp_path: Path) -> None:
    export.connect(export_config(store, tmp_path).tracking)
    promotion = promote.promote(EXPERIMENT, "score")
    assert promotion.run_id == ppo_run
    by_alias = export.export(export_config(store, tmp_path / "alias", "log_to_run=false",
                                           "source=models:/boss-duel@champion"))
    assert by_alias.manifest.policy_version == f"boss-duel/v{promotion.version}-{ppo_run[:8]}"
    best = export.export(export_config(store, tmp_path / "best", "log_to_run=false",
                                       f"experiment={EXPERIMENT}", "metric=score"))
    assert best.manifest.source.run_id == ppo_run


@pytest.mark.parametrize(("overrides", "match"), [
    (["source=abc", "experiment=x", "metric=score"], r"either source=.*not both"),
    ([], r"nothing to export: set source=.*experiment=<name> metric=<metric>"),
    (["source=reactive"], r"scripted boss: it needs no export.*write_scripted_bundle"),
    (["source=not-a-run"], r"is not a boss: use"),
    (["source=" + "0" * 32], r"no such run"),
    (["observations=100"], r"at least 10000 recorded observations"),
    (["experiment=" + EXPERIMENT, "metric=score", "mode=best"], r"mode='best'.*mode=max"),
])
def test_export_settings_errors_name_the_fix(store: list[str], tmp_path: Path,
                                             overrides: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        export.export(export_config(store, tmp_path, *overrides))
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_a_changed_game_definition_warns_with_both_fingerprints(
        ppo_run: str, store: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    games = tmp_path / "games"
    shutil.copytree(game_module.GAME_DIR, games)
    edited = (games / "duel.yaml").read_text().replace("max_hp: 720", "max_hp: 800")
    (games / "duel.yaml").write_text(edited)
    monkeypatch.setattr(game_module, "GAME_DIR", games)
    trained, current = load_game("duel"), game_module.load_game(games / "duel.yaml")
    trained_fp = MlflowClient().get_run(ppo_run).data.tags["game_fingerprint"]
    assert current.fingerprint() != trained_fp and trained.fingerprint() == current.fingerprint()
    with pytest.warns(UserWarning, match=rf"{trained_fp}.*differs.*{current.fingerprint()}"):
        exported = export.export(export_config(store, tmp_path / "out", f"source={ppo_run}",
                                               "log_to_run=false"))
    assert exported.manifest.game_fingerprint == trained_fp  # the bundle keeps the run's game
    assert load_bundle(exported.path).game.boss.max_hp == 720


def test_an_existing_bundle_is_kept_unless_overwrite(ppo_run: str, store: list[str],
                                                     tmp_path: Path) -> None:
    first = export.export(export_config(store, tmp_path, f"source={ppo_run}",
                                        "log_to_run=false"))
    with pytest.raises(ValueError, match=r"already exists.*overwrite=true"):
        export.export(export_config(store, tmp_path, f"source={ppo_run}", "log_to_run=false"))
    again = export.export(export_config(store, tmp_path, f"source={ppo_run}",
                                        "log_to_run=false", "overwrite=true"))
    assert again.path == first.path and load_bundle(again.path).manifest.policy_version


def test_an_episodic_run_exports_its_memory_and_retrieval_inputs(
        store: list[str], tmp_path: Path, one_torch_thread: None) -> None:
    run_id = train.run(compose_config("train", [*TRAIN_SMOKE, *store, "rag=episodic",
                                                "rag.capacity=5000"])).run_id
    exported = export.export(export_config(store, tmp_path, f"source={run_id}"))
    manifest = exported.manifest
    entries = MlflowClient().get_run(run_id).data.metrics["memory/entries"]
    assert (manifest.policy.input_size, manifest.policy.retrieval_inputs) == (43 + 9, True)
    assert (manifest.retrieval.mode, manifest.retrieval.k) == ("episodic", 8)
    bundle = load_bundle(exported.path)
    assert bundle.memory_size == entries > 0
    brain = bundle.new_brain()
    decision = brain.decide(Situation(PlayerContext(dodge_frequency=0.3)))
    assert decision.retrieved > 0 and decision.move in brain.boss_actions


# --- building without MLflow: DQN, failures --------------------------------------------------


def test_a_dqn_exports_its_q_values(tmp_path: Path, one_torch_thread: None) -> None:
    exported = export_tiny(tmp_path, ["agent=dqn"])
    assert exported.manifest.policy.kind == "q_values"
    outputs = onnx_outputs(exported.path / "policy.onnx", np.zeros((5, 43), dtype=np.float32))
    assert set(outputs) == {"scores"} and outputs["scores"].shape == (5, 3)
    brain = load_bundle(exported.archive).new_brain()
    situation = Situation(PlayerContext(reaction_time=0.9), battle_phase="late_battle")
    assert len({brain.decide(situation).move for _ in range(20)}) == 1  # argmax, not a draw


def test_a_failed_parity_check_writes_nothing(tmp_path: Path, one_torch_thread: None,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    other = make_agent(AGENT_CONFIGS["ppo"](), BossFightVecEnv(2, game="duel"), seed=99)

    def export_another_network(model: object, path: Path) -> Path:
        return export_onnx(other, path)

    monkeypatch.setattr(export, "export_onnx", export_another_network)
    out = tmp_path / "bundles"
    with pytest.raises(ParityError, match=r"differ|another move"):
        export_tiny(out)
    assert not out.exists() or not any(out.iterdir())


def test_a_non_numeric_embedder_cannot_be_served() -> None:
    config = tiny_config(["rag=episodic", "rag.embedder.kind=openai"])
    with pytest.raises(ValueError, match=r"'openai' embedder.*numeric embedder only"):
        export.check_embedder(config, "0123abcd")


# --- agents.onnx_export ---------------------------------------------------------------------


@pytest.mark.parametrize("algo", ["ppo", "a2c", "maskable_ppo", "dqn"])
def test_every_agent_exports_with_parity_and_a_dynamic_batch(
        algo: str, tmp_path: Path, one_torch_thread: None) -> None:
    model = make_agent(AGENT_CONFIGS[algo](), BossFightVecEnv(2, game="dragon_keep"), seed=0)
    path = export_onnx(model, tmp_path / "policy.onnx")
    size = ObservationLayout.for_game(load_game("dragon_keep")).size
    rows = np.random.default_rng(0).random((10_000, size)).astype(np.float32)
    report = check_parity(model, path, rows)
    assert report.rows == 10_000 and report.max_score_difference <= 1e-4
    for batch in (1, 7):
        outputs = onnx_outputs(path, rows[:batch])
        assert outputs["scores"].shape == (batch, 6)
        assert ("value" in outputs) == (algo != "dqn")
    if algo == "ppo":  # the logits are SB3's: its probabilities, up to softmax
        probabilities = SB3BossPolicy(model, algo).move_values(rows[:50])
        logits = onnx_outputs(path, rows[:50])["scores"]
        expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(probabilities, expected, atol=1e-5)


def test_parity_catches_a_value_head_that_drifted(tmp_path: Path, one_torch_thread: None) -> None:
    model = make_agent(AGENT_CONFIGS["ppo"](), BossFightVecEnv(2, game="duel"), seed=0)
    drifted = copy.deepcopy(model)
    with torch.no_grad():
        value_net = drifted.policy.value_net
        assert isinstance(value_net, torch.nn.Linear)
        value_net.bias.add_(1e-3)
    path = export_onnx(drifted, tmp_path / "drifted.onnx")
    rows = np.random.default_rng(1).random((100, 43)).astype(np.float32)
    with pytest.raises(ParityError, match=r"value differ by up to 0.001.*tolerance 0.0001"):
        check_parity(model, path, rows)
    assert torch_outputs(model, rows)["value"].shape == (100, 1)
    with pytest.raises(ValueError, match=r"observations must be \(n >= 1, 43\)"):
        check_parity(model, path, rows[:, :40])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_parity(drifted, path, rows)  # against its own torch policy: no warning, no error
