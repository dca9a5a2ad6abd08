"""The episodic memory (rag.memory) and what its neighbours say (rag.retrieval)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faiss
import numpy as np
import pytest

from rag.memory import (
    INDEX_KINDS,
    PERSONA_TAGS_KEPT,
    EpisodicMemory,
    IndexKind,
    MemoryConfig,
    Records,
)
from rag.retrieval import (
    MoveNeighbours,
    blend_values,
    kernel_weights,
    retrieval_features,
)

DIM = 8
MOVES = 3
SMALL_IVF: dict[str, Any] = {"ivf_nlist": 8, "ivf_nprobe": 4}
"""Trains once a move has 39 * 8 = 312 entries."""


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread() -> Iterator[None]:
    """Tiny indexes on a shared 2-core machine: OpenMP threads only add contention."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


def random_batch(rng: np.random.Generator, n: int, moves: int = MOVES) -> dict[str, Any]:
    return {"keys": rng.random((n, DIM), dtype=np.float32),
            "moves": rng.integers(0, moves, n),
            "values": rng.normal(size=n).astype(np.float32),
            "outcomes": rng.choice([0.0, 0.5, 1.0], n).astype(np.float32),
            "personas": rng.choice(["dodger", "turtle", "rusher"], n),
            "times": rng.random(n) * 1000}


def filled_memory(n: int, seed: int = 0, **config: Any) -> EpisodicMemory:
    memory = EpisodicMemory(MemoryConfig(dim=DIM, moves=MOVES, **config))
    memory.add(**random_batch(np.random.default_rng(seed), n))
    return memory


