"""Export a trained boss as a policy bundle the server loads (``serving.bundle``).

    python -m experiments.export source=<run id>                      # or runs:/<run id>
    python -m experiments.export source=models:/boss-duel@champion    # a registered model
    python -m experiments.export experiment=bosslab-train metric=score # the best finished run
    python -m experiments.export source=<run id> out=dist/bundles calibration_fights=96

The source is an MLflow run of ``experiments.train`` (its ``model/model.zip``, its logged
config, its ``memory/`` when it trained with ``rag``), a registered model version (its run), or
the best FINISHED run of ``experiment`` by ``metric`` (``mode=max`` or ``min``, as
``experiments.promote`` picks). The export:

1. loads the model and plays it in the simulator as the run evaluated it (with its memory for
   ``rag`` runs), recording ``observations`` (at least 10,000) model inputs: the encoded
   observations, with the retrieval features appended for ``rag=episodic``;
2. writes the policy as ONNX (:mod:`agents.onnx_export`) and checks it against the torch policy
   on every recorded row: the same best move, scores and values within 1e-4. A failed check
   raises and writes nothing;
3. calibrates: the boss against the run's player (persona or population) at each of the game's
   difficulty levels, ``calibration_fights`` fights each: the player win rate against the
   level's target band;
4. writes ``<out>/boss-<game>-<version>/`` (``manifest.json``, ``policy.onnx``, ``memory/``,
   ``MODEL_CARD.md``; see :mod:`serving.bundle`) and ``<out>/boss-<game>-<version>.tar.gz``,
   checks that the bundle loads and decides, and logs both to the run under ``bundle/``.

The version is ``boss-<game>/v<n>-<run id[:8]>`` for a registered model version ``n``,
``boss-<game>/run-<run id[:8]>`` otherwise. A run trained on a game definition that differs
from today's ``configs/game/<game>.yaml`` warns (UserWarning with both fingerprints); the bundle
carries the run's own definition. Served with ``python -m serving --bundle <path>``.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import hydra
import numpy as np
import pandas as pd
from hydra.core.config_store import ConfigStore
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from stable_baselines3.common.base_class import BaseAlgorithm

from agents.factory import load_agent
from agents.onnx_export import (
    VALUE,
    ParityReport,
    check_parity,
    export_onnx,
    policy_kind,
    torch_outputs,
)
from agents.retrieval import RetrievalConfig, RetrievalPolicyBoss
from envs.boss_fight import BossFightVectorEnv
from envs.bosses import BossPolicy
from envs.game import GameDefinition
from envs.observation import ObservationLayout, PlayerContext, Situation
from experiments import tracking
from experiments.difficulty import calibration_table
from experiments.evaluate import (
    MODEL_FILE,
    connect,
    existing_run,
    registered_run,
    run_game,
    run_id_of,
)
from experiments.promote import MODES, best_run, finished_runs
from experiments.tournament import markdown_table
from experiments.train import MEMORY_DIR, TrainConfig, TrainingMemory, trained_boss
from experiments.train import typed_config as train_config
from rag.embedders import make_embedder
from rag.memory import EpisodicMemory
from serving.bundle import (
    Manifest,
    PolicySpec,
    RetrievalSpec,
    SourceSpec,
    archive_bundle,
    empty_memory,
    load_bundle,
    manifest_for,
    now_iso,
    numeric_embedder_spec,
    write_bundle,
)

MIN_OBSERVATIONS = 10_000
"""The parity check runs on at least this many recorded model inputs."""
VALUE_PERCENTILES = (5.0, 95.0)
"""value_range: these percentiles of the critic's values (or Q-values) and the memory's."""
CARD_PARAMS = ("agent.algo", "player.name", "objective.name", "difficulty.level",
               "budget.total_timesteps", "rag.mode", "num_envs", "fights_per_player", "seed")
"""Run params the model card shows under "Trained against"."""


@dataclass
class ExportConfig:
    """The schema of ``configs/export.yaml``."""

    tracking: tracking.TrackingConfig = field(default_factory=tracking.TrackingConfig)
    """Where the runs and registered models live (group ``tracking``)."""
    source: str | None = None
    """A run (runs:/<id> or the bare id) or a registered model (models:/boss-duel@champion);
    null: the best finished run of ``experiment`` by ``metric``."""
    experiment: str | None = None
    """With ``metric``: export the best FINISHED run of this MLflow experiment."""
    metric: str | None = None
    """The metric that ranks the runs of ``experiment`` (e.g. score, eval/engagement_score)."""
    mode: str = "max"
    """max: the highest ``metric`` wins; min: the lowest."""
    out: str = "bundles"
    """Directory the bundle and its archive are written to."""
    observations: int = MIN_OBSERVATIONS
    """Model inputs recorded for the ONNX parity check (at least 10,000)."""
    record_envs: int = 256
    """Fights played side by side while recording."""
    calibration_fights: int = 48
    """Fights per difficulty level of the calibration (the run's player against the boss)."""
    calibration_series: int = 8
    """Players fighting side by side in the calibration."""
    seed: int = 0
    """Seeds the recording and the calibration fights."""
    overwrite: bool = False
    """Replace a bundle of the same version already in ``out`` (else that is an error)."""
    log_to_run: bool = True
    """Log the bundle and its archive to the source run under ``bundle/``."""


ConfigStore.instance().store(name="export_schema", node=ExportConfig)


@dataclass(frozen=True)
class ExportSettings:
    """How a bundle is checked and calibrated (the non-MLflow part of ExportConfig)."""

    out: Path
    observations: int = MIN_OBSERVATIONS
    record_envs: int = 256
    calibration_fights: int = 48
    calibration_series: int = 8
    seed: int = 0
    overwrite: bool = False

    def validate(self) -> None:
        if self.observations < MIN_OBSERVATIONS:
            raise ValueError(f"observations={self.observations}: the parity check needs at "
                             f"least {MIN_OBSERVATIONS} recorded observations; set "
                             f"observations={MIN_OBSERVATIONS} or more.")
        for key in ("record_envs", "calibration_fights", "calibration_series"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}={getattr(self, key)}: use a positive number "
                                 f"(configs/export.yaml has the defaults).")


