"""Prometheus metrics of one app (its own ``CollectorRegistry``: two apps in one process, as in
tests, never share counters), and a latency window for ``realtime-stats``.

==========================================  =========  ==========================================
metric                                      kind       what
==========================================  =========  ==========================================
bosslab_decisions_total{game}               counter    moves served (answered)
bosslab_outcomes_total{game,result}         counter    outcomes: stored / duplicate
bosslab_errors_total{code}                  counter    error messages sent, by protocol code
bosslab_open_sockets                        gauge      WebSocket connections open now
bosslab_decision_seconds                    histogram  the brain's decision (of the requests of
                                                       one loop turn, decided together: theirs)
bosslab_decision_store_seconds              histogram  from a decision to its group commit
                                                       (answered before it, unless storage fails)
bosslab_request_seconds                     histogram  a request from frame received to answer
                                                       ready (``latency_ms`` of the response)
bosslab_outcome_seconds                     histogram  an outcome from frame to learning_update
bosslab_gc_pause_seconds{generation}        histogram  the server process's garbage collections
                                                       (``python -m serving``; each pauses every
                                                       socket: :mod:`serving.collector`)
==========================================  =========  ==========================================
"""

from __future__ import annotations

from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003,
                   0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1)
"""Seconds: 0.1 ms to 100 ms."""
WINDOW = 10_000
"""Latencies kept per game for realtime-stats percentiles."""


class Metrics:
    """The app's counters, gauges and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.decisions = Counter("bosslab_decisions", "Moves served", ["game"], registry=r)
        self.outcomes = Counter("bosslab_outcomes", "Outcomes received, by result",
                                ["game", "result"], registry=r)
        self.errors = Counter("bosslab_errors", "Error messages sent, by code", ["code"],
                              registry=r)
        self.open_sockets = Gauge("bosslab_open_sockets", "Open WebSocket connections",
                                  registry=r)
        self.decision_seconds = Histogram(
            "bosslab_decision_seconds", "The brain's decision time", registry=r,
            buckets=LATENCY_BUCKETS)
        self.store_seconds = Histogram(
            "bosslab_decision_store_seconds", "From a decision to its group commit",
            registry=r, buckets=LATENCY_BUCKETS)
        self.request_seconds = Histogram(
            "bosslab_request_seconds", "A boss_action_request from frame to answer",
            registry=r, buckets=LATENCY_BUCKETS)
        self.outcome_seconds = Histogram(
            "bosslab_outcome_seconds", "An action_outcome from frame to learning_update",
            registry=r, buckets=LATENCY_BUCKETS)
        self.gc_pause_seconds = Histogram(
            "bosslab_gc_pause_seconds", "A garbage collection of the server process",
            ["generation"], registry=r, buckets=LATENCY_BUCKETS)

    def observe_gc_pause(self, generation: int, seconds: float) -> None:
        self.gc_pause_seconds.labels(str(generation)).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)


class LatencyWindow:
    """The last ``size`` latencies (ms) of a game, for p50/p99 in realtime-stats."""

    def __init__(self, size: int = WINDOW) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def add(self, milliseconds: float) -> None:
        self._values.append(milliseconds)

    def percentiles(self) -> dict[str, float | None]:
        """``p50`` and ``p99`` (nearest rank), None before the first request."""
        values = sorted(self._values)
        if not values:
            return {"p50": None, "p99": None}
        return {"p50": round(_rank(values, 0.50), 3), "p99": round(_rank(values, 0.99), 3)}


def _rank(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, max(0, int(q * len(values) + 0.5) - 1))]
