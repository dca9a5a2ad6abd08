"""The quality bar: trained bosses against the scripted ones (a benchmark, not a test).

    python -m experiments.benchmark_quality [--fights 1200] [--players 60] [--seed 1000]
        [--out quality]
        [train overrides, e.g. agent=maskable_ppo seed=1]

Trains two bosses with the lab's default configuration (``configs/train.yaml``: PPO against
the persona population, duel, difficulty ``normal``), one per objective, each timed, then plays
the trained bosses and every scripted boss (random, rotation, reactive) against each of the six
shipped personas: ``--fights`` fights per pair, played by ``--players`` players of each persona
(each a series of fights/players fights), seeded with ``--seed`` (not the
training seed: players the bosses never met). The bar:

- ``engagement``: the trained boss keeps more personas inside the level's target win-rate band
  (0.5 ± 0.1 at normal) than every scripted boss, and at least 4 of the 6;
- ``defeat``: the trained boss wins more fights than the best scripted boss against every
  persona (where the best scripted boss already wins every fight, only another 100% equals it);
- each training takes at most 15 minutes on this machine.

Runs are tracked like any training (``experiment=bosslab-quality`` in ``sqlite:///mlflow.db``
unless overridden); the tables are printed and written to ``--out`` as markdown and CSV.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from envs.bosses import SCRIPTED_BOSSES, make_boss
from envs.game import GameDefinition, load_game
from experiments import train
from experiments.compose import compose_config
from experiments.evaluate import load_boss
from experiments.evaluation import PERSONAS, evaluate_boss
from experiments.tournament import markdown_table

MAX_TRAINING_SECONDS = 15 * 60
MIN_IN_BAND = 4
LEVEL = "normal"


class Trained(NamedTuple):
    """One objective's trained boss and how long it took."""

    objective: str
    run_id: str
    seconds: float
    steps: int


def train_boss(objective: str, overrides: list[str]) -> Trained:
    """Train with the default config for ``objective`` (plus ``overrides``), timed."""
    cfg = compose_config("train", [f"objective={objective}", f"difficulty={LEVEL}",
                                   "experiment=bosslab-quality", f"run_name=quality-{objective}",
                                   *overrides])
    start = time.perf_counter()
    result = train.run(cfg)
    seconds = time.perf_counter() - start
    if result.interrupted:
        raise SystemExit(130)
    return Trained(objective, result.run_id, seconds, result.steps)


def face_off(trained: Trained, game: GameDefinition, fights: int, players: int, seed: int,
             work: Path) -> pd.DataFrame:
    """The trained boss and every scripted boss against every persona: one table."""
    bosses = [load_boss(f"runs:/{trained.run_id}", game, seed, work).policy]
    bosses += [make_boss(name, game, seed=seed) for name in SCRIPTED_BOSSES]
    tables = [evaluate_boss(boss, game, PERSONAS, fights, series=players, difficulty=LEVEL,
                            seed=seed,
                            label=f"trained ({trained.objective})" if i == 0 else None)
              for i, boss in enumerate(bosses)]
    return pd.concat(tables, ignore_index=True)


def engagement_verdict(table: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """Player win rate per persona x boss (``*`` in band), a count row, and the bar."""
    cells = table.assign(cell=[f"{r.player_win_rate:.2f}{' *' if r.win_rate_in_band else ''}"
                               for r in table.itertuples()])
    wide = cells.pivot(index="persona", columns="boss", values="cell").loc[PERSONAS]
    counts = table.groupby("boss")["win_rate_in_band"].sum().astype(int)
    wide.loc["personas in band"] = counts.astype(str)
    trained = next(b for b in counts.index if b.startswith("trained"))
    scripted = counts.drop(trained)
    passed = bool(counts[trained] > scripted.max() and counts[trained] >= MIN_IN_BAND)
    return wide[[trained, *scripted.index]], passed


def defeat_verdict(table: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """Boss win rate per persona x boss, the best scripted one, and the bar."""
    wide = table.pivot(index="persona", columns="boss", values="boss_win_rate").loc[PERSONAS]
    trained = next(b for b in wide.columns if b.startswith("trained"))
    best = wide.drop(columns=trained).max(axis=1)
    beats = (wide[trained] > best) | ((best == 1.0) & (wide[trained] == 1.0))
    shown = wide[[trained, *[b for b in wide.columns if b != trained]]].round(2)
    shown["best scripted"] = best.round(2)
    shown["trained higher (or both 100%)"] = beats.map({True: "yes", False: "NO"})
    return shown, bool(beats.all())


def report(trained: Trained, shown: pd.DataFrame, passed: bool, out: Path) -> str:
    minutes = trained.seconds / 60
    text = (f"## {trained.objective} (run {trained.run_id}: {trained.steps:,} env steps in "
            f"{minutes:.1f} min of training)\n\n{markdown_table(shown.reset_index())}\n"
            f"Bar met: {'yes' if passed else 'NO'}; training time <= 15 min: "
            f"{'yes' if trained.seconds <= MAX_TRAINING_SECONDS else 'NO'}\n")
    (out / f"quality_{trained.objective}.md").write_text(text)
    return text


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--fights", type=int, default=1200, help="fights per boss x persona")
    parser.add_argument("--players", type=int, default=60,
                        help="players per persona (players differ: 6 players measured a win "
                             "rate to no better than +-0.1)")
    parser.add_argument("--seed", type=int, default=1000, help="seeds the evaluation players")
    parser.add_argument("--out", type=Path, default=Path("quality"), help="output folder")
    parser.add_argument("--objectives", nargs="+", default=["engagement", "defeat"],
                        choices=["engagement", "defeat"])
    return parser.parse_known_args()


def main() -> None:
    args, overrides = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    game = load_game("duel")
    verdicts = {"engagement": engagement_verdict, "defeat": defeat_verdict}
    for objective in args.objectives:
        trained = train_boss(objective, overrides)
        table = face_off(trained, game, args.fights, args.players, args.seed, args.out)
        table.to_csv(args.out / f"quality_{objective}.csv", index=False)
        shown, passed = verdicts[objective](table)
        print("\n" + report(trained, shown, passed, args.out))


if __name__ == "__main__":
    main()
