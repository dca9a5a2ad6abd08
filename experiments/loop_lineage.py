"""The closed loop's lineage: how its MLflow runs link up, and how to walk them back.

Every stage of ``python -m experiments.loop`` is one MLflow run carrying the tags

==========================  ==============================================================
tag                         value
==========================  ==============================================================
``bosslab.loop_id``         the loop's id, shared by all its stages
``bosslab.stage``           telemetry, calibrate, train, evaluate, export or reload
``bosslab.previous_run``    the run id of the stage before it (none for telemetry)
``bosslab.<fact>``          what a person tracing a bundle needs (:data:`FACT_PREFIX`):
                            the telemetry file and its SHA-256, the database, rows and
                            sessions; the fitted personas; the training config; the scores;
                            the bundle's path and policy_version; the reload's answer
==========================  ==============================================================

The loop's own stages (telemetry, evaluate, export, reload) are runs of the loop's experiment;
the calibration and training runs are those ``experiments.calibrate`` and ``experiments.train``
make (in their experiments), tagged once they finished. The exported bundle holds
``LINEAGE.json`` (the loop id, the tracking store and every stage's run id) and a *Lineage*
section in its model card.

:func:`lineage` starts from a bundle (its directory, archive or policy_version) and follows
``bosslab.previous_run`` back to the telemetry: bundle -> export -> evaluate -> train ->
calibrate -> telemetry (and the reload that served it, when there was one).
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from experiments import tracking

TAG_PREFIX = "bosslab."
LOOP_TAG = "bosslab.loop_id"
STAGE_TAG = "bosslab.stage"
PREVIOUS_TAG = "bosslab.previous_run"
FACT_PREFIX = "bosslab.fact."
"""Tags of the facts a stage records (``bosslab.fact.sha256``...)."""
VERSION_FACT = "policy_version"
LINEAGE_FILE = "LINEAGE.json"
"""The bundle's own record of the loop that made it."""
STAGES = ("telemetry", "calibrate", "train", "evaluate", "export", "reload")


@dataclass(frozen=True)
class StageRun:
    """One stage of a loop as MLflow recorded it."""

    stage: str
    run_id: str
    experiment: str
    status: str
    facts: Mapping[str, str]
    """The stage's ``bosslab.fact.*`` tags, by fact name."""
    previous: str | None
    loop_id: str


def stage_tags(loop_id: str, stage: str, previous: str | None,
               facts: Mapping[str, object] | None = None) -> dict[str, str]:
    """The tags that put a run in a loop's chain."""
    tags = {LOOP_TAG: loop_id, STAGE_TAG: stage}
    if previous is not None:
        tags[PREVIOUS_TAG] = previous
    tags.update({f"{FACT_PREFIX}{key}": str(value)[:5000] for key, value in
                 (facts or {}).items()})
    return tags


def link_run(run_id: str, loop_id: str, stage: str, previous: str | None,
             facts: Mapping[str, object] | None = None) -> None:
    """Tag a finished run (calibration, training) as a stage of the loop."""
    client = MlflowClient()
    for key, value in stage_tags(loop_id, stage, previous, facts).items():
        client.set_tag(run_id, key, value)


def record_facts(facts: Mapping[str, object]) -> None:
    """Tag the active run with facts."""
    mlflow.set_tags({f"{FACT_PREFIX}{key}": str(value)[:5000] for key, value in facts.items()})


@contextmanager
def stage_run(config: tracking.TrackingConfig, experiment: str, loop_id: str, stage: str,
              previous: str | None) -> Iterator[str]:
    """A run of the loop's experiment for one stage, tagged; yields its id. An error ends it
    as FAILED (``tracking.open_run``)."""
    tracking.connect(config, experiment)
    with tracking.open_run(None, run_name=f"loop-{stage}") as run:
        mlflow.set_tags(stage_tags(loop_id, stage, previous))
        yield str(run.info.run_id)
        tracking.finish()


