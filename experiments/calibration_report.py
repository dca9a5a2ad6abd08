"""What calibration writes: the BIC table, fitted persona YAMLs, fidelity tables and plots.

- :func:`choose_clusters`: sessions clustered by a Gaussian mixture (diagonal covariances) over
  standardized session statistics reduced by PCA; the number of clusters is the one with the
  lowest BIC among 1..``max_clusters`` whose every cluster holds at least
  ``min_cluster_sessions`` sessions (a smaller cluster cannot support a fit and its bootstrap;
  the table, with an ``eligible`` column, is the explanation).
- :func:`persona_yaml`: a ``configs/player/``-compatible persona file, each parameter's
  uncertainty (or "not identified") as a comment.
- :func:`fidelity_table`: real against simulated statistics, side by side, context statistics
  and per boss move the players' response; :func:`plot_fidelity` draws them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

from envs.persona import PARAMETERS
from experiments.calibration_data import RESPONSES, SessionSums
from experiments.calibration_fit import INTEGER_PARAMETERS, ClusterFit

matplotlib.use("Agg")  # files only, no display; chosen before pyplot is imported
import matplotlib.pyplot as plt

VARIANCE_FLOOR = 0.1
"""Added to every cluster's variances (the features are standardized): a cluster of one or two
odd sessions cannot buy a near-infinite likelihood, so BIC does not choose it."""
VARIANCE_KEPT = 0.9
"""PCA keeps the components explaining this share of the sessions' variance (at most 6)."""


@dataclass(frozen=True)
class Clustering:
    """Which cluster each session is in, and why that many clusters."""

    labels: np.ndarray
    bic: pd.DataFrame
    """One row per candidate number of clusters: clusters, bic, chosen."""
    components: int
    """Principal components the mixture was fitted on."""


def choose_clusters(sums: SessionSums, max_clusters: int, seed: int,
                    min_cluster_sessions: int = 1) -> Clustering:
    """Cluster the sessions; the number of clusters minimizes BIC among the mixtures whose
    clusters all hold ``min_cluster_sessions`` sessions (see the module doc)."""
    z = _standardized(sums.per_session())
    pca = PCA(n_components=min(6, *z.shape), random_state=seed).fit(z)
    keep = int(np.searchsorted(np.cumsum(pca.explained_variance_ratio_), VARIANCE_KEPT) + 1)
    x = pca.transform(z)[:, :min(keep, pca.n_components_)]
    rows, models = [], []
    for k in range(1, min(max_clusters, len(x) - 1) + 1):
        model = GaussianMixture(k, covariance_type="diag", n_init=3, reg_covar=VARIANCE_FLOOR,
                                random_state=seed).fit(x)
        smallest = int(np.bincount(model.predict(x), minlength=k).min())
        rows.append({"clusters": k, "bic": float(model.bic(x)),
                     "log_likelihood": float(model.score(x) * len(x)),
                     "smallest_cluster": smallest,
                     "eligible": k == 1 or smallest >= min_cluster_sessions})
        models.append(model)
    bic = pd.DataFrame(rows)
    best = int(np.argmin(np.where(bic["eligible"], bic["bic"].to_numpy(), np.inf)))
    bic["chosen"] = bic.index == best
    labels = _ordered(np.asarray(models[best].predict(x)))
    return Clustering(labels, bic, x.shape[1])


def _standardized(values: np.ndarray) -> np.ndarray:
    column_mean = np.nanmean(values, axis=0)
    filled = np.where(np.isnan(values), np.where(np.isnan(column_mean), 0.0, column_mean),
                      values)
    scale = filled.std(axis=0)
    return (filled - filled.mean(axis=0)) / np.where(scale > 1e-9, scale, 1.0)


def _ordered(labels: np.ndarray) -> np.ndarray:
    """Relabel clusters 0, 1, ... by decreasing size (ties: first seen)."""
    sizes = np.bincount(labels)
    order = sorted(range(len(sizes)), key=lambda label: (-sizes[label], label))
    rank = {label: position for position, label in enumerate(order)}
    return np.array([rank[label] for label in labels])


def persona_yaml(name: str, fit: ClusterFit, description: str, header: Sequence[str]) -> str:
    """A persona file: every Persona field, uncertainties and provenance as comments."""
    lines = [f"# {line}" for line in header]
    lines += [f"name: {name}", f"description: {_quoted(description)}"]
    for k, parameter in enumerate(PARAMETERS):
        value = fit.values[k]
        shown = str(int(value)) if parameter in INTEGER_PARAMETERS else f"{value:.4g}"
        note = (f"± {fit.uncertainty[k]:.3g} (R² {fit.r2[k]:.2f})" if fit.identified[k]
                else f"not identified (R² {fit.r2[k]:.2f}): {fit.nearest}'s value")
        lines.append(f"{parameter}: {shown}  # {note}")
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parameter_table(name: str, fit: ClusterFit) -> pd.DataFrame:
    """One row per parameter: value, uncertainty and how it was decided."""
    return pd.DataFrame({
        "persona": name, "parameter": PARAMETERS, "value": fit.values,
        "uncertainty": fit.uncertainty, "bootstrap_sd": fit.bootstrap_sd,
        "cv_rmse": fit.cv_rmse, "r2": fit.r2, "identified": fit.identified,
        "source": [("fitted" if ok else f"{fit.nearest} (not identified)")
                   for ok in fit.identified]})


def fidelity_table(real: SessionSums, simulated: SessionSums) -> pd.DataFrame:
    """Per statistic: the real players' value (pooled), the simulated persona's, and the
    spread over sessions of each; ``kind`` says context or response (to which boss move)."""
    real_sd = np.nanstd(real.per_session(), axis=0)
    sim_sd = np.nanstd(simulated.per_session(), axis=0)
    names = list(real.names)
    return pd.DataFrame({
        "statistic": names,
        "kind": [_kind(n) for n in names],
        "real": real.pooled(), "simulated": simulated.pooled(),
        "real_session_sd": real_sd, "simulated_session_sd": sim_sd})


def _kind(name: str) -> str:
    move, _, response = name.partition(":")
    return f"response to {move}" if response in RESPONSES else "context"


def plot_fidelity(tables: dict[str, pd.DataFrame], path: Path) -> Path:
    """Per cluster: context statistics (scaled to the real value) and per-move responses,
    real against simulated."""
    fig, axes = plt.subplots(len(tables), 2, figsize=(16, 4 * len(tables)), squeeze=False,
                             layout="constrained")
    for row, (name, table) in enumerate(tables.items()):
        context = table[table["kind"] == "context"]
        _pairs(axes[row][0], context, f"{name}: player context (real vs simulated)")
        responses = table[table["statistic"].str.endswith(":player_hit")
                          | table["statistic"].str.endswith(":effectiveness_score")]
        _pairs(axes[row][1], responses, f"{name}: response per boss move")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _pairs(ax: plt.Axes, table: pd.DataFrame, title: str) -> None:
    positions = np.arange(len(table))
    scale = np.where(table["real"].abs() > 1.0, table["real"].abs(), 1.0)
    ax.bar(positions - 0.2, table["real"] / scale, 0.4, label="real", color="tab:blue")
    ax.bar(positions + 0.2, table["simulated"] / scale, 0.4, label="simulated",
           color="tab:orange")
    ax.set_xticks(positions, table["statistic"], rotation=70, fontsize=7, ha="right")
    ax.set_title(title + " (values above 1 divided by the real value)", fontsize=9)
    ax.legend(fontsize=8)
