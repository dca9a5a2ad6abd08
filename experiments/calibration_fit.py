"""Fit persona parameters to telemetry by simulation: a regression from statistics to parameters.

How (:func:`fit_cluster`):

1. **Candidates.** ``candidates`` personas are drawn uniformly from a box (:class:`Prior`): per
   parameter, the range the shipped personas span, widened by ``margin`` of it on each side and
   kept inside the parameter's bounds (``envs.persona.Persona``).
2. **Simulation.** Each candidate plays about ``sessions_per_candidate`` sessions of the same
   length as the real ones against the same policy (:mod:`experiments.calibration_sim`), and
   its statistics are computed exactly as the real sessions' are
   (:class:`experiments.calibration_data.SessionSums`).
3. **Regression.** A ridge regression (penalty chosen per parameter by leave-one-out) learns
   parameters from standardized statistics (on 600 candidates it explained more than extra
   trees, degree-2 ridge or an MLP did, and it extrapolates smoothly).
   Its 5-fold cross-validated R² per parameter says what telemetry can tell: parameters under
   ``min_r2`` are *not identified* and keep the nearest shipped persona's value.
4. **Rounds.** Each further round draws new candidates from a box around the last estimate
   (± 3 uncertainties, within the first box) and fits again: a local linear fit is sharper.
5. **Uncertainty.** Bootstrap over the cluster's sessions (resampled with replacement, the
   statistics pooled again, the regression applied), combined with the regression's
   cross-validated error: ``sqrt(bootstrap_sd² + cv_rmse²)``, one standard deviation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold, cross_val_predict

from envs.persona import HIGHEST, LOWEST, PARAMETERS, PlayerPool, load_persona
from experiments.calibration_data import SessionSums

INTEGER_PARAMETERS = ("equipment_level",)
RIDGE_PENALTIES = np.logspace(-3, 3, 13)
MIN_SESSIONS_PER_CANDIDATE = 2
"""Candidates drawn fewer times than this (sessions are assigned at random) are left out."""

Simulate = Callable[[PlayerPool, int], SessionSums]
"""Plays ``sessions`` sessions of players drawn from a pool; their sums (personas: names)."""


@dataclass(frozen=True)
class Prior:
    """A box of persona parameters: ``low`` and ``high`` per PARAMETERS entry."""

    low: np.ndarray
    high: np.ndarray

    @classmethod
    def around_shipped(cls, personas: Sequence[str], margin: float) -> Prior:
        """The shipped personas' span, widened by ``margin`` of it each side, within bounds."""
        values = shipped_values(personas)
        low, high = values.min(axis=0), values.max(axis=0)
        span = np.maximum(high - low, 1e-3)
        return cls(np.maximum(low - margin * span, LOWEST),
                   np.minimum(high + margin * span, np.minimum(HIGHEST, 1e6)))

    def narrowed(self, centre: np.ndarray, width: np.ndarray) -> Prior:
        """``centre ± width``, inside this box (at least 10% of its span wide)."""
        half = np.maximum(width, 0.05 * (self.high - self.low))
        low = np.clip(centre - half, self.low, self.high)
        high = np.clip(centre + half, self.low, self.high)
        return Prior(low, high)

    def draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        values = self.low + (self.high - self.low) * rng.random((count, len(PARAMETERS)))
        for name in INTEGER_PARAMETERS:
            k = PARAMETERS.index(name)
            values[:, k] = np.round(values[:, k])
        return values


def shipped_values(personas: Sequence[str]) -> np.ndarray:
    """(personas, PARAMETERS) values of the named personas."""
    return np.array([[float(asdict(load_persona(p))[k]) for k in PARAMETERS] for p in personas])


@dataclass(frozen=True)
class FitSettings:
    """How hard the fit works (``configs/calibrate.yaml``'s fit fields)."""

    candidates: int = 300
    sessions_per_candidate: int = 4
    rounds: int = 2
    bootstrap: int = 100
    min_r2: float = 0.5
    margin: float = 0.2
    seed: int = 0


@dataclass(frozen=True)
class Regression:
    """A fitted statistics -> parameters model and what cross-validation says of it."""

    model: RidgeCV
    mean: np.ndarray
    scale: np.ndarray
    prior: Prior
    r2: np.ndarray
    """Cross-validated R² per parameter (over the candidates' spread)."""
    rmse: np.ndarray
    """Cross-validated error per parameter, in the parameter's units."""

    def predict(self, statistics: np.ndarray) -> np.ndarray:
        """(rows, PARAMETERS) parameters for (rows, statistics); NaN statistics -> the mean."""
        x = np.where(np.isnan(statistics), self.mean, statistics)
        unit = self.model.predict((x - self.mean) / self.scale)
        return self.prior.low + unit * (self.prior.high - self.prior.low)


def train_regression(prior: Prior, simulate: Simulate, settings: FitSettings,
                     seed: int) -> Regression:
    """Simulate candidates drawn from ``prior`` and fit the regression (steps 1-3)."""
    rng = np.random.default_rng(seed)
    values = prior.draw(rng, settings.candidates)
    pool = PlayerPool(names=tuple(f"c{i}" for i in range(len(values))),
                      weights=np.full(len(values), 1.0 / len(values)), parameters=values,
                      jitter=0.0)
    sums = simulate(pool, settings.candidates * settings.sessions_per_candidate)
    groups = {name: s for name, s in sums.by_persona().items()
              if len(s.sessions) >= MIN_SESSIONS_PER_CANDIDATE}
    x = np.array([s.pooled() for s in groups.values()])
    y = values[[int(name[1:]) for name in groups]]
    return _fit(x, y, prior, settings, seed)


