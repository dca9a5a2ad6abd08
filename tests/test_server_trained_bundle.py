"""Trained, retrieval-augmented bosses served end to end: train with a memory (MLflow run),
export the bundle, serve it with ``python -m serving``, play through real WebSockets.

- ``rag=episodic`` PPO: every decision is informed by the memory training left, each stored
  outcome grows the memory the next decisions read, and a restart rebuilds it.
- ``rag=blend`` DQN: the EVA blend of the exported Q-network with the served memory; a move
  that keeps failing against a player is chosen less once its outcomes are stored.
"""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from experiments import export, train
from experiments.compose import compose_config
from serving.bundle import load_bundle
from tests.server_helpers import (
    Game,
    ServerProcess,
    ask,
    connect,
    move_request,
    outcome,
    register,
    run,
    start_server,
)

TRAIN = ["budget=smoke", "num_envs=8", "log_every=512", "checkpoint_every=100000",
         "eval.fights=4", "eval.series=2", "eval.personas=[novice,dodger]",
         "experiment=bosslab-serve-trained"]
"""A few seconds of training into MLflow (tests/test_export.py's TRAIN_SMOKE)."""
EPISODIC = ["rag=episodic", "rag.capacity=5000", "agent.n_steps=64", "agent.batch_size=128"]
BLEND = ["agent=dqn", "rag=blend", "rag.capacity=5000", "budget.total_timesteps=1024"]
EXPORT = ["calibration_fights=4", "calibration_series=4", "record_envs=512"]
UNLIMITED = {"BOSSLAB_RATE_LIMIT_PER_SECOND": "100000", "BOSSLAB_RATE_LIMIT_BURST": "100000"}
ROUNDS = 60


def exported_bundle(root: Path, overrides: list[str]) -> Path:
    """Train (``overrides``) into an MLflow store under ``root`` and export the run."""
    store = [f"tracking.uri=sqlite:///{root}/mlflow.db",
             f"tracking.artifact_location={root}/mlruns"]
    run_id = train.run(compose_config("train", [*TRAIN, *store, *overrides])).run_id
    config = export.typed_config(compose_config(
        "export", [*store, f"out={root / 'bundles'}", f"source={run_id}", *EXPORT]))
    return export.export(config).path


@pytest.fixture(scope="module")
def episodic_server(tmp_path_factory: pytest.TempPathFactory,
                    one_torch_thread: None) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("episodic")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        bundle = exported_bundle(root, EPISODIC)
    server = start_server(root, bundle, env=UNLIMITED)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def blend_server(tmp_path_factory: pytest.TempPathFactory,
                 one_torch_thread: None) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("blend")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        bundle = exported_bundle(root, BLEND)
    manifest = load_bundle(bundle).manifest
    assert (manifest.policy.kind, manifest.retrieval.mode) == ("q_values", "blend")
    server = start_server(root, bundle, env=UNLIMITED)
    yield server
    server.stop()


def health(server: ServerProcess) -> dict[str, object]:
    with urllib.request.urlopen(f"{server.url}/api/v1/health", timeout=10) as answer:
        return dict(json.load(answer))


async def play(server: ServerProcess, game: Game, rounds: int, *, failing: str | None = None,
               report: bool = True) -> tuple[Counter[str], list[dict[str, object]]]:
    """Moves chosen over ``rounds`` decisions and the ``learning_update`` of each outcome.

    Outcomes (when ``report``): ``failing`` fails (0.0), every other move succeeds (1.0);
    without ``failing`` every move half succeeds."""
    ws, _ = await connect(server.ws_url, game, session_id="player-1")
    chosen: Counter[str] = Counter()
    updates: list[dict[str, object]] = []
    for _ in range(rounds):
        response = (await ask(ws, "boss_action_request", move_request()))["data"]
        assert response["retrieved"] > 0, response  # the memory training left informs it
        name = response["boss_action"]["boss_action"]
        chosen[name] += 1
        if report:
            effectiveness = 0.5 if failing is None else (0.0 if name == failing else 1.0)
            result = "partial" if failing is None else (
                "failure" if name == failing else "success")
            update = await ask(ws, "action_outcome",
                               outcome(response["action_id"], effectiveness, result))
            updates.append(update["data"])
    await ws.close()
    return chosen, updates


def test_an_episodic_bundle_reads_and_grows_its_memory(episodic_server: ServerProcess) -> None:
    game = register(episodic_server.url)
    trained = int(health(episodic_server)["memory_size"])  # type: ignore[call-overload]
    assert trained > 0  # the memory training wrote ships in the bundle
    _, updates = run(play(episodic_server, game, 20))
    assert [u["memory_size"] for u in updates] == list(range(trained + 1, trained + 21))
    assert not any(u["duplicate"] for u in updates)
    episodic_server.stop()
    episodic_server.restart()  # the memory is rebuilt from the stored outcomes
    _, after = run(play(episodic_server, game, 1))
    assert after[0]["memory_size"] == trained + 21


def test_a_blended_bundle_chooses_a_failing_move_less(blend_server: ServerProcess) -> None:
    untaught, taught = register(blend_server.url), register(blend_server.url)
    before, _ = run(play(blend_server, untaught, ROUNDS, report=False))
    favourite, count = before.most_common(1)[0]
    run(play(blend_server, taught, ROUNDS, failing=favourite))
    after, _ = run(play(blend_server, taught, ROUNDS, report=False))
    assert after[favourite] / ROUNDS < count / ROUNDS - 0.3, (before, after)