class RunSource(NamedTuple):
    """Where the exported policy comes from, and what its run recorded (all optional)."""

    run_id: str | None = None
    experiment: str | None = None
    git_commit: str | None = None
    version: str | None = None
    """The registered model version, if exported from models:/..."""
    params: Mapping[str, str] = {}
    metrics: Mapping[str, float] = {}
    evaluation_md: str | None = None
    """The run's evaluation table (``evaluation/evaluation.md``)."""
    evaluation: pd.DataFrame | None = None
    """The run's evaluation rows (``evaluation/evaluation.csv``), for the exploit checks."""


class Exported(NamedTuple):
    """What an export wrote."""

    path: Path
    archive: Path
    manifest: Manifest
    parity: ParityReport
    calibration: pd.DataFrame

    @property
    def serve_command(self) -> str:
        return f"python -m serving --bundle {self.path}"


# --- resolving the source -----------------------------------------------------------------


def resolve_run(config: ExportConfig, client: MlflowClient) -> tuple[str, str | None]:
    """The run id to export and its registered model version (None unless models:/...)."""
    if config.source is not None:
        if config.experiment is not None or config.metric is not None:
            raise ValueError("give either source=<run or model> or experiment=<name> "
                             "metric=<metric>, not both.")
        spec = config.source.strip()
        run_id = run_id_of(spec, client)
        if run_id is None:
            raise ValueError(f"source={spec!r} is a scripted boss: it needs no export. Write its "
                             f"bundle with serving.bundle.write_scripted_bundle(<dir>, game, "
                             f"{spec!r}), or export a trained run (source=<run id>).")
        return run_id, _registered_version(spec, client)
    if config.experiment is None or config.metric is None:
        raise ValueError("nothing to export: set source=<run id | runs:/<id> | "
                         "models:/boss-duel@champion>, or experiment=<name> metric=<metric> "
                         "for the best finished run.")
    if config.mode not in MODES:
        raise ValueError(f"mode={config.mode!r}: use mode=max (higher is better) or mode=min.")
    run = best_run(finished_runs(client, config.experiment), config.metric, config.mode)
    return run.info.run_id, None


def _registered_version(spec: str, client: MlflowClient) -> str | None:
    if not spec.startswith("models:/"):
        return None
    registered_run(spec, client)  # raises the friendly error for an unknown model
    path = spec.removeprefix("models:/")
    if "@" in path:
        name, alias = path.split("@", maxsplit=1)
        return str(client.get_model_version_by_alias(name, alias).version)
    return path.partition("/")[2]


