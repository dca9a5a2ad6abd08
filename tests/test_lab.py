"""The README's first command: experiments.lab trains, compares and says where to look."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest

from experiments import lab
from serving.bundle import load_bundle

TINY = ["budget.total_timesteps=2048", "num_envs=8", "agent.n_steps=64", "agent.batch_size=128",
        "log_every=512", "eval.fights=4", "eval.series=2"]


def test_lab_trains_compares_and_prints_where_to_look(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    lab.main(TINY)
    out = capsys.readouterr().out
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db" in out
    assert (tmp_path / "mlflow.db").exists()
    comparison = tmp_path / "outputs" / "lab" / "compare.md"
    assert f"Comparison:       {Path('outputs') / 'lab' / 'compare.md'}" in out
    table = pd.read_csv(comparison.with_suffix(".csv"))
    assert table["boss"].nunique() == 4 and table["persona"].nunique() == 6
    evaluation = next(line for line in out.splitlines() if "Evaluation table:" in line)
    assert Path(evaluation.split(":", 1)[1].strip()).exists()
    runs = mlflow.search_runs(experiment_names=["bosslab-train"])
    assert isinstance(runs, pd.DataFrame) and len(runs) == 1
    assert runs["status"].iloc[0] == "FINISHED"
    serve = next(line for line in out.splitlines() if "python -m serving --bundle" in line)
    bundle = Path(serve.split("--bundle", 1)[1].strip())
    assert (bundle / "manifest.json").exists() and (bundle / "policy.onnx").exists()
    assert load_bundle(bundle).manifest.source.run_id == runs["run_id"].iloc[0]
