"""The episodic memory of one game's encounters: nearest past decisions per boss move (FAISS).

Entries. One entry is one boss decision: a key (float32 vector of ``dim``, the embedding of
the player context at decision time) and its metadata, kept in numpy columns beside the
index (never a Python object per entry):

========  =======  ===============================================================
field     dtype    meaning
========  =======  ===============================================================
id        int64    stable id: 0, 1, 2, ... in insertion order, never reused
move      int64    the boss move taken, 0 <= move < ``moves``
value     float32  the return that followed
outcome   float32  1 boss won, 0 player won, 0.5 timeout (any float)
persona   str      a tag (the persona or player segment)
time      float64  seconds or a counter
========  =======  ===============================================================

Search. As in Neural Episodic Control (Pritzel et al. 2017) every move has its own index:
:meth:`EpisodicMemory.search` returns for each query the k nearest entries *of each move*
(:class:`rag.retrieval.MoveNeighbours`, arrays ``(n, moves, k)``), and
:meth:`EpisodicMemory.search_any` the k nearest of any move (:class:`rag.retrieval.Neighbours`,
``(n, k)``, merged from the per-move results, which contain the overall k nearest). Distances
are squared L2; missing neighbours are padded with id -1 and distance inf. One FAISS call per
move per batch of queries; everything else is vectorized numpy. :mod:`rag.retrieval` turns the
results into features and blended values.

Capacity and removal. At most ``capacity`` entries (all moves together): adding past it evicts
the oldest entries, smallest ids first (FIFO, as Model-Free Episodic Control's buffers; a
batch larger than the capacity keeps only its newest ``capacity`` entries, but every entry
gets an id). :meth:`EpisodicMemory.remove` deletes entries by id and ignores ids that are not
(or no longer) stored. Eviction costs one removal per touched move per :meth:`add` call, so
add in batches when the memory is full. Keys are held twice, in the index and in the columns
(which keep up to 1.5 x capacity rows between compactions): at most about
2.5 x capacity x dim x 4 bytes, 320 MB for a million keys of 32 floats. Persona tags that no
stored entry carries any more are forgotten once they outnumber ``PERSONA_TAGS_KEPT`` and twice
the entries, so a server tagging entries with every session stays bounded.

Indexes (:class:`MemoryConfig` ``index``), one per move:

=====  ===============================================  =================================
kind   FAISS index                                      removal and eviction
=====  ===============================================  =================================
exact  ``IndexFlatL2`` in ``IndexIDMap`` (the default)  ``remove_ids``: a scan of the
                                                        move's entries per call
ivf    ``IndexIVFFlat`` with a hash-table direct map;   ``remove_ids`` through the direct
       searched exactly (as ``exact``) until the move   map: O(removed)
       has ``ivf_train_size`` entries, then trained
       once on them
hnsw   ``IndexHNSWFlat`` in ``IndexIDMap``              none in FAISS: removed ids are
                                                        filtered out of every search (an
                                                        ``IDSelector``) and the move's
                                                        graph is rebuilt once they exceed
                                                        ``hnsw_rebuild_fraction`` of it
=====  ===============================================  =================================

``ivf`` is the approximate index to use for a memory that keeps learning: removal and FIFO
eviction are cheap and in place, adding costs about what it costs for ``exact``, and training
takes a fraction of a second. ``hnsw`` reaches the highest recall, with search time growing
only logarithmically with the entries, but it builds slowly (seconds per 100,000 entries) and
is rebuilt under the write lock, which stalls searches meanwhile: use it for memories that
change rarely (a frozen memory shipped with a policy bundle). ``IndexIDMap2`` is not used: its
only addition, ``reconstruct`` by id, is not needed (the keys are kept in the columns), and its
``remove_ids`` costs four times more (it rebuilds its reverse map).

A move's IVF centroids are trained once, on the move's entries when it first reaches
``ivf_train_size``: in that write, or with ``ivf_train_in_background`` in a low-priority
thread while the move is still searched exactly (a server's choice). If the embeddings
drift, rebuild: ``EpisodicMemory.from_records(config, memory.records())``.

Threads. FAISS indexes are not safe for concurrent writes and searches, so the memory holds a
readers-writer lock: searches, :meth:`records`, ``len`` and :meth:`save` share it (and run
in parallel: FAISS releases the GIL), :meth:`add` and :meth:`remove` hold it alone, and a
waiting writer keeps new readers out so writes never starve. Readers never see a half-written
index or its columns. FAISS's OpenMP pool is per thread: a thread that searches one query at
a time should call ``faiss.omp_set_num_threads(1)`` first, or concurrent searches oversubscribe
the cores (four times slower, measured on two busy cores).

Persistence. :meth:`save` writes a directory: ``memory.json`` (format, config, next id,
persona tags), ``entries.npz`` (the columns) and ``move_<m>.faiss`` per move
(``faiss.write_index``); :meth:`load` reads it back with identical search results, and ids
continue where they stopped. :meth:`from_records` rebuilds a memory from :meth:`records`.

Example::

    memory = EpisodicMemory(MemoryConfig(dim=32, moves=3, capacity=100_000, index="ivf"))
    ids = memory.add(keys, moves, values, outcomes=1.0, personas="dodger", times=t)
    hits = memory.search(queries, k=8)          # hits.values: (n, 3, 8)
    memory.save("outputs/memory")
    same = EpisodicMemory.load("outputs/memory")
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol, get_args

import faiss
import numpy as np
from numpy.typing import ArrayLike

from rag.retrieval import MoveNeighbours, Neighbours

log = logging.getLogger(__name__)

IndexKind = Literal["exact", "ivf", "hnsw"]
INDEX_KINDS: tuple[str, ...] = get_args(IndexKind)
FORMAT_VERSION = 1
MIN_POINTS_PER_CENTROID = 39  # below this FAISS's k-means warns that training is unreliable
STATE_FILE = "memory.json"
ENTRIES_FILE = "entries.npz"


@dataclass(frozen=True)
class MemoryConfig:
    """How one game's episodic memory is sized and indexed (see the module docstring)."""

    dim: int
    """Length of a key: the size of the player-context embedding."""
    moves: int
    """Number of boss moves; each move has its own index (NEC's per-action memory)."""
    capacity: int = 100_000
    """Most entries kept, all moves together; adding past it evicts the oldest."""
    index: IndexKind = "exact"
    """``exact`` (brute force), ``ivf`` (inverted lists) or ``hnsw`` (graph)."""
    ivf_nlist: int = 256
    """ivf: inverted lists (k-means centroids) per move."""
    ivf_nprobe: int = 16
    """ivf: lists scanned per query; more is slower and closer to exact."""
    ivf_train_size: int | None = None
    """ivf: entries a move needs before its lists are trained (until then it is searched
    exactly); None means FAISS's recommended minimum, 39 * ivf_nlist."""
    ivf_train_in_background: bool = False
    """ivf: train a move's lists in a background thread, at the lowest priority, while the move
    is still searched exactly, and switch to them at its first write after training ends
    (``from_records`` waits for them). False trains them in the write that reaches
    ``train_size``: 82 lists of 16 floats take about 30 ms of CPU, which a server cannot stall
    its decisions for."""
    hnsw_m: int = 32
    """hnsw: graph neighbours per node; more is slower to build and closer to exact."""
    hnsw_ef_construction: int = 40
    """hnsw: candidate list size while building."""
    hnsw_ef_search: int = 64
    """hnsw: candidate list size while searching (at least k is used)."""
    hnsw_rebuild_fraction: float = 0.25
    """hnsw: rebuild a move's graph when its removed (filtered) entries exceed this fraction
    of its live ones."""

    def __post_init__(self) -> None:
        _check_positive_int("dim", self.dim, "the length of the embedding the keys come from")
        _check_positive_int("moves", self.moves, "the number of boss moves of the game")
        _check_positive_int("capacity", self.capacity, "the most entries to keep")
        if self.index not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {self.index!r}: use one of "
                             f"{', '.join(INDEX_KINDS)} (exact is the default).")
        self._check_ivf()
        self._check_hnsw()

    def _check_ivf(self) -> None:
        _check_positive_int("ivf_nlist", self.ivf_nlist, "inverted lists per move, e.g. 256")
        _check_positive_int("ivf_nprobe", self.ivf_nprobe, "lists scanned per query, e.g. 16")
        if self.ivf_nprobe > self.ivf_nlist:
            raise ValueError(f"ivf_nprobe ({self.ivf_nprobe}) cannot exceed ivf_nlist "
                             f"({self.ivf_nlist}): lower ivf_nprobe or raise ivf_nlist.")
        if self.ivf_train_size is not None and self.ivf_train_size < self.ivf_nlist:
            raise ValueError(f"ivf_train_size ({self.ivf_train_size}) must be >= ivf_nlist "
                             f"({self.ivf_nlist}): k-means needs a point per list; FAISS "
                             f"recommends {MIN_POINTS_PER_CENTROID} per list (None).")

    def _check_hnsw(self) -> None:
        if not isinstance(self.hnsw_m, int) or self.hnsw_m < 2:
            raise ValueError(f"hnsw_m must be an int >= 2 (got {self.hnsw_m!r}); 16-64 is usual.")
        _check_positive_int("hnsw_ef_construction", self.hnsw_ef_construction, "e.g. 40")
        _check_positive_int("hnsw_ef_search", self.hnsw_ef_search, "e.g. 64")
        if not 0.0 < self.hnsw_rebuild_fraction <= 1.0:
            raise ValueError(f"hnsw_rebuild_fraction must be in (0, 1] (got "
                             f"{self.hnsw_rebuild_fraction}); 0.25 rebuilds a move's graph "
                             f"once a fifth of its nodes are removed entries.")

    @property
    def train_size(self) -> int:
        """ivf: entries a move needs before its inverted lists are trained."""
        if self.ivf_train_size is None:
            return MIN_POINTS_PER_CENTROID * self.ivf_nlist
        return self.ivf_train_size


