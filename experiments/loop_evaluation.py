"""The closed loop's evaluation: the new boss and the served one, against old and new players.

Two bosses:

- ``new``: the loop's training run, as ``experiments.evaluate`` plays a run (its model, with its
  memory for ``rag`` runs);
- ``served``: the bundle that served the telemetry, played as the server plays it
  (``experiments.calibration_policy.served_policy``: its ONNX policy sampled, or its scripted
  boss with the server's exploration), without the server's online memory.

Two sets of players: ``old`` (what the served boss was made for: the player of the training
run it was exported from, or the shipped population) and ``fitted`` (the personas the loop
calibrated from the telemetry). Every persona of a set is played ``fights`` seeded fights
(``envs.fights.play_fights``) at the training level and summarized as
``experiments.evaluation`` does. The score of a boss on a set is the training objective's
(:func:`experiments.train.objective_score`: mean engagement score, or the boss's win rate for
``defeat``) over the set's personas.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from envs.bosses import AdaptiveBoss, BossPolicy
from envs.engagement import summarize_fights
from envs.fights import play_fights
from envs.game import GameDefinition
from envs.persona import PARAMETERS, Persona, load_persona, load_players
from envs.schema import DefinitionError
from experiments import tracking
from experiments.calibration_policy import served_policy
from experiments.evaluate import load_boss
from experiments.evaluation import (
    boss_win_rate,
    exploit_checks,
    levels_of,
    readable_evaluation,
    telegraphed_moves,
)
from experiments.loop_lineage import record_facts, stage_run
from experiments.loop_stages import LoopContext, ServedBundle, Trained
from experiments.tournament import markdown_table
from experiments.train import objective_score

SHIPPED_PLAYER = "population"
"""The old players when the served bundle has no training run to ask."""


@dataclass(frozen=True)
class Evaluated:
    """The evaluation stage's run, table and scores."""

    run_id: str
    table: pd.DataFrame
    scores: Mapping[str, float]
    """``<boss>/<players>`` -> score (``new/fitted``, ``served/old``...)."""
    old_player: str
    """What the old players were (a name, a path, or the training run it came from)."""


class ExploringBoss:
    """A boss as a served scripted brain plays it: a share ``exploration`` of its choices is
    drawn uniformly over the legal moves."""

    def __init__(self, boss: BossPolicy, exploration: float, seed: int) -> None:
        self.boss = boss
        self.name = boss.name
        self.exploration = exploration
        self.rng = np.random.default_rng(seed)

    def select_moves(self, observations: np.ndarray, action_masks: np.ndarray) -> np.ndarray:
        moves = np.asarray(self.boss.select_moves(observations, action_masks), dtype=np.int64)
        if self.exploration <= 0.0:
            return moves
        uniform = np.where(action_masks, self.rng.random(action_masks.shape), -1.0).argmax(1)
        explore = self.rng.random(len(moves)) < self.exploration
        return np.where(explore, uniform, moves).astype(np.int64)


def personas_of(player: Any) -> list[Persona]:
    """Every persona of a player spec (a persona or population: name, path or mapping), as
    the simulator resolves it (population weights and jitter are dropped: each persona is
    played on its own)."""
    pool = load_players(player)
    ints = {f.name for f in fields(Persona) if f.type in ("int", int)}
    return [load_persona({"name": name, **{key: round(float(value)) if key in ints else
                                           float(value)
                                           for key, value in zip(PARAMETERS, row, strict=True)}})
            for name, row in zip(pool.names, pool.parameters, strict=True)]


def old_player(served: ServedBundle, work: Path) -> tuple[Any, str]:
    """The player the served bundle was trained against (its run's logged config), else the
    shipped population; and how to describe it."""
    if served.source_run is None:
        return SHIPPED_PLAYER, f"{SHIPPED_PLAYER} (the served bundle has no training run)"
    try:
        logged = OmegaConf.load(tracking.download(served.source_run, "config/config.yaml",
                                                  work / "served"))
        assert isinstance(logged, DictConfig)
        player: Any = OmegaConf.to_container(logged.player, resolve=True)
        load_players(player)
    except (MlflowException, OSError, DefinitionError) as error:
        return SHIPPED_PLAYER, (f"{SHIPPED_PLAYER} (the player of run {served.source_run} is "
                                f"not readable: {str(error)[:200]})")
    return player, f"the player of run {served.source_run}"


