"""The stages of the closed loop (:mod:`experiments.loop`), one function each.

Each stage is one MLflow run tagged into the loop's chain (:mod:`experiments.loop_lineage`)
and returns a frozen record the next stage takes:

1. :func:`telemetry_stage`: what the server stored (its database URL, or an export file),
   checked and written to ``<loop dir>/telemetry.parquet`` with its SHA-256 -> :class:`Telemetry`;
2. :func:`calibrate_stage`: ``experiments.calibrate`` against the served bundle, and the fitted
   personas as one population (``population.yaml``, weighted by sessions) -> :class:`Calibrated`;
3. :func:`train_stage`: ``experiments.train`` against that population -> :class:`Trained`;
4. :func:`evaluate_stage` (:mod:`experiments.loop_evaluation`): the new boss and the served one
   against the old personas and the fitted ones -> :class:`experiments.loop_evaluation.Evaluated`;
5. :func:`export_stage`: the bundle (``experiments.export.build_bundle``), with ``LINEAGE.json``
   and a *Lineage* section in its model card -> :class:`Exported`;
6. :func:`reload_stage`: the running server loads it (``POST /api/v1/admin/bundles``) and
   ``/api/v1/health`` must report it -> :class:`Reloaded`.

:func:`served_bundle` asks the server which bundle serves a game (``GET /api/v1/admin/bundles``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pandas as pd
import yaml
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from sqlalchemy.engine import make_url

from envs.persona import load_players
from experiments import calibrate, export, tracking, train
from experiments.calibration_data import load_telemetry
from experiments.compose import compose_config
from experiments.loop_lineage import LINEAGE_FILE, link_run, record_facts, stage_run
from serving.bundle import MODEL_CARD_FILE, archive_bundle, load_bundle

HTTP_TIMEOUT = 120.0
"""Seconds the server may take to answer (a reload replays every stored lesson)."""


@dataclass(frozen=True)
class LoopContext:
    """What every stage of one loop shares."""

    loop_id: str
    out: Path
    """The loop's directory: telemetry, calibration, population, evaluation, bundles."""
    tracking: tracking.TrackingConfig
    experiment: str
    """The MLflow experiment of the loop's own stages."""
    seed: int

    def sub_config(self, name: str, overrides: Sequence[str]) -> DictConfig:
        """``configs/<name>.yaml`` with ``overrides``, tracked in the loop's store."""
        cfg = compose_config(name, overrides)
        cfg.tracking = OmegaConf.structured(self.tracking)
        return cfg


@dataclass(frozen=True)
class Server:
    """The running server the loop reads from and reloads."""

    url: str
    admin_key: str | None = None

    def headers(self) -> dict[str, str]:
        return {"X-Admin-Key": self.admin_key} if self.admin_key else {}

    def get(self, path: str) -> Any:
        return _answer(httpx.get(f"{self.url.rstrip('/')}{path}", headers=self.headers(),
                                 timeout=HTTP_TIMEOUT), path)

    def post(self, path: str, body: Mapping[str, Any]) -> Any:
        return _answer(httpx.post(f"{self.url.rstrip('/')}{path}", headers=self.headers(),
                                  json=dict(body), timeout=HTTP_TIMEOUT), path)


def _answer(response: httpx.Response, path: str) -> Any:
    """The JSON answer, or a ValueError saying what the server refused (a degraded health
    report is still an answer)."""
    if response.status_code == 403 and "/admin/" in path:
        raise ValueError(f"{path}: the server wants its admin key: set server.admin_key to its "
                         f"BOSSLAB_ADMIN_KEY ({response.text[:200]})")
    degraded = response.status_code == 503 and path.endswith("/health")
    if response.status_code != 200 and not degraded:
        raise ValueError(f"{path} answered {response.status_code}: {response.text[:500]}")
    return response.json()


@dataclass(frozen=True)
class ServedBundle:
    """The bundle that served the telemetry (the one the new boss is compared with)."""

    path: str
    policy_version: str
    source_run: str | None
    """The training run it was exported from (manifest ``source.run_id``), if any."""


def served_bundle(server: Server | None, path: str | None, game_id: str | None) -> ServedBundle:
    """``path`` if given, else the bundle the server serves ``game_id`` with (or its first)."""
    if path is None:
        if server is None:
            raise ValueError("served=null needs server.url to ask which bundle is served; "
                             "or set served=<the bundle directory the server loaded>")
        loaded = server.get("/api/v1/admin/bundles")
        chosen = next((b for b in loaded if game_id in b["games"]), loaded[0] if loaded else None)
        if chosen is None:
            raise ValueError(f"the server at {server.url} serves no bundle")
        path = str(chosen["path"])
    bundle = load_bundle(path)
    return ServedBundle(path, bundle.manifest.policy_version, bundle.manifest.source.run_id)


