"""The brains in a child process of their own: :class:`BrainHost` and its :class:`RemoteBrain`s.

At 1,000 decisions/s the event loop's process spent a third of its CPU in the brains
(embedding, memory search, policy, memory writes), and a brain in a thread of the same process
takes turns with the event loop at the GIL. In a child process that work runs on another core.

The child holds every brain (``bundle.new_brain``, loaded from the bundle's path) and answers
two pipes, each in the order it reads them:

- **the event loop's**: decision and lesson batches (``DecisionBatch``/``LessonBatch`` of
  :mod:`serving.service`) are sent at once, up to :data:`TURNS_IN_FLIGHT` requests per
  brain (:class:`Turns`). The child reads every request waiting in the pipe before it works,
  works on consecutive turns of one brain together (:func:`turns`: their lessons first, then
  their situations as one batch), and sends the answers to what it read together as one
  message; a reader on the event loop (``loop.add_reader``) hands each answer on as soon as
  it reads it, oldest first (to a callback, not through a future's callbacks, each of which
  would wait for the loop's next turn);
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
import functools
import itertools
import multiprocessing
import os
import pickle
import signal
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from multiprocessing.util import Finalize
from time import perf_counter
from typing import Any

import numpy as np

from envs.observation import Situation
from serving.affinity import pin
from serving.brain import Key, MemoryBrain, brain_for
from serving.bundle import ServedIndex, load_bundle
from serving.decisions import Decision, Lesson

Result = tuple[Decision, Key] | BaseException
"""One situation's answer: its decision and memory key, or why it failed."""


class BrainsLost(RuntimeError):  # noqa: N818 (reads as what happened: the brains are lost)
    """The brain process stopped; a new one is being started."""


class BrainHost:
    """Starts and talks to the brain process (see the module docstring)."""

    def __init__(self, on_lost: Callable[[], None] | None = None,
                 cpus: set[int] | None = None) -> None:
        self.on_lost = on_lost
        self.cpus = cpus
        """CPUs the child runs on (None: wherever this process may)."""
        self.lost = False
        self.closed = False
        self.generation = 0
        """Counts the children started: a brain made in an earlier one is gone."""
        self._context = multiprocessing.get_context("spawn")  # no fork of a threaded server
        self._handles = itertools.count(1)
        self._blocking_lock = threading.Lock()
        self._waiting: collections.deque[Answered] = collections.deque()
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
        pin(self.cpus, self._process.pid)
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
                _send(self._blocking_pipe, request)
                failed, answer = _receive(self._blocking_pipe)
            except (EOFError, OSError):
                raise _lost() from None
        if failed:
            raise answer
        return answer

    def call_soon(self, *request: Any, generation: int) -> asyncio.Future[Any]:
        """:meth:`call_then`, the answer as a future."""
        return future_of(lambda then: self.call_then(*request, generation=generation,
                                                     then=then))

    def call_then(self, *request: Any, generation: int, then: Answered) -> None:
        """Send one request on the event loop's pipe; ``then`` is called on the event loop with
        its answer, or the exception it failed with, in the turn that reads it (with
        :class:`BrainsLost` in a later turn if the child is not the one of ``generation``)."""
        loop = asyncio.get_running_loop()
        if self.lost or self.closed or generation != self.generation:
            loop.call_soon(then, _lost())
            return
        if self._loop is None:
            loop.add_reader(self._answers.fileno(), self._on_answer)
            os.set_blocking(self._answers.fileno(), True)  # a message is read whole
            self._loop = loop
        try:
            _send(self._requests, request)
        except (EOFError, OSError):
            self._child_lost()
            loop.call_soon(then, _lost())
            return
        self._waiting.append(then)

    def _on_answer(self) -> None:
        try:
            answers: list[tuple[bool, Any]] = _receive(self._answers)
        except (EOFError, OSError):
            self._child_lost()
            return
        for _, answer in answers:  # a failed request's answer is its exception
            _hand_on(self._waiting.popleft(), answer)

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
            _hand_on(self._waiting.popleft(), _lost())


Answered = Callable[[Any], None]
"""What is called with a request's answer, or the exception it failed with."""