def stage_of(run_id: str, client: MlflowClient | None = None) -> StageRun:
    """A run of a loop, read back (ValueError when it is not in the tracking store)."""
    client = client or MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        raise ValueError(f"run {run_id} is not in {mlflow.get_tracking_uri()}: trace the "
                         "bundle with the tracking store the loop wrote to (tracking.uri, or "
                         "MLFLOW_TRACKING_URI)") from error
    tags = run.data.tags
    experiment = client.get_experiment(run.info.experiment_id)
    return StageRun(
        stage=tags.get(STAGE_TAG, "?"), run_id=run_id,
        experiment=experiment.name if experiment else run.info.experiment_id,
        status=run.info.status,
        facts={k.removeprefix(FACT_PREFIX): v for k, v in tags.items()
               if k.startswith(FACT_PREFIX)},
        previous=tags.get(PREVIOUS_TAG), loop_id=tags.get(LOOP_TAG, "?"))


def chain(last_run: str, client: MlflowClient | None = None) -> list[StageRun]:
    """``last_run`` and every stage before it, newest first, following ``previous_run``."""
    client = client or MlflowClient()
    runs = [stage_of(last_run, client)]
    while runs[-1].previous is not None and len(runs) <= len(STAGES):
        runs.append(stage_of(runs[-1].previous, client))
    return runs


def export_run_of(bundle: str, experiment: str) -> str:
    """The export run that wrote a bundle: from its ``LINEAGE.json`` (a directory or
    archive), else by its policy_version among the export runs of ``experiment``."""
    path = Path(bundle)
    if path.exists():
        return str(read_lineage_file(path)["export_run"])
    found = mlflow.search_runs(
        experiment_names=[experiment], output_format="list",
        filter_string=(f"tags.`{STAGE_TAG}` = 'export' and "
                       f"tags.`{FACT_PREFIX}{VERSION_FACT}` = '{bundle}'"))
    if not found:
        raise ValueError(f"lineage={bundle!r}: no such bundle path, and no export run of "
                         f"experiment {experiment!r} made policy_version {bundle!r}. Pass the "
                         "bundle's directory or .tar.gz, or a policy_version a loop exported.")
    return str(found[0].info.run_id)


def read_lineage_file(path: Path) -> dict[str, object]:
    """``LINEAGE.json`` of a bundle directory or archive."""
    if path.is_dir():
        file = path / LINEAGE_FILE
        if not file.is_file():
            raise ValueError(f"{path} has no {LINEAGE_FILE}: it was not made by "
                             "python -m experiments.loop (its manifest's source.run_id names "
                             "the training run it came from)")
        data = json.loads(file.read_text())
    else:
        with tarfile.open(path, "r:*") as archive:
            member = next((m for m in archive.getmembers()
                           if Path(m.name).name == LINEAGE_FILE), None)
            extracted = archive.extractfile(member) if member is not None else None
            if extracted is None:
                raise ValueError(f"{path} holds no {LINEAGE_FILE}: it was not made by "
                                 "python -m experiments.loop")
            data = json.loads(extracted.read())
    assert isinstance(data, dict)
    return data


def reload_after(export_run: str, experiment: str) -> StageRun | None:
    """The reload stage that served the bundle of ``export_run``, if there was one."""
    found = mlflow.search_runs(
        experiment_names=[experiment], output_format="list",
        filter_string=f"tags.`{PREVIOUS_TAG}` = '{export_run}'")
    return stage_of(str(found[0].info.run_id)) if found else None


def lineage(bundle: str, experiment: str) -> list[StageRun]:
    """The chain of a bundle, its reload first (if any), then export back to telemetry."""
    export_run = export_run_of(bundle, experiment)
    runs = chain(export_run)
    served = reload_after(export_run, experiment)
    return [served, *runs] if served is not None else runs


def describe(runs: list[StageRun]) -> str:
    """The chain as text, one block per stage."""
    blocks = []
    for run in runs:
        head = (f"{run.stage:<9} run {run.run_id} ({run.experiment}, {run.status}, "
                f"loop {run.loop_id})")
        facts = [f"    {key}: {value}" for key, value in sorted(run.facts.items())]
        blocks.append("\n".join([head, *facts]))
    return "\n  <- ".join(blocks)


def missing_stages(runs: list[StageRun]) -> list[str]:
    """Stages from telemetry to export the chain lacks (empty: complete)."""
    seen = {run.stage for run in runs}
    return [stage for stage in STAGES[:-1] if stage not in seen]
