"""The brains in a child process of their own: :class:`BrainHost` and its :class:`RemoteBrain`s.

At 1,000 decisions/s the event loop's process spent a third of its CPU in the brains
(embedding, memory search, policy, memory writes), and a brain in a thread of the same process
takes turns with the event loop at the GIL. In a child process that work runs on another core.

The child holds every brain (``bundle.new_brain``, loaded from the bundle's path) and answers
two pipes, each in the order it reads them:

- **the event loop's**: decision and lesson batches (``DecisionBatch``/``LessonBatch`` of
  :mod:`serving.service`) are sent without waiting; the answers are read by a reader on the
  event loop (``loop.add_reader``) and resolve asyncio futures, oldest first;
- **a blocking one** for other threads (building brains and replaying stored lessons at start
  and at a reload, single decisions outside the event loop), one call at a time.

A :class:`RemoteBrain` is a :class:`serving.decisions.BossBrain` whose work happens in the
child; it knows its memory's size from the child's last answer.

If the child dies, every call waiting for it fails with :class:`BrainsLost` (answered as
``unavailable``: the game sends again), later calls fail the same way at once, and
``on_lost`` is called on the event loop: the service then starts a new child and rebuilds
every game's brain from storage (``Service.rebuild_brains``). The child ignores SIGINT and
SIGTERM sent to the process group (the server drains first) and stops when its pipes close.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from multiprocessing.util import Finalize
from time import perf_counter
from typing import Any, Generic, TypeVar

import numpy as np

from envs.observation import Situation
from serving.brain import Key, MemoryBrain, brain_for
from serving.bundle import ServedIndex, load_bundle
from serving.decisions import Decision, Lesson

Result = tuple[Decision, Key] | BaseException
"""One situation's answer: its decision and memory key, or why it failed."""


class BrainsLost(RuntimeError):  # noqa: N818 (reads as what happened: the brains are lost)
    """The brain process stopped; a new one is being started."""


