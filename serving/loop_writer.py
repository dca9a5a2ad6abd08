"""Group commit driven by the event loop itself: :class:`LoopWriter`, no thread in between.

:class:`serving.writer.StorageWriter` hands batches to its storage process from a thread of
the server's process. At 1,000 decisions/s that thread woke about 1,100 times a second on
the event loop's CPU and took the GIL from it each time. A :class:`LoopWriter` does the same
work from the event loop's callbacks:

- ``submit_soon(record)`` queues the record and returns an asyncio future; the batch leaves
  at the end of the loop's turn (or once ``min_interval`` has passed since the last batch
  left), one pickled message on a pipe to the storage process
  (:func:`storage_child`, which stores it in one transaction with
  :func:`serving.writer.store_batch`);
- one batch is in flight at a time; what is submitted meanwhile waits for the next;
- the storage process runs ``nice`` steps nicer than the server (``--storage-nice``), so
  that its commits yield the CPU to the brain's decisions (:mod:`serving.affinity`);
- the answer is read by a reader on the event loop (``loop.add_reader``) and settles every
  future of the batch: None for a decision, True (stored) or False (duplicate) for an
  outcome, or the record's error (:class:`serving.storage.UnknownAction`,
  :class:`serving.storage.RecordRejected`), or :class:`serving.storage.StorageUnavailable`
  for the whole batch when the database refused it;
- a future cancelled before its batch leaves is dropped, not stored;
- if the storage process dies, its batch in flight fails with ``StorageUnavailable`` (its
  records may or may not be stored: a resend is answered as a duplicate, never stored twice)
  and the next batch starts a new process.

``await writer.aclose()`` commits everything submitted, then stops the process. The storage
must be one another process can open (not an in-memory SQLite database).
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import pickle
import signal
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.util import Finalize
from typing import Any

from serving.affinity import lower_priority, pin
from serving.storage import (
    DecisionRecord,
    OutcomeRecord,
    RecordRejected,
    Storage,
    StorageError,
    StorageUnavailable,
)
from serving.writer import MAX_BATCH, MIN_INTERVAL, settle_all, store_batch

Record = DecisionRecord | OutcomeRecord
Entry = tuple[Record, "asyncio.Future[Any]"]
CLOSE_POLL = 0.005
"""Seconds between two looks at what is left to commit while closing."""


class LoopWriter:
    """Group commit from an event loop to a storage process (see the module docstring)."""

    def __init__(self, storage: Storage, *, min_interval: float = MIN_INTERVAL,
                 max_batch: int = MAX_BATCH, cpus: set[int] | None = None,
                 nice: int = 0) -> None:
        if not storage.shareable:
            raise ValueError("an in-memory SQLite database cannot be opened by the storage "
                             "process: use serving.writer.StorageWriter for it")
        if max_batch < 1 or min_interval < 0:
            raise ValueError("max_batch must be >= 1 and min_interval >= 0 seconds")
        self._url = storage.url.render_as_string(hide_password=False)
        self._cpus = cpus
        self._nice = nice
        self._min_interval = min_interval
        self._max_batch = max_batch
        self._context = multiprocessing.get_context("spawn")  # no fork of a threaded server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queued: list[Entry] = []
        self._in_flight: list[Entry] | None = None
        self._leaving: asyncio.Handle | None = None
        self._last_left = -math.inf
        self._closed = False
        self._process: BaseProcess | None = None
        self._requests: Connection | None = None
        self._answers: Connection | None = None
        self.batches = 0
        """Batches answered (committed or failed) so far."""
        self.records = 0
        """Records answered so far."""
        self._start()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    # --- submitting -------------------------------------------------------------------------

    def submit_soon(self, record: Record) -> asyncio.Future[Any]:
        """Queue ``record``; the future resolves on this loop once its batch is committed."""
        if self._closed:
            raise RuntimeError("the storage writer is closed: no more records accepted")
        loop = self._loop or self._bind()
        future: asyncio.Future[Any] = loop.create_future()
        self._queued.append((record, future))
        if self._in_flight is None and self._leaving is None:
            self._schedule(loop)
        return future

    def _bind(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        self._watch()
        return self._loop

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        wait = self._last_left + self._min_interval - loop.time()
        self._leaving = (loop.call_later(wait, self._send_batch) if wait > 0
                         else loop.call_soon(self._send_batch))

    def _send_batch(self) -> None:
        self._leaving = None
        taken, self._queued = (self._queued[:self._max_batch],
                               self._queued[self._max_batch:])
        message, batch = _pickled([entry for entry in taken if not entry[1].cancelled()])
        if not batch:
            self._next()
            return
        assert self._loop is not None
        self._last_left = self._loop.time()
        try:
            if self._requests is None:
                self._start()
                self._watch()
            assert self._requests is not None
            self._requests.send_bytes(message)
        except OSError:
            self._process_lost(batch)
            return
        self._in_flight = batch

    def _next(self) -> None:
        """Send the next batch once due, if anything is queued."""
        if self._queued and self._leaving is None and self._loop is not None:
            self._schedule(self._loop)

    # --- answers ----------------------------------------------------------------------------

    def _on_answer(self) -> None:
        assert self._answers is not None
        try:
            failed, answer = pickle.loads(self._answers.recv_bytes())
        except (EOFError, OSError):
            self._process_lost(self._in_flight or [])
            return
        batch, self._in_flight = self._in_flight or [], None
        results = [answer] * len(batch) if failed else list(answer)
        if len(results) != len(batch):  # a broken answer must not strand callers
            results = [RuntimeError("group commit returned the wrong number of results")
                       ] * len(batch)
        self._settle(batch, results)
        self._next()

    def _settle(self, batch: list[Entry], results: list[Any]) -> None:
        self.batches += 1
        self.records += len(batch)
        settle_all([(future, result)
                    for (_, future), result in zip(batch, results, strict=True)])

    def _process_lost(self, batch: list[Entry]) -> None:
        """The storage process is gone: its batch fails, the next batch starts a new one."""
        self._in_flight = None
        self._stop(timeout=1.0)
        self._settle(batch, [StorageUnavailable(
            f"the storage process stopped while storing a batch of {len(batch)}; it "
            "restarts with the next one: send again")] * len(batch))
        self._next()

    # --- the storage process ------------------------------------------------------------------

    def _start(self) -> None:
        # Two one-way pipes: the loop's reader makes the answers' descriptor non-blocking
        # (libuv), which must not reach the requests' writes.
        requests_out, requests_in = self._context.Pipe(duplex=False)
        answers_out, answers_in = self._context.Pipe(duplex=False)
        process = self._context.Process(target=storage_child,
                                        args=(self._url, requests_out, answers_in, self._nice),
                                        name="bosslab-storage", daemon=True)
        process.start()
        pin(self._cpus, process.pid)
        requests_out.close()
        answers_in.close()
        self._process, self._requests, self._answers = process, requests_in, answers_out
        # At interpreter exit multiprocessing joins its children; their pipes must end first.
        for pipe in (requests_in, answers_out):
            Finalize(self, pipe.close, exitpriority=10)

    def _watch(self) -> None:
        """Read the storage process's answers on the event loop."""
        if self._loop is not None and self._answers is not None:
            descriptor = self._answers.fileno()
            self._loop.add_reader(descriptor, self._on_answer)
            os.set_blocking(descriptor, True)  # a ready answer is read whole

    def _stop(self, timeout: float | None = 30.0) -> None:
        if self._answers is not None and self._loop is not None:
            self._loop.remove_reader(self._answers.fileno())
        for pipe in (self._requests, self._answers):
            if pipe is not None:
                pipe.close()  # the process reads the end and stops
        self._requests = self._answers = None
        if self._process is not None:
            self._process.join(timeout)
            if self._process.is_alive():
                self._process.kill()
            self._process = None

    # --- closing ------------------------------------------------------------------------------

    async def aclose(self, timeout: float | None = 30.0) -> None:
        """Commit everything submitted so far, then stop the storage process (idempotent)."""
        self._closed = True
        loop = asyncio.get_running_loop()
        deadline = math.inf if timeout is None else loop.time() + timeout
        while (self._queued or self._in_flight) and loop.time() < deadline:
            if self._in_flight is None and self._leaving is None:
                self._schedule(loop)
            await asyncio.sleep(CLOSE_POLL)
        await asyncio.to_thread(self._stop, timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop the storage process; for a writer no event loop has submitted to (a server
        that failed to start). Use :meth:`aclose` on the loop to commit what is queued."""
        if self._queued or self._in_flight:
            raise RuntimeError("records are still queued: await aclose() on the event loop")
        self._closed = True
        self._stop(timeout)


def _pickled(batch: list[Entry]) -> tuple[bytes, list[Entry]]:
    """The batch's records pickled as one message, and the entries in it; a record that
    cannot be pickled fails alone (``RecordRejected``), the others still go."""
    try:
        return pickle.dumps([record for record, _ in batch], pickle.HIGHEST_PROTOCOL), batch
    except Exception:  # find the bad ones: rare, so one by one
        kept = []
        for record, future in batch:
            try:
                pickle.dumps(record, pickle.HIGHEST_PROTOCOL)
            except Exception as error:
                future.set_exception(RecordRejected(
                    f"a record could not be stored ({error!r}); nothing was stored"))
                continue
            kept.append((record, future))
        return pickle.dumps([record for record, _ in kept], pickle.HIGHEST_PROTOCOL), kept


def storage_child(url: str, requests: Connection, answers: Connection, nice: int = 0) -> None:
    """The storage process's loop, ``nice`` steps nicer than the server: a batch in from
    ``requests``, its results out on ``answers``, until the requests end."""
    lower_priority(nice)
    # Ctrl-C and SIGTERM sent to the whole process group (a terminal, systemd) are the
    # server's: it drains, flushes through this process, then closes the pipe, which stops it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    storage = Storage(url)
    try:
        while True:
            try:
                batch = pickle.loads(requests.recv_bytes())
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
