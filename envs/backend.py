"""Array operations for the step kernel, on a batch of numpy rows or on one env's scalars.

The simulator's kernel is written once against these operations. ``BatchOps`` runs it on
numpy arrays (one row per env) for the vector env; ``ScalarOps`` runs the same code on Python
floats and lists for the single env, where numpy's per-call overhead (about half a
microsecond) would cost far more than the arithmetic. Per-env values are arrays of shape (n,)
or scalars; per-move tables are (n, k) arrays or lists of k values.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

POPCOUNT = np.array([bin(i).count("1") for i in range(1024)])

@functools.cache
def _bit_rows(width: int) -> np.ndarray:
    """Row i holds the ``width`` low bits of i as 0.0/1.0."""
    return ((np.arange(2**width)[:, None] >> np.arange(width)) & 1).astype(np.float64)


class BatchOps:
    """Operations over ``n`` envs at once."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.rows = np.arange(n)

    where = staticmethod(np.where)
    minimum = staticmethod(np.minimum)
    maximum = staticmethod(np.maximum)
    abs = staticmethod(np.abs)

    @staticmethod
    def clip(x: Any, low: Any, high: Any) -> Any:
        return np.clip(x, low, high)

    @staticmethod
    def not_(x: Any) -> Any:
        return ~x

    @staticmethod
    def any(x: Any) -> bool:
        return bool(x.any())

    def uniform(self, rng: np.random.Generator, count: int) -> np.ndarray:
        # float32 draws are twice as fast; computing on them in float64 keeps both backends
        # doing the same arithmetic.
        return rng.random((count, self.n), dtype=np.float32).astype(np.float64)

    def when(self, condition: Any, value: Any, *columns: Any) -> Any:
        """``value(*columns)`` where ``condition`` holds, else 0; computed on those rows only."""
        out = np.zeros(self.n)
        index = np.flatnonzero(condition)
        if len(index):
            out[index] = value(*(np.asarray(c)[index] for c in columns))
        return out

    @staticmethod
    def popcount(bits: Any) -> Any:
        return POPCOUNT[bits]

    @staticmethod
    def count_at_or_below(x: Any, thresholds: Sequence[float]) -> Any:
        count = np.zeros(x.shape, dtype=np.int64)
        for threshold in thresholds:
            count += x <= threshold
        return count

    # Per-move tables: (n, k) arrays.
    def pick(self, table: np.ndarray, index: Any) -> Any:
        return table[self.rows, index]

    def pick2(self, table: np.ndarray, first: Any, second: Any) -> Any:
        return table[self.rows, first, second]

    def put(self, table: np.ndarray, index: Any, value: Any) -> None:
        table[self.rows, index] = value

    def add(self, table: np.ndarray, index: Any, value: Any) -> None:
        table[self.rows, index] += value

    def add2(self, table: np.ndarray, first: Any, second: Any, value: Any) -> None:
        table[self.rows, first, second] += value

    @staticmethod
    def column_of(table: np.ndarray, index: int) -> Any:
        return table[:, index]

    @staticmethod
    def gather(stats: np.ndarray, index: Any) -> Any:
        """Per-env rows of a (stat, k) table: an array of shape (stats, n)."""
        return stats[:, index]

    @staticmethod
    def lookup(stats: np.ndarray, phase: Any, move: Any) -> Any:
        """Per-env rows of a (stat, phase, move) table: an array of shape (stats, n)."""
        return stats[:, phase, move]

    @staticmethod
    def row_sum(table: np.ndarray) -> Any:
        return table.sum(axis=1)

    @staticmethod
    def decay(table: np.ndarray, factor: float) -> None:
        table *= factor

    @staticmethod
    def blend(table: np.ndarray, weight: Any, bits: Any) -> None:
        """Move each row toward the 0/1 pattern of ``bits`` (bit k for column k) by its env's
        ``weight``: an EMA step."""
        table += weight[:, None] * (_bit_rows(table.shape[1])[bits] - table)

    @staticmethod
    def at_least(table: np.ndarray, cut: Any) -> Any:
        return (table >= np.reshape(cut, (-1, 1))) * 1.0

    @staticmethod
    def remaining(ready_at: np.ndarray, now: Any, cooldown: Any) -> Any:
        return (ready_at - now[:, None]) / cooldown

    @staticmethod
    def legal_moves(mask: np.ndarray, ready_at: np.ndarray, now: Any, allowed: Any,
                    stamina: Any, cost: Any) -> None:
        np.logical_and(ready_at <= now[:, None] + 1e-9, allowed, out=mask)
        mask &= stamina[:, None] >= cost

    # Observations: ``out`` is an (n, width) float32 array, clipped to [0, 1] once at the end.
    def new_observation(self, width: int) -> np.ndarray:
        return np.zeros((self.n, width), dtype=np.float32)

    @staticmethod
    def write_scalars(out: np.ndarray, values: Sequence[Any], scales: Sequence[float]) -> None:
        """Write per-env values, each times its scale, into the first columns."""
        for at, (x, scale) in enumerate(zip(values, scales, strict=False)):
            out[:, at] = x * scale if scale != 1.0 else x

    @staticmethod
    def write_blocks(out: np.ndarray, starts: Sequence[int], blocks: Sequence[Any]) -> None:
        """Write (n, k) blocks of values already in [0, 1] at their starting columns."""
        for at, block in zip(starts, blocks, strict=False):
            out[:, at:at + block.shape[1]] = block

    def write_one_hots(self, out: np.ndarray, starts: Sequence[int], sizes: Sequence[int],
                       indices: Sequence[Any]) -> None:
        """Set one column per category and env. The simulator's indices are always valid, so
        unlike ``ScalarOps`` (which serves requests) this does not check them."""
        flat_out = out.reshape(-1)
        row_starts = self.rows * out.shape[1]
        for at, index in zip(starts, indices, strict=False):
            flat_out[row_starts + (at + index)] = 1.0

    @staticmethod
    def finish_observation(out: np.ndarray) -> np.ndarray:
        return np.clip(out, 0.0, 1.0, out=out)


