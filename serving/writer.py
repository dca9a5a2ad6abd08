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
import multiprocessing
import pickle
import queue
import signal
import threading
import time
import typing
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.util import Finalize
from typing import Any, Generic, TypeVar

from serving.affinity import pin
from serving.storage import (
    DecisionRecord,
    OutcomeRecord,
    RecordRejected,
    Storage,
    StorageError,
    StorageUnavailable,
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
                loop.call_soon_threadsafe(_settle_all, settled)


def _settle(future: Waiter, result: Any) -> None:
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def _settle_all(settled: list[tuple[asyncio.Future[Any], Any]]) -> None:
    """On the futures' event loop: resolve every one not cancelled meanwhile."""
    for future, result in settled:
        if not future.done():
            _settle(future, result)


class StorageWriter(GroupCommitter[DecisionRecord | OutcomeRecord, bool | None]):
    """Group commit of decisions and outcomes together (see the module docstring): a
    decision's future resolves to None, an outcome's to True (stored) or False (duplicate).

    With ``child_process=True`` the batches are stored by a :class:`StorageProcess` (the
    storage's URL opened again in a child process): the thread only hands batches over, so
    the database work never waits for the GIL of a busy event loop. An in-memory SQLite
    database cannot be shared with a child: it is always stored in the thread.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        max_batch: int = MAX_BATCH,
        min_interval: float = MIN_INTERVAL,
        child_process: bool = False,
        child_cpus: set[int] | None = None,
    ) -> None:
        self._storage = storage
        self._child = (StorageProcess(storage, child_cpus)
                       if child_process and storage.shareable else None)
        super().__init__(
            self._child.store if self._child is not None else self._store,
            "bosslab-storage-writer",
            max_batch=max_batch,
            min_interval=min_interval,
        )

    def close(self, timeout: float | None = 30.0) -> None:
        super().close(timeout)
        if self._child is not None:
            self._child.close(timeout)

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


class StorageProcess:
    """:func:`store_batch` in a child process of its own, for one caller thread at a time.

    The child opens the storage's URL again and answers each batch sent through a pipe with
    its results. If the child dies, the batch in flight fails with
    :class:`StorageUnavailable` (its records may or may not be stored: a resend is answered
    as a duplicate, never twice) and the next batch starts a new child. The child stops when
    it reads the end of the pipe, so it never outlives the server.
    """

    def __init__(self, storage: Storage, cpus: set[int] | None = None) -> None:
        self._url = storage.url.render_as_string(hide_password=False)
        self._cpus = cpus
        self._context = multiprocessing.get_context("spawn")  # no fork of a threaded server
        self._connection: Connection | None = None
        self._process: BaseProcess | None = None
        self._start()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def store(
        self, batch: list[DecisionRecord | OutcomeRecord]
    ) -> list[bool | BaseException | None]:
        if self._connection is None:
            self._start()
        assert self._connection is not None
        try:
            self._connection.send(batch)  # pickled whole before anything is written
        except (EOFError, OSError):
            raise self._stopped(batch) from None
        except Exception as error:  # a record that cannot be pickled cannot be stored
            if len(batch) == 1:
                raise RecordRejected(f"a record could not be stored ({error!r}); nothing "
                                     "was stored") from error
            return [self._store_alone(record) for record in batch]
        try:
            failed, answer = self._connection.recv()
        except (EOFError, OSError):
            raise self._stopped(batch) from None
        if failed:
            raise answer
        return list(answer)

    def _store_alone(self, record: DecisionRecord | OutcomeRecord) -> bool | BaseException | None:
        try:
            return self.store([record])[0]
        except StorageError as error:
            return error

    def _stopped(self, batch: Sequence[object]) -> StorageUnavailable:
        """The child is gone: its batch in flight fails, the next batch starts a new child."""
        self._stop()
        return StorageUnavailable(
            f"the storage process stopped while storing a batch of {len(batch)}; it restarts "
            "with the next one: send again")

    def close(self, timeout: float | None = 30.0) -> None:
        """Let the child finish and stop (idempotent)."""
        self._stop(timeout)

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        process = self._context.Process(target=storage_child, args=(self._url, child, child),
                                        name="bosslab-storage", daemon=True)
        process.start()
        pin(self._cpus, process.pid)
        child.close()
        self._connection, self._process = parent, process
        # At interpreter exit multiprocessing joins its children; the pipe must end first.
        Finalize(self, parent.close, exitpriority=10)

    def _stop(self, timeout: float | None = 5.0) -> None:
        if self._connection is not None:
            self._connection.close()  # the child reads the end and stops
            self._connection = None
        if self._process is not None:
            self._process.join(timeout)
            if self._process.is_alive():
                self._process.kill()
            self._process = None


def storage_child(url: str, requests: Connection, answers: Connection) -> None:
    """The storage process's loop: a batch in from ``requests``, its results out on
    ``answers`` (the same pipe or two), until the requests end."""
    # Ctrl-C and SIGTERM sent to the whole process group (a terminal, systemd) are the
    # server's: it drains, flushes through this child, then closes the pipe, which stops it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    storage = Storage(url)
    try:
        while True:
            try:
                batch = requests.recv()
            except EOFError:
                return
            try:
                answer: tuple[bool, Any] = (False, store_batch(storage, batch))
            except Exception as error:  # the caller raises it
                answer = (True, error if isinstance(error, StorageError)
                          else StorageUnavailable(f"storing failed: {error!r}"))
            try:
                answers.send_bytes(pickle.dumps(answer, pickle.HIGHEST_PROTOCOL))
            except OSError:  # the server is gone
                return
    finally:
        storage.close()
