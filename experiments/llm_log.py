"""Log an LLM boss's calls to the active MLflow run: every call as JSONL, and summary metrics.

The artifact ``<artifact_dir>/calls.jsonl`` has one line per decision
(:meth:`agents.llm_boss.LLMCall.to_json`: the prompt messages, the raw answer, the parsed and
played move, validity, fallback reason, error, latency, tokens, cached flag, attempts, model).
The metrics, under ``llm/``:

=========================  ===========================================================
metric                     meaning
=========================  ===========================================================
calls                      decisions asked of the model
fallback_rate              share of decisions that played the fallback boss's move
fallbacks_<reason>         decisions per fallback reason (only reasons that occurred)
cache_hits                 decisions answered from the cache (no request sent)
requests                   requests sent, retries included
latency_mean_s             mean seconds a decision waited for the server (cached left out)
latency_p95_s              95th percentile of the same
prompt_tokens              prompt tokens spent (cached decisions spend none)
completion_tokens          completion tokens spent
total_tokens               both
=========================  ===========================================================

The latency metrics are left out when every decision was cached.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import mlflow
import numpy as np

from agents.llm_boss import LLMCall

CALLS_FILE = "calls.jsonl"


def llm_metrics(calls: Sequence[LLMCall], prefix: str = "llm/") -> dict[str, float]:
    """The summary metrics of ``calls`` (see the module docstring)."""
    asked = [c for c in calls if not c.cached]
    reasons = Counter(c.fallback_reason for c in calls if c.fallback_reason is not None)
    metrics: dict[str, float] = {
        "calls": len(calls),
        "fallback_rate": sum(reasons.values()) / len(calls) if calls else 0.0,
        **{f"fallbacks_{reason}": count for reason, count in sorted(reasons.items())},
        "cache_hits": len(calls) - len(asked),
        "requests": sum(c.attempts for c in calls),
        "prompt_tokens": sum(c.prompt_tokens or 0 for c in calls),
        "completion_tokens": sum(c.completion_tokens or 0 for c in calls),
        "total_tokens": sum(c.total_tokens for c in calls),
    }
    if asked:
        latencies = np.array([c.latency_seconds for c in asked])
        metrics["latency_mean_s"] = float(latencies.mean())
        metrics["latency_p95_s"] = float(np.percentile(latencies, 95))
    return {f"{prefix}{name}": float(value) for name, value in metrics.items()}


def log_llm_calls(calls: Sequence[LLMCall], artifact_dir: str = "llm",
                  prefix: str = "llm/") -> dict[str, float]:
    """Write ``calls`` as ``<artifact_dir>/calls.jsonl`` and their metrics (named
    ``<prefix><metric>``) to the active run; returns the metrics."""
    if mlflow.active_run() is None:
        raise ValueError("log_llm_calls needs an active MLflow run: call it inside "
                         "experiments.tracking.open_run(...) (or mlflow.start_run()).")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / CALLS_FILE
        with path.open("w", encoding="utf-8") as file:
            for call in calls:
                file.write(json.dumps(call.to_json(), ensure_ascii=False) + "\n")
        mlflow.log_artifact(str(path), artifact_path=artifact_dir)
    metrics = llm_metrics(calls, prefix)
    mlflow.log_metrics(metrics)
    return metrics
