"""Episodic memory speed: single-query search latency, add throughput and recall per index.

    python -m experiments.benchmark_memory [--dim 32] [--sizes 10000 100000 1000000]
        [--queries 2000] [--k 8] [--moves 3] [--approximate ivf hnsw] [--data clusters]

For each size, the exact index and each approximate one get a memory of that many entries
(``capacity`` = size, moves drawn uniformly), and the script measures:

- build: entries/s while adding them in batches of ``--batch`` (with a progress bar);
- search and search_any: p50 and p99 latency of ``--queries`` searches of one query each, k
  neighbours (``search`` returns k per move, ``search_any`` k of any move);
- add at capacity: p50 and p99 latency of ``--single-adds`` one-entry adds to the full memory,
  each evicting the oldest entry (the server's steady state, one outcome at a time);
- recall@k of the approximate indexes against exact on the same queries, per move and any.

Searches run with one FAISS (OpenMP) thread, as a server thread answering one request at a
time should; builds use ``--build-threads`` (1 by default: honest single-core numbers, and
OpenMP's spinning threads slow everything down on a busy machine). ivf's ``nlist`` defaults to
sqrt(entries per move), so its lists are trained at every size (a move needs 39 x nlist
entries). Keys and queries come from 100 gaussian clusters by default, as player-context
embeddings cluster (personas, phases, arenas); ``--data uniform`` (no structure at all) is
the worst case for IVF. Prints a markdown table and whether the target, search p99 < 1 ms at
100,000 entries, is met.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import faiss
import numpy as np
from tqdm import tqdm

from rag.memory import EpisodicMemory, IndexKind, MemoryConfig

TARGET_SIZE = 100_000
TARGET_P99_MS = 1.0


class Row(NamedTuple):
    """One index at one size: throughputs, latencies (ms) and recalls."""

    size: int
    kind: str
    build_rate: float
    add_at_capacity: tuple[float, float]
    search: tuple[float, float]
    search_any: tuple[float, float]
    recall_per_move: float | None
    recall_any: float | None


class Hits(NamedTuple):
    """Ids every single-query search returned: per move ``(q, moves, k)``, any ``(q, k)``."""

    per_move: np.ndarray
    any: np.ndarray


def make_keys(rng: np.random.Generator, n: int, dim: int, data: str) -> np.ndarray:
    """100 gaussian clusters (sd 0.05) in [0, 1)^dim, or uniform (the hard case for IVF)."""
    if data == "uniform":
        return rng.random((n, dim), dtype=np.float32)
    centres = rng.random((100, dim), dtype=np.float32)
    noise = rng.normal(scale=0.05, size=(n, dim)).astype(np.float32)
    return centres[rng.integers(0, len(centres), n)] + noise


def memory_config(kind: str, size: int, args: argparse.Namespace) -> MemoryConfig:
    per_move = size / args.moves
    nlist = args.nlist or max(8, int(math.sqrt(per_move)))
    return MemoryConfig(dim=args.dim, moves=args.moves, capacity=size,
                        index=cast(IndexKind, kind),
                        ivf_nlist=nlist, ivf_nprobe=min(args.nprobe, nlist),
                        hnsw_m=args.hnsw_m, hnsw_ef_search=args.ef_search)


def build(config: MemoryConfig, keys: np.ndarray, moves: np.ndarray,
          batch: int) -> tuple[EpisodicMemory, float]:
    """A memory holding every key; returns it and the add rate (entries/s)."""
    memory = EpisodicMemory(config)
    elapsed = 0.0
    with tqdm(total=len(keys), unit="entries", unit_scale=True, leave=False,
              desc=f"build {config.index} {len(keys):,}") as progress:
        for start in range(0, len(keys), batch):
            stop = min(start + batch, len(keys))
            began = time.perf_counter()
            memory.add(keys[start:stop], moves[start:stop], 0.0, 1.0, "benchmark",
                       np.arange(start, stop, dtype=np.float64))
            elapsed += time.perf_counter() - began
            progress.update(stop - start)
    return memory, len(keys) / elapsed


def latencies_ms(call: Callable[[int], Any], count: int) -> tuple[float, float, list[Any]]:
    """p50 and p99 of ``call(i)`` for i in range(count), in ms, and what the calls returned."""
    times, results = np.empty(count), []
    for i in range(count):
        began = time.perf_counter_ns()
        results.append(call(i))
        times[i] = time.perf_counter_ns() - began
    return (float(np.percentile(times, 50)) / 1e6, float(np.percentile(times, 99)) / 1e6,
            results)


def measure_searches(memory: EpisodicMemory, queries: np.ndarray,
                     k: int) -> tuple[tuple[float, float], tuple[float, float], Hits]:
    p50, p99, per_move = latencies_ms(lambda i: memory.search(queries[i:i + 1], k).ids,
                                      len(queries))
    any_p50, any_p99, any_ids = latencies_ms(
        lambda i: memory.search_any(queries[i:i + 1], k).ids, len(queries))
    hits = Hits(per_move=np.concatenate(per_move), any=np.concatenate(any_ids))
    return (p50, p99), (any_p50, any_p99), hits


def measure_adds_at_capacity(memory: EpisodicMemory, keys: np.ndarray,
                             moves: np.ndarray) -> tuple[float, float]:
    p50, p99, _ = latencies_ms(
        lambda i: memory.add(keys[i:i + 1], moves[i:i + 1], 0.0, 1.0, "benchmark", 0.0),
        len(keys))
    return p50, p99


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true neighbours (last axis, -1 padding) that were found."""
    valid = truth >= 0
    hit = (found[..., :, None] == truth[..., None, :]).any(axis=-2) & valid
    return float(hit.sum() / max(valid.sum(), 1))