def run_source(run: Run, version: str | None, client: MlflowClient, work: Path) -> RunSource:
    """What the run recorded that the manifest and the model card show."""
    run_id = run.info.run_id
    experiment = client.get_experiment(run.info.experiment_id)
    return RunSource(
        run_id=run_id, experiment=experiment.name if experiment else None,
        git_commit=run.data.tags.get("git_commit"), version=version,
        params=dict(run.data.params), metrics=dict(run.data.metrics),
        evaluation_md=_optional_text(run_id, "evaluation/evaluation.md", work),
        evaluation=_optional_table(run_id, "evaluation/evaluation.csv", work))


def _optional_text(run_id: str, path: str, work: Path) -> str | None:
    try:
        return tracking.download(run_id, path, work / "source").read_text()
    except (MlflowException, OSError):
        return None


def _optional_table(run_id: str, path: str, work: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(tracking.download(run_id, path, work / "source"))
    except (MlflowException, OSError, pd.errors.ParserError):
        return None


def load_run(run_id: str, work: Path) -> tuple[BaseAlgorithm, GameDefinition, TrainConfig,
                                              EpisodicMemory | None]:
    """The run's model, game (warning if today's file differs), config and memory."""
    logged = OmegaConf.load(tracking.download(run_id, "config/config.yaml", work / "config"))
    assert isinstance(logged, DictConfig)
    config = train_config(logged)
    check_embedder(config, run_id)
    game = run_game(run_id, work)
    try:
        model = load_agent(tracking.download(run_id, MODEL_FILE, work / "model"))
    except (MlflowException, OSError) as error:
        raise ValueError(f"run {run_id} has no {MODEL_FILE}: it did not finish training. Resume "
                         f"it (python -m experiments.train resume={run_id}) or pick a finished "
                         f"run.") from error
    memory = None
    if config.rag.enabled:
        memory = EpisodicMemory.load(tracking.download(run_id, MEMORY_DIR, work / "memory"))
    return model, game, config, memory


def check_embedder(config: TrainConfig, run_id: str | None) -> None:
    """The server embeds contexts numerically only: fail early for another embedder."""
    kind = config.rag.embedder.kind
    if config.rag.enabled and kind != "numeric":
        raise ValueError(f"run {run_id} keys its memory with the {kind!r} embedder, but the "
                         f"server embeds contexts with the numeric embedder only (no model, no "
                         f"network). Export a run trained with rag.embedder.kind=numeric.")


# --- recording, calibrating ---------------------------------------------------------------


def record_inputs(boss: BossPolicy, model: BaseAlgorithm, game: GameDefinition,
                  config: TrainConfig, settings: ExportSettings) -> np.ndarray:
    """``settings.observations`` model inputs met while the boss plays the run's player."""
    env = BossFightVectorEnv(num_envs=settings.record_envs, game=game, player=config.player,
                             objective=config.objective.name,
                             difficulty=config.difficulty.level,
                             fights_per_player=config.fights_per_player)
    observations, _ = env.reset(seed=settings.seed)
    rows: list[np.ndarray] = []
    recorded = 0
    while recorded < settings.observations:
        inputs = (boss.augmented(observations) if isinstance(boss, RetrievalPolicyBoss)
                  else np.asarray(observations, dtype=np.float32))
        rows.append(inputs)
        recorded += len(inputs)
        moves = boss.select_moves(observations, env.action_masks())
        observations, *_ = env.step(moves)
    inputs = np.concatenate(rows)
    expected = model.observation_space.shape
    assert expected is not None and inputs.shape[1] == expected[0], (inputs.shape, expected)
    return inputs


def calibrate(boss: BossPolicy, game: GameDefinition, config: TrainConfig,
              settings: ExportSettings) -> pd.DataFrame:
    """The player win rate at each difficulty level, against the level's target band."""
    return calibration_table(boss, game, config.player, fights=settings.calibration_fights,
                             series=settings.calibration_series, seed=settings.seed,
                             objective=config.objective.name)


def value_range(model: BaseAlgorithm, inputs: np.ndarray,
                memory: EpisodicMemory) -> tuple[float, float]:
    """[lo, hi] of the policy's value units: the union of the percentile ranges of its critic
    values (Q-values for a DQN) on the recorded inputs and of the memory's stored values.

    Each source gets its own percentiles: the recorded inputs give tens of thousands of values
    and the memory perhaps a few hundred, so percentiles of the two pooled would ignore a
    memory whose returns lie outside the network's values (an undertrained Q-network), and
    then clip every memory to one end of the range."""
    outputs = torch_outputs(model, inputs)
    own = outputs[VALUE] if VALUE in outputs else outputs["scores"]
    sources = [np.ravel(own).astype(np.float64), memory.records().values.astype(np.float64)]
    ranges = [np.percentile(values, VALUE_PERCENTILES) for values in sources if len(values)]
    lo, hi = float(min(r[0] for r in ranges)), float(max(r[1] for r in ranges))
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi - lo < 1e-6:
        middle = lo if math.isfinite(lo) else 0.0
        return middle - 0.5, middle + 0.5
    return lo, hi


# --- the bundle ---------------------------------------------------------------------------


def policy_version(game: GameDefinition, source: RunSource) -> str:
    """``boss-<game>/v<n>-<run8>`` (registered), ``boss-<game>/run-<run8>``, or ``.../local``."""
    run8 = (source.run_id or "")[:8]
    if source.version is not None:
        return f"boss-{game.name}/v{source.version}-{run8}"
    return f"boss-{game.name}/run-{run8}" if run8 else f"boss-{game.name}/local"


def bundle_dir_name(manifest: Manifest) -> str:
    """``boss-duel/v3-1a2b3c4d`` -> ``boss-duel-v3-1a2b3c4d`` (safe as a file name)."""
    version = manifest.policy_version.removeprefix(f"{manifest.name}/")
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in version)
    return f"{manifest.name}-{safe}"


