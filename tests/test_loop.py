"""The closed loop end to end (``experiments.loop``), against a real server.

A server (uvicorn in a subprocess, SQLite, the scripted ``reactive`` bundle, no admin key: the
admin endpoints are open and say so in the log) serves synthetic players of two personas
(``experiments.telemetry``: known-answer telemetry through real sockets). A player's socket is
opened before the loop. Then one loop with tiny budgets: telemetry from the server's database
-> calibration -> training on the fitted personas -> evaluation -> export -> hot reload. The
test checks that the new bundle is served, that the socket stayed open with its session and
was told the new version, and that the bundle's lineage leads back to the telemetry file.
"""

from __future__ import annotations

import asyncio
import json
import tarfile
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from websockets.asyncio.client import ClientConnection

from experiments import loop
from experiments.compose import compose_config
from experiments.loop_lineage import (
    LOOP_TAG,
    PREVIOUS_TAG,
    STAGE_TAG,
    export_run_of,
    lineage,
    missing_stages,
)
from experiments.loop_stages import sha256
from experiments.telemetry import generate
from serving.bundle import load_bundle, write_scripted_bundle
from tests.server_helpers import (
    ServerProcess,
    ask,
    connect,
    move_request,
    outcome,
    receive,
    register,
)
from tests.test_server_reload import start_admin_server

T = TypeVar("T")
PLAYERS = {"dodger": 6, "rusher": 6}
TINY = {
    "calibrate": ["candidates=60", "sessions_per_candidate=2", "rounds=1", "bootstrap=10",
                  "fidelity_sessions=4", "max_clusters=3"],
    "train": ["budget=smoke", "num_envs=8", "agent.n_steps=64", "agent.batch_size=128",
              "eval.fights=4", "eval.series=2", "eval.personas=[dodger]"],
    "export": ["record_envs=512", "calibration_fights=4", "calibration_series=4"],
}
"""A loop of seconds per stage."""