def _check_positive_int(name: str, value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1 (got {value!r}): {what}.")


class Records(NamedTuple):
    """Entries as columns in id order, shaped ``(n,)`` (keys ``(n, dim)``)."""

    ids: np.ndarray
    """int64 stable ids, increasing."""
    keys: np.ndarray
    """float32 keys, ``(n, dim)``."""
    moves: np.ndarray
    """int64 boss moves."""
    values: np.ndarray
    """float32 returns that followed."""
    outcomes: np.ndarray
    """float32 outcomes."""
    personas: np.ndarray
    """str persona tags."""
    times: np.ndarray
    """float64 times."""


class _Batch(NamedTuple):
    """Validated entries about to be stored (persona tags still strings)."""

    keys: np.ndarray
    moves: np.ndarray
    values: np.ndarray
    outcomes: np.ndarray
    personas: np.ndarray
    times: np.ndarray


class EpisodicMemory:
    """Past boss decisions of one game, searchable per move by player-context embedding."""

    def __init__(self, config: MemoryConfig) -> None:
        self._config = config
        self._lock = _ReadWriteLock()
        self._entries = _Entries(config.dim, config.capacity)
        self._indexes: list[_MoveIndex] = [_new_index(config) for _ in range(config.moves)]
        self._persona_tags: list[str] = []
        self._persona_codes: dict[str, int] = {}
        self._next_id = 0

    @property
    def config(self) -> MemoryConfig:
        return self._config

    @property
    def next_id(self) -> int:
        """The id the next added entry gets."""
        with self._lock.reading():
            return self._next_id

    def __len__(self) -> int:
        with self._lock.reading():
            return len(self._entries)

    def add(self, keys: ArrayLike, moves: ArrayLike, values: ArrayLike, outcomes: ArrayLike,
            personas: ArrayLike, times: ArrayLike) -> np.ndarray:
        """Store a batch of entries (metadata may be scalars, broadcast); returns their ids.

        When the memory is full the oldest entries are evicted first (see the module docstring).
        """
        batch = self._validated_batch(keys, moves, values, outcomes, personas, times)
        with self._lock.writing():
            ids = np.arange(self._next_id, self._next_id + len(batch.keys), dtype=np.int64)
            self._next_id += len(ids)
            self._store(ids, batch)
        return ids

    def remove(self, ids: ArrayLike) -> int:
        """Delete entries by id; unknown or already removed ids are ignored. Returns the count.

        O(entries) per call (the columns are compacted): remove in batches.
        """
        wanted = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        with self._lock.writing():
            rows = self._entries.rows_of(wanted)
            rows = rows[rows >= 0]
            removed = self._entries.column("ids")[rows]
            moves = self._entries.column("moves")[rows]
            self._entries.delete(rows)
            self._remove_from_indexes(removed, moves)
        return len(rows)

    def search(self, queries: ArrayLike, k: int = 8) -> MoveNeighbours:
        """The k nearest entries of each move for each query: arrays ``(n, moves, k)``."""
        batch = self._validated_queries(queries)
        _check_k(k)
        with self._lock.reading():
            ids, distances = self._search_each_move(batch, k)
            rows = self._rows_of_results(ids)
            values = self._gather("values", rows, 0.0)
        return MoveNeighbours(ids=ids, distances=distances, values=values)

    def search_any(self, queries: ArrayLike, k: int = 8) -> Neighbours:
        """The k nearest entries of any move for each query: arrays ``(n, k)``."""
        batch = self._validated_queries(queries)
        _check_k(k)
        with self._lock.reading():
            per_move_ids, per_move_distances = self._search_each_move(batch, k)
            ids, distances = _nearest_overall(per_move_ids, per_move_distances, k)
            rows = self._rows_of_results(ids)
            moves = self._gather("moves", rows, -1)
            values = self._gather("values", rows, 0.0)
            outcomes = self._gather("outcomes", rows, 0.0)
        return Neighbours(ids=ids, distances=distances, moves=moves, values=values,
                          outcomes=outcomes)

    def records(self) -> Records:
        """Copies of every stored entry, in id order."""
        with self._lock.reading():
            tags = np.asarray(self._persona_tags, dtype=str)
            codes = self._entries.column("personas")
            return Records(
                ids=self._entries.column("ids").copy(),
                keys=self._entries.column("keys").copy(),
                moves=self._entries.column("moves").copy(),
                values=self._entries.column("values").copy(),
                outcomes=self._entries.column("outcomes").copy(),
                personas=tags[codes] if len(codes) else np.asarray([], dtype=str),
                times=self._entries.column("times").copy(),
            )

    @classmethod
    def from_records(cls, config: MemoryConfig, records: Records,
                     next_id: int | None = None) -> EpisodicMemory:
        """A memory holding ``records`` under their own ids (indexes built from scratch).

        ``next_id`` defaults to one past the largest id; it cannot be lower.
        """
        memory = cls(config)
        ids = np.asarray(records.ids, dtype=np.int64).reshape(-1)
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        if len(ids) and (ids[0] < 0 or np.any(np.diff(ids) == 0)):
            raise ValueError("record ids must be unique and >= 0: pass records() of a memory.")
        smallest_next = int(ids[-1]) + 1 if len(ids) else 0
        if next_id is not None and next_id < smallest_next:
            raise ValueError(f"next_id ({next_id}) must exceed every record id (the largest "
                             f"is {smallest_next - 1}): ids are never reused.")
        batch = memory._validated_batch(
            np.asarray(records.keys)[order], np.asarray(records.moves)[order],
            np.asarray(records.values)[order], np.asarray(records.outcomes)[order],
            np.asarray(records.personas)[order], np.asarray(records.times)[order])
        with memory._lock.writing():
            memory._next_id = smallest_next if next_id is None else next_id
            memory._store(ids, batch)
            memory._finish_training()
        return memory

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the memory to ``directory`` (created if needed); returns its path."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        with self._lock.reading():
            for move, index in enumerate(self._indexes):
                _replace_file(path / f"move_{move}.faiss", _index_writer(index.faiss_index))
            columns = {name: self._entries.column(name) for name in _COLUMNS}
            _replace_file(path / ENTRIES_FILE, lambda tmp: _write_npz(tmp, columns))
            state = {"format": FORMAT_VERSION, "config": dataclasses.asdict(self._config),
                     "next_id": self._next_id, "personas": self._persona_tags}
            _replace_file(path / STATE_FILE,
                          lambda tmp: tmp.write_text(json.dumps(state, indent=2) + "\n"))
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> EpisodicMemory:
        """Read a memory written by :meth:`save`."""
        path = Path(directory)
        state = _read_state(path)
        memory = cls(MemoryConfig(**state["config"]))
        memory._next_id = int(state["next_id"])
        memory._persona_tags = [str(tag) for tag in state["personas"]]
        memory._persona_codes = {tag: code for code, tag in enumerate(memory._persona_tags)}
        with np.load(path / ENTRIES_FILE) as columns:
            memory._entries.append({name: columns[name] for name in _COLUMNS})
        for move in range(memory.config.moves):
            stored = faiss.read_index(str(path / f"move_{move}.faiss"))
            live = memory._entries.column("ids")[memory._entries.column("moves") == move]
            memory._indexes[move] = _restored_index(memory.config, stored, live, path, move)
        return memory

    # Writing (callers hold the write lock).

    def _store(self, ids: np.ndarray, batch: _Batch) -> None:
        codes = self._persona_code_array(batch.personas)
        skip = len(ids) - self._config.capacity  # a batch over capacity keeps its newest
        if skip > 0:
            ids, codes, batch = ids[skip:], codes[skip:], _Batch(*(c[skip:] for c in batch))
        overflow = len(self._entries) + len(ids) - self._config.capacity
        if overflow > 0:
            evicted = self._entries.drop_oldest(overflow)
            self._remove_from_indexes(evicted["ids"], evicted["moves"])
        self._entries.append({"ids": ids, "keys": batch.keys, "moves": batch.moves,
                              "values": batch.values, "outcomes": batch.outcomes,
                              "personas": codes, "times": batch.times})
        groups = _rows_by_move(batch.moves)
        for move, rows in groups:
            self._indexes[move].add(batch.keys[rows], ids[rows])
        self._rebuild_if_needed(move for move, _ in groups)
        if len(self._persona_tags) > max(PERSONA_TAGS_KEPT, 2 * len(self._entries)):
            self._drop_unused_personas()

    def _drop_unused_personas(self) -> None:
        """Forget the tags of evicted or removed entries; the others keep their order."""
        codes = self._entries.column("personas")
        used = np.unique(codes)
        renumbered = np.full(len(self._persona_tags), -1, dtype=np.int32)
        renumbered[used] = np.arange(len(used), dtype=np.int32)
        codes[:] = renumbered[codes]  # a view of the live rows: renumbered in place
        self._persona_tags = [self._persona_tags[code] for code in used.tolist()]
        self._persona_codes = {tag: code for code, tag in enumerate(self._persona_tags)}

    def _remove_from_indexes(self, ids: np.ndarray, moves: np.ndarray) -> None:
        groups = _rows_by_move(moves)
        for move, rows in groups:
            self._indexes[move].remove(ids[rows])
        self._rebuild_if_needed(move for move, _ in groups)

    def _finish_training(self) -> None:
        """Wait for lists trained in the background and switch their moves to them."""
        for index in self._indexes:
            if isinstance(index, _IVFIndex):
                index.wait_for_training()
        self._rebuild_if_needed(range(self._config.moves))

    def _rebuild_if_needed(self, moves: Iterable[int]) -> None:
        for move in moves:
            index = self._indexes[move]
            if index.needs_rebuild():
                mine = self._entries.column("moves") == move
                index.rebuild(self._entries.column("keys")[mine],
                              self._entries.column("ids")[mine])

    def _persona_code_array(self, personas: np.ndarray) -> np.ndarray:
        """Each persona's code; new tags get the next codes, in sorted order (O(batch),
        whatever the number of tags already known: a server tags entries with every session
        id it ever saw)."""
        tags = personas.tolist()
        codes = self._persona_codes
        for tag in sorted({tag for tag in tags if tag not in codes}):
            codes[tag] = len(self._persona_tags)
            self._persona_tags.append(tag)
        return np.array([codes[tag] for tag in tags], dtype=np.int32)

    # Reading (callers hold the read lock).

    def _search_each_move(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids and distances ``(n, moves, k)``; padding is id -1 at distance inf."""
        n, moves = len(queries), self._config.moves
        # Move-major, so that each move's index writes its (n, k) results in place.
        ids = np.empty((moves, n, k), dtype=np.int64)
        distances = np.empty((moves, n, k), dtype=np.float32)
        for move, index in enumerate(self._indexes):
            if n and index.size:
                index.search_into(queries, k, distances[move], ids[move])
            else:
                ids[move] = -1
        distances[ids < 0] = np.inf
        return (np.ascontiguousarray(ids.transpose(1, 0, 2)),
                np.ascontiguousarray(distances.transpose(1, 0, 2)))

    def _rows_of_results(self, ids: np.ndarray) -> np.ndarray:
        rows = self._entries.rows_of(ids)
        # rows_of gives -1 for every id not stored, padding included: as many -1 rows as
        # padding ids means every other id was found.
        assert np.count_nonzero(rows < 0) == np.count_nonzero(ids < 0), (
            "an index returned an id with no entry")
        return rows

    def _gather(self, name: str, rows: np.ndarray, padding: float) -> np.ndarray:
        column = self._entries.column(name)
        if not len(column):
            return np.full(rows.shape, padding, dtype=column.dtype)
        gathered = column[rows]  # row -1 reads the last entry: overwritten with the padding
        gathered[rows < 0] = padding
        return gathered

    # Validation (no lock: nothing shared is read but the frozen config).

    def _validated_queries(self, queries: ArrayLike) -> np.ndarray:
        batch = np.ascontiguousarray(queries, dtype=np.float32)
        if batch.ndim != 2 or batch.shape[1] != self._config.dim:
            raise ValueError(f"queries must have shape (n, {self._config.dim}), got "
                             f"{batch.shape}: embed with the memory's dim and pass one query "
                             f"as queries[None, :].")
        if not np.isfinite(batch).all():
            raise ValueError("queries contain NaN or inf: check the embedder's input.")
        return batch

    def _validated_batch(self, keys: Any, moves: Any, values: Any, outcomes: Any,
                         personas: Any, times: Any) -> _Batch:
        key_array = np.ascontiguousarray(keys, dtype=np.float32)
        if key_array.ndim != 2 or key_array.shape[1] != self._config.dim:
            raise ValueError(f"keys must have shape (n, {self._config.dim}), got "
                             f"{key_array.shape}: embed with the memory's dim and pass one "
                             f"key as keys[None, :].")
        if not np.isfinite(key_array).all():
            raise ValueError("keys contain NaN or inf: check the embedder's input.")
        n = len(key_array)
        batch = _Batch(
            keys=key_array,
            moves=self._validated_moves(_column("moves", moves, n, np.float64)),
            values=_finite(_column("values", values, n, np.float32), "values"),
            outcomes=_finite(_column("outcomes", outcomes, n, np.float32), "outcomes"),
            personas=_column("personas", personas, n, np.str_),
            times=_finite(_column("times", times, n, np.float64), "times"),
        )
        return batch

    def _validated_moves(self, moves: np.ndarray) -> np.ndarray:
        count = self._config.moves
        if set(moves.tolist()) <= set(range(count)):  # few distinct moves, whatever the batch
            return moves.astype(np.int64)
        bad = (moves != np.round(moves)) | (moves < 0) | (moves >= count) | ~np.isfinite(moves)
        raise ValueError(f"moves must be integers in [0, {count}) for this memory's "
                         f"{count} moves; got {', '.join(f'{m:g}' for m in moves[bad][:5])}: "
                         f"pass the boss move's index, not its name.")


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an int >= 1 (got {k!r}): the number of neighbours "
                         f"to return, e.g. 8.")


def _column(name: str, values: Any, n: int, dtype: Any) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be {np.dtype(dtype).name} values, one per key or a "
                         f"single one: {error}") from None
    if array.ndim == 0:
        return np.full(n, array)
    if array.ndim > 1 or len(array) != n:
        raise ValueError(f"{name} has shape {array.shape}; expected one per key ({n},) or a "
                         f"single value for all of them.")
    return np.ascontiguousarray(array)


def _rows_by_move(moves: np.ndarray) -> list[tuple[int, np.ndarray | slice]]:
    """Each move of a batch, ascending, with the rows that took it (a slice of all rows when
    there is only one move, as often for a few rows)."""
    distinct = sorted(set(moves.tolist()))
    if len(distinct) == 1:
        return [(distinct[0], slice(None))]
    return [(move, moves == move) for move in distinct]


def _finite(array: np.ndarray, name: str) -> np.ndarray:
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contain NaN or inf: store finite numbers.")
    return array


def _nearest_overall(ids: np.ndarray, distances: np.ndarray,
                     k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest of the per-move results ``(n, moves, k)``, as ``(n, k)``."""
    n, moves, per_move = ids.shape
    flat_ids = ids.reshape(n, moves * per_move)
    flat_distances = distances.reshape(n, moves * per_move)
    order = np.argsort(flat_distances, axis=1, kind="stable")[:, :k]
    return (np.take_along_axis(flat_ids, order, axis=1),
            np.take_along_axis(flat_distances, order, axis=1))


# Columns beside the index.

_COLUMNS = ("ids", "keys", "moves", "values", "outcomes", "personas", "times")
_COLUMN_DTYPES = {"ids": np.int64, "keys": np.float32, "moves": np.int64, "values": np.float32,
                  "outcomes": np.float32, "personas": np.int32, "times": np.float64}
MIN_BUFFER = 16  # rows
PERSONA_TAGS_KEPT = 1024
"""Tags no live entry carries are dropped once there are more tags than this and than twice
the live entries (a server tags entries with every session it has served)."""


class _Entries:
    """Live entries in id order: rows [start, stop) of one numpy buffer per column.

    Appending writes after ``stop`` (the live rows move to the front of new or the same buffers
    when there is no room left), FIFO eviction advances ``start``, and removal compacts.
    Ids are sorted, so an id's row is a binary search.
    """

    def __init__(self, dim: int, capacity: int) -> None:
        self._dim = dim
        self._largest_buffer = max(capacity + capacity // 2, MIN_BUFFER)
        self._buffers = {name: self._empty(name, MIN_BUFFER) for name in _COLUMNS}
        self._start = self._stop = 0

    def __len__(self) -> int:
        return self._stop - self._start

    def column(self, name: str) -> np.ndarray:
        """A view of the live rows (valid until the next write)."""
        return self._buffers[name][self._start:self._stop]

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id among the live rows; -1 for ids that are not stored."""
        live = self.column("ids")
        if not len(live):
            return np.full(ids.shape, -1, dtype=np.int64)
        if live[-1] - live[0] == len(live) - 1:  # no gaps (only FIFO eviction): id - first id
            rows = ids - live[0]
            rows[rows.view(np.uint64) >= len(live)] = -1  # negative rows are huge unsigned
            return rows
        rows = np.searchsorted(live, ids)
        clipped = np.minimum(rows, len(live) - 1)
        return np.where(live[clipped] == ids, clipped, -1)

    def append(self, columns: dict[str, np.ndarray]) -> None:
        n = len(columns["ids"])
        if self._stop + n > len(self._buffers["ids"]):
            self._make_room(n)
        for name in _COLUMNS:
            self._buffers[name][self._stop:self._stop + n] = columns[name]
        self._stop += n

    def drop_oldest(self, n: int) -> dict[str, np.ndarray]:
        """Evict the first n rows; returns their ids and moves."""
        dropped = {name: self.column(name)[:n].copy() for name in ("ids", "moves")}
        self._start += n
        return dropped

    def delete(self, rows: np.ndarray) -> None:
        if not len(rows):
            return
        keep = np.ones(len(self), dtype=bool)
        keep[rows] = False
        for name in _COLUMNS:
            kept = self.column(name)[keep]
            self._buffers[name][:len(kept)] = kept
        self._start, self._stop = 0, int(keep.sum())

    def _make_room(self, n: int) -> None:
        """Move the live rows to the front of buffers with room for at least n more.

        The buffers hold twice the rows needed, up to 1.5 x capacity, so a full memory
        compacts once per capacity / 2 appends rather than on every append.
        """
        count = len(self)
        size = max(count + n, min(2 * (count + n), self._largest_buffer))
        for name in _COLUMNS:
            old = self._buffers[name]
            new = old if size == len(old) else self._empty(name, size)
            new[:count] = old[self._start:self._stop]
            self._buffers[name] = new
        self._start, self._stop = 0, count

    def _empty(self, name: str, size: int) -> np.ndarray:
        shape = (size, self._dim) if name == "keys" else (size,)
        return np.empty(shape, dtype=_COLUMN_DTYPES[name])


# One FAISS index per move.

class _MoveIndex(Protocol):
    @property
    def faiss_index(self) -> Any: ...

    @property
    def size(self) -> int: ...

    def add(self, keys: np.ndarray, ids: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> None: ...

    def search_into(self, queries: np.ndarray, k: int, distances: np.ndarray,
                    ids: np.ndarray) -> None: ...

    def needs_rebuild(self) -> bool: ...

    def rebuild(self, keys: np.ndarray, ids: np.ndarray) -> None: ...


def _exact_index(dim: int) -> Any:
    return faiss.IndexIDMap(faiss.IndexFlatL2(dim))


class _ExactIndex:
    """Brute force over the move's entries."""

    def __init__(self, dim: int, index: Any = None) -> None:
        self.faiss_index = _exact_index(dim) if index is None else index

    @property
    def size(self) -> int:
        return int(self.faiss_index.ntotal)

    def add(self, keys: np.ndarray, ids: np.ndarray) -> None:
        self.faiss_index.add_with_ids(keys, ids)

    def remove(self, ids: np.ndarray) -> None:
        self.faiss_index.remove_ids(ids)

    def search_into(self, queries: np.ndarray, k: int, distances: np.ndarray,
                    ids: np.ndarray) -> None:
        _search_into(self.faiss_index, queries, k, distances, ids)

    def needs_rebuild(self) -> bool:
        return False

    def rebuild(self, keys: np.ndarray, ids: np.ndarray) -> None:
        self.faiss_index = _exact_index(keys.shape[1])
        self.add(keys, ids)


class _IVFIndex(_ExactIndex):
    """Exact until the move has ``train_size`` entries, then an IVF trained once on them
    (in the write that reaches them, or in the background: ``ivf_train_in_background``)."""

    def __init__(self, config: MemoryConfig, index: Any = None) -> None:
        super().__init__(config.dim, index)
        self._config = config
        self._training: Future[Any] | None = None
        if self.trained:
            self.faiss_index.nprobe = config.ivf_nprobe

    @property
    def trained(self) -> bool:
        return isinstance(self.faiss_index, faiss.IndexIVF)

    def remove(self, ids: np.ndarray) -> None:
        if not self.trained:
            super().remove(ids)
            return
        # The selector FAISS's remove_ids wrapper makes for a hash-table direct map (which
        # rebuild sets and save/load keep), without its checks that cost more than removing.
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        self.faiss_index.remove_ids(faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids)))

    def needs_rebuild(self) -> bool:
        """Untrained at ``train_size``, and no training running (start one, or install the one
        that ended)."""
        if self.trained or self.size < self._config.train_size:
            return False
        return self._training is None or self._training.done()

    def rebuild(self, keys: np.ndarray, ids: np.ndarray) -> None:
        if len(keys) < self._config.train_size:
            super().rebuild(keys, ids)
            return
        if not self._config.ivf_train_in_background:
            self._switch(_trained_ivf(self._config, keys), keys, ids)
        elif self._training is None:
            # keys is the move's rows picked by a mask: a copy the writes cannot change
            self._training = _trainer().submit(_train_quietly, self._config, keys)
        else:
            self._switch(self._trained_in_background(keys), keys, ids)

    def wait_for_training(self) -> None:
        if self._training is not None:
            with contextlib.suppress(Exception):  # _trained_in_background handles it
                self._training.result()

    def _trained_in_background(self, keys: np.ndarray) -> Any:
        training, self._training = self._training, None
        assert training is not None
        try:
            return training.result()
        except Exception:  # never lose a write to it: train here instead
            log.exception("training a move's IVF lists in the background failed; training "
                          "them now")
            return _trained_ivf(self._config, keys)

    def _switch(self, index: Any, keys: np.ndarray, ids: np.ndarray) -> None:
        index.add_with_ids(np.ascontiguousarray(keys), ids)
        self.faiss_index = index


def _trained_ivf(config: MemoryConfig, keys: np.ndarray) -> Any:
    """An empty IVF index whose lists are trained on ``keys``."""
    quantizer = faiss.IndexFlatL2(config.dim)
    index = faiss.IndexIVFFlat(quantizer, config.dim, config.ivf_nlist)
    index.nprobe = config.ivf_nprobe
    # remove_ids in O(removed) rather than a scan of every list
    index.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
    index.train(np.ascontiguousarray(keys))
    return index


@functools.cache
def _trainer() -> ThreadPoolExecutor:
    """The one thread that trains IVF lists in the background (started on first use)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="ivf-training")


def _train_quietly(config: MemoryConfig, keys: np.ndarray) -> Any:
    """:func:`_trained_ivf` in the training thread: at the lowest priority (Linux sets it per
    thread) and on one OpenMP thread, so the process's own work goes first."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    faiss.omp_set_num_threads(1)
    return _trained_ivf(config, keys)


class _HNSWIndex(_ExactIndex):
    """A graph; removed ids stay in it, filtered out of searches, until the next rebuild."""

    def __init__(self, config: MemoryConfig, index: Any = None,
                 removed: np.ndarray | None = None) -> None:
        super().__init__(config.dim, self._new(config) if index is None else index)
        self._config = config
        graph: Any = faiss.downcast_index(self.faiss_index.index)
        graph.hnsw.efSearch = config.hnsw_ef_search
        self._removed = np.zeros(0, dtype=np.int64)
        self._filter: tuple[Any, Any] | None = None
        if removed is not None and len(removed):
            self.remove(removed)

    @staticmethod
    def _new(config: MemoryConfig) -> Any:
        graph = faiss.IndexHNSWFlat(config.dim, config.hnsw_m)
        graph.hnsw.efConstruction = config.hnsw_ef_construction
        graph.hnsw.efSearch = config.hnsw_ef_search
        return faiss.IndexIDMap(graph)

    @property
    def size(self) -> int:
        return int(self.faiss_index.ntotal) - len(self._removed)

    def remove(self, ids: np.ndarray) -> None:
        self._removed = np.union1d(self._removed, ids)
        batch = faiss.IDSelectorBatch(self._removed)
        self._filter = (batch, faiss.IDSelectorNot(batch))  # the Not points into the batch

    def search_into(self, queries: np.ndarray, k: int, distances: np.ndarray,
                    ids: np.ndarray) -> None:
        if self._filter is None:
            super().search_into(queries, k, distances, ids)
            return
        # A fresh parameter object per call: IndexIDMap.search swaps the selector inside it.
        params = faiss.SearchParametersHNSW(  # type: ignore[attr-defined]
            sel=self._filter[1], efSearch=self._config.hnsw_ef_search)
        _search_into(self.faiss_index, queries, k, distances, ids, params)

    def needs_rebuild(self) -> bool:
        return len(self._removed) > self._config.hnsw_rebuild_fraction * max(self.size, 1)

    def rebuild(self, keys: np.ndarray, ids: np.ndarray) -> None:
        self.faiss_index = self._new(self._config)
        self._removed = np.zeros(0, dtype=np.int64)
        self._filter = None
        if len(keys):
            self.add(np.ascontiguousarray(keys), ids)


def _search_into(index: Any, queries: np.ndarray, k: int, distances: np.ndarray,
                 ids: np.ndarray, params: Any = None) -> None:
    """FAISS's C++ search of C-contiguous float32 queries ``(n, dim)``, writing the C-contiguous
    ``(n, k)`` float32 distances and int64 ids in place.

    ``index.search``, the Python wrapper, checks and allocates again on every call: for a few
    queries that costs a fifth of the search itself.
    """
    index.search_c(len(queries), faiss.swig_ptr(queries), k, faiss.swig_ptr(distances),
                   faiss.swig_ptr(ids), params)


def _new_index(config: MemoryConfig) -> _MoveIndex:
    if config.index == "ivf":
        return _IVFIndex(config)
    if config.index == "hnsw":
        return _HNSWIndex(config)
    return _ExactIndex(config.dim)


def _restored_index(config: MemoryConfig, stored: Any, live_ids: np.ndarray, path: Path,
                    move: int) -> _MoveIndex:
    """Wrap an index read from disk, checking it holds exactly the move's live entries."""
    index: _MoveIndex
    if config.index == "hnsw":
        removed = np.setdiff1d(faiss.vector_to_array(stored.id_map), live_ids)
        index = _HNSWIndex(config, stored, removed)
    elif config.index == "ivf":
        index = _IVFIndex(config, stored)
    else:
        index = _ExactIndex(config.dim, stored)
    if index.size != len(live_ids):
        raise ValueError(f"{path / f'move_{move}.faiss'} holds {index.size} entries but "
                         f"{path / ENTRIES_FILE} has {len(live_ids)} for move {move}: the "
                         f"directory mixes two saves; save again, or rebuild with "
                         f"EpisodicMemory.from_records.")
    return index


# Persistence.


def _replace_file(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary file so a crash never leaves a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _index_writer(index: Any) -> Callable[[Path], None]:
    return lambda path: faiss.write_index(index, str(path))


def _write_npz(path: Path, columns: dict[str, Any]) -> None:
    with path.open("wb") as file:
        np.savez(file, **columns)


def _read_state(path: Path) -> dict[str, Any]:
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(f"no episodic memory in {path}: {STATE_FILE} is missing "
                                f"(write one with EpisodicMemory.save).")
    state: dict[str, Any] = json.loads(state_file.read_text())
    if state.get("format") != FORMAT_VERSION:
        raise ValueError(f"{state_file} has format {state.get('format')!r}; this code reads "
                         f"format {FORMAT_VERSION}: rebuild it with EpisodicMemory.from_records.")
    return state


# Locking.

class _ReadWriteLock:
    """Many readers or one writer; a waiting writer keeps new readers out (no starvation)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writing = False
        self._waiting_writers = 0
        # Plain objects rather than @contextmanager generators, which cost as much again.
        self._reading = _Held(self._start_reading, self._stop_reading)
        self._writing_held = _Held(self._start_writing, self._stop_writing)

    def reading(self) -> _Held:
        return self._reading

    def writing(self) -> _Held:
        return self._writing_held

    def _start_reading(self) -> None:
        with self._condition:
            while self._writing or self._waiting_writers:
                self._condition.wait()
            self._readers += 1

    def _stop_reading(self) -> None:
        with self._condition:
            self._readers -= 1
            if not self._readers:
                self._condition.notify_all()

    def _start_writing(self) -> None:
        with self._condition:
            self._waiting_writers += 1
            while self._writing or self._readers:
                self._condition.wait()
            self._waiting_writers -= 1
            self._writing = True

    def _stop_writing(self) -> None:
        with self._condition:
            self._writing = False
            self._condition.notify_all()


class _Held:
    """``with``: ``start()`` on entry, ``stop()`` on exit, even on an exception."""

    def __init__(self, start: Callable[[], None], stop: Callable[[], None]) -> None:
        self._start = start
        self._stop = stop

    def __enter__(self) -> None:
        self._start()

    def __exit__(self, *exception: object) -> None:
        self._stop()
