"""Calibrate personas from real telemetry: one fitted persona per cluster of real players.

    python -m experiments.calibrate telemetry=telemetry.parquet policy=bundles/boss-duel-v3
    python -m experiments.calibrate telemetry=sqlite:///bosslab-serving.db game_id=my-game \\
        policy=reactive game=duel

``telemetry`` is what the server stored (an export of ``python -m serving export-telemetry``, or
the database URL itself); ``policy`` is the boss that served it (the bundle directory or
archive, or a scripted boss name played on ``game``): candidate players are simulated against
the same policy. Steps:

1. Load and check the telemetry (:mod:`experiments.calibration_data`): bad telemetry is a
   ValueError naming the problem and the fix.
2. Summarize each session (context statistics and per-move responses) and cluster the sessions
   (:func:`experiments.calibration_report.choose_clusters`: number of clusters by BIC).
3. Fit the persona parameters of each cluster by simulation
   (:mod:`experiments.calibration_fit`), with uncertainties; parameters the telemetry cannot
   identify keep the nearest shipped persona's value.
4. Simulate each fitted persona and compare it with its cluster (fidelity).

Written to Hydra's output dir (and logged to MLflow, experiment ``experiment``):
``<name>_<k>.yaml`` per cluster (drop it into ``configs/player/`` and train with
``player=<name>_<k>``), ``parameters.csv``/``.md`` (values, uncertainties, identified or not),
``clusters.csv`` (BIC per number of clusters) and ``sessions.csv`` (each session's cluster),
``fidelity.csv``/``.md`` and ``fidelity.png``, ``calibration.md`` (all of it, with the notes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hydra
import mlflow
import numpy as np
import pandas as pd
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from envs.bosses import BossPolicy
from envs.game import GameDefinition
from envs.persona import PARAMETERS, PlayerPool, available_personas
from experiments import tracking
from experiments.calibration_data import (
    Checked,
    SessionSums,
    check_telemetry,
    fights_per_session,
    load_telemetry,
)
from experiments.calibration_fit import ClusterFit, FitSettings, Prior, Regression, fit_cluster
from experiments.calibration_policy import served_policy
from experiments.calibration_report import (
    Clustering,
    choose_clusters,
    fidelity_table,
    parameter_table,
    persona_yaml,
    plot_fidelity,
)
from experiments.calibration_sim import Cohort, LocalServedPolicy, play_sessions
from experiments.tournament import game_from_config, hydra_output_dir, markdown_table


@dataclass
class CalibrateConfig:
    """The schema of ``configs/calibrate.yaml``."""

    telemetry: str = MISSING
    """An export (.parquet or .csv from python -m serving export-telemetry) or the server's
    database URL (sqlite:///PATH, postgresql://...)."""
    policy: str = MISSING
    """The boss that served the telemetry: a bundle directory or .tar.gz, or a scripted boss
    name (random, rotation, reactive) played on ``game``."""
    game: Any = MISSING
    """The game a scripted ``policy`` plays (group ``game``); a bundle brings its own."""
    tracking: tracking.TrackingConfig = field(default_factory=tracking.TrackingConfig)
    """Where MLflow records the run (group ``tracking``)."""
    game_id: str | None = None
    """The game_id to calibrate when the telemetry holds several games."""
    min_sessions: int = 6
    """Fewer sessions (after dropping short ones) is an error, not a fit."""
    min_decisions: int = 30
    """Sessions with fewer decisions are dropped (and said so)."""
    max_clusters: int = 6
    """The most clusters BIC may choose."""
    min_cluster_sessions: int = 5
    """Sessions every cluster must hold for its number of clusters to be chosen: a smaller
    cluster cannot support a fit and its bootstrap over sessions."""
    candidates: int = 400
    """Candidate personas simulated per fitting round."""
    sessions_per_candidate: int = 4
    """Sessions each candidate plays (on average: sessions are assigned at random)."""
    rounds: int = 2
    """Fitting rounds: each further round refits around the last estimate."""
    bootstrap: int = 100
    """Bootstrap resamples of the sessions, for the uncertainties."""
    min_r2: float = 0.5
    """Parameters the regression predicts with a cross-validated R² below this are not
    identified (they keep the nearest shipped persona's value)."""
    prior_margin: float = 0.2
    """The candidates' box: the shipped personas' span widened by this share each side."""
    fidelity_sessions: int = 40
    """Sessions of each fitted persona simulated for the fidelity table."""
    name: str = "calibrated"
    """Fitted personas are named <name>_<cluster>."""
    seed: int = 0
    experiment: str = "bosslab-calibrate"
    """MLflow experiment of the run."""


ConfigStore.instance().store(name="calibrate_schema", node=CalibrateConfig)


@dataclass(frozen=True)
class FittedPersona:
    """One cluster's result."""

    name: str
    sessions: int
    fit: ClusterFit
    path: Path
    fidelity: pd.DataFrame


@dataclass(frozen=True)
class CalibrationResult:
    """What :func:`run` produced."""

    personas: list[FittedPersona]
    clustering: Clustering
    notes: tuple[str, ...]
    files: list[Path]
    run_id: str | None


def typed_config(cfg: DictConfig) -> CalibrateConfig:
    """The composed config checked against the schema."""
    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(CalibrateConfig), cfg))
    assert isinstance(config, CalibrateConfig)
    return config


