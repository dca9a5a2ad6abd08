"""MLflow tracking for the lab's runs: where runs go, and small helpers to record them.

Where runs go (the Hydra group ``tracking``):

- ``tracking=local`` (default): an embedded SQLite store, ``sqlite:///mlflow.db`` in the working
  directory, no server. Artifacts go to ``./mlruns``. Browse with
  ``mlflow ui --backend-store-uri sqlite:///mlflow.db``.
- ``tracking=server``: the tracking server in the ``MLFLOW_TRACKING_URI`` environment variable.

``MLFLOW_TRACKING_URI`` set in the environment always wins over the config.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

ENV_VAR = "MLFLOW_TRACKING_URI"
CHECKPOINT_DIR = "checkpoints"
"""Artifact folder of the checkpoints, ``step_<env steps>.zip``."""
MAX_PARAM_LENGTH = 6000


@dataclass
class TrackingConfig:
    """Where MLflow records runs (``configs/tracking/*.yaml``)."""

    uri: str | None = None
    """Tracking URI, e.g. sqlite:///mlflow.db; null: the MLFLOW_TRACKING_URI env variable."""
    artifact_location: str | None = None
    """Where a new experiment stores artifacts; null: MLflow's default (./mlruns locally)."""


def settings(node: Any) -> TrackingConfig:
    """A composed ``tracking`` group (a DictConfig or mapping) checked against the schema."""
    typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrackingConfig), node))
    assert isinstance(typed, TrackingConfig)
    return typed


def browse_command() -> str:
    """How to look at the runs of the current tracking store."""
    uri = mlflow.get_tracking_uri()
    return f"open {uri}" if uri.startswith("http") else f"mlflow ui --backend-store-uri {uri}"


def tracking_uri(config: TrackingConfig) -> str:
    """The URI to use: ``MLFLOW_TRACKING_URI`` if set, else the config's."""
    uri = os.environ.get(ENV_VAR) or config.uri
    if not uri:
        raise ValueError(f"tracking.uri is null and {ENV_VAR} is not set: export "
                         f"{ENV_VAR}=http://<server>:5000 for tracking=server, or use "
                         f"tracking=local (sqlite:///mlflow.db in the working directory).")
    return uri


def connect(config: TrackingConfig, experiment: str) -> str:
    """Point MLflow at the store and experiment (created if new); returns the experiment id."""
    if not experiment:
        raise ValueError("experiment must name an MLflow experiment, e.g. experiment=bosslab.")
    mlflow.set_tracking_uri(tracking_uri(config))
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = str(found.experiment_id)
    else:
        experiment_id = mlflow.create_experiment(experiment,
                                                 artifact_location=config.artifact_location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def existing_run(run_id: str) -> Run:
    """The run to resume, or a ValueError that says how to find one."""
    try:
        return MlflowClient().get_run(run_id)
    except MlflowException as error:
        raise ValueError(f"resume={run_id!r}: no such run in {mlflow.get_tracking_uri()}. Use "
                         f"the run id shown at the end of the interrupted run (or in the MLflow "
                         f"UI), with the same tracking settings.") from error


@contextmanager
def open_run(resume: str | None, run_name: str | None = None,
             parent_run_id: str | None = None) -> Iterator[Run]:
    """Start a run (a child of ``parent_run_id``, if given), or reopen ``resume`` (same run
    id). The caller ends it (see finish).

    An error ends the run as FAILED, a KeyboardInterrupt (outside training) as KILLED.
    """
    if resume is not None:
        run = mlflow.start_run(run_id=resume)
    else:
        run = mlflow.start_run(run_name=run_name, parent_run_id=parent_run_id)
    try:
        yield run
    except BaseException as error:
        if mlflow.active_run() is not None:
            mlflow.end_run(status="KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise


def finish(status: str = "FINISHED") -> None:
    """End the active run with ``status`` (FINISHED, KILLED or FAILED)."""
    mlflow.end_run(status=status)


def log_metrics(metrics: Mapping[str, float], step: int) -> None:
    """Log metrics of the active run at an env step."""
    mlflow.log_metrics(dict(metrics), step=step)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``a.b.c`` keys (lists stay values): MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def log_params(params: Mapping[str, Any]) -> None:
    """Log params, shortened to MLflow's value limit; a resumed run keeps its first values."""
    run = mlflow.active_run()
    assert run is not None, "log_params needs an active run"
    logged = MlflowClient().get_run(run.info.run_id).data.params
    fresh = {k: str(v)[:MAX_PARAM_LENGTH] for k, v in params.items() if k not in logged}
    if fresh:
        mlflow.log_params(fresh)


def git_commit(directory: Path | None = None) -> str:
    """``git rev-parse HEAD`` of the checkout, or "unknown" outside one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_DIR}/step_{step:012d}.zip"


def latest_checkpoint(run_id: str, into: Path) -> tuple[Path, int]:
    """Download the run's checkpoint with the most env steps; returns its path and step."""
    entries = MlflowClient().list_artifacts(run_id, CHECKPOINT_DIR)
    steps = {int(Path(e.path).stem.removeprefix("step_")): e.path for e in entries
             if Path(e.path).stem.startswith("step_") and e.path.endswith(".zip")}
    if not steps:
        raise ValueError(f"run {run_id} has no checkpoint under {CHECKPOINT_DIR}/ to resume "
                         f"from: start a new run instead (drop resume=).")
    step = max(steps)
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=steps[step],
                                                dst_path=str(into))
    return Path(local), step


def download(run_id: str, artifact_path: str, into: Path) -> Path:
    """Download one artifact of a run."""
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path,
                                                    dst_path=str(into)))


def metric_history(run_id: str, keys: list[str]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) pairs of each metric over the whole run, resumes included, by step."""
    client = MlflowClient()
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
            for key in keys}


def artifact_path(path: str) -> str:
    """Where an artifact of the active run lives, as a local path when the store is local."""
    uri = mlflow.get_artifact_uri(path)
    return uri.removeprefix("file://")