# --- 1. telemetry --------------------------------------------------------------------------


@dataclass(frozen=True)
class Telemetry:
    """The telemetry the loop calibrates from."""

    run_id: str
    path: Path
    sha256: str
    game_id: str
    rows: int
    sessions: int


def telemetry_stage(ctx: LoopContext, source: str, game_id: str | None,
                    served: ServedBundle, only_served: bool) -> Telemetry:
    """Read the telemetry (database URL or export file), keep ``game_id``'s decisions (and
    only those the served bundle made with ``only_served``), write and record it."""
    frame = load_telemetry(source, game_id)
    game_id = _one_game(frame, game_id, source)
    if only_served:
        frame = frame[frame["policy_version"] == served.policy_version]
    if frame.empty:
        raise ValueError(f"telemetry {_shown(source)} holds no decision of game {game_id!r} "
                         f"served by {served.policy_version}: let players play first, or set "
                         "only_served_version=false to use every policy's decisions")
    path = ctx.out / "telemetry.parquet"
    frame.to_parquet(path, index=False)
    digest, sessions = sha256(path), int(frame["session_id"].nunique())
    facts = {"source": _shown(source), "file": path.resolve(), "sha256": digest,
             "game_id": game_id, "rows": len(frame), "sessions": sessions,
             "outcomes": int(frame["outcome"].notna().sum()), "served": served.policy_version}
    with stage_run(ctx.tracking, ctx.experiment, ctx.loop_id, "telemetry", None) as run_id:
        record_facts(facts)
        mlflow.log_artifact(str(path), artifact_path="telemetry")
    return Telemetry(run_id, path, digest, game_id, len(frame), sessions)


def _one_game(frame: pd.DataFrame, game_id: str | None, source: str) -> str:
    games = sorted(set(frame["game_id"].astype(str))) if "game_id" in frame else []
    if game_id is not None:
        return game_id
    if len(games) != 1:
        raise ValueError(f"telemetry {_shown(source)} holds games {games or 'none'}: set "
                         "game_id=<the game to calibrate>")
    return games[0]


def _shown(source: str) -> str:
    """A database URL without its password; a file as given."""
    return make_url(source).render_as_string(hide_password=True) if "://" in source else source


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- 2. calibration ------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibrated:
    """The fitted personas, as one population file."""

    run_id: str
    population: Path
    personas: tuple[Path, ...]


def calibrate_stage(ctx: LoopContext, telemetry: Telemetry, served: ServedBundle,
                    overrides: Sequence[str], jitter: float) -> Calibrated:
    """``experiments.calibrate`` on the telemetry against the served bundle."""
    cfg = ctx.sub_config("calibrate", overrides)
    cfg.telemetry, cfg.policy, cfg.game_id = str(telemetry.path), served.path, telemetry.game_id
    result = calibrate.run(cfg, ctx.out / "calibration")
    assert result.run_id is not None
    members = {str(p.path.resolve()): p.sessions for p in result.personas}
    population = write_population(ctx.out / "population.yaml", ctx.loop_id, members, jitter,
                                  telemetry)
    described = ", ".join(f"{p.name} ({p.sessions} sessions, nearest {p.fit.nearest})"
                          for p in result.personas)
    link_run(result.run_id, ctx.loop_id, "calibrate", telemetry.run_id,
             {"personas": described, "population": population})
    return Calibrated(result.run_id, population, tuple(p.path for p in result.personas))


def write_population(path: Path, loop_id: str, members: Mapping[str, int], jitter: float,
                     telemetry: Telemetry) -> Path:
    """A population of the fitted persona files, weighted by their sessions (checked by
    loading it)."""
    path.write_text(yaml.safe_dump({
        "name": f"loop-{loop_id}",
        "description": (f"The personas calibrated from {telemetry.sessions} sessions of game "
                        f"{telemetry.game_id} (telemetry sha256 {telemetry.sha256[:12]}), "
                        "weighted by their sessions."),
        "members": dict(members), "jitter": jitter}, sort_keys=False))
    load_players(str(path))
    return path


# --- 3. training ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Trained:
    """The new boss's training run."""

    run_id: str
    objective: str
    difficulty: str | None