def validate(config: CalibrateConfig) -> None:
    """Fail before loading anything: counts and shares in range."""
    counts = {"min_sessions": (config.min_sessions, 2), "min_decisions": (config.min_decisions, 1),
              "max_clusters": (config.max_clusters, 1), "candidates": (config.candidates, 20),
              "min_cluster_sessions": (config.min_cluster_sessions, 1),
              "sessions_per_candidate": (config.sessions_per_candidate, 2),
              "rounds": (config.rounds, 1), "bootstrap": (config.bootstrap, 2),
              "fidelity_sessions": (config.fidelity_sessions, 2)}
    for key, (value, least) in counts.items():
        if value < least:
            raise ValueError(f"{key}={value}: use an integer >= {least}.")
    if not 0.0 <= config.min_r2 <= 1.0 or config.prior_margin < 0.0:
        raise ValueError(f"min_r2={config.min_r2} must be in [0, 1] and prior_margin="
                         f"{config.prior_margin} >= 0.")
    if not config.name.isidentifier():
        raise ValueError(f"name={config.name!r}: use letters, digits and _ (it names the "
                         f"persona files, player=<name>_<k>).")


class Simulator:
    """Sessions like the real ones (length, level, arena) against the served policy."""

    def __init__(self, game: GameDefinition, boss: BossPolicy, exploration: float,
                 table: pd.DataFrame, seed: int) -> None:
        self.game = game
        self.boss = boss
        self.exploration = exploration
        self.fights = max(1, round(fights_per_session(table)))
        self.difficulty = _only(table["difficulty"], game.difficulty_levels)
        self.environment = _only(table["environment"], game.environments)
        self.seed = seed
        self.calls = 0

    def __call__(self, pool: PlayerPool, sessions: int) -> SessionSums:
        self.calls += 1
        policy = LocalServedPolicy(self.boss, self.exploration, seed=self.seed + self.calls)
        table = play_sessions([Cohort(pool, sessions, "sim")], policy, self.game,
                              fights=self.fights, difficulty=self.difficulty,
                              environment=self.environment, seed=self.seed + 31 * self.calls)
        return SessionSums.of(table, self.game.move_names)


def _only(values: pd.Series, known: Any) -> str | None:
    """The one value every decision has (and the game knows), else None (drawn per fight)."""
    seen = set(values.dropna().astype(str)) - {""}
    return seen.pop() if len(seen) == 1 and next(iter(seen)) in known else None


def calibrate(checked: Checked, game: GameDefinition, boss: BossPolicy, exploration: float,
              config: CalibrateConfig) -> tuple[Clustering, list[tuple[str, SessionSums,
                                                                      ClusterFit, SessionSums]]]:
    """Cluster the sessions and fit each cluster; returns per cluster (name, real sums, fit,
    the fitted persona's simulated sums)."""
    real = SessionSums.of(checked.table, game.move_names)
    clustering = choose_clusters(real, config.max_clusters, config.seed,
                                 config.min_cluster_sessions)
    simulate = Simulator(game, boss, exploration, checked.table, config.seed)
    personas = available_personas()
    settings = FitSettings(candidates=config.candidates,
                           sessions_per_candidate=config.sessions_per_candidate,
                           rounds=config.rounds, bootstrap=config.bootstrap,
                           min_r2=config.min_r2, margin=config.prior_margin, seed=config.seed)
    broad = Prior.around_shipped(personas, config.prior_margin)
    cache: list[Regression] = []
    results = []
    for k in range(int(clustering.labels.max()) + 1):
        sums = real.subset(np.flatnonzero(clustering.labels == k))
        fit = fit_cluster(sums, simulate, broad, cache, personas, settings, config.seed + k)
        pool = PlayerPool(names=(f"{config.name}_{k}",), weights=np.ones(1),
                          parameters=fit.values[np.newaxis], jitter=0.0)
        results.append((f"{config.name}_{k}", sums, fit,
                        simulate(pool, config.fidelity_sessions)))
    return clustering, results


