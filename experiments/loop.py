"""The closed loop: served policy -> telemetry -> calibrated personas -> retrain -> evaluate ->
export -> hot reload into the running server.

    python -m experiments.loop server.url=http://127.0.0.1:8000 \\
        server.database_url=sqlite:///bosslab-serving.db 'train=["budget=quick"]'
    python -m experiments.loop telemetry=telemetry.parquet served=bundles/boss-duel-v3 reload=false
    python -m experiments.loop lineage=outputs/loop/<loop id>/bundles/boss-duel-run-1a2b3c4d
    python -m experiments.loop lineage=boss-duel/run-1a2b3c4d     # or by policy_version

Stages (:mod:`experiments.loop_stages`), each one MLflow run tagged with the loop's id and the
previous stage's run id (:mod:`experiments.loop_lineage`):

1. **telemetry**: the server's stored decisions and outcomes (``server.database_url``, or an
   export file ``telemetry=``) of ``game_id`` made by the served bundle, written to
   ``<out>/<loop id>/telemetry.parquet`` and recorded with its SHA-256, rows and sessions;
2. **calibrate**: ``experiments.calibrate`` against the served bundle (``served=``, or the one
   the server reports at ``GET /api/v1/admin/bundles``; overrides ``calibrate=[...]``); the
   fitted personas become one population (``population.yaml``, weighted by sessions);
3. **train**: ``experiments.train`` against that population (overrides ``train=[...]``);
4. **evaluate**: the new boss and the served one against the old players (``eval.old_player``,
   or the served bundle's training player, or the shipped population) and the fitted ones
   (:mod:`experiments.loop_evaluation`); with ``require_improvement=true`` the loop stops here
   unless the new boss scores at least the served one's score on the fitted players;
5. **export**: the bundle (``experiments.export``; overrides ``export=[...]``) in
   ``<out>/<loop id>/bundles/``, with ``LINEAGE.json`` and a *Lineage* section in its model card;
6. **reload** (``reload=true``): ``POST /api/v1/admin/bundles`` on ``server.url`` (with
   ``server.admin_key``); ``/api/v1/health`` must then report the new policy_version.

``lineage=<bundle path or policy_version>`` prints the chain of a bundle instead:
bundle -> reload -> export -> evaluate -> train (config) -> calibrate -> telemetry (file, hash,
database, rows, sessions). Everything runs on embedded defaults (``tracking=local``: the
SQLite store ``mlflow.db`` in the working directory).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from envs.game import load_game
from experiments import calibrate, export, tracking, train
from experiments.compose import compose_config
from experiments.loop_evaluation import Evaluated, evaluate_stage
from experiments.loop_lineage import describe, lineage, missing_stages
from experiments.loop_stages import (
    Exported,
    LoopContext,
    Reloaded,
    Server,
    calibrate_stage,
    export_stage,
    reload_stage,
    served_bundle,
    telemetry_stage,
    train_stage,
)


@dataclass
class ServerConfig:
    """The running server the loop learns from and reloads."""

    url: str | None = "http://127.0.0.1:8000"
    """Its base URL (null: no server; then set served= and reload=false)."""
    admin_key: str | None = None
    """Its admin key (BOSSLAB_ADMIN_KEY), for the admin endpoints; null when it has none."""
    database_url: str | None = "sqlite:///bosslab-serving.db"
    """Its database (BOSSLAB_DATABASE_URL), read for the telemetry unless telemetry= is set."""


@dataclass
class LoopEvalConfig:
    """The evaluation of the new boss and the served one."""

    fights: int = 60
    """Seeded fights per persona (per boss and set of players)."""
    series: int = 6
    """Players per persona fighting side by side."""
    old_player: str | None = None
    """The old players (a persona or population name or path); null: the served bundle's
    training player, or the shipped population."""


@dataclass
class LoopConfig:
    """The schema of ``configs/loop.yaml``."""

    server: ServerConfig = field(default_factory=ServerConfig)
    tracking: tracking.TrackingConfig = field(default_factory=tracking.TrackingConfig)
    """Where every stage's MLflow run goes (group ``tracking``)."""
    telemetry: str | None = None
    """An export file (.parquet or .csv); null: read server.database_url."""
    game_id: str | None = None
    """The game whose players are calibrated; null: the only game in the telemetry."""
    served: str | None = None
    """The bundle that served the telemetry (a directory or .tar.gz); null: ask the server."""
    only_served_version: bool = True
    """Calibrate only on the decisions the served bundle made (not earlier policies')."""
    calibrate: list[str] = field(default_factory=list)
    """Overrides of configs/calibrate.yaml, e.g. ["candidates=200"]."""
    train: list[str] = field(default_factory=lambda: ["budget=quick"])
    """Overrides of configs/train.yaml, e.g. ["budget=quick", "agent=maskable_ppo"]."""
    export: list[str] = field(default_factory=list)
    """Overrides of configs/export.yaml, e.g. ["calibration_fights=96"]."""
    eval: LoopEvalConfig = field(default_factory=LoopEvalConfig)
    jitter: float = 0.1
    """Per-player jitter of the fitted population (0 to 0.5)."""
    require_improvement: bool = False
    """Stop before exporting unless the new boss scores at least the served one on the
    fitted players."""
    reload: bool = True
    """Load the new bundle into the server at server.url."""
    out: str = "outputs/loop"
    """Each loop writes into <out>/<loop id>/."""
    experiment: str = "bosslab-loop"
    """MLflow experiment of the loop's own stages (calibrate and train use their own)."""
    seed: int = 0
    lineage: str | None = None
    """A bundle (path or policy_version): print its lineage and do nothing else."""