def train_stage(ctx: LoopContext, calibrated: Calibrated, overrides: Sequence[str]) -> Trained:
    """``experiments.train`` against the fitted population (inline in its config: the members
    are the persona files' paths); the population and persona files logged to the run."""
    cfg = ctx.sub_config("train", overrides)
    cfg.player = OmegaConf.create(yaml.safe_load(calibrated.population.read_text()))
    cfg.run_name = cfg.run_name or f"loop-{ctx.loop_id}-train"
    result = train.run(cfg)
    if result.interrupted:
        raise KeyboardInterrupt(f"training run {result.run_id} was interrupted; the loop "
                                "stops before exporting")
    client = MlflowClient()
    for path in (calibrated.population, *calibrated.personas):
        client.log_artifact(result.run_id, str(path), artifact_path="players")
    link_run(result.run_id, ctx.loop_id, "train", calibrated.run_id, {
        "config": "config/config.yaml (artifact)", "player": calibrated.population.resolve(),
        "players": "players/ (artifacts: the population and its personas)",
        "agent": cfg.agent.algo, "budget": cfg.budget.total_timesteps, "score": result.score})
    return Trained(result.run_id, str(cfg.objective.name), cfg.difficulty.level)


# --- 5. export -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Exported:
    """The new bundle."""

    run_id: str
    path: Path
    archive: Path
    policy_version: str


def export_stage(ctx: LoopContext, trained: Trained, previous: str, overrides: Sequence[str],
                 runs: Mapping[str, str]) -> Exported:
    """The training run's bundle, carrying the loop's lineage, logged to both runs."""
    settings = dataclasses.replace(
        export.settings_of(export.typed_config(ctx.sub_config("export", overrides))),
        out=ctx.out / "bundles")
    client = MlflowClient()
    with stage_run(ctx.tracking, ctx.experiment, ctx.loop_id, "export", previous) as run_id:
        with tempfile.TemporaryDirectory(prefix="bosslab-loop-export-") as tmp:
            work = Path(tmp)
            model, game, config, memory = export.load_run(trained.run_id, work)
            source = export.run_source(export.existing_run(trained.run_id, client), None,
                                       client, work)
            built = export.build_bundle(model, game, config, memory, source, settings)
        lineage = {"loop_id": ctx.loop_id, "export_run": run_id,
                   "tracking_uri": mlflow.get_tracking_uri(), "experiment": ctx.experiment,
                   "runs": {**runs, "export": run_id}}
        archive = add_lineage(built.path, lineage)
        version = built.manifest.policy_version
        record_facts({"policy_version": version, "bundle": built.path.resolve(),
                      "archive": archive.resolve(), "training_run": trained.run_id})
        mlflow.log_artifacts(str(built.path), f"bundle/{built.path.name}")
        mlflow.log_artifact(str(archive), "bundle")
    export.log_bundle(client, trained.run_id, built._replace(archive=archive))
    return Exported(run_id, built.path, archive, version)


def add_lineage(bundle: Path, lineage: Mapping[str, Any]) -> Path:
    """Write ``LINEAGE.json`` and the model card's *Lineage* section into the bundle, check it
    still loads, and archive it again; returns the archive."""
    (bundle / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2) + "\n")
    runs = "\n".join(f"| {stage} | {run_id} |" for stage, run_id in lineage["runs"].items())
    with (bundle / MODEL_CARD_FILE).open("a") as card:
        card.write(f"\n\n## Lineage\n\nMade by the closed loop `{lineage['loop_id']}` "
                   f"(`python -m experiments.loop lineage={bundle.name}`), MLflow store "
                   f"`{lineage['tracking_uri']}`. Export run: `{lineage['export_run']}`.\n\n"
                   f"| stage | MLflow run |\n|---|---|\n{runs}\n")
    load_bundle(bundle)
    return archive_bundle(bundle)


# --- 6. hot reload -------------------------------------------------------------------------


@dataclass(frozen=True)
class Reloaded:
    """What the server answered."""

    run_id: str
    before: str | None
    after: str | None
    games: tuple[str, ...]
    notified: int


def reload_stage(ctx: LoopContext, server: Server, exported: Exported) -> Reloaded:
    """Load the bundle into the running server, then check ``/api/v1/health`` reports it."""
    with stage_run(ctx.tracking, ctx.experiment, ctx.loop_id, "reload", exported.run_id) as run_id:
        before = server.get("/api/v1/health")
        answer = server.post("/api/v1/admin/bundles", {"path": str(exported.path.resolve())})
        after = server.get("/api/v1/health")
        record_facts({"server": server.url, "before": before.get("policy_version"),
                      "after": after.get("policy_version"), "games": ",".join(answer["games"]),
                      "notified_sockets": answer["notified_sockets"],
                      "skipped": json.dumps(answer["skipped"])})
        if exported.policy_version not in (after.get("policy_version"), *after["policies"]):
            raise RuntimeError(f"after the reload the server reports {after['policies']}, "
                               f"not {exported.policy_version}: see its log")
    return Reloaded(run_id, before.get("policy_version"), after.get("policy_version"),
                    tuple(answer["games"]), int(answer["notified_sockets"]))