class ScalarOps:
    """The same operations for one env: per-env values are Python scalars, tables lists."""

    n = 1

    @staticmethod
    def where(condition: Any, a: Any, b: Any) -> Any:
        return a if condition else b

    minimum = staticmethod(min)
    maximum = staticmethod(max)
    abs = staticmethod(abs)

    @staticmethod
    def clip(x: float, low: float, high: float) -> float:
        return low if x < low else high if x > high else x

    @staticmethod
    def not_(x: bool) -> bool:
        return not x

    @staticmethod
    def uniform(rng: np.random.Generator, count: int) -> list[float]:
        # The same stream as BatchOps.uniform with n=1.
        return rng.random(count, dtype=np.float32).tolist()

    @staticmethod
    def when(condition: bool, value: Any, *columns: Any) -> Any:
        """``value(*columns)`` if ``condition`` holds, else 0 (computed only then)."""
        return value(*columns) if condition else 0.0

    @staticmethod
    def popcount(bits: int) -> int:
        return bits.bit_count()

    @staticmethod
    def count_at_or_below(x: float, thresholds: Sequence[float]) -> int:
        count = 0
        for threshold in thresholds:
            if x <= threshold:
                count += 1
        return count

    # Per-move tables: lists (a list of lists for two indices).
    @staticmethod
    def pick(table: list[Any], index: int) -> Any:
        return table[index]

    @staticmethod
    def pick2(table: list[list[float]], first: int, second: int) -> float:
        return table[first][second]

    @staticmethod
    def put(table: list[Any], index: int, value: Any) -> None:
        table[index] = value

    @staticmethod
    def add(table: list[float], index: int, value: float) -> None:
        table[index] += value

    @staticmethod
    def add2(table: list[list[float]], first: int, second: int, value: float) -> None:
        table[first][second] += value

    @staticmethod
    def column_of(table: list[float], index: int) -> float:
        return table[index]

    @staticmethod
    def gather(stats: Any, index: int) -> tuple[float, ...]:
        return stats[index]

    @staticmethod
    def lookup(stats: Any, phase: int, move: int) -> tuple[float, ...]:
        return stats[phase][move]

    row_sum = staticmethod(sum)

    @staticmethod
    def decay(table: list[float], factor: float) -> None:
        table[:] = [v * factor for v in table]

    @staticmethod
    def blend(table: list[float], weight: float, bits: int) -> None:
        if weight:
            table[:] = [v + weight * (((bits >> k) & 1) - v) for k, v in enumerate(table)]

    @staticmethod
    def at_least(table: list[float], cut: float) -> list[float]:
        return [1.0 if v >= cut else 0.0 for v in table]

    @staticmethod
    def remaining(ready_at: list[float], now: float, cooldown: Sequence[float]) -> list[float]:
        return [(r - now) / c if r > now else 0.0
                for r, c in zip(ready_at, cooldown, strict=False)]

    @staticmethod
    def any(x: bool) -> bool:
        return x

    @staticmethod
    def legal_moves(mask: list[bool], ready_at: list[float], now: float, allowed: Sequence[bool],
                    stamina: float, cost: Sequence[float]) -> None:
        ready = now + 1e-9
        mask[:] = [r <= ready and a and stamina >= c
                   for r, a, c in zip(ready_at, allowed, cost, strict=False)]

    # Observations: ``out`` is a Python list of floats.
    @staticmethod
    def new_observation(width: int) -> list[float]:
        return [0.0] * width

    @staticmethod
    def write_scalars(out: list[float], values: Sequence[float], scales: Sequence[float]) -> None:
        scaled = [x * scale for x, scale in zip(values, scales, strict=False)]
        out[:len(scaled)] = [0.0 if v < 0.0 else 1.0 if v > 1.0 else v for v in scaled]

    @staticmethod
    def write_blocks(out: list[float], starts: Sequence[int], blocks: Sequence[Any]) -> None:
        """Write lists of values already in [0, 1] (the caller's contract) at their starts."""
        for at, block in zip(starts, blocks, strict=False):
            out[at:at + len(block)] = block

    @staticmethod
    def write_one_hots(out: list[float], starts: Sequence[int], sizes: Sequence[int],
                       indices: Sequence[int]) -> None:
        for at, size, index in zip(starts, sizes, indices, strict=False):
            if 0 <= index < size:
                out[at + index] = 1.0

    @staticmethod
    def finish_observation(out: list[float]) -> np.ndarray:
        return np.array(out, dtype=np.float32)


