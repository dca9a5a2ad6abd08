"""The server process's garbage collector: frozen once started, then paced by the clock.

Python collects its youngest generation whenever allocations outnumber deallocations by 700.
A busy server's young objects are mostly live: each socket's waiting coroutines, futures and
parser are made anew by every message and live until the next (about a second per session at
the load benchmark's rate). Deallocations of older objects keep the count low, so collections
came rarely (1-2 a second at 1,000 decisions/s) and each found 5,000-16,000 live objects,
freed nothing and paused every socket for 1-3 ms on average, up to 8 ms.

:class:`PacedCollector` collects the young generation every :data:`YOUNG_EVERY` seconds
instead, from the event loop: each finds a tenth of a second's objects (0.45 ms on average,
about 1 ms at most, in the same benchmark). The middle generation is collected after
:data:`MIDDLE_AFTER` young collections (about a minute), the oldest after
:data:`OLDEST_AFTER` middle ones (so reference cycles never pile up in a server that runs for
days). Those still scan every object that has outlived a young collection since their last:
with 1,000 sessions, a middle collection took 10.5 ms, a full one 70-91 ms. Allocation-driven
collection stays on as a safety net for a blocked loop or an allocation storm: the young
threshold stays Python's (:data:`ALLOCATIONS_YOUNG`), the middle one is twice the pace's. After
:data:`STORM_AFTER` allocation-triggered young collections, the next paced one collects the
middle generation: without it, the first middle collection after 1,000 sessions opened at
once scanned everything they had made and took 94 ms.

``on_pause(generation, seconds)`` hears of every collection, paced or not, at the next paced
one: the server's ``bosslab_gc_pause_seconds`` histogram. A ``gc.callbacks`` hook only notes
the pause; telling a metric from inside a collection could deadlock on the metric's own lock,
held by whatever allocated when the collection began.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from time import perf_counter
from typing import Any

YOUNG_EVERY = 0.1
"""Seconds between young-generation collections."""
MIDDLE_AFTER = 600
"""Young collections between two middle-generation ones (about a minute)."""
OLDEST_AFTER = 100
"""Middle collections between two full ones (about 100 minutes)."""
ALLOCATIONS_YOUNG = 700
"""Net allocations that still trigger a young collection between two paced ones (Python's
default)."""
STORM_AFTER = 50
"""Allocation-triggered young collections that make the middle generation due at the next
paced one: a storm of allocations (sessions opening by the thousand) has it collected in
portions as it goes, instead of in one long pause up to a minute later."""

PauseListener = Callable[[int, float], None]
"""Told each collection's generation and its seconds."""


def freeze_startup_objects() -> None:
    """Collect once, then move everything allocated so far (modules, bundles, replayed
    memories) out of the collector's reach for good (``gc.freeze``)."""
    gc.collect()
    gc.freeze()


class PacedCollector:
    """Young collections every ``every`` seconds on ``loop`` (see the module docstring)."""

    def __init__(self, every: float = YOUNG_EVERY, middle_after: int = MIDDLE_AFTER,
                 oldest_after: int = OLDEST_AFTER, storm_after: int = STORM_AFTER,
                 on_pause: PauseListener | None = None) -> None:
        if every <= 0 or min(middle_after, oldest_after, storm_after) < 1:
            raise ValueError(f"every ({every} s), middle_after ({middle_after}), oldest_after "
                             f"({oldest_after}) and storm_after ({storm_after}) must be "
                             f"positive.")
        self.every = every
        self.middle_after = middle_after
        self.oldest_after = oldest_after
        self.storm_after = storm_after
        self.on_pause = on_pause
        self._pacing = False
        self._unpaced_young = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next: asyncio.TimerHandle | None = None
        self._saved_thresholds: tuple[int, int, int] | None = None
        self._started = 0.0
        self._pauses: list[tuple[int, float]] = []

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not None:
            raise RuntimeError("this PacedCollector is already started.")
        self._loop = loop
        self._saved_thresholds = gc.get_threshold()
        gc.set_threshold(ALLOCATIONS_YOUNG, 2 * self.middle_after, self.oldest_after)
        gc.callbacks.append(self._timed)
        self._next = loop.call_later(self.every, self._collect)

    def stop(self) -> None:
        """No more paced collections; Python's thresholds as they were before :meth:`start`."""
        if self._next is not None:
            self._next.cancel()
        if self._timed in gc.callbacks:
            gc.callbacks.remove(self._timed)
        if self._saved_thresholds is not None:
            gc.set_threshold(*self._saved_thresholds)
        self._loop = self._next = self._saved_thresholds = None

    def generation_due(self) -> int:
        """The oldest generation whose turn it is (counts as ``gc.get_count`` gives them)."""
        _, young_since_middle, middle_since_oldest = gc.get_count()
        if young_since_middle >= self.middle_after or self._unpaced_young >= self.storm_after:
            return 2 if middle_since_oldest + 1 >= self.oldest_after else 1
        return 0

    def _collect(self) -> None:
        self._pacing = True
        try:
            gc.collect(self.generation_due())
        finally:
            self._pacing = False
        assert self._loop is not None
        self._next = self._loop.call_later(self.every, self._collect)
        if self.on_pause is not None:
            pauses, self._pauses = self._pauses, []
            for generation, seconds in pauses:
                self.on_pause(generation, seconds)

    def _timed(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = perf_counter()
            return
        generation = info["generation"]
        if generation > 0:
            self._unpaced_young = 0
        elif not self._pacing:
            self._unpaced_young += 1
        if self.on_pause is not None:
            self._pauses.append((generation, perf_counter() - self._started))


__all__ = ["ALLOCATIONS_YOUNG", "MIDDLE_AFTER", "OLDEST_AFTER", "STORM_AFTER", "YOUNG_EVERY",
           "PacedCollector", "PauseListener", "freeze_startup_objects"]
