"""The lab's Hydra configs composed from Python (for scripts that are not ``@hydra.main``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")


def compose_config(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """``configs/<name>.yaml`` with command-line style ``overrides``, as Hydra composes it."""
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(name, overrides=list(overrides))
