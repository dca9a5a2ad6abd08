"""A game team runs serving/ without the training lab: importing the server must not import
torch, SB3, MLflow, Hydra, agents/ or experiments/ (checked in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.server_helpers import REPO

FORBIDDEN = ("torch", "stable_baselines3", "sb3_contrib", "mlflow", "hydra", "agents",
             "experiments")
SERVING_MODULES = ("serving.main", "serving.__main__", "serving.client", "serving.service",
                   "serving.routers.ws", "serving.telemetry")


def test_serving_imports_none_of_the_lab() -> None:
    script = (
        "import importlib, json, sys\n"
        f"for name in {SERVING_MODULES!r}: importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=120, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