def retrieval_spec(config: TrainConfig, game: GameDefinition,
                   bounds: tuple[float, float]) -> RetrievalSpec:
    """The run's rag settings as the manifest records them."""
    defaults = RetrievalConfig()
    weights = config.rag.embedder.feature_weights if config.rag.enabled else {}
    return RetrievalSpec(mode=config.rag.mode, k=config.rag.k, lam=config.rag.lam,
                         delta=defaults.delta, distance_scale=defaults.distance_scale,
                         value_clip=defaults.value_clip,
                         embedder=numeric_embedder_spec(game, weights), value_range=bounds)


def manifest_metrics(source: RunSource, calibration: pd.DataFrame,
                     parity: ParityReport) -> dict[str, float]:
    """The run's summary metrics (``score``, ``eval/<metric>``), calibration and parity."""
    metrics = {key: float(value) for key, value in source.metrics.items()
               if key == "score" or (key.startswith("eval/") and key.count("/") == 1)}
    for level, rate in zip(calibration["difficulty"], calibration["player_win_rate"],
                           strict=True):
        metrics[f"calibration/{level}/player_win_rate"] = float(rate)
    metrics["parity/rows"] = float(parity.rows)
    metrics["parity/max_score_difference"] = parity.max_score_difference
    metrics["parity/max_value_difference"] = parity.max_value_difference
    return metrics


def build_bundle(model: BaseAlgorithm, game: GameDefinition, config: TrainConfig,
                 memory: EpisodicMemory | None, source: RunSource,
                 settings: ExportSettings) -> Exported:
    """Check, calibrate and write the bundle and its archive (no MLflow involved).

    Raises (and writes nothing) when the ONNX policy fails the parity check.
    """
    settings.validate()
    check_embedder(config, source.run_id)
    layout = ObservationLayout.for_game(game)
    snapshot = memory if memory is not None else empty_memory(game, capacity=config.rag.capacity)
    boss = _playing_boss(model, game, config, snapshot, layout)
    inputs = record_inputs(boss, model, game, config, settings)
    with tempfile.TemporaryDirectory(prefix="bosslab-export-") as tmp:
        onnx = export_onnx(model, Path(tmp) / "policy.onnx")
        parity = check_parity(model, onnx, inputs)
        calibration = calibrate(boss, game, config, settings)
        kind = policy_kind(model)
        manifest = manifest_for(
            game, name=f"boss-{game.name}", policy_version=policy_version(game, source),
            policy=PolicySpec(kind=kind, file="policy.onnx", scripted=None,
                              input_size=int(inputs.shape[1]),
                              retrieval_inputs=config.rag.mode == "episodic"),
            retrieval=retrieval_spec(config, game, value_range(model, inputs, snapshot)),
            source=SourceSpec(run_id=source.run_id, experiment=source.experiment,
                              git_commit=source.git_commit, created_at=now_iso()),
            metrics=manifest_metrics(source, calibration, parity))
        target = _fresh_target(settings, bundle_dir_name(manifest))
        card = model_card(manifest, config, source, calibration, parity)
        path = write_bundle(target, manifest, snapshot, policy=onnx, model_card=card)
    _check_serves(path)
    return Exported(path, archive_bundle(path), manifest, parity, calibration)