def future_of(start: Callable[[Answered], None]) -> asyncio.Future[Any]:
    """What ``start`` hands its callback (an answer, or the exception it failed with), as a
    future of the running loop."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    start(functools.partial(settle, future))
    return future


def _hand_on(then: Answered, answer: Any) -> None:
    try:
        then(answer)
    except Exception as error:  # one caller's bug must not cost the others their answers
        asyncio.get_running_loop().call_exception_handler(
            {"message": "a brain answer's callback failed", "exception": error})


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
        self._turns = Turns(self._send_turn)

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

    def decide_soon(self, situations: Sequence[Situation]) -> asyncio.Future[Decisions]:
        """Decide situations in the child: (the brain's seconds for the batch they went in,
        one result each). See :class:`Turns` for how requests are batched."""
        return future_of(functools.partial(self.decide_then, situations))

    def decide_then(self, situations: Sequence[Situation], then: Answered) -> None:
        """:meth:`decide_soon`, the answer (or the exception) handed to ``then`` in the turn
        of the event loop that reads it."""
        self._turns.decide(list(situations), then)

    def learn_keyed_soon(self, keys: Sequence[Key], moves: Sequence[str],
                         values: Sequence[float],
                         session_ids: Sequence[str]) -> asyncio.Future[int]:
        """``MemoryBrain.learn_keyed`` in the child; resolves with the memory's size after
        it. See :class:`Turns` for how requests are batched."""
        return self.learn_rows_soon(list(zip(keys, moves, values, session_ids, strict=True)))

    def learn_rows_soon(self, rows: Sequence[LessonRow]) -> asyncio.Future[int]:
        """:meth:`learn_keyed_soon` of lessons given as rows (key, move, value, session_id)."""
        return future_of(functools.partial(self.learn_rows_then, rows))

    def learn_rows_then(self, rows: Sequence[LessonRow], then: Answered) -> None:
        """:meth:`learn_rows_soon`, the answer (or the exception) handed to ``then`` in the
        turn of the event loop that reads it."""
        self._turns.learn(list(rows), then)

    def _send_turn(self, lessons: list[LessonRow], situations: list[Situation],
                   then: Answered) -> None:
        keyed = None
        if lessons:
            keys, moves, values, session_ids = (list(c) for c in zip(*lessons, strict=True))
            keyed = (np.stack(keys), moves, values, session_ids)
        self.host.call_then("turn", self.handle, keyed, situations, generation=self.generation,
                            then=functools.partial(self._sized, then))

    def _sized(self, then: Answered, answer: TurnAnswer | BaseException) -> None:
        if not isinstance(answer, BaseException) and isinstance(answer[0], int):
            self._memory_size = answer[0]
        then(answer)

    def drop(self) -> None:
        """Free the brain in the child (a reload replaced it); on the event loop."""
        done = self.host.call_soon("drop", self.handle, generation=self.generation)
        done.add_done_callback(lambda future: future.cancelled() or future.exception())


LessonRow = tuple[Key, str, float, str]
"""A lesson by its situation's key: (key, move, effectiveness, session_id)."""
Decided = tuple[float, list[Decision | BaseException], np.ndarray]
"""A batch's answer on the wire: the brain's seconds, each situation's decision (or error),
and their memory keys as the rows of one array (one array pickles much faster than many)."""
TurnAnswer = tuple[int | BaseException | None, Decided | None]
"""A turn's answer: the memory's size after its lessons (or why they were refused; None
without lessons), and its situations' decisions (None without situations)."""
Decisions = tuple[float, list[Result]]


TURNS_IN_FLIGHT = 4
"""Requests one brain may have in the brain process's pipe unanswered. A request does not wait
for the one before to be answered (that cost it a round trip through the event loop); what is
asked for while this many are in flight goes together in the next."""


class Turns:
    """Decisions and lessons for one brain, sent at once, up to :data:`TURNS_IN_FLIGHT` in
    flight.

    Requests are answered in the order they were sent. The child works on the requests
    waiting in its pipe together (:func:`answer_all`): lessons first (so that the decisions
    use them), then situations. Batches grow with the load, and the per-batch costs (waking
    the child and the event loop, the memory write and search, the policy) are shared by
    everything in them.
    """

    def __init__(self, send: Callable[[list[LessonRow], list[Situation], Answered],
                                      None]) -> None:
        self._send = send
        self._lessons: list[LessonRow] = []
        self._learnt: list[Answered] = []
        self._situations: list[Situation] = []
        self._decided: list[tuple[int, Answered]] = []
        self._in_flight = 0

    def decide(self, situations: list[Situation], then: Answered) -> None:
        """``then`` gets (the brain's seconds for their batch, one result per situation)."""
        self._situations.extend(situations)
        self._decided.append((len(situations), then))
        self._send_unless_full()

    def learn(self, lessons: list[LessonRow], then: Answered) -> None:
        """``then`` gets the memory's size after the lessons."""
        self._lessons.extend(lessons)
        self._learnt.append(then)
        self._send_unless_full()

    def _send_unless_full(self) -> None:
        if self._in_flight < TURNS_IN_FLIGHT:
            self._send_queued()

    def _send_queued(self) -> None:
        lessons, learnt, situations, decided = (self._lessons, self._learnt, self._situations,
                                                self._decided)
        self._lessons, self._learnt, self._situations, self._decided = [], [], [], []
        self._in_flight += 1
        self._send(lessons, situations,
                   lambda answer: self._answered(answer, learnt, decided))

    def _answered(self, answer: TurnAnswer | BaseException, learnt: list[Answered],
                  decided: list[tuple[int, Answered]]) -> None:
        self._in_flight -= 1
        if self._learnt or self._decided:
            self._send_queued()
        counts = [count for count, _ in decided]
        if isinstance(answer, BaseException):
            size: int | BaseException | None = answer
            parts: list[Decisions | BaseException] = [answer] * len(decided)
        else:
            size, decisions = answer
            parts = list(_split_decisions(decisions or (0.0, [], np.zeros((0, 0))), counts))
        for lessons_learnt in learnt:
            lessons_learnt(size)
        for (_, decisions_made), part in zip(decided, parts, strict=True):
            decisions_made(part)