def _fit(x: np.ndarray, y: np.ndarray, prior: Prior, settings: FitSettings,
         seed: int) -> Regression:
    mean = np.nanmean(x, axis=0)
    mean = np.where(np.isnan(mean), 0.0, mean)
    x = np.where(np.isnan(x), mean, x)
    scale = np.where(x.std(axis=0) > 1e-9, x.std(axis=0), 1.0)
    span = np.maximum(prior.high - prior.low, 1e-9)
    unit = (y - prior.low) / span
    model = RidgeCV(alphas=RIDGE_PENALTIES, alpha_per_target=True)
    z = (x - mean) / scale
    predicted = cross_val_predict(model, z, unit, cv=KFold(5, shuffle=True, random_state=seed))
    residual = (predicted - unit) * span
    variance = np.maximum(((unit - unit.mean(axis=0)) ** 2).mean(axis=0), 1e-12)
    r2 = 1.0 - ((predicted - unit) ** 2).mean(axis=0) / variance
    r2 = np.where(prior.high - prior.low > 1e-9, r2, 0.0)
    model.fit(z, unit)
    return Regression(model, mean, scale, prior, r2, np.sqrt((residual ** 2).mean(axis=0)))


@dataclass(frozen=True)
class ClusterFit:
    """The fitted parameters of one cluster of sessions."""

    values: np.ndarray
    """Per PARAMETERS entry: the fitted value (the nearest persona's when not identified)."""
    uncertainty: np.ndarray
    """One standard deviation (NaN when not identified)."""
    bootstrap_sd: np.ndarray
    cv_rmse: np.ndarray
    r2: np.ndarray
    """Cross-validated R² per parameter over the broad prior (first round)."""
    identified: np.ndarray
    """bool per parameter: cross-validated R² >= min_r2 over the broad prior (first round)."""
    nearest: str
    """The shipped persona nearest the identified parameters."""


def fit_cluster(sums: SessionSums, simulate: Simulate, broad: Prior, regressions: list[Regression],
                personas: Sequence[str], settings: FitSettings, seed: int) -> ClusterFit:
    """Fit one cluster (see the module docstring). ``regressions`` caches the first round,
    shared by every cluster (its first entry; trained here if empty)."""
    if not regressions:
        regressions.append(train_regression(broad, simulate, settings, seed))
    regression = first = regressions[0]
    estimate, spread = _estimate(regression, sums, settings, seed)
    for round_index in range(1, settings.rounds):
        prior = broad.narrowed(estimate, 3.0 * spread)
        regression = train_regression(prior, simulate, settings, seed + 7919 * round_index)
        estimate, spread = _estimate(regression, sums, settings, seed)
    return _finish(regression, sums, estimate, first.r2, personas, broad, settings, seed)


def _estimate(regression: Regression, sums: SessionSums, settings: FitSettings,
              seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The point estimate and its total uncertainty (bootstrap and fit error)."""
    estimate = regression.predict(sums.pooled()[np.newaxis])[0]
    boot = bootstrap(regression, sums, settings.bootstrap, seed)
    return estimate, np.sqrt(boot.std(axis=0) ** 2 + regression.rmse ** 2)


def bootstrap(regression: Regression, sums: SessionSums, rounds: int, seed: int) -> np.ndarray:
    """(rounds, PARAMETERS): the estimate on sessions resampled with replacement."""
    rng = np.random.default_rng(seed + 1)
    count = len(sums.sessions)
    weights = rng.multinomial(count, np.full(count, 1.0 / count), size=max(rounds, 2))
    statistics = np.array([sums.pooled(w.astype(float)) for w in weights])
    return regression.predict(statistics)


def _finish(regression: Regression, sums: SessionSums, estimate: np.ndarray,
            r2: np.ndarray, personas: Sequence[str], broad: Prior,
            settings: FitSettings, seed: int) -> ClusterFit:
    """Identified parameters keep the estimate, the others the nearest persona's value."""
    identified = r2 >= settings.min_r2
    boot_sd = bootstrap(regression, sums, settings.bootstrap, seed).std(axis=0)
    shipped = shipped_values(personas)
    nearest = _nearest(shipped, estimate, identified, broad)
    values = np.where(identified, estimate, shipped[nearest])
    for name in INTEGER_PARAMETERS:
        k = PARAMETERS.index(name)
        values[k] = np.round(values[k])
    uncertainty = np.where(identified, np.sqrt(boot_sd ** 2 + regression.rmse ** 2), np.nan)
    return ClusterFit(values=np.clip(values, LOWEST, HIGHEST), uncertainty=uncertainty,
                      bootstrap_sd=boot_sd, cv_rmse=regression.rmse, r2=r2,
                      identified=identified, nearest=personas[nearest])


def _nearest(shipped: np.ndarray, estimate: np.ndarray, identified: np.ndarray,
             prior: Prior) -> int:
    """The shipped persona closest to the estimate on the identified parameters (in units of
    the prior's span); the first persona when nothing is identified."""
    if not identified.any():
        return 0
    span = np.maximum(prior.high - prior.low, 1e-9)
    distance = (((shipped - estimate) / span)[:, identified] ** 2).sum(axis=1)
    return int(distance.argmin())
