"""Promote the best run of an experiment to the model registry as its game's champion boss.

    python -m experiments.promote experiment=bosslab-train metric=eval/engagement_score
    python -m experiments.promote experiment=bosslab-train metric=eval/timeout_rate mode=min

Among the FINISHED runs of the MLflow experiment that have ``metric`` (a training evaluation
``eval/...`` or a later ``experiments.evaluate`` one, ``evaluation/<name>/...``) and a
``model/model.zip``, the best by ``mode`` (max or min; ties go to the newest run) has its model
registered as ``boss-<game>`` (the run's ``game`` tag) and the alias ``champion`` (``alias=``)
set to that version. Evaluate or serve it as ``models:/boss-<game>@champion``:

    python -m experiments.evaluate boss=models:/boss-duel@champion
"""

from __future__ import annotations

from dataclasses import dataclass, field

import hydra
import mlflow
from hydra.core.config_store import ConfigStore
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import MISSING, DictConfig, OmegaConf

from experiments import tracking
from experiments.evaluate import MODEL_FILE, connect

MODES = ("max", "min")
MAX_RUNS = 5000
"""Finished runs of the experiment searched (newest first)."""


@dataclass
class PromoteConfig:
    """The schema of ``configs/promote.yaml``."""

    tracking: tracking.TrackingConfig = field(default_factory=tracking.TrackingConfig)
    """Where the runs and the registry live (group ``tracking``)."""
    experiment: str = MISSING
    """The MLflow experiment whose runs compete, e.g. bosslab-train."""
    metric: str = MISSING
    """The metric that ranks them, e.g. eval/engagement_score."""
    mode: str = "max"
    """max: the highest value wins; min: the lowest."""
    alias: str = "champion"
    """The alias set on the registered version."""


ConfigStore.instance().store(name="promote_schema", node=PromoteConfig)


@dataclass(frozen=True)
class Promotion:
    """What was promoted."""

    run_id: str
    metric: str
    value: float
    model_name: str
    version: str
    alias: str

    @property
    def uri(self) -> str:
        """The registered model URI, e.g. ``models:/boss-duel@champion``."""
        return f"models:/{self.model_name}@{self.alias}"


def finished_runs(client: MlflowClient, experiment: str) -> list[Run]:
    """The experiment's FINISHED runs, newest first (ValueError naming the fix)."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        known = [e.name for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
        raise ValueError(f"unknown experiment {experiment!r} in {mlflow.get_tracking_uri()}; "
                         f"experiments there: {', '.join(known) or 'none'}. Set "
                         f"experiment=<one of them> (training uses bosslab-train).")
    runs = client.search_runs([found.experiment_id], "attributes.status = 'FINISHED'",
                              max_results=MAX_RUNS, order_by=["attributes.start_time DESC"])
    if not runs:
        raise ValueError(f"experiment {experiment!r} has no finished runs to promote: train "
                         f"one first (python -m experiments.train experiment={experiment}).")
    return list(runs)


def best_run(runs: list[Run], metric: str, mode: str = "max") -> Run:
    """The run with the best ``metric`` (ties: the first, i.e. newest, run)."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: use mode=max (higher is better) or mode=min.")
    scored = [run for run in runs if metric in run.data.metrics]
    if not scored:
        known = sorted({m for run in runs for m in run.data.metrics
                        if m.startswith(("eval/", "evaluation/")) and m.count("/") <= 2})
        raise ValueError(f"no finished run has metric {metric!r}. Evaluation metrics of these "
                         f"runs: {', '.join(known[:20]) or 'none'}. Set metric=<one of them>, "
                         f"e.g. metric=eval/engagement_score.")
    sign = 1.0 if mode == "max" else -1.0
    return max(scored, key=lambda run: sign * run.data.metrics[metric])


def check_promotable(client: MlflowClient, run: Run) -> str:
    """The run's game (tag ``game``); ValueError if it has no game tag or no model."""
    game = run.data.tags.get("game")
    if not game:
        raise ValueError(f"run {run.info.run_id} has no 'game' tag, so it has no registry name "
                         f"boss-<game>: promote runs of python -m experiments.train.")
    models = {entry.path for entry in client.list_artifacts(run.info.run_id, "model")}
    if MODEL_FILE not in models:
        raise ValueError(f"run {run.info.run_id} has no {MODEL_FILE} to register.")
    return game


def register(client: MlflowClient, run: Run, model_name: str, alias: str) -> str:
    """A new version of ``model_name`` from the run's model folder, with ``alias`` on it."""
    try:
        client.get_registered_model(model_name)
    except MlflowException:
        client.create_registered_model(
            model_name, description="Boss policies promoted by experiments.promote.")
    run_id = run.info.run_id
    version = client.create_model_version(model_name, source=f"runs:/{run_id}/model",
                                          run_id=run_id)
    client.set_registered_model_alias(model_name, alias, version.version)
    return str(version.version)


def promote(experiment: str, metric: str, mode: str = "max",
            alias: str = "champion") -> Promotion:
    """Register the experiment's best finished run by ``metric`` and point ``alias`` at it."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: use mode=max (higher is better) or mode=min.")
    client = MlflowClient()
    run = best_run(finished_runs(client, experiment), metric, mode)
    model_name = f"boss-{check_promotable(client, run)}"
    version = register(client, run, model_name, alias)
    client.set_model_version_tag(model_name, version, "promoted_by", f"{metric} ({mode})")
    return Promotion(run.info.run_id, metric, run.data.metrics[metric], model_name, version,
                     alias)


def typed_config(cfg: DictConfig) -> PromoteConfig:
    """The composed config checked against the schema."""
    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PromoteConfig), cfg))
    assert isinstance(config, PromoteConfig)
    return config


def run(cfg: DictConfig) -> Promotion:
    """Connect to the store and promote (see the module docstring)."""
    config = typed_config(cfg)
    if config.mode not in MODES:
        raise ValueError(f"mode={config.mode!r}: use mode=max (higher is better) or mode=min.")
    connect(config.tracking)
    return promote(config.experiment, config.metric, config.mode, config.alias)


def message(promotion: Promotion) -> str:
    """What was promoted, and the URI to use."""
    return (f"Promoted run {promotion.run_id} ({promotion.metric} = {promotion.value:.4f}) as "
            f"{promotion.model_name} version {promotion.version}, alias "
            f"{promotion.alias!r}.\n  {promotion.uri}")


@hydra.main(config_path="../configs", config_name="promote", version_base="1.3")
def main(cfg: DictConfig) -> None:
    print(message(run(cfg)))


if __name__ == "__main__":
    main()