class BrainHost:
    """Starts and talks to the brain process (see the module docstring)."""

    def __init__(self, on_lost: Callable[[], None] | None = None) -> None:
        self.on_lost = on_lost
        self.lost = False
        self.closed = False
        self.generation = 0
        """Counts the children started: a brain made in an earlier one is gone."""
        self._context = multiprocessing.get_context("spawn")  # no fork of a threaded server
        self._handles = itertools.count(1)
        self._blocking_lock = threading.Lock()
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    # --- the child ----------------------------------------------------------------------------

    def _start(self) -> None:
        # The event loop's channel is two one-way pipes: the loop's reader makes the answers'
        # descriptor non-blocking (libuv), which must not reach the requests' writes.
        requests_out, requests_in = self._context.Pipe(duplex=False)
        answers_out, answers_in = self._context.Pipe(duplex=False)
        blocking_parent, blocking_child = self._context.Pipe()
        self._process: BaseProcess = self._context.Process(
            target=_brain_child, args=(requests_out, answers_in, blocking_child),
            name="bosslab-brains", daemon=True)
        self._process.start()
        for end in (requests_out, answers_in, blocking_child):
            end.close()
        self._requests: Connection = requests_in
        self._answers: Connection = answers_out
        self._blocking_pipe: Connection = blocking_parent
        # At interpreter exit multiprocessing joins its children; their pipes must end first.
        for pipe in (requests_in, answers_out, blocking_parent):
            Finalize(self, pipe.close, exitpriority=10)
        self.lost = False
        self.generation += 1

    def restart(self) -> None:
        """A new, empty child (after the old one died); brains must be made again."""
        if self.closed:
            raise _lost()
        self._stop()
        self._start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the child for good (idempotent): later calls fail, nothing is restarted."""
        self.closed = True
        self._stop(timeout)

    def _stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._answers.fileno())
            self._loop = None
        for pipe in (self._requests, self._answers, self._blocking_pipe):
            pipe.close()
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout)
        self._fail_waiting()

    # --- calls --------------------------------------------------------------------------------

    def new_brain(self, bundle_path: str, seed: int,
                  memory_index: ServedIndex = "bundle") -> RemoteBrain:
        """A fresh brain of the bundle at ``bundle_path`` in the child (``bundle.new_brain``)."""
        handle = next(self._handles)  # one counter for every thread that makes brains
        generation = self.generation
        version, actions, size = self.call_blocking("new", handle, bundle_path, seed,
                                                    memory_index, generation=generation)
        return RemoteBrain(self, handle, version, actions, size, generation)

    def call_blocking(self, *request: Any, generation: int | None = None) -> Any:
        """Send one request on the blocking pipe and wait for its answer (any thread); raises
        :class:`BrainsLost` if the child died, or is not the one of ``generation``."""
        with self._blocking_lock:
            if self.lost or self.closed or generation not in (None, self.generation):
                raise _lost()
            try:
                self._blocking_pipe.send(request)
                failed, answer = self._blocking_pipe.recv()
            except (EOFError, OSError):
                raise _lost() from None
        if failed:
            raise answer
        return answer

    def call_soon(self, *request: Any, generation: int) -> asyncio.Future[Any]:
        """Send one request on the event loop's pipe; the future resolves with its answer
        (fails with :class:`BrainsLost` if the child is not the one of ``generation``)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self.lost or self.closed or generation != self.generation:
            future.set_exception(_lost())
            return future
        if self._loop is None:
            loop.add_reader(self._answers.fileno(), self._on_answer)
            os.set_blocking(self._answers.fileno(), True)  # a message is read whole
            self._loop = loop
        try:
            self._requests.send(request)
        except (EOFError, OSError):
            self._child_lost()
            future.set_exception(_lost())
            return future
        self._waiting.append(future)
        return future

    def _on_answer(self) -> None:
        try:
            failed, answer = self._answers.recv()
        except (EOFError, OSError):
            self._child_lost()
            return
        future = self._waiting.popleft()
        if future.cancelled():
            return
        if failed:
            future.set_exception(answer)
        else:
            future.set_result(answer)

    def _child_lost(self) -> None:
        if self.lost or self.closed:
            return
        self.lost = True
        if self._loop is not None:
            self._loop.remove_reader(self._answers.fileno())
            self._loop = None
        self._fail_waiting()
        if self.on_lost is not None:
            self.on_lost()

    def _fail_waiting(self) -> None:
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(_lost())


def _lost() -> BrainsLost:
    return BrainsLost("the brain process stopped; the server is restarting it from storage "
                      "(nothing stored is lost): send this message again in a moment")