class Ops(Protocol):
    """What the kernel and the encoder need of a backend (values are scalars or arrays)."""

    n: int

    def where(self, condition: Any, a: Any, b: Any) -> Any: ...
    def minimum(self, a: Any, b: Any) -> Any: ...
    def maximum(self, a: Any, b: Any) -> Any: ...
    def abs(self, x: Any) -> Any: ...
    def clip(self, x: Any, low: Any, high: Any) -> Any: ...
    def not_(self, x: Any) -> Any: ...
    def any(self, x: Any) -> bool: ...
    def uniform(self, rng: np.random.Generator, count: int) -> Any: ...
    def when(self, condition: Any, value: Any, *columns: Any) -> Any: ...
    def popcount(self, bits: Any) -> Any: ...
    def count_at_or_below(self, x: Any, thresholds: Any) -> Any: ...
    def pick(self, table: Any, index: Any) -> Any: ...
    def pick2(self, table: Any, first: Any, second: Any) -> Any: ...
    def put(self, table: Any, index: Any, value: Any) -> None: ...
    def add(self, table: Any, index: Any, value: Any) -> None: ...
    def add2(self, table: Any, first: Any, second: Any, value: Any) -> None: ...
    def column_of(self, table: Any, index: int) -> Any: ...
    def gather(self, stats: Any, index: Any) -> Any: ...
    def lookup(self, stats: Any, phase: Any, move: Any) -> Any: ...
    def row_sum(self, table: Any) -> Any: ...
    def decay(self, table: Any, factor: float) -> None: ...
    def blend(self, table: Any, weight: Any, bits: Any) -> None: ...
    def at_least(self, table: Any, cut: Any) -> Any: ...
    def remaining(self, ready_at: Any, now: Any, cooldown: Any) -> Any: ...
    def legal_moves(self, mask: Any, ready_at: Any, now: Any, allowed: Any, stamina: Any,
                    cost: Any) -> None: ...
    def new_observation(self, width: int) -> Any: ...
    def write_scalars(self, out: Any, values: Any, scales: Any) -> None: ...
    def write_blocks(self, out: Any, starts: Sequence[int], blocks: Sequence[Any]) -> None: ...
    def write_one_hots(self, out: Any, starts: Sequence[int], sizes: Sequence[int],
                       indices: Sequence[Any]) -> None: ...
    def finish_observation(self, out: Any) -> np.ndarray: ...
