"""The designers' notebooks run top to bottom on small budgets, and are stored without outputs.

Each notebook runs in a real Jupyter kernel (nbclient) on this interpreter, with its
``parameters`` cell overridden papermill-style (a cell tagged ``injected-parameters`` right
after it). The assertions are on what the notebook produced: the files it wrote, the persona
YAML loaded back, the JSON summary it writes into ``out_dir``, checked against the same numbers
computed here or read from MLflow. The inputs are real: smoke trainings in a temporary MLflow
store for compare_runs; for telemetry_report, synthetic players fighting a real server, its
export and a tiny calibration.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import nbformat
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell

from envs.bosses import make_boss
from envs.engagement import summarize_fights
from envs.fights import play_fights
from envs.game import load_game
from envs.persona import available_personas, load_persona
from experiments import calibrate, train
from experiments.persona import persona_report
from experiments.telemetry import generate
from serving.bundle import write_scripted_bundle
from serving.telemetry import export_telemetry
from tests.server_helpers import start_server
from tests.test_train import SMOKE, compose_train

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
CONFIGS = str(REPO / "configs")
KERNEL = "bosslab-tests"
TIMEOUT = 300
"""Seconds a single cell may take before the run fails (a hang, not a slow machine)."""


def load_strip_helper() -> ModuleType:
    """notebooks/strip_outputs.py (a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("strip_outputs", NOTEBOOKS / "strip_outputs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A kernelspec that runs this interpreter, found through JUPYTER_PATH; yields its name."""
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "BossLab tests",
        "language": "python",
        "env": {"PYTHONPATH": python_path, "IPYTHONDIR": str(root / "ipython")},
    }))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(root))
        patch.setenv("JUPYTER_RUNTIME_DIR", str(root / "runtime"))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield KERNEL


def parameter_names(cell: NotebookNode) -> set[str]:
    """Names assigned in a parameters cell."""
    return {target.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name)}


def inject_parameters(notebook: NotebookNode, parameters: Mapping[str, Any]) -> None:
    """Add a cell setting ``parameters`` right after the cell tagged ``parameters``."""
    tagged = [i for i, cell in enumerate(notebook.cells)
              if "parameters" in cell.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "a notebook has exactly one cell tagged 'parameters'"
    unknown = set(parameters) - parameter_names(notebook.cells[tagged[0]])
    assert not unknown, f"not parameters of the notebook: {sorted(unknown)}"
    source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    notebook.cells.insert(tagged[0] + 1, new_code_cell(
        source, metadata={"tags": ["injected-parameters"]}))


def run_notebook(name: str, kernel: str, workdir: Path,
                 parameters: Mapping[str, Any]) -> NotebookNode:
    """Execute notebooks/<name> in ``workdir``; the executed copy is kept there for a look."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    inject_parameters(notebook, parameters)
    client = NotebookClient(notebook, kernel_name=kernel, timeout=TIMEOUT,
                            resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute()
    finally:
        nbformat.write(notebook, workdir / f"executed_{name}")
    return notebook


def images(notebook: NotebookNode) -> int:
    """How many PNG images the notebook's cells displayed."""
    return sum("image/png" in output.get("data", {})
               for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.get("outputs", []))


# --- stored without outputs ----------------------------------------------------------------


def test_there_are_notebooks_and_each_has_one_parameters_cell() -> None:
    stored = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert {"persona_tuning.ipynb", "compare_runs.ipynb",
            "telemetry_report.ipynb"} <= {p.name for p in stored}
    for path in stored:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and parameter_names(tagged[0]), path.name


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    dirty = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"
             and (cell.outputs or cell.execution_count is not None
                  or "execution" in cell.metadata)]
    assert not dirty, (f"{path.name}: cells {dirty} have outputs; strip them with "
                       f"`python notebooks/strip_outputs.py {path.relative_to(REPO)}`")


# --- persona_tuning.ipynb -------------------------------------------------------------------

TUNING = {"persona": "dodger", "changes": {"dodge_frequency": 0.1, "reaction_time": 0.8},
          "tuned_name": "slow_dodger", "boss": "reactive", "fights": 24, "series": 4,
          "seed": 3}


def test_persona_tuning_fights_the_tuned_persona_and_writes_it_back(kernel: str,
                                                                    tmp_path: Path) -> None:
    notebook = run_notebook("persona_tuning.ipynb", kernel, tmp_path,
                            {**TUNING, "out_dir": str(tmp_path)})

    tuned = load_persona(tmp_path / "slow_dodger.yaml")
    assert (tuned.name, tuned.dodge_frequency, tuned.reaction_time) == ("slow_dodger", 0.1, 0.8)
    original = load_persona("dodger")
    assert dataclasses.replace(tuned, name="dodger", dodge_frequency=original.dodge_frequency,
                               reaction_time=original.reaction_time) == original

    summary = json.loads((tmp_path / "persona_tuning.json").read_text())
    assert summary["yaml"] == str(tmp_path / "slow_dodger.yaml")
    game = load_game("duel")
    level = game.difficulty_levels["normal"]

    def fought(player: Any) -> dict[str, Any]:
        results = play_fights(make_boss("reactive", game, seed=3), 24, game=game,
                              player=player, difficulty="normal", series=4, seed=3)
        return summarize_fights(results, level, game.move_names).as_row()

    # The notebook's numbers are those of the two personas' fights, replayed here.
    assert summary["summaries"]["original"] == fought(original)
    assert summary["summaries"]["tuned"] == fought(tuned)
    assert summary["summaries"]["tuned"] != summary["summaries"]["original"]
    assert all(Path(figure).stat().st_size > 0 for figure in summary["figures"])
    assert images(notebook) == 2

    stripper = load_strip_helper()
    assert not stripper.is_stripped(notebook)
    assert stripper.is_stripped(stripper.strip(notebook)) and images(notebook) == 0