def _bundle_game() -> GameDefinition:
    raise AssertionError("the served boss is a bundle: it brings its own game")


def play_table(bosses: Mapping[str, BossPolicy], players: Mapping[str, Sequence[Persona]],
               game: GameDefinition, difficulty: str | None, fights: int, series: int,
               seed: int) -> pd.DataFrame:
    """One row per boss x set of players x persona (x level), with the exploit checks of
    ``experiments.evaluation``."""
    rows, telegraphed = [], telegraphed_moves(game)
    for boss_name, boss in bosses.items():
        for set_name, personas in players.items():
            for persona in personas:
                for level in levels_of(game, difficulty):
                    if isinstance(boss, AdaptiveBoss):
                        boss.forget()
                    results = play_fights(boss, fights, game=game, player=persona,
                                          difficulty=level, series=series, seed=seed)
                    summary = summarize_fights(results, game.difficulty_levels[level],
                                               game.move_names)
                    row = {"boss": boss_name, "players": set_name, "persona": persona.name,
                           "difficulty": level, **summary.as_row(),
                           "boss_win_rate": boss_win_rate(results)}
                    rows.append({**row, **exploit_checks(row, telegraphed)})
    return pd.DataFrame(rows)


def scores_of(table: pd.DataFrame, objective: str) -> dict[str, float]:
    """``<boss>/<players>`` -> the objective's score over that set's personas."""
    return {f"{boss}/{players}": objective_score(group, objective)
            for (boss, players), group in table.groupby(["boss", "players"], sort=False)}


def evaluate_stage(ctx: LoopContext, trained: Trained, served: ServedBundle, population: Path,
                   player: Any | None, fights: int, series: int, previous: str) -> Evaluated:
    """The evaluation stage (module docstring), logged as the loop's ``evaluate`` run."""
    with tempfile.TemporaryDirectory(prefix="bosslab-loop-evaluate-") as tmp:
        work = Path(tmp)
        served_game, boss, exploration = served_policy(served.path, _bundle_game, ctx.seed)
        new = load_boss(f"runs:/{trained.run_id}", served_game, ctx.seed, work)
        old, described = (player, str(player)) if player is not None else old_player(served,
                                                                                   work)
        sets = {"old": personas_of(old), "fitted": personas_of(str(population))}
        table = play_table({"new": new.policy,
                            "served": ExploringBoss(boss, exploration, ctx.seed)},
                           sets, new.game, trained.difficulty, fights, series, ctx.seed)
    scores = scores_of(table, trained.objective)
    with stage_run(ctx.tracking, ctx.experiment, ctx.loop_id, "evaluate", previous) as run_id:
        paths = save(table, scores, ctx.out / "evaluation", served, trained)
        for path in paths:
            mlflow.log_artifact(str(path), artifact_path="evaluation")
        mlflow.log_metrics({f"score/{key}": value for key, value in scores.items()})
        record_facts({"old_players": described, "fitted_players": population,
                      "objective": trained.objective, "fights": fights,
                      **{f"score.{key}": f"{value:.4f}" for key, value in scores.items()}})
    return Evaluated(run_id, table, scores, described)


def save(table: pd.DataFrame, scores: Mapping[str, float], out: Path, served: ServedBundle,
         trained: Trained) -> list[Path]:
    """``evaluation.csv`` (every column) and ``evaluation.md`` (scores and readable rows)."""
    out.mkdir(parents=True, exist_ok=True)
    csv, md = out / "evaluation.csv", out / "evaluation.md"
    table.to_csv(csv, index=False)
    readable = readable_evaluation(table.assign(boss=table["boss"] + "/" + table["players"]))
    score_rows = "\n".join(f"| {key} | {value:.3f} |" for key, value in scores.items())
    md.write_text(f"# New boss (run {trained.run_id}) against the served one "
                  f"({served.policy_version})\n\nScore ({trained.objective}):\n\n"
                  f"| boss/players | score |\n|---|---:|\n{score_rows}\n\n"
                  f"{markdown_table(readable)}")
    return [csv, md]