def settle(future: asyncio.Future[Any], result: Any) -> None:
    """Resolve ``future`` with ``result``, or fail it when ``result`` is an exception (nothing
    if it is already done: cancelled by its caller)."""
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def _split_decisions(answer: Decided, sizes: list[int]) -> list[Decisions]:
    seconds, results = answer[0], results_of(answer)
    starts = list(itertools.accumulate(sizes, initial=0))[:-1]
    return [(seconds, results[start:start + size])
            for start, size in zip(starts, sizes, strict=True)]


def _send(pipe: Connection, message: Any) -> None:
    """One message on a pipe, pickled whole before anything is written (plain pickle:
    ``Connection.send``'s ForkingPickler copies a dispatch table for every message)."""
    pipe.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))


def _receive(pipe: Connection) -> Any:
    return pickle.loads(pipe.recv_bytes())


# --- the child process ------------------------------------------------------------------------


def _brain_child(loop_requests: Connection, loop_answers: Connection,
                 blocking_pipe: Connection) -> None:
    """The child's loop: answer each channel's requests in order until both channels end (the
    event loop's: everything waiting at once, see :func:`answer_all`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    brains = Brains()
    answer_on = {loop_requests: loop_answers, blocking_pipe: blocking_pipe}
    while answer_on:
        for pipe in wait(list(answer_on)):
            assert isinstance(pipe, Connection)
            try:
                requests = _receive_waiting(pipe) if pipe is loop_requests else [_receive(pipe)]
            except (EOFError, OSError):
                del answer_on[pipe]
                continue
            answers = answer_all(brains, requests)
            try:
                _send(answer_on[pipe], answers if pipe is loop_requests else answers[0])
            except OSError:  # the server is gone
                return


def _receive_waiting(pipe: Connection) -> list[Any]:
    """The next request and every other one already in the pipe (an end of the pipe after the
    first is left for the next read to find)."""
    requests = [_receive(pipe)]
    try:
        while pipe.poll(0):
            requests.append(_receive(pipe))
    except (EOFError, OSError):
        pass
    return requests


def answer_all(brains: Brains, requests: Sequence[tuple[Any, ...]]) -> list[tuple[bool, Any]]:
    """Each request's answer, (False, result) or (True, error), in order; consecutive turns of
    one brain are worked on together (:func:`turns`)."""
    answers: list[tuple[bool, Any]] = []
    for handle, run in itertools.groupby(requests, key=_turn_handle):
        grouped = list(run)
        if handle is None:
            answers.extend(_answer(brains, request) for request in grouped)
            continue
        failed, answer = _answer(brains, ("turns", handle, [turn[2:] for turn in grouped]))
        answers.extend([(True, answer)] * len(grouped) if failed
                       else [(False, own) for own in answer])
    return answers


def _turn_handle(request: tuple[Any, ...]) -> int | None:
    return request[1] if request[0] == "turn" else None


def _answer(brains: Brains, request: tuple[Any, ...]) -> tuple[bool, Any]:
    try:
        return False, brains.handle(*request)
    except Exception as error:  # the caller raises it
        return True, _picklable(error)


class Brains:
    """The brains of the child, by handle."""

    def __init__(self) -> None:
        self.brains: dict[int, MemoryBrain] = {}

    def handle(self, command: str, handle: int, *arguments: Any) -> Any:
        if command == "new":
            return self.new(handle, *arguments)
        brain = self.brains[handle]
        if command == "decide":
            return decide_batch(brain, *arguments)
        if command == "turns":
            return turns(brain, *arguments)
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


Keyed = tuple[np.ndarray, list[str], list[float], list[str]]
"""A turn's lessons as columns: keys (one row each), moves, values, session ids."""


def turns(brain: MemoryBrain,
          asked: Sequence[tuple[Keyed | None, Sequence[Situation]]]) -> list[TurnAnswer]:
    """Turns of :class:`Turns` read together, each (lessons, situations): every turn's lessons
    learnt in order (one write per turn, all or none: a bad lesson refuses its own turn's),
    then all their situations decided as one batch; each turn answered with its own."""
    learnt = [_learn_turn(brain, lessons) for lessons, _ in asked]
    situations = [situation for _, own in asked for situation in own]
    decided = decide_batch(brain, situations) if situations else None
    answers: list[TurnAnswer] = []
    start = 0
    for size, (_, own) in zip(learnt, asked, strict=True):
        part: Decided | None = None
        if own and decided is not None:
            seconds, decisions, keys = decided
            end = start + len(own)
            part, start = (seconds, decisions[start:end], keys[start:end]), end
        answers.append((size, part))
    return answers


def _learn_turn(brain: MemoryBrain, lessons: Keyed | None) -> int | BaseException | None:
    if lessons is None:
        return None
    try:
        return brain.learn_keyed(*lessons)
    except Exception as error:  # answered to the lessons' callers alone
        return _picklable(error)


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