def _playing_boss(model: BaseAlgorithm, game: GameDefinition, config: TrainConfig,
                  memory: EpisodicMemory, layout: ObservationLayout) -> BossPolicy:
    """The boss as the run evaluated it, on a copy of the memory (playing writes to it)."""
    if not config.rag.enabled:
        return trained_boss(model, game, config, None)
    copy = EpisodicMemory.from_records(memory.config, memory.records(), memory.next_id)
    embedder = make_embedder(config.rag.embedder, layout)
    return trained_boss(model, game, config, TrainingMemory(copy, embedder))


def _fresh_target(settings: ExportSettings, name: str) -> Path:
    target = settings.out / name
    archive = target.with_name(target.name + ".tar.gz")
    if target.exists() or archive.exists():
        if not settings.overwrite:
            raise ValueError(f"{target} already exists: bundles are versioned and not "
                             f"overwritten. Set overwrite=true to replace it, or out=<another "
                             f"directory>.")
        shutil.rmtree(target, ignore_errors=True)
        archive.unlink(missing_ok=True)
    return target


def _check_serves(path: Path) -> None:
    """The written bundle loads and decides as the server will use it; else it is removed."""
    try:
        load_bundle(path).new_brain().decide(Situation(PlayerContext()))
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


# --- the model card -----------------------------------------------------------------------


def model_card(manifest: Manifest, config: TrainConfig, source: RunSource,
               calibration: pd.DataFrame, parity: ParityReport) -> str:
    """MODEL_CARD.md: what the boss was trained against, how it did, how it calibrates."""
    sections = [
        f"# {manifest.policy_version}\n\n{_identity(manifest)}",
        f"## Trained against\n\n{_trained_against(config, source)}",
        f"## Evaluation\n\n{_evaluation(source)}",
        f"## Exploit checks\n\n{_exploits(source, calibration)}",
        f"## Difficulty calibration\n\n{_calibration(calibration, config)}",
        f"## Export checks\n\n{_parity(parity)}",
        f"## Serving\n\n```\npython -m serving --bundle <this directory or its .tar.gz>\n```\n"
        f"\n{_serving(manifest)}",
    ]
    return "\n\n".join(sections) + "\n"


def _identity(manifest: Manifest) -> str:
    source = manifest.source
    lines = [("game", f"{manifest.game['name']} (fingerprint {manifest.game_fingerprint})"),
             ("boss moves", ", ".join(manifest.vocabulary["boss_actions"])),
             ("policy", f"{manifest.policy.kind}, input {manifest.policy.input_size} floats"
                        f"{', with retrieval inputs' * manifest.policy.retrieval_inputs}"),
             ("source run", source.run_id or "none (built locally)"),
             ("experiment", source.experiment or "-"), ("git commit", source.git_commit or "-"),
             ("exported", source.created_at)]
    return "\n".join(f"- **{key}**: {value}" for key, value in lines)


def _trained_against(config: TrainConfig, source: RunSource) -> str:
    params: dict[str, object] = dict(source.params)
    if not params:
        params = {"agent.algo": config.agent.algo, "player.name": _player_name(config),
                  "objective.name": config.objective.name,
                  "difficulty.level": config.difficulty.level,
                  "budget.total_timesteps": config.budget.total_timesteps,
                  "rag.mode": config.rag.mode, "seed": config.seed}
    rows = [f"| {key} | {params[key]} |" for key in CARD_PARAMS if key in params]
    return "| setting | value |\n|---|---|\n" + "\n".join(rows)


def _evaluation(source: RunSource) -> str:
    if source.evaluation_md is None:
        return "No evaluation recorded (the run has no evaluation/evaluation.md)."
    lines = source.evaluation_md.strip().splitlines()
    if lines and lines[0].startswith("# "):
        lines[0] = "From the run's evaluation: " + lines[0].removeprefix("# ")
    return "\n".join(lines)