def benchmark_size(size: int, args: argparse.Namespace, rng: np.random.Generator) -> list[Row]:
    keys = make_keys(rng, size, args.dim, args.data)
    moves = rng.integers(0, args.moves, size)
    queries = make_keys(rng, args.queries, args.dim, args.data)
    extra_keys = make_keys(rng, args.single_adds, args.dim, args.data)
    extra_moves = rng.integers(0, args.moves, args.single_adds)
    rows, truth = [], None
    for kind in ("exact", *args.approximate):
        faiss.omp_set_num_threads(args.build_threads)
        memory, build_rate = build(memory_config(kind, size, args), keys, moves, args.batch)
        faiss.omp_set_num_threads(1)
        search, search_any, hits = measure_searches(memory, queries, args.k)
        truth = hits if truth is None else truth
        adds = measure_adds_at_capacity(memory, extra_keys, extra_moves)
        approximate = kind != "exact"
        rows.append(Row(size, kind, build_rate, adds, search, search_any,
                        recall(hits.per_move, truth.per_move) if approximate else None,
                        recall(hits.any, truth.any) if approximate else None))
        del memory
    return rows


def machine() -> str:
    load = f", load average {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores{load}; "
            f"faiss {faiss.__version__}, numpy {np.__version__}, Python "
            f"{platform.python_version()}")


def settings(args: argparse.Namespace) -> str:
    nlist = args.nlist or "sqrt(entries per move)"
    return (f"dim={args.dim}, moves={args.moves}, k={args.k}, {args.queries:,} single-query "
            f"searches and {args.single_adds:,} single adds per row, data={args.data}, "
            f"build batches of {args.batch:,}; FAISS threads: 1 for searches, "
            f"{args.build_threads} for builds; ivf: nlist={nlist}, nprobe={args.nprobe}; "
            f"hnsw: M={args.hnsw_m}, efConstruction=40, efSearch={args.ef_search}")


def table(rows: list[Row], k: int) -> str:
    def pair(values: tuple[float, float]) -> str:
        return f"{values[0]:.3f} / {values[1]:.3f}"

    def share(value: float | None) -> str:
        return "exact" if value is None else f"{value:.3f}"

    lines = [f"| entries | index | build (entries/s) | search p50 / p99 (ms) | search_any p50 / "
             f"p99 (ms) | add 1 at capacity p50 / p99 (ms) | recall@{k} per move | "
             f"recall@{k} any |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.size:,} | {r.kind} | {r.build_rate:,.0f} | {pair(r.search)} | "
              f"{pair(r.search_any)} | {pair(r.add_at_capacity)} | {share(r.recall_per_move)} "
              f"| {share(r.recall_any)} |" for r in rows]
    return "\n".join(lines)


def target_verdict(rows: list[Row]) -> str:
    at_target = [r for r in rows if r.size == TARGET_SIZE]
    if not at_target:
        return (f"Target (search p99 < {TARGET_P99_MS:g} ms at {TARGET_SIZE:,} entries): not "
                f"measured; add {TARGET_SIZE} to --sizes.")
    verdicts = [f"{r.kind} {'met' if r.search[1] < TARGET_P99_MS else 'NOT met'} "
                f"({r.search[1]:.3f} ms)" for r in at_target]
    return (f"Target (search p99 < {TARGET_P99_MS:g} ms at {TARGET_SIZE:,} entries): "
            + ", ".join(verdicts) + ".")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dim", type=int, default=32, help="key length")
    parser.add_argument("--moves", type=int, default=3, help="boss moves (duel has 3)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=2000, help="single-query searches")
    parser.add_argument("--k", type=int, default=8, help="neighbours per search")
    parser.add_argument("--approximate", nargs="*", default=["ivf", "hnsw"],
                        choices=["ivf", "hnsw"], help="approximate indexes to compare")
    parser.add_argument("--data", choices=["clusters", "uniform"], default="clusters")
    parser.add_argument("--batch", type=int, default=10_000, help="entries per add while building")
    parser.add_argument("--single-adds", type=int, default=200, help="one-entry adds at capacity")
    parser.add_argument("--build-threads", type=int, default=1, help="FAISS threads for builds")
    parser.add_argument("--nlist", type=int, default=None, help="ivf lists per move")
    parser.add_argument("--nprobe", type=int, default=16, help="ivf lists scanned per query")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-search", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.k < 1 or args.queries < 1 or args.single_adds < 1 or min(args.sizes) < 1:
        raise SystemExit("--k, --queries, --single-adds and --sizes must be >= 1.")
    rng = np.random.default_rng(args.seed)
    rows = [row for size in args.sizes for row in benchmark_size(size, args, rng)]
    print(f"# Episodic memory speed ({machine()})\n\n{settings(args)}\n")
    print(table(rows, args.k))
    print(f"\n{target_verdict(rows)}")


if __name__ == "__main__":
    main()