class RemoteBrain:
    """A :class:`serving.decisions.BossBrain` living in the brain process."""

    def __init__(self, host: BrainHost, handle: int, policy_version: str,
                 boss_actions: Sequence[str], memory_size: int, generation: int) -> None:
        self.host = host
        self.generation = generation
        self.handle = handle
        self.policy_version = policy_version
        self.boss_actions: Sequence[str] = tuple(boss_actions)
        self._memory_size = memory_size
        self._decisions: OneInFlight[Situation, tuple[float, list[Result]]] = OneInFlight(
            self._send_decisions, _split_decisions)
        self._lessons: OneInFlight[tuple[Key, str, float, str], int] = OneInFlight(
            self._send_lessons, _split_size)

    def memory_size(self) -> int:
        return self._memory_size

    def decide(self, situation: Situation) -> Decision:
        result = results_of(self.host.call_blocking("decide", self.handle, [situation],
                                                    generation=self.generation))[0]
        if isinstance(result, BaseException):
            raise result
        return result[0]

    def learn(self, lesson: Lesson) -> int:
        size, refused = self.learn_many([lesson])
        if refused[0] is not None:
            raise refused[0]
        return size

    def learn_many(self, lessons: Sequence[Lesson]) -> tuple[int, list[BaseException | None]]:
        """Teach lessons in order (one call); the memory's size, and per lesson None or why
        it was refused (a refused lesson is skipped)."""
        self._memory_size, refused = self.host.call_blocking("learn", self.handle, list(lessons),
                                                                generation=self.generation)
        return self._memory_size, refused

    async def learn_soon(self, lesson: Lesson) -> int:
        """:meth:`learn` through the event loop's pipe."""
        size, refused = await self.host.call_soon("learn", self.handle, [lesson],
                                                  generation=self.generation)
        if refused[0] is not None:
            raise refused[0]
        self._memory_size = size
        return int(size)

    def decide_soon(self, situations: Sequence[Situation]) -> asyncio.Future[
            tuple[float, list[Result]]]:
        """Decide situations in the child: (the brain's seconds for the batch they went in,
        one result each). One batch is in flight at a time; situations asked for meanwhile
        go together in the next."""
        return self._decisions.ask(list(situations))

    def learn_keyed_soon(self, keys: Sequence[Key], moves: Sequence[str],
                         values: Sequence[float],
                         session_ids: Sequence[str]) -> asyncio.Future[int]:
        """``MemoryBrain.learn_keyed`` in the child; resolves with the memory's size after
        it. One write is in flight at a time; lessons given meanwhile go together in the next."""
        return self._lessons.ask(list(zip(keys, moves, values, session_ids, strict=True)))

    def _send_decisions(self, situations: list[Situation]) -> asyncio.Future[Any]:
        return self.host.call_soon("decide", self.handle, situations,
                                   generation=self.generation)

    def _send_lessons(self, rows: list[tuple[Key, str, float, str]]) -> asyncio.Future[Any]:
        keys, moves, values, session_ids = (list(column) for column in zip(*rows, strict=True))
        future = self.host.call_soon("learn_keyed", self.handle, np.stack(keys), moves, values,
                                     session_ids, generation=self.generation)
        future.add_done_callback(self._sized)
        return future

    def _sized(self, future: asyncio.Future[int]) -> None:
        if not future.cancelled() and future.exception() is None:
            self._memory_size = future.result()

    def drop(self) -> None:
        """Free the brain in the child (a reload replaced it); on the event loop."""
        done = self.host.call_soon("drop", self.handle, generation=self.generation)
        done.add_done_callback(lambda future: future.cancelled() or future.exception())


Item = TypeVar("Item")
Answer = TypeVar("Answer")


class OneInFlight(Generic[Item, Answer]):
    """Requests of one kind to one brain, one in flight at a time: the parts asked for while
    one is in flight go together as the next request, so batches grow with the load and the
    per-call costs (pipe, memory search, policy) are shared."""

    def __init__(self, send: Callable[[list[Item]], asyncio.Future[Any]],
                 split: Callable[[Any, list[int]], list[Answer]]) -> None:
        self._send = send
        self._split = split
        self._queued: list[tuple[list[Item], asyncio.Future[Answer]]] = []
        self._in_flight = False

    def ask(self, items: list[Item]) -> asyncio.Future[Answer]:
        """A future of this part's answer (``split`` cuts the request's answer in parts)."""
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._queued.append((items, future))
        if not self._in_flight:
            self._send_queued()
        return future

    def _send_queued(self) -> None:
        parts, self._queued = self._queued, []
        self._in_flight = True
        answer = self._send([item for items, _ in parts for item in items])
        answer.add_done_callback(lambda done: self._answered(done, parts))

    def _answered(self, answer: asyncio.Future[Any],
                  parts: list[tuple[list[Item], asyncio.Future[Answer]]]) -> None:
        self._in_flight = False
        if self._queued:
            self._send_queued()
        error = answer.exception()
        answers = None if error else self._split(answer.result(), [len(i) for i, _ in parts])
        for index, (_, future) in enumerate(parts):
            if future.done():
                continue
            if answers is None:
                future.set_exception(error or _lost())
            else:
                future.set_result(answers[index])


def _split_decisions(answer: Decided, sizes: list[int]) -> list[tuple[float, list[Result]]]:
    seconds, results = answer[0], results_of(answer)
    starts = list(itertools.accumulate(sizes, initial=0))[:-1]
    return [(seconds, results[start:start + size])
            for start, size in zip(starts, sizes, strict=True)]


def _split_size(size: int, sizes: list[int]) -> list[int]:
    return [size] * len(sizes)


# --- the child process ------------------------------------------------------------------------