def save(out_dir: Path, checked: Checked, clustering: Clustering, real: SessionSums,
         results: Sequence[tuple[str, SessionSums, ClusterFit, SessionSums]],
         source: str) -> tuple[list[FittedPersona], list[Path]]:
    """Write every output (see the module docstring); returns the personas and the files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    personas, files, fidelity = [], [], {}
    for name, sums, fit, simulated in results:
        path = out_dir / f"{name}.yaml"
        path.write_text(persona_yaml(name, fit, _description(fit, sums, source),
                                     _header(name, fit, sums, source)))
        fidelity[name] = fidelity_table(sums, simulated).assign(persona=name)
        personas.append(FittedPersona(name, len(sums.sessions), fit, path, fidelity[name]))
        files.append(path)
    params = pd.concat([parameter_table(p.name, p.fit) for p in personas], ignore_index=True)
    fidelity_all = pd.concat(fidelity.values(), ignore_index=True)
    sessions = pd.DataFrame({"session_id": real.sessions, "cluster": clustering.labels,
                             "persona": [results[k][0] for k in clustering.labels],
                             "decisions": real.decisions})
    tables = {"parameters": params, "clusters": clustering.bic, "sessions": sessions,
              "fidelity": fidelity_all}
    for stem, table in tables.items():
        table.to_csv(out_dir / f"{stem}.csv", index=False)
        files.append(out_dir / f"{stem}.csv")
    files.append(plot_fidelity(fidelity, out_dir / "fidelity.png"))
    files.append(_write_markdown(out_dir, checked, clustering, params, fidelity_all, source))
    return personas, files


def _description(fit: ClusterFit, sums: SessionSums, source: str) -> str:
    return (f"Calibrated from {len(sums.sessions)} real sessions of {source}; closest shipped "
            f"persona: {fit.nearest}.")


def _header(name: str, fit: ClusterFit, sums: SessionSums, source: str) -> list[str]:
    return [f"{name}: fitted by python -m experiments.calibrate from {source}",
            f"({len(sums.sessions)} sessions, {int(sums.decisions.sum())} decisions). Values",
            "± one standard deviation (bootstrap over sessions and the fit's cross-validated",
            "error). Not identified: the telemetry cannot tell; the nearest shipped persona's",
            f"({fit.nearest}) value is kept. Drop into configs/player/ to train with "
            f"player={name}."]


def _write_markdown(out_dir: Path, checked: Checked, clustering: Clustering,
                    params: pd.DataFrame, fidelity: pd.DataFrame, source: str) -> Path:
    path = out_dir / "calibration.md"
    shown = params.assign(value=params["value"].round(3),
                          uncertainty=params["uncertainty"].round(3), r2=params["r2"].round(2))
    notes = "\n".join(f"- {note}" for note in checked.notes) or "- none"
    path.write_text(
        f"# Persona calibration: {source}\n\n## Notes\n\n{notes}\n\n"
        f"## Clusters (BIC; the lowest is chosen; a Gaussian mixture on "
        f"{clustering.components} principal components of the session statistics)\n\n"
        f"{markdown_table(clustering.bic.round(2))}\n"
        f"## Fitted parameters\n\n"
        f"{markdown_table(shown[['persona', 'parameter', 'value', 'uncertainty', 'r2', 'source']])}"
        f"\n## Fidelity: real players against the fitted persona, simulated\n\n"
        f"{markdown_table(fidelity.round(3))}")
    (out_dir / "fidelity.md").write_text(markdown_table(fidelity.round(3)))
    return path


def log_run(config: CalibrateConfig, personas: Sequence[FittedPersona],
            clustering: Clustering, out_dir: Path) -> str:
    """An MLflow run with the config, per-persona metrics and every output as artifacts."""
    tracking.connect(config.tracking, config.experiment)
    with tracking.open_run(None, run_name="calibrate") as run:
        tracking.log_params(tracking.flatten({k: v for k, v in asdict(config).items()}))
        metrics = {"clusters": float(clustering.labels.max() + 1)}
        for persona in personas:
            metrics[f"{persona.name}/sessions"] = float(persona.sessions)
            for k, parameter in enumerate(PARAMETERS):
                metrics[f"{persona.name}/{parameter}"] = float(persona.fit.values[k])
                if persona.fit.identified[k]:
                    metrics[f"{persona.name}/{parameter}_sd"] = float(persona.fit.uncertainty[k])
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(out_dir), artifact_path="calibration")
        tracking.finish()
        return str(run.info.run_id)


def run(cfg: DictConfig, out_dir: Path) -> CalibrationResult:
    """Calibrate (see the module docstring); ``cfg`` is the composed ``calibrate`` config."""
    config = typed_config(cfg)
    validate(config)
    game, boss, exploration = served_policy(config.policy, lambda: game_from_config(cfg),
                                            config.seed)
    frame = load_telemetry(config.telemetry, config.game_id)
    checked = check_telemetry(frame, game, min_sessions=config.min_sessions,
                              min_decisions=config.min_decisions, game_id=config.game_id)
    clustering, results = calibrate(checked, game, boss, exploration, config)
    real = SessionSums.of(checked.table, game.move_names)
    personas, files = save(out_dir, checked, clustering, real, results, config.telemetry)
    run_id = log_run(config, personas, clustering, out_dir)
    return CalibrationResult(personas, clustering, checked.notes, files, run_id)


@hydra.main(config_path="../configs", config_name="calibrate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    result = run(cfg, hydra_output_dir())
    for note in result.notes:
        print(f"note: {note}")
    print(result.clustering.bic.to_string(index=False))
    for persona in result.personas:
        print(f"\n{persona.name} ({persona.sessions} sessions, nearest {persona.fit.nearest}):")
        print(parameter_table(persona.name, persona.fit)[
            ["parameter", "value", "uncertainty", "r2", "source"]].round(3).to_string(
                index=False))
    print("Saved:\n" + "\n".join(f"  {p}" for p in result.files)
          + f"\nMLflow run {result.run_id}: {tracking.browse_command()}")


if __name__ == "__main__":
    main()
