"""Group commit: many decisions (or outcomes) from many sockets, one database commit.

A commit that must reach the disk costs the same for one row as for a hundred, so the web
layer does not commit each record itself: it calls ``submit(record)`` and awaits the returned
:class:`concurrent.futures.Future` (``await asyncio.wrap_future(future)``). A background
thread takes whatever is pending, stores it in one transaction, then resolves every future of
the batch. On an event loop, ``await writer.submit_soon(record)`` is the same with an asyncio
future: the thread hands a batch's results to each loop in one call, rather than one per
record. Under light load a record is committed at once; under heavy load commits happen
at most every ``min_interval`` seconds and carry everything that arrived meanwhile.

:class:`StorageWriter` takes decisions and outcomes through one thread, each batch's
decisions and outcomes in one transaction (``Storage.store``), so a decision is never durable
later than an outcome that refers to it. A decision's future resolves to None once it is
committed, so the ``boss_action_response`` can be sent (its action_id is then known across
crashes); an outcome's to True (stored) or False (duplicate), so the ``learning_update`` can be
sent, or raises :class:`UnknownAction` for an action_id the game was never given.

It raises :class:`StorageUnavailable` for a batch the database refused: nothing of it
was stored. A future cancelled before its batch starts is dropped, not stored.

Example::

    writer = StorageWriter(storage)
    await writer.submit_soon(record)  # committed: safe to answer the game
    writer.close()  # flushes what is pending
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
import typing
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

from serving.storage import (
    DecisionRecord,
    OutcomeRecord,
    RecordRejected,
    Storage,
    StorageError,
)

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")
MAX_BATCH = 1000
MIN_INTERVAL = 0.001
_STOP = object()
Waiter = Future[Any] | asyncio.Future[Any]
"""A submitted item's future: concurrent (``submit``) or of an event loop (``submit_soon``)."""


class GroupCommitter(Generic[Item, Result]):
    """A thread committing submitted items in batches through ``commit``.

    ``commit(batch)`` stores the whole batch in one transaction and returns one result (or
    exception) per item, in order; if it raises, every item of the batch gets the exception.
    """

    def __init__(
        self,
        commit: Callable[[list[Item]], Sequence[Result | BaseException]],
        name: str,
        *,
        max_batch: int = MAX_BATCH,
        min_interval: float = MIN_INTERVAL,
    ) -> None:
        if max_batch < 1 or min_interval < 0:
            raise ValueError("max_batch must be >= 1 and min_interval >= 0 seconds")
        self._commit = commit
        self._max_batch = max_batch
        self._min_interval = min_interval
        self._pending: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._closing = threading.Lock()
        self._closed = False
        self.batches = 0
        """Batches committed (or failed) so far."""
        self.records = 0
        """Records handled so far."""
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Item) -> Future[Result]:
        """Queue ``item``; the future resolves once the batch holding it is committed."""
        future: Future[Result] = Future()
        self._put(item, future)
        return future

    def submit_soon(self, item: Item) -> asyncio.Future[Result]:
        """:meth:`submit` from the running event loop: an asyncio future of the result."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._put(item, future)
        return future

    def _put(self, item: Item, future: Waiter) -> None:
        with self._closing:
            if self._closed:
                raise RuntimeError(f"{self._thread.name} is closed: no more records accepted")
            self._pending.put((item, future))

    def close(self, timeout: float | None = 30.0) -> None:
        """Commit everything submitted so far, then stop the thread (idempotent)."""
        with self._closing:
            if not self._closed:
                self._closed = True
                self._pending.put(_STOP)
        self._thread.join(timeout)

    async def aclose(self, timeout: float | None = 30.0) -> None:
        """:meth:`close` from an event loop, without blocking it."""
        await asyncio.to_thread(self.close, timeout)

    def __enter__(self) -> GroupCommitter[Item, Result]:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _run(self) -> None:
        last_commit = 0.0
        stopping = False
        while not stopping:
            wait = last_commit + self._min_interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            batch, stopping = self._take_batch()
            last_commit = time.monotonic()
            if batch:
                self._commit_batch(batch)

    def _take_batch(self) -> tuple[list[tuple[Item, Waiter]], bool]:
        """Block for one entry, then take whatever else is pending (up to ``max_batch``)."""
        batch: list[tuple[Item, Waiter]] = []
        entry = self._pending.get()
        while True:
            if entry is _STOP:
                return batch, True
            item, future = typing.cast(tuple[Item, Waiter], entry)
            if (future.set_running_or_notify_cancel() if isinstance(future, Future)
                    else not future.cancelled()):
                batch.append((item, future))
            if len(batch) >= self._max_batch:
                return batch, False
            try:
                entry = self._pending.get_nowait()
            except queue.Empty:
                return batch, False

    def _commit_batch(self, batch: list[tuple[Item, Waiter]]) -> None:
        try:
            results = self._commit([item for item, _ in batch])
        except Exception as error:  # every failure goes to the waiting callers
            if not isinstance(error, StorageError):
                log.exception("group commit failed unexpectedly")
            results = [error] * len(batch)
        if len(results) != len(batch):  # a broken commit function must not strand callers
            results = [RuntimeError("group commit returned the wrong number of results")] * len(
                batch
            )
        self.batches += 1
        self.records += len(batch)
        on_loops: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
        for (_, future), result in zip(batch, results, strict=True):
            if isinstance(future, Future):
                _settle(future, result)
            else:
                on_loops.setdefault(future.get_loop(), []).append((future, result))
        for loop, settled in on_loops.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(settle_all, settled)


def _settle(future: Waiter, result: Any) -> None:
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def settle_all(settled: list[tuple[asyncio.Future[Any], Any]]) -> None:
    """On the futures' event loop: resolve every one not cancelled meanwhile."""
    for future, result in settled:
        if not future.done():
            _settle(future, result)