def _brain_child(loop_requests: Connection, loop_answers: Connection,
                 blocking_pipe: Connection) -> None:
    """The child's loop: answer each channel's requests in order until both channels end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    brains = _Brains()
    answer_on = {loop_requests: loop_answers, blocking_pipe: blocking_pipe}
    while answer_on:
        for pipe in wait(list(answer_on)):
            assert isinstance(pipe, Connection)
            try:
                request = pipe.recv()
            except (EOFError, OSError):
                del answer_on[pipe]
                continue
            try:
                answer: tuple[bool, Any] = (False, brains.handle(*request))
            except Exception as error:  # the caller raises it
                answer = (True, _picklable(error))
            try:
                answer_on[pipe].send(answer)
            except OSError:  # the server is gone
                return


class _Brains:
    """The brains of the child, by handle."""

    def __init__(self) -> None:
        self.brains: dict[int, MemoryBrain] = {}

    def handle(self, command: str, handle: int, *arguments: Any) -> Any:
        if command == "new":
            return self.new(handle, *arguments)
        brain = self.brains[handle]
        if command == "decide":
            return decide_batch(brain, *arguments)
        if command == "learn_keyed":
            return brain.learn_keyed(*arguments)
        if command == "learn":
            return learn_lessons(brain, *arguments)
        if command == "drop":
            del self.brains[handle]
            return None
        raise ValueError(f"unknown brain command {command!r}")

    def new(self, handle: int, bundle_path: str, seed: int,
            memory_index: ServedIndex) -> tuple[str, list[str], int]:
        brain = brain_for(load_bundle(bundle_path), seed=seed, memory_index=memory_index)
        self.brains[handle] = brain
        return brain.policy_version, list(brain.boss_actions), brain.memory_size()


Decided = tuple[float, list[Decision | BaseException], np.ndarray]
"""A batch's answer on the wire: the brain's seconds, each situation's decision (or error),
and their memory keys as the rows of one array (one array pickles much faster than many)."""


def decide_batch(brain: MemoryBrain, situations: Sequence[Situation]) -> Decided:
    """:func:`decide_each` in the form sent back to the event loop, with the brain's seconds."""
    started = perf_counter()
    results = [r if not isinstance(r, Exception) else _picklable(r)
               for r in decide_each(brain, situations)]
    keys = np.zeros((len(results), brain.reader.embedder.dim), dtype=np.float32)
    for row, result in enumerate(results):
        if not isinstance(result, BaseException):
            keys[row] = result[1]
    decisions = [r if isinstance(r, BaseException) else r[0] for r in results]
    return perf_counter() - started, decisions, keys


def results_of(answer: Decided) -> list[Result]:
    """:func:`decide_batch`'s answer as one (decision, key) or error per situation."""
    _, decisions, keys = answer
    return [d if isinstance(d, BaseException) else (d, keys[row])
            for row, d in enumerate(decisions)]


def decide_each(brain: MemoryBrain, situations: Sequence[Situation]) -> list[Result]:
    """Each situation's decision and key, or its error: ``decide_many`` at once, or one by one
    when that fails, so a bad one fails only itself."""
    try:
        return list(brain.decide_many(situations))
    except Exception:
        return [_decide_one(brain, situation) for situation in situations]


def _decide_one(brain: MemoryBrain, situation: Situation) -> Result:
    try:
        return brain.decide_keyed(situation)
    except Exception as error:  # answered to that request alone
        return error


def learn_lessons(brain: MemoryBrain,
                  lessons: Sequence[Lesson]) -> tuple[int, list[BaseException | None]]:
    """Teach lessons in order; the memory's size and, per lesson, None or why it was refused."""
    refused: list[BaseException | None] = []
    for lesson in lessons:
        try:
            brain.learn(lesson)
            refused.append(None)
        except ValueError as error:
            refused.append(error)
    return brain.memory_size(), refused


def _picklable(error: Exception) -> BaseException:
    """The error itself for the usual types, else a RuntimeError naming it."""
    if type(error) in (ValueError, KeyError, TypeError, RuntimeError):
        return error
    return RuntimeError(f"{type(error).__name__}: {error}")
