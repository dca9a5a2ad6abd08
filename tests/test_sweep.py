"""Sweeps: ``--multirun`` jobs in parallel (joblib), an Optuna search and a local Ray instance,
each job an MLflow child run of one parent run."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from experiments import sweep

TINY = ["budget=smoke", "num_envs=4", "agent.n_steps=64", "agent.batch_size=64",
        "log_every=1024", "eval.fights=2", "eval.series=2", "eval.personas=[novice]"]
EXPERIMENT = "sweep-tests"


def multirun(tmp_path: Path, overrides: list[str], timeout: float = 300) -> Path:
    """``python -m experiments.train --multirun ...`` in tmp_path; returns the tracking db."""
    db = tmp_path / "mlflow.db"
    args = [sys.executable, "-m", "experiments.train", "--multirun", *TINY, *overrides,
            f"tracking.uri=sqlite:///{db}", f"experiment={EXPERIMENT}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
                          env=env, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return db


def sweep_runs(db: Path) -> tuple[pd.Series, pd.DataFrame]:
    """The sweep's parent run and its children."""
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    runs = mlflow.search_runs(experiment_names=[EXPERIMENT])
    assert isinstance(runs, pd.DataFrame)
    parents = runs[runs[f"tags.{sweep.SWEEP_TAG}"].notna()]
    assert len(parents) == 1
    parent = parents.iloc[0]
    children = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"]]
    return parent, children


def check_sweep(db: Path, jobs: int) -> tuple[pd.Series, pd.DataFrame]:
    """Every job is a finished child run with a score; the parent names the best one."""
    parent, children = sweep_runs(db)
    assert len(children) == jobs
    assert (children["status"] == "FINISHED").all() and parent["status"] == "FINISHED"
    assert children["metrics.score"].notna().all()
    best = children.sort_values("metrics.score").iloc[-1]
    assert parent["metrics.sweep/best_score"] == pytest.approx(best["metrics.score"])
    assert parent["tags.best_run_id"] in set(children["run_id"])
    assert parent["metrics.sweep/finished"] == jobs
    client = MlflowClient()
    for run_id in children["run_id"]:
        artifacts = {a.path for a in client.list_artifacts(run_id, "evaluation")}
        assert "evaluation/evaluation.csv" in artifacts
    return parent, children


def test_joblib_multirun_runs_jobs_as_child_runs_of_one_parent(tmp_path: Path) -> None:
    db = multirun(tmp_path, ["seed=0,1", "objective=engagement,defeat"])
    parent, children = check_sweep(db, jobs=4)
    assert parent["tags.bosslab.launcher"] == "JoblibLauncher"
    pairs = set(zip(children["params.objective.name"], children["params.seed"], strict=True))
    assert pairs == {(o, s) for o in ("engagement", "defeat") for s in ("0", "1")}
    assert all(name.startswith("#") for name in children["tags.mlflow.runName"])
    assert {p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()} == {"0", "1", "2", "3"}


def test_optuna_search_samples_hyperparameters_in_the_search_space(tmp_path: Path) -> None:
    db = multirun(tmp_path, ["search=ppo", "hydra.sweeper.n_trials=3",
                             "hydra.sweeper.n_jobs=2"])
    parent, children = check_sweep(db, jobs=3)
    assert parent["tags.bosslab.sweeper"] == "OptunaSweeper"
    rates = children["params.agent.learning_rate"].astype(float)
    assert ((rates >= 1e-4) & (rates <= 3e-3)).all() and rates.nunique() == 3
    assert set(children["params.agent.clip_range"].astype(float)) <= {0.1, 0.2, 0.3}
    optimization = (tmp_path / "sweep" / "optimization_results.yaml").read_text()
    assert "best_value" in optimization


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None,
                    reason="hydra-ray-launcher is not installed (pip install -e '.[ray]')")
def test_ray_launcher_runs_the_sweep_on_a_local_ray_instance(tmp_path: Path) -> None:
    # Ray on loopback: bound to the machine's external interface, its processes here took
    # minutes to reach each other (3m50s for this sweep, 16 s on 127.0.0.1).
    db = multirun(tmp_path, ["hydra/launcher=ray", "seed=0,1",
                             "+hydra.launcher.ray.init.num_cpus=2",
                             "+hydra.launcher.ray.init.include_dashboard=false",
                             "+hydra.launcher.ray.init._node_ip_address=127.0.0.1"], timeout=600)
    parent, _ = check_sweep(db, jobs=2)
    assert parent["tags.bosslab.launcher"] == "RayLauncher"