class SocketThread:
    """An event loop in a thread, so a client socket answers pings while the loop runs."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        """Cancel what is left on the loop (the sockets' keep-alive tasks), then stop it."""
        self.call(_cancel_others())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def send_heartbeats(ws: ClientConnection, every: float = 5.0) -> None:
    """What an idle game client does: a heartbeat every few seconds, so the server does not
    close the socket after its idle timeout (60 s) while a slow host runs the loop."""
    while True:
        await asyncio.sleep(every)
        await ws.send(json.dumps({"type": "heartbeat", "data": {}}))


async def _cancel_others() -> None:
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The server, its telemetry, an open socket, then one loop run."""
    tmp = tmp_path_factory.mktemp("loop")
    patch = pytest.MonkeyPatch()
    patch.chdir(tmp)
    patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    server = start_admin_server(tmp / "server", write_scripted_bundle(tmp / "served"))
    sockets = SocketThread()
    try:
        yield run_loop(tmp, server, sockets)
    finally:
        sockets.stop()
        server.stop()
        patch.undo()


def run_loop(tmp: Path, server: ServerProcess, sockets: SocketThread) -> dict[str, Any]:
    generated = generate(server.url, PLAYERS, fights=2, seed=3)
    player = register(server.url)
    ws, status = sockets.call(connect(server.ws_url, player, session_id="watcher"))
    before = sockets.call(ask(ws, "boss_action_request", move_request()))
    beats = asyncio.run_coroutine_threadsafe(send_heartbeats(ws), sockets.loop)
    config = loop.typed_config(compose_config("loop", [
        f"calibrate={json.dumps(TINY['calibrate'])}", f"train={json.dumps(TINY['train'])}",
        f"export={json.dumps(TINY['export'])}", "eval.fights=4", "eval.series=2"]))
    config.server.url, config.server.database_url = server.url, server.database_url
    config.game_id, config.out = generated.game_id, str(tmp / "loops")
    result = loop.run(config)
    announced = sockets.call(receive(ws))
    late = sockets.call(ask(ws, "action_outcome", outcome(before["data"]["action_id"])))
    after = sockets.call(ask(ws, "boss_action_request", move_request()))
    beats.cancel()
    sockets.call(ws.close())
    return {"tmp": tmp, "server": server, "generated": generated, "status": status,
            "before": before, "announced": announced, "late": late, "after": after,
            "result": result, "config": config}


def test_the_new_bundle_is_served(world: dict[str, Any]) -> None:
    result = world["result"]
    version = result.exported.policy_version
    assert version.startswith("boss-duel/run-") and version != "scripted-reactive"
    assert result.reloaded.before == "scripted-reactive" and result.reloaded.after == version
    health = httpx.get(f"{world['server'].url}/api/v1/health", timeout=10).json()
    assert health["policy_version"] == version
    assert world["generated"].game_id in result.reloaded.games
    assert "bundle reload is OPEN" in world["server"].logs()
    assert load_bundle(result.exported.archive).manifest.policy_version == version


def test_a_socket_opened_before_the_reload_stays_open_and_is_told(world: dict[str, Any]) -> None:
    assert world["before"]["data"]["policy_version"] == "scripted-reactive"
    announced = world["announced"]
    assert announced["type"] == "status"
    assert announced["data"]["session_id"] == world["status"]["session_id"] == "watcher"
    assert announced["data"]["policy_version"] == world["result"].exported.policy_version
    assert world["late"]["type"] == "learning_update"  # the old version's decision
    assert world["after"]["data"]["policy_version"] == world["result"].exported.policy_version


def test_every_stage_is_a_run_linked_to_the_one_before(world: dict[str, Any]) -> None:
    result = world["result"]
    client = MlflowClient()
    order = ["telemetry", "calibrate", "train", "evaluate", "export", "reload"]
    assert list(result.runs) == order
    for previous, stage in zip([None, *order], order, strict=False):
        tags = client.get_run(result.runs[stage]).data.tags
        assert tags[LOOP_TAG] == result.loop_id and tags[STAGE_TAG] == stage
        assert tags.get(PREVIOUS_TAG) == (result.runs[previous] if previous else None)
    experiments = {stage: client.get_experiment(client.get_run(run_id).info.experiment_id).name
                   for stage, run_id in result.runs.items()}
    assert experiments["calibrate"] == "bosslab-calibrate"
    assert experiments["train"] == "bosslab-train"
    assert experiments["export"] == "bosslab-loop"


def test_the_lineage_of_the_bundle_leads_back_to_the_telemetry(world: dict[str, Any]) -> None:
    result, generated = world["result"], world["generated"]
    chain = lineage(str(result.exported.path), "bosslab-loop")
    assert [run.stage for run in chain] == ["reload", "export", "evaluate", "train",
                                           "calibrate", "telemetry"]
    assert missing_stages(chain) == []
    by_stage = {run.stage: run for run in chain}
    telemetry = by_stage["telemetry"].facts
    file = Path(telemetry["file"])
    assert telemetry["sha256"] == sha256(file)
    assert telemetry["game_id"] == generated.game_id
    assert int(telemetry["rows"]) == generated.decisions == len(pd.read_parquet(file))
    assert int(telemetry["sessions"]) == sum(PLAYERS.values())
    assert "serving.db" in telemetry["source"]
    assert by_stage["export"].facts["policy_version"] == result.exported.policy_version
    assert export_run_of(result.exported.policy_version, "bosslab-loop") == result.runs["export"]
    assert export_run_of(str(result.exported.archive), "bosslab-loop") == result.runs["export"]


def test_the_training_config_and_players_are_in_the_training_run(world: dict[str, Any]) -> None:
    result = world["result"]
    train_run = result.runs["train"]
    work = world["tmp"] / "check"
    config = OmegaConf.load(mlflow.artifacts.download_artifacts(
        run_id=train_run, artifact_path="config/config.yaml", dst_path=str(work)))
    assert config.player.name == f"loop-{result.loop_id}"
    members = dict(config.player.members)
    assert sum(members.values()) == sum(PLAYERS.values())  # weighted by sessions
    assert all(Path(member).parent == result.out / "calibration" for member in members)
    logged = {Path(a.path).name for a in MlflowClient().list_artifacts(train_run, "players")}
    assert logged == {"population.yaml", *(Path(member).name for member in members)}


def test_the_bundle_carries_its_export_run(world: dict[str, Any]) -> None:
    result = world["result"]
    card = (result.exported.path / "MODEL_CARD.md").read_text()
    assert result.runs["export"] in card and "## Lineage" in card
    with tarfile.open(result.exported.archive) as archive:
        names = {Path(m.name).name for m in archive.getmembers()}
    assert "LINEAGE.json" in names
    recorded = json.loads((result.exported.path / "LINEAGE.json").read_text())
    assert recorded["runs"] == {k: v for k, v in result.runs.items() if k != "reload"}


def test_the_evaluation_compares_both_bosses_on_both_sets_of_players(
        world: dict[str, Any]) -> None:
    evaluated = world["result"].evaluated
    assert set(evaluated.scores) == {"new/old", "new/fitted", "served/old", "served/fitted"}
    table = evaluated.table
    fitted = set(table.loc[table["players"] == "fitted", "persona"])
    assert fitted and all(name.startswith("calibrated_") for name in fitted)
    assert set(table.loc[table["players"] == "old", "persona"]) == {
        "novice", "button_masher", "turtle", "dodger", "rusher", "adaptive_expert"}
    assert (table["fights"] == 4).all()


def test_the_lineage_command_prints_the_chain(world: dict[str, Any],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    result = world["result"]
    assert loop.main([f"lineage={result.exported.policy_version}"]) == 0
    printed = capsys.readouterr().out
    for stage, run_id in result.runs.items():
        assert run_id in printed and stage in printed
    assert sha256(Path(world["result"].out / "telemetry.parquet")) in printed


def test_bad_loop_configs_fail_before_any_compute(tmp_path: Path) -> None:
    def config(*overrides: str) -> loop.LoopConfig:
        return loop.typed_config(compose_config("loop", list(overrides)))

    with pytest.raises(ValueError, match=r"server\.url is null"):
        loop.validate(config("server.url=null"))
    with pytest.raises(ValueError, match="no telemetry"):
        loop.validate(config("server.database_url=null"))
    with pytest.raises(ValueError, match="jitter"):
        loop.validate(config("jitter=0.9"))
    with pytest.raises(ValueError, match="candidates"):
        loop.validate(config('calibrate=["candidates=3"]'))
    with pytest.raises(ValueError, match="must be >= 1"):
        loop.validate(config('train=["fights_per_player=0"]'))