def test_persona_tuning_stops_on_a_value_out_of_range(kernel: str, tmp_path: Path) -> None:
    with pytest.raises(CellExecutionError, match=r"'dodge_frequency' = 1\.5 is out of range"):
        run_notebook("persona_tuning.ipynb", kernel, tmp_path,
                     {**TUNING, "changes": {"dodge_frequency": 1.5}, "out_dir": str(tmp_path)})
    assert not list(tmp_path.glob("*.yaml")) and not (tmp_path / "persona_tuning.json").exists()


# --- compare_runs.ipynb ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory,
             one_torch_thread: None) -> Iterator[tuple[str, list[str]]]:
    """Two smoke trainings (seeds 0 and 1) in a fresh SQLite store: (tracking URI, run ids)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    store = [f"tracking.uri={uri}", f"tracking.artifact_location={root}/mlruns"]
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        run_ids = [train.run(compose_train([*SMOKE, *store, f"seed={seed}"])).run_id
                   for seed in (0, 1)]
        yield uri, run_ids


def test_compare_runs_plots_the_curves_and_lines_up_the_evaluations(
        kernel: str, two_runs: tuple[str, list[str]], tmp_path: Path) -> None:
    uri, run_ids = two_runs
    notebook = run_notebook("compare_runs.ipynb", kernel, tmp_path, {
        "tracking_uri": uri, "metrics": ["fights/engagement_score", "fights/player_win_rate"],
        "out_dir": str(tmp_path)})

    summary = json.loads((tmp_path / "compare_runs.json").read_text())
    assert sorted(run["run_id"] for run in summary["runs"]) == sorted(run_ids)
    labels = {run["run_id"]: run["label"] for run in summary["runs"]}

    client = MlflowClient(uri)
    curves = pd.read_csv(tmp_path / "compare_runs_curves.csv")
    for run_id in run_ids:
        for key in ("fights/engagement_score", "fights/player_win_rate"):
            logged = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
            plotted = curves[(curves["run_id"] == run_id) & (curves["metric"] == key)]
            assert len(logged) >= 2
            assert list(zip(plotted["step"], plotted["value"], strict=True)) == logged

    side = summary["evaluation"]
    assert [row["persona"] for row in side] == ["novice", "dodger"]
    for row in side:
        assert set(row) == {"persona", *labels.values()}
        for run_id, label in labels.items():
            evaluated = client.get_run(run_id).data.metrics
            rate = evaluated[f"eval/{row['persona']}/player_win_rate"]
            engagement = evaluated[f"eval/{row['persona']}/engagement_score"]
            assert row[label].startswith(f"{rate:.2f} [")
            assert row[label].endswith(f"/ {engagement:.2f}")
    assert images(notebook) == 2


# --- telemetry_report.ipynb -----------------------------------------------------------------

CALIBRATE_TINY = ["policy=reactive", "candidates=20", "sessions_per_candidate=2", "rounds=1",
                  "bootstrap=2", "fidelity_sessions=2", "min_decisions=10", "max_clusters=2"]
"""A calibration in seconds: the smallest fit the config accepts."""


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """Live telemetry and its calibration: synthetic players of two personas fight a served
    (scripted) boss through a real server, the server's records are exported, and
    experiments.calibrate fits personas to them. Yields (export file, calibration dir)."""
    root = tmp_path_factory.mktemp("telemetry")
    server = start_server(root / "server", write_scripted_bundle(root / "bundle"))
    try:
        generate(server.url, {"novice": 3, "dodger": 3}, fights=2, seed=0)
        export = export_telemetry(server.database_url, root / "telemetry.parquet").path
    finally:
        server.stop()
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
            cfg = compose("calibrate", overrides=[
                f"telemetry={export}", *CALIBRATE_TINY,
                f"tracking.uri=sqlite:///{root}/mlflow.db",
                f"tracking.artifact_location={root}/mlruns"])
        calibrate.run(cfg, root / "calibration")
    yield export, root / "calibration"


def test_telemetry_report_describes_the_players_and_the_fitted_personas(
        kernel: str, calibrated: tuple[Path, Path], tmp_path: Path) -> None:
    export, calibration = calibrated
    notebook = run_notebook("telemetry_report.ipynb", kernel, tmp_path, {
        "telemetry": str(export), "calibration_dir": str(calibration), "fights": 8,
        "out_dir": str(tmp_path)})
    summary = json.loads((tmp_path / "telemetry_report.json").read_text())

    exported = pd.read_parquet(export)
    per_session = exported.groupby("session_id").size()
    assert summary["overview"]["sessions"] == len(per_session) == 6
    assert summary["overview"]["decisions"] == len(exported) and summary["notes"] == []
    assert summary["sessions"] == {k: int(v) for k, v in per_session.items()}

    assigned = pd.read_csv(calibration / "sessions.csv").groupby("persona").size()
    assert {name: entry["sessions"] for name, entry in summary["fitted"].items()} == {
        k: int(v) for k, v in assigned.items()}

    fights = pd.DataFrame(summary["fights"])
    assert list(fights["persona"]) == [*assigned.index, *available_personas()]
    first = fights.iloc[0]
    replayed = persona_report("duel", load_persona(calibration / f"{first['persona']}.yaml"),
                              ["reactive"], 8, seed=0)
    assert first["player_win_rate"] == replayed["player_win_rate"].iloc[0]
    assert first["mean_duration"] == replayed["mean_duration"].iloc[0]
    assert images(notebook) == 5