class StorageWriter(GroupCommitter[DecisionRecord | OutcomeRecord, bool | None]):
    """Group commit of decisions and outcomes together (see the module docstring): a
    decision's future resolves to None, an outcome's to True (stored) or False (duplicate).

    The server stores through :class:`serving.loop_writer.LoopWriter` (a storage process fed
    by the event loop); this thread is for an in-memory SQLite database, which no other
    process can open, and for callers without an event loop.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        max_batch: int = MAX_BATCH,
        min_interval: float = MIN_INTERVAL,
    ) -> None:
        self._storage = storage
        super().__init__(
            self._store,
            "bosslab-storage-writer",
            max_batch=max_batch,
            min_interval=min_interval,
        )

    def _store(
        self, batch: list[DecisionRecord | OutcomeRecord]
    ) -> list[bool | BaseException | None]:
        return store_batch(self._storage, batch)


def store_batch(
    storage: Storage, batch: Sequence[DecisionRecord | OutcomeRecord]
) -> list[bool | BaseException | None]:
    """Store a batch in one transaction; one result per record, in order (None for a
    decision, True/False for an outcome, or the record's error). If the database rejects the
    batch, each record is stored on its own so only the bad one fails."""
    decisions = [record for record in batch if isinstance(record, DecisionRecord)]
    outcomes = [record for record in batch if isinstance(record, OutcomeRecord)]
    try:
        stored = iter(storage.store(decisions, outcomes))
    except RecordRejected:
        if len(batch) == 1:
            raise
        return [_store_alone(storage, record) for record in batch]
    return [None if isinstance(record, DecisionRecord) else next(stored) for record in batch]


def _store_alone(
    storage: Storage, record: DecisionRecord | OutcomeRecord
) -> bool | BaseException | None:
    """One record of a rejected batch on its own, so only the bad one fails."""
    try:
        if isinstance(record, DecisionRecord):
            storage.store([record], ())
            return None
        return storage.store((), [record])[0]
    except StorageError as error:
        return error
