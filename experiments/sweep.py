"""Sweeps: every job of a Hydra ``--multirun`` is an MLflow child run under one parent run.

    python -m experiments.train --multirun seed=0,1,2 agent=ppo,a2c       # joblib, 2 at a time
    python -m experiments.train --multirun search=ppo                     # Optuna TPE search
    python -m experiments.train --multirun hydra/launcher=ray seed=0,1    # a Ray cluster

``configs/train.yaml`` registers :class:`MLflowSweepCallback` as a Hydra callback. When a
multirun starts, it creates the parent run in the sweep's experiment, tagged with the sweep's
output dir (``bosslab.sweep_dir``) and the command line's overrides. Each job, wherever the
launcher runs it (a joblib worker, a Ray worker on another machine), finds that parent by the
tag (:func:`parent_run_id`) and opens its own run as a child (``mlflow.parentRunId``), so the
parent only has to be reachable through the tracking store that the jobs share. When the
multirun ends, the parent records how many children finished and the best child by the
objective's score (``sweep/best_score``, tag ``best_run_id``), and ends.
"""

from __future__ import annotations

from typing import Any

import mlflow
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from experiments import tracking

SWEEP_TAG = "bosslab.sweep_dir"
"""Tag of a sweep's parent run: the sweep's output dir, which every job of it knows."""
SCORE_METRIC = "score"
"""The metric each training run ends with (its objective's score; see train.objective_score)."""


class MLflowSweepCallback(Callback):
    """Opens a parent run when a multirun starts and closes it with a summary at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        experiment_id = _connect(config)
        sweep_dir = str(config.hydra.sweep.dir)
        overrides = " ".join(config.hydra.overrides.task)
        run = MlflowClient().create_run(experiment_id, run_name=f"sweep {sweep_dir}", tags={
            SWEEP_TAG: sweep_dir, "bosslab.sweep_overrides": overrides,
            "bosslab.sweeper": _target_name(config.hydra.sweeper),
            "bosslab.launcher": _target_name(config.hydra.launcher)})
        print(f"MLflow parent run {run.info.run_id} for this sweep ({sweep_dir}).")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        experiment_id = _connect(config)
        parent = find_parent(experiment_id, str(config.hydra.sweep.dir))
        if parent is None:
            return
        client = MlflowClient()
        children = child_runs(experiment_id, parent.info.run_id)
        finished = [c for c in children if c.info.status == "FINISHED"]
        client.log_metric(parent.info.run_id, "sweep/jobs", len(children))
        client.log_metric(parent.info.run_id, "sweep/finished", len(finished))
        scored = [c for c in finished if SCORE_METRIC in c.data.metrics]
        if scored:
            best = max(scored, key=lambda c: c.data.metrics[SCORE_METRIC])
            client.log_metric(parent.info.run_id, "sweep/best_score",
                              best.data.metrics[SCORE_METRIC])
            client.set_tag(parent.info.run_id, "best_run_id", best.info.run_id)
        status = "FINISHED" if len(finished) == len(children) else "FAILED"
        client.set_terminated(parent.info.run_id, status=status)


def _connect(config: DictConfig) -> str:
    return tracking.connect(tracking.settings(config.tracking), str(config.experiment))


def _target_name(node: Any) -> str:
    return str(node.get("_target_", "?")).rsplit(".", maxsplit=1)[-1]


def find_parent(experiment_id: str, sweep_dir: str) -> Run | None:
    """The parent run of the sweep writing to ``sweep_dir``, if one was created."""
    quoted = sweep_dir.replace("'", "\\'")
    runs = MlflowClient().search_runs([experiment_id], f"tags.`{SWEEP_TAG}` = '{quoted}'",
                                      max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def child_runs(experiment_id: str, parent_id: str) -> list[Run]:
    return list(MlflowClient().search_runs(
        [experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=10_000))


def job_run_name() -> str | None:
    """In a job of a multirun, a run name from its number and overrides, e.g. ``#3 seed=1``."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    job = HydraConfig.get().job
    return f"#{job.num} {' '.join(HydraConfig.get().overrides.task)}"[:250]


def parent_run_id(experiment: str) -> str | None:
    """In a job of a multirun, the id of its sweep's parent run; None in a single run."""
    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    found = mlflow.get_experiment_by_name(experiment)
    if hydra.mode != RunMode.MULTIRUN or found is None:
        return None
    parent = find_parent(found.experiment_id, str(hydra.sweep.dir))
    return None if parent is None else parent.info.run_id
