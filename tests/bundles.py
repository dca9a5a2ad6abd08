"""Bundles for tests, built in seconds and without MLflow (no pytest needed to import this).

- :func:`trained_bundle`: a real ONNX bundle of a tiny PPO trained for a few rollouts, written
  by ``experiments.export.build_bundle`` exactly as an export writes it (parity check,
  calibration, manifest, model card, archive).
- ``serving.bundle.write_scripted_bundle``: a scripted boss and an empty memory (no torch).

>>> path = trained_bundle(tmp_path)
>>> brain = serving.bundle.load_bundle(path).new_brain()
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from agents.factory import make_agent
from agents.vec_env import BossFightVecEnv
from envs.game import load_game
from experiments.compose import compose_config
from experiments.export import Exported, ExportSettings, RunSource, build_bundle
from experiments.train import TrainConfig, num_envs
from experiments.train import typed_config as train_config

TINY_TRAINING = ("budget=smoke", "num_envs=8")
"""A few seconds of any agent (tests/test_train.py's TINY)."""
TINY_PPO = ("agent.n_steps=64", "agent.batch_size=128")
"""PPO and MaskablePPO: rollouts of 8 envs x 64 steps."""
ROLLOUT_AGENTS = ("ppo", "maskable_ppo")
TINY_RECORD_ENVS = 512
"""Recording 10,000 observations in 20 steps."""
TINY_CALIBRATION = 4
"""Calibration fights per level (4 players side by side)."""


def tiny_config(overrides: Sequence[str] = ()) -> TrainConfig:
    """The training config of a tiny run (``overrides`` in Hydra's syntax, e.g. agent=dqn)."""
    agent = next((o.split("=", 1)[1] for o in overrides if o.startswith("agent=")), "ppo")
    sizes = TINY_PPO if agent in ROLLOUT_AGENTS else ()
    return train_config(compose_config("train", [*TINY_TRAINING, *sizes, *overrides]))


def export_tiny(out: Path, overrides: Sequence[str] = (), steps: int = 1024,
                source: RunSource | None = None) -> Exported:
    """Train a tiny agent on duel for ``steps`` env steps and export it into ``out``."""
    config = tiny_config(overrides)
    game = load_game(config.game)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        env = BossFightVecEnv(num_envs(config), seed=config.seed, game=game,
                              player=config.player, objective=config.objective.name,
                              difficulty=config.difficulty.level)
        model = make_agent(config.agent, env, config.seed)
        model.learn(steps)
        settings = ExportSettings(out=out, record_envs=TINY_RECORD_ENVS,
                                  calibration_fights=TINY_CALIBRATION,
                                  calibration_series=TINY_CALIBRATION)
        return build_bundle(model, game, config, None, source or RunSource(), settings)
    finally:
        torch.set_num_threads(threads)


def trained_bundle(tmp_path: Path) -> Path:
    """A real ONNX bundle directory (tiny PPO on duel) under ``tmp_path``; its ``.tar.gz``
    archive sits next to it (``path.with_name(path.name + ".tar.gz")``)."""
    return export_tiny(Path(tmp_path) / "bundles").path