ConfigStore.instance().store(name="loop_schema", node=LoopConfig)


@dataclass(frozen=True)
class LoopResult:
    """What one loop made."""

    loop_id: str
    out: Path
    runs: dict[str, str]
    """stage -> MLflow run id."""
    evaluated: Evaluated
    exported: Exported | None
    """None when require_improvement stopped the loop."""
    reloaded: Reloaded | None


def typed_config(cfg: DictConfig) -> LoopConfig:
    """The composed config checked against the schema."""
    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(LoopConfig), cfg))
    assert isinstance(config, LoopConfig)
    return config


def validate(config: LoopConfig) -> None:
    """Everything a loop needs, checked before any compute (ValueError naming the fix)."""
    if config.telemetry is None and config.server.database_url is None:
        raise ValueError("no telemetry: set server.database_url=<the server's "
                         "BOSSLAB_DATABASE_URL> or telemetry=<an export file>")
    if config.server.url is None and (config.reload or config.served is None):
        raise ValueError("server.url is null: set it to the running server, or set "
                         "served=<the bundle that served the telemetry> and reload=false")
    if config.eval.fights < 1 or config.eval.series < 1:
        raise ValueError(f"eval.fights={config.eval.fights} and eval.series="
                         f"{config.eval.series} must be >= 1")
    if not 0.0 <= config.jitter <= 0.5:
        raise ValueError(f"jitter={config.jitter}: use a share from 0 to 0.5")
    check_stage_configs(config)


def check_stage_configs(config: LoopConfig) -> None:
    """The calibrate, train and export overrides compose and validate."""
    cfg = compose_config("calibrate", config.calibrate)
    cfg.telemetry, cfg.policy = "telemetry.parquet", "reactive"
    calibrate.validate(calibrate.typed_config(cfg))
    trained = train.typed_config(compose_config("train", config.train))
    train.validate(trained, load_game(trained.game))
    export.settings_of(export.typed_config(compose_config("export", config.export))).validate()


def run(config: LoopConfig) -> LoopResult:
    """One closed loop (see the module docstring)."""
    validate(config)
    loop_id = uuid.uuid4().hex[:12]
    out = (Path(config.out) / loop_id).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ctx = LoopContext(loop_id, out, config.tracking, config.experiment, config.seed)
    server = Server(config.server.url, config.server.admin_key) if config.server.url else None
    served = served_bundle(server, config.served, config.game_id)
    source = config.telemetry or str(config.server.database_url)
    telemetry = telemetry_stage(ctx, source, config.game_id, served, config.only_served_version)
    calibrated = calibrate_stage(ctx, telemetry, served, config.calibrate, config.jitter)
    trained = train_stage(ctx, calibrated, config.train)
    evaluated = evaluate_stage(ctx, trained, served, calibrated.population,
                               config.eval.old_player, config.eval.fights, config.eval.series,
                               trained.run_id)
    runs = {"telemetry": telemetry.run_id, "calibrate": calibrated.run_id,
            "train": trained.run_id, "evaluate": evaluated.run_id}
    if config.require_improvement and not improved(evaluated):
        return LoopResult(loop_id, out, runs, evaluated, None, None)
    exported = export_stage(ctx, trained, evaluated.run_id, config.export, runs)
    runs["export"] = exported.run_id
    reloaded = reload_stage(ctx, server, exported) if server and config.reload else None
    if reloaded is not None:
        runs["reload"] = reloaded.run_id
    return LoopResult(loop_id, out, runs, evaluated, exported, reloaded)


def improved(evaluated: Evaluated) -> bool:
    """The new boss scores at least the served one on the fitted players."""
    return evaluated.scores["new/fitted"] >= evaluated.scores["served/fitted"]


def print_lineage(bundle: str, config: LoopConfig) -> int:
    """Print a bundle's chain; 1 when it is incomplete."""
    mlflow.set_tracking_uri(tracking.tracking_uri(config.tracking))
    runs = lineage(bundle, config.experiment)
    print(f"Lineage of {bundle}:\n  {describe(runs)}")
    missing = missing_stages(runs)
    if missing:
        print(f"Incomplete: no {', '.join(missing)} stage in the chain.")
    return 1 if missing else 0


def report(result: LoopResult) -> None:
    """Scores, what was served, where to look."""
    scores = ", ".join(f"{k} {v:.3f}" for k, v in result.evaluated.scores.items())
    print(f"Loop {result.loop_id}: {result.out}\n  scores: {scores}")
    if result.exported is None:
        print("  The new boss does not beat the served one on the fitted players "
              "(require_improvement=true): nothing exported.")
        return
    print(f"  bundle: {result.exported.path} ({result.exported.policy_version})")
    if result.reloaded is not None:
        print(f"  served: {result.reloaded.before} -> {result.reloaded.after} for games "
              f"{', '.join(result.reloaded.games)} ({result.reloaded.notified} sockets told). "
              f"A restarted server serves its --bundle again: restart it with --bundle "
              f"{result.exported.path} to keep this one.")


def main(argv: Sequence[str]) -> int:
    config = typed_config(compose_config("loop", argv))
    if config.lineage is not None:
        return print_lineage(config.lineage, config)
    result = run(config)
    report(result)
    if result.exported is not None:
        return print_lineage(str(result.exported.path), config)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