def _exploits(source: RunSource, calibration: pd.DataFrame) -> str:
    """Flags of the run's evaluation (per persona) and of the calibration (per level)."""
    parts = []
    table = source.evaluation
    if table is not None and "flagged" in table:
        flagged = table[table["flagged"].astype(bool)]
        names = [f"{r.persona}" + (" (one move > 40%)" if r.exploit else "")
                 + (" (never telegraphs)" if r.no_telegraph else "")
                 for r in flagged.itertuples()]
        parts.append(f"Evaluation: {len(flagged)} of {len(table)} persona rows flagged"
                     + (f": {', '.join(names)}." if names else "."))
    exploited = calibration[calibration["exploit"].astype(bool)]
    silent = calibration[calibration["telegraph_share"] == 0.0]
    parts.append(
        f"Calibration: one move over 40% of the boss's moves at "
        f"{', '.join(exploited['difficulty']) or 'no level'}; never telegraphs at "
        f"{', '.join(silent['difficulty']) or 'no level'}.")
    return "\n\n".join(parts)


def _player_name(config: TrainConfig) -> str:
    """The run's player: its name when the config holds a persona or population, else the
    path or name it was given as."""
    if isinstance(config.player, Mapping):
        return str(config.player.get("name", "the run's player"))
    return str(config.player)


def _calibration(calibration: pd.DataFrame, config: TrainConfig) -> str:
    player = _player_name(config)
    shown = pd.DataFrame({
        "difficulty": calibration["difficulty"],
        "target": [f"{t:.2f} ± {w:.2f}" for t, w in zip(
            calibration["target_player_win_rate"], calibration["tolerance"], strict=True)],
        "player win rate": [f"{r:.2f} [{lo:.2f}, {hi:.2f}]" for r, lo, hi in zip(
            calibration["player_win_rate"], calibration["win_rate_low"],
            calibration["win_rate_high"], strict=True)],
        "in band": ["yes" if b else "no" for b in calibration["in_band"]],
        "engagement": calibration["engagement_score"].round(2),
        "duration (s)": calibration["mean_duration"].round(1),
        "fights": calibration["fights"],
    })
    return (f"Player win rate (95% Wilson interval) against {player} at each difficulty level, "
            f"{int(calibration['fights'].iloc[0])} fights per level.\n\n"
            + markdown_table(shown))


def _parity(parity: ParityReport) -> str:
    return (f"ONNX (onnxruntime) and the torch policy agree on all {parity.rows:,} recorded "
            f"observations: the same best move; largest score difference "
            f"{parity.max_score_difference:.2e}, largest value difference "
            f"{parity.max_value_difference:.2e} (tolerance 1e-4).")


def _serving(manifest: Manifest) -> str:
    r = manifest.retrieval
    return (f"The memory ({r.mode}, k={r.k}, lam={r.lam}) adapts every decision; outcomes are "
            f"stored with values in [{r.value_range[0]:.3g}, {r.value_range[1]:.3g}] "
            f"(effectiveness 0 to 1).")


# --- the entry point ----------------------------------------------------------------------


def typed_config(cfg: DictConfig) -> ExportConfig:
    """The composed config checked against the schema."""
    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ExportConfig), cfg))
    assert isinstance(config, ExportConfig)
    return config


def settings_of(config: ExportConfig) -> ExportSettings:
    return ExportSettings(out=Path(config.out), observations=config.observations,
                          record_envs=config.record_envs,
                          calibration_fights=config.calibration_fights,
                          calibration_series=config.calibration_series, seed=config.seed,
                          overwrite=config.overwrite)


def export(config: ExportConfig) -> Exported:
    """Resolve the source, build the bundle and log it to the run (module docstring)."""
    settings = settings_of(config)
    settings.validate()
    connect(config.tracking)
    client = MlflowClient()
    run_id, version = resolve_run(config, client)
    run = existing_run(run_id, client)
    with tempfile.TemporaryDirectory(prefix="bosslab-export-run-") as tmp:
        work = Path(tmp)
        model, game, train, memory = load_run(run_id, work)
        source = run_source(run, version, client, work)
        exported = build_bundle(model, game, train, memory, source, settings)
    if config.log_to_run:
        log_bundle(client, run_id, exported)
    return exported


def log_bundle(client: MlflowClient, run_id: str, exported: Exported) -> None:
    """The bundle directory and its archive as artifacts ``bundle/`` of the run."""
    client.log_artifacts(run_id, str(exported.path), f"bundle/{exported.path.name}")
    client.log_artifact(run_id, str(exported.archive), "bundle")


def message(exported: Exported) -> str:
    return (f"Exported {exported.manifest.policy_version} ({exported.parity.rows:,} observations "
            f"checked against torch).\n  Bundle:  {exported.path}\n  Archive: {exported.archive}"
            f"\n  Serve:   {exported.serve_command}")


@hydra.main(config_path="../configs", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    print(message(export(typed_config(cfg))))


if __name__ == "__main__":
    main()
