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
        self._row_offsets: dict[int, np.ndarray] = {}

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
        return rng.random((count, self.n))

    @staticmethod
    def to_int(x: Any) -> Any:
        return x.astype(np.int64)

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

    # Per-move tables: (n, k) arrays, addressed through flat indices (about twice as fast as
    # numpy's (rows, index) fancy indexing).
    def _flat(self, table: np.ndarray, index: Any) -> Any:
        width = table.shape[1]
        offsets = self._row_offsets.get(width)
        if offsets is None:
            offsets = self._row_offsets[width] = self.rows * width
        return offsets + index

    def pick(self, table: np.ndarray, index: Any) -> Any:
        return table.reshape(-1)[self._flat(table, index)]

    def pick2(self, table: np.ndarray, first: Any, second: Any) -> Any:
        return table.reshape(-1)[self._flat(table, first) * table.shape[2] + second]

    @staticmethod
    def cell(table: np.ndarray, row: Any, column: Any) -> Any:
        """``table[row][column]`` of a table shared by all envs, per env."""
        return table.reshape(-1)[row * table.shape[1] + column]

    def put(self, table: np.ndarray, index: Any, value: Any) -> None:
        table.reshape(-1)[self._flat(table, index)] = value

    def add(self, table: np.ndarray, index: Any, value: Any) -> None:
        flat, where = table.reshape(-1), self._flat(table, index)
        flat[where] += value

    def add2(self, table: np.ndarray, first: Any, second: Any, value: Any) -> None:
        flat, where = table.reshape(-1), self._flat(table, first) * table.shape[2] + second
        flat[where] += value

    def row_shares(self, table: np.ndarray, totals: np.ndarray, index: Any) -> Any:
        """Per env, row ``index`` of its (rows, k) table over that row's total + 2: (n, k)."""
        rows = table[self.rows, index]
        return rows / (self.pick(totals, index) + 2.0)[:, None]

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
        flat = stats.reshape(stats.shape[0], -1)
        return flat[:, phase * stats.shape[2] + move]

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
    def legal_moves(rule: Any, ready_at: np.ndarray, now: Any, allowed: Any, stamina: Any,
                    cost: Any) -> np.ndarray:
        """``rule`` (elementwise) over every env and move: an (n, moves) bool array."""
        return rule(ready_at, now[:, None], allowed, stamina[:, None], cost)

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

    def write_one_hots(self, out: np.ndarray, starts: Sequence[int], rows: Sequence[Any],
                       indices: Sequence[Any]) -> None:
        """Set one column per category and env. The simulator's indices are always valid, so
        unlike ``ScalarOps`` (which serves requests, with -1 for an absent category) this does
        not check them; ``rows`` is ScalarOps' and unused here."""
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
        return rng.random(count).tolist()

    to_int = staticmethod(int)

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
    def cell(table: Any, row: int, column: int) -> Any:
        return table[row][column]

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
    def row_shares(table: list[list[float]], totals: list[float], index: int) -> list[float]:
        total = totals[index] + 2.0
        return [v / total for v in table[index]]

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
    def legal_moves(rule: Any, ready_at: list[float], now: float, allowed: Sequence[bool],
                    stamina: float, cost: Sequence[float]) -> list[bool]:
        return [rule(r, now, a, stamina, c) for r, a, c in zip(ready_at, allowed, cost,
                                                                 strict=False)]

    # Observations: ``out`` is a Python list the features are appended to, in layout order.
    @staticmethod
    def new_observation(width: int) -> list[float]:
        return []

    @staticmethod
    def write_scalars(out: list[float], values: Sequence[float], scales: Sequence[float]) -> None:
        out += [0.0 if (v := x * scale) < 0.0 else 1.0 if v > 1.0 else v
                for x, scale in zip(values, scales, strict=False)]

    @staticmethod
    def write_blocks(out: list[float], starts: Sequence[int], blocks: Sequence[Any]) -> None:
        """Lists of values already in [0, 1] (the caller's contract), in layout order."""
        for block in blocks:
            out += block

    @staticmethod
    def write_one_hots(out: list[float], starts: Sequence[int], rows: Sequence[Any],
                       indices: Sequence[int]) -> None:
        """``rows[k][i]`` is category k's one-hot row for index i; index -1 (absent) picks the
        all-zero row stored last."""
        for category_rows, index in zip(rows, indices, strict=False):
            out += category_rows[index]

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
    def to_int(self, x: Any) -> Any: ...
    def when(self, condition: Any, value: Any, *columns: Any) -> Any: ...
    def popcount(self, bits: Any) -> Any: ...
    def count_at_or_below(self, x: Any, thresholds: Any) -> Any: ...
    def pick(self, table: Any, index: Any) -> Any: ...
    def pick2(self, table: Any, first: Any, second: Any) -> Any: ...
    def cell(self, table: Any, row: Any, column: Any) -> Any: ...
    def put(self, table: Any, index: Any, value: Any) -> None: ...
    def add(self, table: Any, index: Any, value: Any) -> None: ...
    def add2(self, table: Any, first: Any, second: Any, value: Any) -> None: ...
    def row_shares(self, table: Any, totals: Any, index: Any) -> Any: ...
    def column_of(self, table: Any, index: int) -> Any: ...
    def gather(self, stats: Any, index: Any) -> Any: ...
    def lookup(self, stats: Any, phase: Any, move: Any) -> Any: ...
    def row_sum(self, table: Any) -> Any: ...
    def decay(self, table: Any, factor: float) -> None: ...
    def blend(self, table: Any, weight: Any, bits: Any) -> None: ...
    def at_least(self, table: Any, cut: Any) -> Any: ...
    def remaining(self, ready_at: Any, now: Any, cooldown: Any) -> Any: ...
    def legal_moves(self, rule: Any, ready_at: Any, now: Any, allowed: Any, stamina: Any,
                    cost: Any) -> Any: ...
    def new_observation(self, width: int) -> Any: ...
    def write_scalars(self, out: Any, values: Any, scales: Any) -> None: ...
    def write_blocks(self, out: Any, starts: Sequence[int], blocks: Sequence[Any]) -> None: ...
    def write_one_hots(self, out: Any, starts: Sequence[int], rows: Sequence[Any],
                       indices: Sequence[Any]) -> None: ...
    def finish_observation(self, out: Any) -> np.ndarray: ...