def brute_force(keys: np.ndarray, ids: np.ndarray, queries: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest (ids, squared distances) per query, padded like the memory."""
    distances = ((queries[:, None, :] - keys[None, :, :]) ** 2).sum(-1)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    found_ids = np.full((len(queries), k), -1)
    found_distances = np.full((len(queries), k), np.inf)
    found = min(k, len(ids))
    found_ids[:, :found] = ids[order]
    found_distances[:, :found] = np.take_along_axis(distances, order, axis=1)
    return found_ids, found_distances


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(f[f >= 0], t[t >= 0])) for f, t in zip(found, truth,
                                                                           strict=True))
    return hits / max(int((truth >= 0).sum()), 1)


# Search semantics (exact index).

def test_search_returns_the_true_nearest_entries_of_each_move() -> None:
    rng = np.random.default_rng(1)
    memory = EpisodicMemory(MemoryConfig(dim=DIM, moves=MOVES))
    batch = random_batch(rng, 400, moves=2)  # move 2 gets only the two entries below
    memory.add(**batch)
    memory.add(rng.random((2, DIM)), 2, [5.0, 6.0], 1.0, "novice", 0.0)
    queries = rng.random((20, DIM), dtype=np.float32)

    hits = memory.search(queries, k=5)

    assert hits.ids.shape == hits.distances.shape == hits.values.shape == (20, MOVES, 5)
    records = memory.records()
    for move in range(MOVES):
        mine = records.moves == move
        ids, distances = brute_force(records.keys[mine], records.ids[mine], queries, 5)
        np.testing.assert_array_equal(hits.ids[:, move], ids)
        np.testing.assert_allclose(hits.distances[:, move], distances, rtol=1e-4, atol=1e-5)
    assert np.all(hits.ids[:, 2, 2:] == -1) and np.all(np.isinf(hits.distances[:, 2, 2:]))
    assert set(hits.values[:, 2, :2].ravel()) == {5.0, 6.0}
    assert np.all(hits.values[:, 2, 2:] == 0)


def test_search_any_returns_the_true_nearest_of_all_moves_with_their_metadata() -> None:
    memory = filled_memory(500, seed=2)
    queries = np.random.default_rng(3).random((15, DIM), dtype=np.float32)

    hits = memory.search_any(queries, k=6)

    records = memory.records()
    ids, distances = brute_force(records.keys, records.ids, queries, 6)
    np.testing.assert_array_equal(hits.ids, ids)
    np.testing.assert_allclose(hits.distances, distances, rtol=1e-4, atol=1e-5)
    rows = np.searchsorted(records.ids, hits.ids)
    np.testing.assert_array_equal(hits.moves, records.moves[rows])
    np.testing.assert_array_equal(hits.values, records.values[rows])
    np.testing.assert_array_equal(hits.outcomes, records.outcomes[rows])


def test_an_empty_memory_returns_padding_only() -> None:
    memory = EpisodicMemory(MemoryConfig(dim=DIM, moves=MOVES))
    queries = np.zeros((2, DIM), dtype=np.float32)

    hits, any_hits = memory.search(queries, k=3), memory.search_any(queries, k=3)

    assert len(memory) == 0
    assert np.all(hits.ids == -1) and np.all(np.isinf(hits.distances))
    assert np.all(any_hits.ids == -1) and np.all(any_hits.moves == -1)
    assert memory.search(np.zeros((0, DIM)), k=3).ids.shape == (0, MOVES, 3)


def test_ids_are_stable_increasing_and_never_reused() -> None:
    memory = EpisodicMemory(MemoryConfig(dim=DIM, moves=MOVES))
    rng = np.random.default_rng(4)
    first = memory.add(**random_batch(rng, 5))
    memory.remove(first[3:])
    second = memory.add(**random_batch(rng, 4))

    np.testing.assert_array_equal(first, np.arange(5))
    np.testing.assert_array_equal(second, np.arange(5, 9))
    np.testing.assert_array_equal(memory.records().ids, [0, 1, 2, 5, 6, 7, 8])
    assert memory.next_id == 9


def test_metadata_scalars_broadcast_and_persona_tags_round_trip() -> None:
    memory = EpisodicMemory(MemoryConfig(dim=DIM, moves=MOVES))
    keys = np.eye(DIM, dtype=np.float32)[:3]
    memory.add(keys, [0, 1, 2], 0.25, 1.0, "dodger", 7.0)
    memory.add(keys[:2], 1, [1.0, 2.0], 0.0, ["turtle", "dodger"], [8.0, 9.0])

    records = memory.records()

    assert records.personas.tolist() == ["dodger"] * 3 + ["turtle", "dodger"]
    np.testing.assert_array_equal(records.moves, [0, 1, 2, 1, 1])
    np.testing.assert_array_equal(records.values, [0.25, 0.25, 0.25, 1.0, 2.0])
    np.testing.assert_array_equal(records.times, [7.0, 7.0, 7.0, 8.0, 9.0])
    np.testing.assert_array_equal(records.keys, np.concatenate([keys, keys[:2]]))


def test_new_persona_tags_of_a_batch_are_numbered_in_sorted_order(tmp_path: Any) -> None:
    memory = EpisodicMemory(MemoryConfig(dim=DIM, moves=MOVES))
    keys = np.eye(DIM, dtype=np.float32)[:4]
    memory.add(keys, 0, 0.0, 0.0, ["turtle", "dodger", "turtle", "rusher"], 0.0)
    memory.add(keys[:3], 1, 0.0, 0.0, ["zebra", "dodger", "ant"], 0.0)

    memory.save(tmp_path)

    assert json.loads((tmp_path / "memory.json").read_text())["personas"] == [
        "dodger", "rusher", "turtle", "ant", "zebra"]
    assert memory.records().personas.tolist() == [
        "turtle", "dodger", "turtle", "rusher", "zebra", "dodger", "ant"]


def test_moves_may_be_given_as_integral_floats() -> None:
    memory = EpisodicMemory(MemoryConfig(dim=DIM, moves=MOVES))

    memory.add(np.eye(DIM, dtype=np.float32)[:3], np.array([2.0, 0.0, 2.0]), 0.0, 0.0, "x", 0.0)

    np.testing.assert_array_equal(memory.records().moves, [2, 0, 2])


# Removal and eviction.

def test_removed_entries_are_never_returned_and_unknown_ids_are_ignored() -> None:
    memory = filled_memory(300, seed=5)
    records = memory.records()
    gone = records.ids[::3]

    assert memory.remove(np.concatenate([gone, [10_000, -1]])) == len(gone)
    assert memory.remove(gone) == 0

    assert len(memory) == 300 - len(gone)
    hits = memory.search(records.keys[::3], k=4)  # queries sitting on the removed keys
    assert not np.isin(hits.ids, gone).any()
    assert np.all(hits.distances[:, :, 0] > 0)


def test_a_full_memory_evicts_its_oldest_entries_first() -> None:
    memory = EpisodicMemory(MemoryConfig(dim=DIM, moves=MOVES, capacity=100))
    rng = np.random.default_rng(6)
    batches = [random_batch(rng, 60) for _ in range(3)]
    for batch in batches:
        memory.add(**batch)

    assert len(memory) == 100
    np.testing.assert_array_equal(memory.records().ids, np.arange(80, 180))
    hits = memory.search(batches[0]["keys"], k=10)
    assert hits.ids[hits.ids >= 0].min() >= 80


def test_a_batch_larger_than_the_capacity_keeps_its_newest_entries() -> None:
    memory = EpisodicMemory(MemoryConfig(dim=DIM, moves=MOVES, capacity=50))
    batch = random_batch(np.random.default_rng(7), 120)

    ids = memory.add(**batch)

    np.testing.assert_array_equal(ids, np.arange(120))
    records = memory.records()
    np.testing.assert_array_equal(records.ids, np.arange(70, 120))
    np.testing.assert_array_equal(records.keys, batch["keys"][70:])
    np.testing.assert_array_equal(records.values, batch["values"][70:])


@pytest.mark.parametrize("removed", [False, True])
def test_hits_carry_their_entries_metadata_whether_or_not_ids_were_removed(removed: bool) -> None:
    """Without removals the live ids have no gaps and an id's row is an offset; with them it
    is a binary search. Both find the same rows, and neither finds ids that are not stored."""
    memory = EpisodicMemory(MemoryConfig(dim=DIM, moves=MOVES, capacity=200))
    rng = np.random.default_rng(19)
    for _ in range(3):
        memory.add(**random_batch(rng, 120))  # evicts all but ids 160..359
    extremes = np.iinfo(np.int64)
    assert memory.remove([-1, 159, 360, extremes.min, extremes.max]) == 0
    if removed:
        assert memory.remove(np.arange(160, 360, 3)) == 67
    records = memory.records()

    hits = memory.search_any(rng.random((5, DIM), dtype=np.float32), k=len(records.ids) + 5)

    found = hits.ids >= 0
    np.testing.assert_array_equal(found.sum(axis=1), len(records.ids))
    rows = np.searchsorted(records.ids, hits.ids[found])
    np.testing.assert_array_equal(records.ids[rows], hits.ids[found])
    for name in ("moves", "values", "outcomes"):
        np.testing.assert_array_equal(getattr(hits, name)[found], getattr(records, name)[rows])
    np.testing.assert_array_equal(hits.moves[~found], -1)
    np.testing.assert_array_equal(hits.values[~found], 0.0)


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_metadata_stays_aligned_with_keys_through_removals_and_evictions(kind: IndexKind) -> None:
    memory = EpisodicMemory(MemoryConfig(dim=DIM, moves=MOVES, capacity=700, index=kind,
                                         **SMALL_IVF))
    rng = np.random.default_rng(8)
    truth: dict[str, list[Any]] = {name: [] for name in random_batch(rng, 0)}
    for _ in range(12):
        batch = random_batch(rng, int(rng.integers(1, 150)))
        memory.add(**batch)
        for name, column in batch.items():
            truth[name].extend(column)
        memory.remove(rng.choice(memory.next_id, size=20, replace=False))

    records = memory.records()
    for name in ("keys", "moves", "values", "outcomes", "personas", "times"):
        expected = np.asarray(truth[name])[records.ids]
        np.testing.assert_array_equal(getattr(records, name), expected, err_msg=name)
    assert len(records.ids) == len(memory) <= 700
    queries = rng.random((30, DIM), dtype=np.float32)
    hits = memory.search(queries, k=4)
    valid = hits.ids >= 0
    keys = np.asarray(truth["keys"])[hits.ids[valid]]
    query_rows = np.nonzero(valid)[0]
    np.testing.assert_allclose(hits.distances[valid],
                               ((queries[query_rows] - keys) ** 2).sum(-1), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(hits.values[valid], np.asarray(truth["values"])[hits.ids[valid]])
    np.testing.assert_array_equal(np.nonzero(valid)[1],
                                  np.asarray(truth["moves"])[hits.ids[valid]])


# Persistence.

@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_save_then_load_gives_identical_results(kind: IndexKind, tmp_path: Any) -> None:
    memory = filled_memory(1500, seed=9, index=kind, capacity=1200, **SMALL_IVF)
    memory.remove(memory.records().ids[::7])  # hnsw keeps these as filtered graph nodes
    queries = np.random.default_rng(10).random((25, DIM), dtype=np.float32)

    memory.save(tmp_path / "memory")
    loaded = EpisodicMemory.load(tmp_path / "memory")

    assert loaded.config == memory.config and len(loaded) == len(memory)
    for name in Records._fields:
        np.testing.assert_array_equal(getattr(loaded.records(), name),
                                      getattr(memory.records(), name))
    for before, after in [(memory.search(queries, 6), loaded.search(queries, 6)),
                          (memory.search_any(queries, 6), loaded.search_any(queries, 6))]:
        for got, expected in zip(after, before, strict=True):
            np.testing.assert_array_equal(got, expected)
    assert loaded.add(np.zeros((1, DIM)), 0, 0.0, 0.0, "x", 0.0)[0] == memory.next_id


def test_ivf_is_trained_once_a_move_has_enough_entries(tmp_path: Any) -> None:
    filled_memory(1200, seed=11, index="ivf", **SMALL_IVF).save(tmp_path)
    trained = faiss.read_index(str(tmp_path / "move_0.faiss"))
    filled_memory(300, seed=11, index="ivf", **SMALL_IVF).save(tmp_path)
    untrained = faiss.read_index(str(tmp_path / "move_0.faiss"))

    assert isinstance(trained, faiss.IndexIVFFlat) and trained.nlist == 8
    assert isinstance(untrained, faiss.IndexIDMap)


def test_ivf_lists_trained_in_the_background_are_switched_to_at_a_later_write(
        tmp_path: Any) -> None:
    config = MemoryConfig(dim=DIM, moves=1, index="ivf", ivf_train_in_background=True,
                          **SMALL_IVF)
    memory = EpisodicMemory(config)
    rng = np.random.default_rng(21)
    memory.add(**random_batch(rng, 400, moves=1))  # past 312: training starts, not awaited
    queries = rng.random((20, DIM), dtype=np.float32)
    records = memory.records()

    memory.save(tmp_path / "training")
    hits = memory.search(queries, k=5)
    memory._indexes[0].wait_for_training()  # type: ignore[attr-defined]
    memory.save(tmp_path / "trained-not-switched")
    memory.add(**random_batch(rng, 1, moves=1))
    memory.save(tmp_path / "switched")

    def index_in(directory: str) -> Any:
        return faiss.read_index(str(tmp_path / directory / "move_0.faiss"))

    assert isinstance(index_in("training"), faiss.IndexIDMap)  # searched exactly meanwhile
    np.testing.assert_array_equal(hits.ids[:, 0],
                                  brute_force(records.keys, records.ids, queries, 5)[0])
    assert isinstance(index_in("trained-not-switched"), faiss.IndexIDMap)
    switched = index_in("switched")
    assert isinstance(switched, faiss.IndexIVFFlat) and switched.ntotal == 401
    stored = memory.records()
    found = memory.search(stored.keys[::40], k=1)
    np.testing.assert_array_equal(found.ids[:, 0, 0], stored.ids[::40])


def test_a_memory_rebuilt_from_records_has_its_background_lists_trained() -> None:
    records = filled_memory(1200, seed=22).records()
    config = MemoryConfig(dim=DIM, moves=MOVES, index="ivf", ivf_train_in_background=True,
                          **SMALL_IVF)

    rebuilt = EpisodicMemory.from_records(config, records)

    for move, index in enumerate(rebuilt._indexes):
        assert isinstance(index.faiss_index, faiss.IndexIVFFlat)
        assert index.faiss_index.ntotal == (records.moves == move).sum()


def test_loading_a_directory_without_a_memory_says_how_to_make_one(tmp_path: Any) -> None:
    with pytest.raises(FileNotFoundError, match=r"memory.json is missing.*EpisodicMemory.save"):
        EpisodicMemory.load(tmp_path)


def test_from_records_rebuilds_the_same_memory() -> None:
    memory = filled_memory(400, seed=12)
    memory.remove(np.arange(0, 400, 5))
    queries = np.random.default_rng(13).random((10, DIM), dtype=np.float32)

    rebuilt = EpisodicMemory.from_records(memory.config, memory.records())

    np.testing.assert_array_equal(rebuilt.records().ids, memory.records().ids)
    np.testing.assert_array_equal(rebuilt.search(queries, 5).ids, memory.search(queries, 5).ids)
    assert rebuilt.next_id == 400  # one past the largest kept id (399)
    ivf = EpisodicMemory.from_records(MemoryConfig(dim=DIM, moves=MOVES, index="ivf"),
                                      memory.records(), next_id=1000)
    assert ivf.next_id == 1000 and len(ivf) == len(memory)
    with pytest.raises(ValueError, match=r"next_id \(10\) must exceed every record id"):
        EpisodicMemory.from_records(memory.config, memory.records(), next_id=10)


# Approximate indexes.

@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_find_most_true_neighbours(kind: IndexKind) -> None:
    memory = filled_memory(6000, seed=14, index=kind, capacity=6000, ivf_nlist=16,
                           ivf_nprobe=4, hnsw_m=16)
    exact = EpisodicMemory.from_records(MemoryConfig(dim=DIM, moves=MOVES, capacity=6000),
                                        memory.records())
    queries = np.random.default_rng(15).random((200, DIM), dtype=np.float32)

    assert recall(memory.search_any(queries, 8).ids, exact.search_any(queries, 8).ids) > 0.9
    per_move = recall(memory.search(queries, 8).ids.reshape(-1, 8),
                      exact.search(queries, 8).ids.reshape(-1, 8))
    assert per_move > 0.9

    gone = memory.records().ids[::2]  # half of them: hnsw rebuilds its graphs
    memory.remove(gone)
    exact.remove(gone)
    found = memory.search(queries, 8).ids
    assert not np.isin(found, gone).any()
    assert recall(found.reshape(-1, 8), exact.search(queries, 8).ids.reshape(-1, 8)) > 0.9


def test_hnsw_rebuilds_a_graph_once_its_removed_entries_pass_the_fraction(tmp_path: Any) -> None:
    memory = filled_memory(900, seed=17, index="hnsw", hnsw_m=8, hnsw_rebuild_fraction=0.25)
    move_0 = memory.records().ids[memory.records().moves == 0]

    memory.remove(move_0[:20])  # well under a quarter: kept in the graph, filtered out
    memory.save(tmp_path)
    graph_nodes_after_few = faiss.read_index(str(tmp_path / "move_0.faiss")).ntotal
    memory.remove(move_0[20:150])  # past a quarter of what is left: rebuilt without them
    memory.save(tmp_path)
    graph_nodes_after_many = faiss.read_index(str(tmp_path / "move_0.faiss")).ntotal

    assert graph_nodes_after_few == len(move_0)
    assert graph_nodes_after_many == len(move_0) - 150


# Validation.

@pytest.mark.parametrize(("overrides", "message"), [
    ({"dim": 0}, r"dim must be an int >= 1 \(got 0\)"),
    ({"moves": 2.5}, r"moves must be an int >= 1"),
    ({"capacity": -1}, r"capacity must be an int >= 1"),
    ({"index": "annoy"}, r"unknown index kind 'annoy': use one of exact, ivf, hnsw"),
    ({"ivf_nlist": 8, "ivf_nprobe": 9}, r"ivf_nprobe \(9\) cannot exceed ivf_nlist \(8\)"),
    ({"ivf_nlist": 8, "ivf_nprobe": 2, "ivf_train_size": 4},
     r"ivf_train_size \(4\) must be >= ivf_nlist"),
    ({"hnsw_m": 1}, r"hnsw_m must be an int >= 2"),
    ({"hnsw_rebuild_fraction": 0.0}, r"hnsw_rebuild_fraction must be in \(0, 1\]"),
])
def test_bad_configs_say_what_is_wrong(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MemoryConfig(**{"dim": DIM, "moves": MOVES, **overrides})


@pytest.mark.parametrize(("call", "message"), [
    (lambda m: m.add(np.zeros((2, DIM + 1)), 0, 0.0, 0.0, "x", 0.0),
     r"keys must have shape \(n, 8\), got \(2, 9\)"),
    (lambda m: m.add(np.zeros(DIM), 0, 0.0, 0.0, "x", 0.0), r"keys\[None, :\]"),
    (lambda m: m.add(np.full((1, DIM), np.nan), 0, 0.0, 0.0, "x", 0.0), "keys contain NaN"),
    (lambda m: m.add(np.zeros((2, DIM)), [0, 3], 0.0, 0.0, "x", 0.0),
     r"moves must be integers in \[0, 3\).*; got 3: pass the boss move's index"),
    (lambda m: m.add(np.zeros((3, DIM)), [0, 1.5, np.nan], 0.0, 0.0, "x", 0.0),
     r"moves must be integers in \[0, 3\).*; got 1.5, nan: "),
    (lambda m: m.add(np.zeros((2, DIM)), [-1, 2], 0.0, 0.0, "x", 0.0), r"; got -1: "),
    (lambda m: m.add(np.zeros((2, DIM)), 0, [1.0, 2.0, 3.0], 0.0, "x", 0.0),
     r"values has shape \(3,\); expected one per key \(2,\)"),
    (lambda m: m.add(np.zeros((1, DIM)), 0, "high", 0.0, "x", 0.0), "values must be float32"),
    (lambda m: m.search(np.zeros((1, DIM)), k=0), r"k must be an int >= 1 \(got 0\)"),
    (lambda m: m.search_any(np.zeros((1, 4)), k=3), r"queries must have shape \(n, 8\)"),
])
def test_bad_calls_say_what_is_wrong(call: Any, message: str) -> None:
    memory = EpisodicMemory(MemoryConfig(dim=DIM, moves=MOVES))
    with pytest.raises(ValueError, match=message):
        call(memory)
    assert len(memory) == 0 and memory.next_id == 0


# Retrieval features and blending.

def test_kernel_weights_are_nec_inverse_distances_normalized_over_valid_neighbours() -> None:
    distances = np.array([[0.0, 1.0, np.inf], [np.inf, np.inf, np.inf], [4.0, 4.0, 4.0]])

    weights = kernel_weights(distances, delta=1e-3)

    expected = np.array([1 / 1e-3, 1 / 1.001]) / (1 / 1e-3 + 1 / 1.001)
    np.testing.assert_allclose(weights[0], [*expected, 0.0])
    np.testing.assert_array_equal(weights[1], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(weights[2], [1 / 3] * 3)
    np.testing.assert_allclose(weights[[0, 2]].sum(axis=-1), 1.0)


def test_retrieval_features_weight_values_count_neighbours_and_squash_distance() -> None:
    neighbours = MoveNeighbours(
        ids=np.array([[[4, 7], [-1, -1]]]),
        distances=np.array([[[1.0, 3.0], [np.inf, np.inf]]], dtype=np.float32),
        values=np.array([[[10.0, 20.0], [0.0, 0.0]]], dtype=np.float32),
    )

    features = retrieval_features(neighbours, delta=1.0, distance_scale=2.0)

    weight_near = (1 / 2) / (1 / 2 + 1 / 4)  # 1 / (1 + delta) against 1 / (3 + delta)
    np.testing.assert_allclose(features.values, [[10 * weight_near + 20 * (1 - weight_near), 0]],
                               rtol=1e-6)
    np.testing.assert_array_equal(features.counts, [[2, 0]])
    np.testing.assert_allclose(features.distances, [[2.0 / (2.0 + 2.0), 1.0]])
    stacked = features.as_array()
    assert stacked.shape == (1, 2, 3) and stacked.dtype == np.float32
    np.testing.assert_allclose(stacked[0, :, 1:], [[1.0, 0.5], [0.0, 1.0]])


def test_features_of_a_real_search_stay_finite_and_bounded() -> None:
    memory = EpisodicMemory(MemoryConfig(dim=DIM, moves=MOVES))
    memory.add(np.random.default_rng(16).random((5, DIM)), 0, 1.0, 1.0, "x", 0.0)

    features = retrieval_features(memory.search(np.zeros((4, DIM)), k=8))

    stacked = features.as_array()
    assert np.isfinite(stacked).all()
    assert np.all((stacked[..., 1:] >= 0) & (stacked[..., 1:] <= 1))
    np.testing.assert_array_equal(features.counts, [[5, 0, 0]] * 4)
    np.testing.assert_allclose(features.values[:, 0], 1.0, rtol=1e-6)


def test_blending_at_lambda_one_or_without_close_memories_is_the_learned_value() -> None:
    learned = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    memory_values = np.array([[9.0, 9.0, 9.0]], dtype=np.float32)
    full, empty = np.array([[8, 8, 8]]), np.array([[0, 0, 0]])
    close, far = np.zeros((1, 3)), np.ones((1, 3))

    blended_lambda_one = blend_values(learned, memory_values, full, close, lam=1.0, k=8)
    assert blended_lambda_one.dtype == np.float32
    np.testing.assert_array_equal(blended_lambda_one, learned)
    np.testing.assert_array_equal(blend_values(learned, memory_values, empty, close, 0.3, 8),
                                  learned)
    np.testing.assert_array_equal(blend_values(learned, memory_values, full, far, 0.3, 8), learned)


def test_blending_moves_toward_the_memory_as_it_gets_closer_and_fuller() -> None:
    learned, memory_values = np.zeros((1, 4)), np.full((1, 4), 10.0)
    counts = np.array([[8, 8, 4, 8]])
    distances = np.array([[0.0, 0.5, 0.0, 0.9]])

    blended = blend_values(learned, memory_values, counts, distances, lam=0.25, k=8)

    # lam_eff = 1 - 0.75 * (count / 8) * (1 - distance): 0.25, 0.625, 0.625, 0.925
    np.testing.assert_allclose(blended, [[7.5, 3.75, 3.75, 0.75]])
    with pytest.raises(ValueError, match=r"lam must be in \[0, 1\]"):
        blend_values(learned, memory_values, counts, distances, lam=1.5, k=8)


# Threads.

@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_concurrent_writers_and_readers_only_see_consistent_entries(kind: IndexKind) -> None:
    memory = EpisodicMemory(MemoryConfig(dim=DIM, moves=MOVES, capacity=400, index=kind,
                                         ivf_nlist=4, ivf_nprobe=2, hnsw_m=8))
    writers_done = threading.Event()

    def write(seed: int) -> dict[int, tuple[np.ndarray, int, float]]:
        faiss.omp_set_num_threads(1)
        rng = np.random.default_rng(seed)
        added: dict[int, tuple[np.ndarray, int, float]] = {}
        for round_ in range(120):
            batch = random_batch(rng, int(rng.integers(1, 12)))
            ids = memory.add(**batch)
            added.update(zip(ids.tolist(), zip(batch["keys"], batch["moves"], batch["values"],
                                               strict=True), strict=True))
            if round_ % 4 == 0:
                memory.remove(rng.choice(list(added), size=5))
        return added

    def read(seed: int) -> list[tuple[np.ndarray, Any, Any, Records]]:
        faiss.omp_set_num_threads(1)
        rng = np.random.default_rng(seed)
        seen: list[tuple[np.ndarray, Any, Any, Records]] = []
        while not writers_done.is_set() or len(seen) < 20:
            queries = rng.random((3, DIM), dtype=np.float32)
            seen.append((queries, memory.search(queries, 5), memory.search_any(queries, 4),
                         memory.records()))
        return seen

    with ThreadPoolExecutor(max_workers=5) as pool:
        writers = [pool.submit(write, seed) for seed in (1, 2)]
        readers = [pool.submit(read, seed) for seed in (3, 4, 5)]
        added = writers[0].result() | writers[1].result()
        writers_done.set()
        seen = [item for reader in readers for item in reader.result()]

    assert sorted(added) == list(range(memory.next_id))  # every id handed out exactly once
    keys = np.stack([added[i][0] for i in range(len(added))])
    moves = np.array([added[i][1] for i in range(len(added))])
    values = np.array([added[i][2] for i in range(len(added))], dtype=np.float32)
    for queries, hits, any_hits, records in seen:
        assert_consistent(queries, hits.ids, hits.distances, keys)
        valid = hits.ids >= 0
        np.testing.assert_array_equal(np.nonzero(valid)[1], moves[hits.ids[valid]])
        np.testing.assert_array_equal(hits.values[valid], values[hits.ids[valid]])
        assert_consistent(queries, any_hits.ids[:, None], any_hits.distances[:, None], keys)
        valid = any_hits.ids >= 0
        np.testing.assert_array_equal(any_hits.moves[valid], moves[any_hits.ids[valid]])
        assert len(records.ids) <= 400 and np.all(np.diff(records.ids) > 0)
        np.testing.assert_array_equal(records.keys, keys[records.ids])
        np.testing.assert_array_equal(records.values, values[records.ids])


def assert_consistent(queries: np.ndarray, ids: np.ndarray, distances: np.ndarray,
                      keys: np.ndarray) -> None:
    """Per query and move: ids were handed out, unique, nearest first, at their key's distance."""
    valid = ids >= 0
    assert np.all(np.isinf(distances[~valid]))
    assert np.all(distances[..., 1:] >= distances[..., :-1])  # nearest first, padding last
    rows = np.nonzero(valid)[0]
    expected = ((queries[rows] - keys[ids[valid]]) ** 2).sum(-1)
    np.testing.assert_allclose(distances[valid], expected, rtol=1e-4, atol=1e-5)
    for row in ids.reshape(-1, ids.shape[-1]):
        assert len(set(row[row >= 0].tolist())) == int((row >= 0).sum())


def test_tags_of_evicted_entries_are_dropped_and_live_ones_kept(tmp_path: Any) -> None:
    memory = EpisodicMemory(MemoryConfig(dim=DIM, moves=MOVES, capacity=50))
    keys = np.random.default_rng(0).standard_normal((3000, DIM)).astype(np.float32)
    for start in range(0, 3000, 2):  # a server: every session its own tag, two lessons a time
        memory.add(keys[start:start + 2], start % MOVES, 0.5, 1.0,
                   [f"session-{start}", f"session-{start + 1}"], float(start))

    assert len(memory._persona_tags) <= PERSONA_TAGS_KEPT + 2
    assert len(memory._persona_codes) == len(memory._persona_tags)
    records = memory.records()
    np.testing.assert_array_equal(records.ids, np.arange(2950, 3000))
    assert records.personas.tolist() == [f"session-{i}" for i in range(2950, 3000)]
    memory.save(tmp_path)
    assert EpisodicMemory.load(tmp_path).records().personas.tolist() == records.personas.tolist()
    memory.add(keys[:1], 0, 0.5, 1.0, "session-2999", 0.0)  # a known tag keeps its code
    assert memory.records().personas.tolist()[-2:] == ["session-2999", "session-2999"]
