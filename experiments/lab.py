"""The lab's first command: train a boss, compare it with the scripted bosses, say where to look.

    python -m experiments.lab                          # what `make lab` runs
    python -m experiments.lab objective=defeat seed=1  # any experiments.train override

Everything runs on embedded defaults: no server, no API key. It

1. trains a boss with ``python -m experiments.train``'s config and ``budget=quick`` (PPO:
   5M env steps on 1,024 batched fights, about a minute), tracked in MLflow in
   ``./mlflow.db`` (artifacts in ``./mlruns``), with its evaluation against every persona;
2. compares the trained boss with the scripted bosses (random, rotation, reactive) on the same
   seeded players (``experiments.compare``; a boss trained at every level is compared at the
   game's first): a table and heatmaps in ``outputs/lab/``;
3. exports the trained boss as a bundle (``experiments.export``: ONNX policy, memory, manifest,
   model card) in ``outputs/lab/bundles/``;
4. prints where to look: the MLflow UI command, the evaluation and comparison tables, the
   bundle, and the one command that serves it (``python -m serving --bundle <path>``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from envs.bosses import SCRIPTED_BOSSES
from experiments import compare, export, tracking, train
from experiments.compose import compose_config

OUT = Path("outputs") / "lab"


def main(overrides: list[str]) -> None:
    cfg = compose_config("train", ["budget=quick", *overrides])
    result = train.run(cfg)
    if result.interrupted or result.evaluation is None:
        print(train.interrupted_message(result))
        raise SystemExit(130)
    level = str(result.evaluation["difficulty"].iloc[0])
    bosses = ",".join([f"runs:/{result.run_id}", *SCRIPTED_BOSSES])
    table, paths = compare.run(compose_config("compare", [f"bosses=[{bosses}]",
                                                          f"difficulty.level={level}"]), OUT)
    print(f"\nThe trained boss and the scripted ones on the same players ({level}):")
    with pd.option_context("display.width", 220, "display.max_columns", None):
        print(compare.side_by_side(table).to_string(index=False))
    exported = export.export(export.typed_config(compose_config(
        "export", [f"source=runs:/{result.run_id}", f"out={OUT / 'bundles'}"])))
    print(f"\nWhere to look:\n"
          f"  MLflow UI:        {tracking.browse_command()}\n"
          f"                    (http://127.0.0.1:5000, experiment {cfg.experiment}, run "
          f"{result.run_id})\n"
          f"  Evaluation table: {result.evaluation_path}\n"
          f"  Comparison:       {paths[1]} ({paths[2].name}: heatmaps, {paths[0].name}: "
          f"every column)\n"
          f"  Bundle:           {exported.path} (model card: MODEL_CARD.md)\n"
          f"\nServe it to games:  {exported.serve_command}")


if __name__ == "__main__":
    main(sys.argv[1:])
