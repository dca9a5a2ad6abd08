"""The server's runtime: registered games, their brains and sessions, the decision and outcome
paths. The routers (HTTP and WebSocket) only translate between the wire and these methods.

Decision path (:meth:`Service.decide`), under the session's lock so moves count in order:
request -> checked against the game's terms -> :class:`envs.observation.Situation` (the request
plus the session's boss state: last move, habits) -> ``brain.decide_many`` with the other
requests of the game in the same turn of the event loop (:class:`DecisionBatch`: one embedding,
memory search and policy call for all; in the brain process of :mod:`serving.brain_host` unless
``--no-brain-process``) -> the move and the situation's memory key, kept for learning (one
embedding per decision) -> a fresh signed ``action_id`` (:class:`ActionIds`) -> the decision is
queued for the next group commit of the :class:`serving.loop_writer.LoopWriter` (stored by its
storage process; a :class:`serving.writer.StorageWriter` thread for an in-memory database) and
answered without waiting for it -> the session counts the move. Every action_id a game ever
received is recognised after a crash: stored, or, if the crash came between the answer and the
commit (a few milliseconds), by its signature; an outcome of such a lost decision is kept with
a stand-in decision (no context: not learnt), never refused as ``unknown_action``. While
storage fails, decisions wait for their commit, so games hear ``unavailable`` instead of moves
that cannot be stored.

Outcome path (:meth:`Service.record_outcome`): the outcome goes through the same writer,
after its decision (committed, or a duplicate, or an unknown action; decisions and outcomes of
a group commit share one transaction, so a decision is never durable later than its outcome)
-> only when newly stored, the brain learns it and the player's profile counts it ->
``learning_update``. Outcomes stored in the same turn of the event loop are learnt in one
memory write (:class:`LessonBatch`; in the brain process, with the decisions and lessons
that arrived while its previous request was in flight). A duplicate changes nothing and says
``duplicate: true``.

At start (:meth:`Service.start`) every registered game gets a fresh brain from its bundle, and
every stored lesson is replayed through ``brain.learn`` and into the session profiles. If the
brain process dies, :meth:`Service.rebuild_brains` does the same for the brains alone in a new
one (requests in the gap are answered ``unavailable``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import hmac
import itertools
import logging
import os
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, NamedTuple, Protocol

from envs.observation import Situation
from serving.affinity import worker_cpus
from serving.auth import AuthError, check_api_key, hash_api_key, issue_token, new_api_key
from serving.brain import Key, MemoryBrain
from serving.brain_host import (
    BrainHost,
    BrainsLost,
    LessonRow,
    RemoteBrain,
    Result,
    decide_each,
    settle,
)
from serving.bundle import Bundle
from serving.decisions import BossBrain, Decision, Lesson
from serving.limits import ConnectionLimit
from serving.loop_writer import LoopWriter
from serving.metrics import LatencyWindow, Metrics
from serving.protocol import (
    ActionOutcome,
    BossActionRequest,
    GameTerms,
    ProtocolError,
    RegisterRequest,
    check_request,
    game_terms,
    situation_from_json,
    situation_json,
    to_situation,
)
from serving.sessions import Session, Sessions, StoredLesson
from serving.settings import Settings
from serving.storage import (
    STAND_IN_VERSION,
    DecisionRecord,
    GameExists,
    GameRecord,
    OutcomeRecord,
    Storage,
    StorageUnavailable,
    UnknownAction,
)
from serving.writer import StorageWriter

log = logging.getLogger("serving.service")

COMMIT_INTERVAL = 0.005
"""Seconds between two group commits at least (the writer's ``min_interval``): under load
each commit carries every decision and outcome of the interval, so its cost is shared. An
outcome's answer waits for its commit: short. (A decision's does not, unless storage fails.)"""
LOST_SESSION = "unknown"
"""The session_id of a stand-in decision (outcomes do not name their session)."""
REBUILD_MAX_DELAY = 30.0
"""Seconds between two tries at most when rebuilding the brains fails (storage down...)."""
RECENT_DECISIONS = 50_000
"""Decisions kept in memory until their outcome arrives (older ones are read from storage)."""


class Unavailable(Exception):  # noqa: N818 (the protocol's error code)
    """The game cannot be served right now (storage down, its policy not loaded)."""


class UnknownGame(KeyError):  # noqa: N818 (reads as the answer: 404 unknown game)
    """No game is registered under this game_id."""


class NotServable(ValueError):  # noqa: N818 (reads as the answer: 422 not servable)
    """No loaded bundle serves a vocabulary (registration answers 422)."""


class Drainable(Protocol):
    """An open connection the service can close gracefully at shutdown."""

    async def drain(self, timeout: float) -> None: ...


class ActionIds:
    """Fresh action_ids the server can recognise without its database: a random 64-bit
    prefix drawn once per server run, a counter, the move's index in the game's vocabulary,
    and a MAC of all that and the game_id under a key derived from the server's secret key
    (50 hex characters). Unique across runs (a repeat would be refused by the database's
    unique key, never stored twice), without the system call uuid4 makes per decision.

    :meth:`issued` tells an action_id this server (or one with the same secret key) issued to
    a game, even if its decision was lost before it was stored: its outcome is then kept
    (with a stand-in decision), never refused as ``unknown_action``.
    """

    def __init__(self, secret_key: str) -> None:
        self.prefix = os.urandom(8).hex()
        self._counter = itertools.count()
        self._key = hashlib.sha256(b"bosslab action_id\0" + secret_key.encode()).digest()

    def next(self, game_id: str, move_index: int) -> str:
        body = f"{self.prefix}{next(self._counter):016x}{move_index:02x}"
        return body + self._mac(game_id, body)

    def issued(self, game_id: str, action_id: str) -> int | None:
        """The move index of an action_id issued to ``game_id``; None if it was not."""
        if len(action_id) != ACTION_ID_LENGTH:
            return None
        body, mac = action_id[:-MAC_LENGTH], action_id[-MAC_LENGTH:]
        if not hmac.compare_digest(mac, self._mac(game_id, body)):
            return None
        return int(body[-2:], 16)

    def _mac(self, game_id: str, body: str) -> str:
        message = f"{game_id}\0{body}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:MAC_LENGTH]


MAC_LENGTH = 16
ACTION_ID_LENGTH = 16 + 16 + 2 + MAC_LENGTH


class Committer(Protocol):
    """A group-commit writer (``serving.loop_writer``, ``serving.writer``): ``submit_soon``
    resolves once committed."""

    def submit_soon(self, item: Any) -> asyncio.Future[Any]: ...

    async def aclose(self, timeout: float | None = 30.0) -> None: ...

    def close(self, timeout: float | None = 30.0) -> None: ...


class Issued(NamedTuple):
    """A decision waiting for its outcome: what the brain learns from."""

    situation: Situation
    move: str
    session_id: str
    key: Key | None = None
    """The situation's memory key (None: the brain embeds the situation when it learns)."""


class DecisionBatch:
    """Requests of one game decided in the same turn of the event loop: the brain decides them
    together at the end of the turn (``MemoryBrain.decide_many``; a :class:`RemoteBrain` in
    the brain process, answered in a later turn). If that fails, each is decided alone, so a
    bad request fails only itself."""

    def __init__(self, brain: MemoryBrain | RemoteBrain) -> None:
        self.brain = brain
        self.situations: list[Situation] = []
        self.waiting: list[asyncio.Future[tuple[Decision, Key]]] = []
        self.done = False
        self.seconds = 0.0
        """How long the brain took for the whole batch (the decision's own time)."""
        self.loop = asyncio.get_running_loop()  # once: it costs a system call (getpid)
        self.loop.call_soon(self._flush)

    def add(self, situation: Situation) -> asyncio.Future[tuple[Decision, Key]]:
        future: asyncio.Future[tuple[Decision, Key]] = self.loop.create_future()
        self.situations.append(situation)
        self.waiting.append(future)
        return future

    def _flush(self) -> None:
        self.done = True
        if isinstance(self.brain, RemoteBrain):
            self.brain.decide_then(self.situations, self._answered)
            return
        started = perf_counter()
        results = decide_each(self.brain, self.situations)
        self._deliver(perf_counter() - started, results)

    def _answered(self, answer: tuple[float, list[Result]] | BaseException) -> None:
        """The brain process's answer: each request's decision, or why it failed."""
        if isinstance(answer, BaseException):
            answer = (0.0, [answer] * len(self.waiting))
        self._deliver(*answer)

    def _deliver(self, seconds: float, results: list[Result]) -> None:
        """Each request's decision and key, or why it failed."""
        self.seconds = seconds
        for future, result in zip(self.waiting, results, strict=True):
            settle(future, result)


class LessonBatch:
    """Outcomes of one game stored in the same turn of the event loop: the brain learns them
    in one memory write at the end of the turn (``MemoryBrain.learn_keyed``); every caller
    awaits the memory's size after it."""

    def __init__(self, brain: MemoryBrain | RemoteBrain) -> None:
        self.brain = brain
        self.rows: list[LessonRow] = []
        loop = asyncio.get_running_loop()
        self.learnt: asyncio.Future[int] = loop.create_future()
        loop.call_soon(self._flush)

    def add(self, key: Key, move: str, value: float, session_id: str) -> asyncio.Future[int]:
        """The memory's size after the batch, as a future of this caller's own: cancelling it
        (its handler was cancelled) leaves the batch and the other callers' answers alone."""
        self.rows.append((key, move, value, session_id))
        return asyncio.shield(self.learnt)

    def _flush(self) -> None:
        if isinstance(self.brain, RemoteBrain):
            self.brain.learn_rows_then(self.rows, functools.partial(settle, self.learnt))
            return
        keys, moves, values, session_ids = zip(*self.rows, strict=True)
        try:
            self.learnt.set_result(self.brain.learn_keyed(keys, moves, values, session_ids))
        except Exception as error:  # reaches every outcome of the batch
            self.learnt.set_exception(error)


class RecentDecisions:
    """The newest decisions by action_id (FIFO-bounded); an outcome takes its decision out."""

    def __init__(self, size: int = RECENT_DECISIONS) -> None:
        self.size = size
        self._items: OrderedDict[str, Issued] = OrderedDict()

    def add(self, action_id: str, issued: Issued) -> None:
        self._items[action_id] = issued
        if len(self._items) > self.size:
            self._items.popitem(last=False)

    def take(self, action_id: str) -> Issued | None:
        return self._items.pop(action_id, None)


@dataclass
class GameRuntime:
    """One registered game being served."""

    record: GameRecord
    bundle: Bundle
    brain: BossBrain
    terms: GameTerms
    sessions: Sessions
    recent: RecentDecisions = field(default_factory=RecentDecisions)
    latency: LatencyWindow = field(default_factory=LatencyWindow)
    decisions: DecisionBatch | None = None
    """The batch of requests this turn of the event loop adds to (None or done: start one)."""
    lessons: LessonBatch | None = None
    """The batch of lessons this turn of the event loop adds to (None or done: start one)."""

    @property
    def game_id(self) -> str:
        return self.record.game_id

    @property
    def moves(self) -> list[str]:
        """The boss moves in the order the game registered them (action_ids carry an index)."""
        return list(self.record.vocabulary["boss_actions"])

    @functools.cached_property
    def move_codes(self) -> dict[str, int]:
        return {move: index for index, move in enumerate(self.moves)}


def _seed(game_id: str) -> int:
    return zlib.crc32(game_id.encode())


class Service:
    """Games, brains, sessions, storage and the writers of one server."""

    def __init__(self, settings: Settings, bundles: Sequence[Bundle], storage: Storage,
                 metrics: Metrics) -> None:
        self.settings = settings
        self.bundles = list(bundles)
        self.storage = storage
        self.metrics = metrics
        self.games: dict[str, GameRuntime] = {}
        self.unserved: dict[str, str] = {}
        """Registered games no loaded bundle serves -> why."""
        self.connections: set[Drainable] = set()
        self.connection_limit = ConnectionLimit(settings.max_connections)
        self.draining = False
        self.action_ids = ActionIds(settings.secret_key)
        self.storage_failing = False
        """Whether the last decision commit failed for want of storage (decisions then wait
        for their commit, so they are answered ``unavailable`` until storage is back)."""
        workers = worker_cpus(settings.cpus) if settings.cpus else None
        self.brain_host = (BrainHost(on_lost=self._brains_lost, cpus=workers)
                           if settings.brain_process else None)
        """The brain process (None: brains live in this process)."""
        self._rebuilding: asyncio.Task[None] | None = None
        writer: Committer = (
            LoopWriter(storage, min_interval=COMMIT_INTERVAL, cpus=workers,
                       nice=settings.storage_nice) if storage.shareable
            else StorageWriter(storage, min_interval=COMMIT_INTERVAL))
        self.decision_writer = writer
        self.outcome_writer: Committer = writer
        """Both the one writer: decisions and outcomes share its transactions."""

    # --- start and stop ---------------------------------------------------------------------

    def start(self) -> None:
        """Create the schema, then load every registered game and replay its lessons (blocking:
        runs in a thread before the server accepts connections)."""
        self.storage.create_schema()
        for game_id in self.storage.game_ids():
            record = self.storage.get_game(game_id)
            if record is None:
                continue
            try:
                bundle = self.choose_bundle(record.vocabulary["boss_actions"], record.policy)
            except NotServable as error:
                self.unserved[game_id] = str(error)
                log.error("game %s is not served: %s", game_id, error)
                continue
            game = self._runtime(record, bundle)
            lessons = self._replay(game)
            self.games[game_id] = game
            log.info("game %s: %d lessons replayed, memory %d, policy %s", game_id, lessons,
                     game.brain.memory_size(), bundle.manifest.policy_version)

    def _replay(self, game: GameRuntime) -> int:
        lessons, _ = stored_lessons(self.storage, game.game_id)
        taught = teach_all(game.brain, game.game_id, lessons)
        for (decision, outcome, situation), learnt in zip(lessons, taught, strict=True):
            if learnt:
                game.sessions.restore(decision.session_id, StoredLesson(
                    situation.player, decision.move, outcome.outcome,
                    outcome.effectiveness_score, decision.situation.get("habit_counts"),
                    situation.boss.last_action, decision.created_at))
        return sum(taught)

    def new_brain(self, bundle: Bundle, game_id: str) -> BossBrain:
        """A fresh brain of ``bundle`` for a game (in the brain process if there is one)."""
        index = self.settings.memory_index
        if self.brain_host is None:
            return bundle.new_brain(seed=_seed(game_id), memory_index=index)
        return self.brain_host.new_brain(str(bundle.path), _seed(game_id), index)

    def _brains_lost(self) -> None:
        """The brain process died (on the event loop): start a new one, rebuild the brains."""
        log.error("the brain process stopped: starting a new one and rebuilding every game's "
                  "brain from storage; decisions are answered unavailable meanwhile")
        self._rebuilding = asyncio.get_running_loop().create_task(self.rebuild_brains())

    async def rebuild_brains(self) -> None:
        """A new brain process, and every served game's brain made again in it from its bundle
        and stored lessons (as at start; sessions and their profiles are kept)."""
        host = self.brain_host
        assert host is not None
        for attempt in itertools.count():
            try:
                await asyncio.to_thread(host.restart)
                for game in list(self.games.values()):
                    brain = await asyncio.to_thread(self._rebuilt_brain, game)
                    game.brain, game.decisions, game.lessons = brain, None, None
            except (BrainsLost, StorageUnavailable) as error:
                if host.closed:
                    return
                delay = min(REBUILD_MAX_DELAY, 2.0 ** attempt)
                log.error("rebuilding the brains failed (%s): trying again in %.0f s", error,
                          delay)
                await asyncio.sleep(delay)
                continue
            log.info("brain process restarted: %d game(s) rebuilt", len(self.games))
            return

    def _rebuilt_brain(self, game: GameRuntime) -> BossBrain:
        brain = self.new_brain(game.bundle, game.game_id)
        replay_lessons(self.storage, game.game_id, brain)
        return brain

    async def drain(self, timeout: float = 10.0) -> None:
        """Stop taking messages, let in-flight ones finish (outcomes committed and answered),
        then close every socket with 1012. Idempotent."""
        if self.draining:
            return
        self.draining = True
        open_now = list(self.connections)
        log.info("draining %d connection(s)", len(open_now))
        await asyncio.gather(*(c.drain(timeout) for c in open_now), return_exceptions=True)

    async def close(self) -> None:
        """Drain, flush the writer(s), close storage, stop the brain process."""
        await self.drain()
        await self.decision_writer.aclose()
        await self.outcome_writer.aclose()
        await asyncio.to_thread(self.storage.close)
        if self._rebuilding is not None:
            self._rebuilding.cancel()
        if self.brain_host is not None:
            self.brain_host.close()

    # --- games ------------------------------------------------------------------------------

    def choose_bundle(self, boss_actions: Sequence[str], policy: str | None) -> Bundle:
        """The loaded bundle serving these boss actions (named ``policy`` if given)."""
        serving = [b for b in self.bundles if b.serves(boss_actions)]
        if policy is not None:
            serving = [b for b in serving
                       if policy in (b.manifest.name, b.manifest.policy_version)]
        if serving:
            return serving[0]
        loaded = "; ".join(f"{b.manifest.name} ({b.manifest.policy_version}) serves "
                           f"boss_actions [{', '.join(b.manifest.vocabulary['boss_actions'])}]"
                           for b in self.bundles) or "none"
        wanted = f"policy {policy!r} with " if policy else ""
        raise NotServable(f"no loaded bundle serves {wanted}boss_actions "
                          f"[{', '.join(boss_actions)}]. Loaded bundles: {loaded}. Register with "
                          "the boss_actions of a loaded bundle, or start the server with "
                          "--bundle PATH of a bundle exported for your game.")

    def _runtime(self, record: GameRecord, bundle: Bundle) -> GameRuntime:
        brain, terms = new_game_brain(record, bundle, self.new_brain)
        return GameRuntime(record, bundle, brain, terms, Sessions(brain.boss_actions))

    def game(self, game_id: str) -> GameRuntime:
        """The served game; raises :class:`Unavailable` if it is registered but not served,
        :class:`UnknownGame` if it is not registered."""
        game = self.games.get(game_id)
        if game is not None:
            return game
        if game_id in self.unserved:
            raise Unavailable(f"game {game_id!r} is registered but not served: "
                              f"{self.unserved[game_id]}")
        raise UnknownGame(f"game {game_id!r} is not registered: register it with POST "
                          "/api/v1/games/register")

    async def register(self, request: RegisterRequest) -> dict[str, Any]:
        """Register a game; raises :class:`NotServable` or ``GameExists``."""
        bundle = self.choose_bundle(request.vocabulary.boss_actions, request.policy)
        if request.game_id in self.games or request.game_id in self.unserved:
            raise GameExists(f"game {request.game_id!r} is already registered: pick another "
                             "game_id, or get a token with POST /api/v1/games/{game_id}/token")
        api_key = new_api_key()
        hashed = await asyncio.to_thread(hash_api_key, api_key)
        defaults = bundle.manifest.vocabulary
        vocabulary = {name: getattr(request.vocabulary, name) or list(defaults[name])
                      for name in ("boss_actions", "action_types", "environments",
                                   "difficulty_levels")}
        record = GameRecord(request.game_id, request.name, request.description, vocabulary,
                            bundle.manifest.name, hashed, time.time())
        await asyncio.to_thread(self.storage.add_game, record)
        self.games[record.game_id] = await asyncio.to_thread(self._runtime, record, bundle)
        token, expires_in = issue_token(record.game_id, self.settings)
        log.info("game %s registered, served by %s", record.game_id,
                 bundle.manifest.policy_version)
        return {"game_id": record.game_id, "api_key": api_key, "access_token": token,
                "token_type": "bearer", "expires_in": expires_in}

    async def new_token(self, game_id: str, api_key: str | None) -> dict[str, Any]:
        """A fresh access token for the holder of the game's API key; raises AuthError."""
        record = await asyncio.to_thread(self.storage.get_game, game_id)
        if record is None:
            raise AuthError("bad_api_key", f"game {game_id!r} is not registered or the "
                            "X-API-Key is wrong")
        await asyncio.to_thread(check_api_key, api_key, record.api_key_hash)
        token, expires_in = issue_token(game_id, self.settings)
        return {"access_token": token, "token_type": "bearer", "expires_in": expires_in}

    # --- sessions ---------------------------------------------------------------------------

    async def session(self, game: GameRuntime, session_id: str | None) -> Session:
        """The session (a new id when None), recorded in storage once per server run."""
        session = game.sessions.get(session_id or uuid.uuid4().hex)
        if not session.stored:
            try:
                await asyncio.to_thread(self.storage.add_session, game.game_id,
                                        session.session_id)
                session.stored = True
            except StorageUnavailable as error:
                log.warning("session %s not recorded yet: %s", session.session_id, error)
        return session

    # --- decisions --------------------------------------------------------------------------

    async def decide(self, game_id: str, session_id: str, request: BossActionRequest,
                     received: float, request_id: str | None = None) -> dict[str, Any]:
        """Serve one move; the decision is queued for storage, not waited for (module doc)."""
        game = self.game(game_id)
        check_request(request, game.terms, request_id)
        session = await self.session(game, session_id)
        async with session.lock:
            situation = to_situation(request, session.habits.boss_state())
            brain = game.brain  # the one that decides, even if a reload swaps it meanwhile
            decision, key, decide_s = await _decide(game, situation)
            decided = perf_counter()
            action_id = self.action_ids.next(game_id, game.move_codes[decision.move])
            stored_situation = {**situation_json(situation),
                                "habit_counts": session.habits.snapshot()}
            record = DecisionRecord(action_id, game_id, session.session_id, stored_situation,
                                    decision.move, brain.policy_version, time.time())
            await self._store_decision(record, decided)
            session.habits.played(decision.move)
            session.decisions += 1
        game.recent.add(action_id, Issued(situation, decision.move, session.session_id, key))
        latency_ms = (perf_counter() - received) * 1000.0
        self._count_decision(game, decide_s, latency_ms)
        return {
            "action_id": action_id,
            "boss_action": {"boss_action": decision.move, "action_type": decision.action_type,
                            "parameters": dict(decision.parameters)},
            "confidence": round(float(decision.confidence), 6),
            "retrieved": int(decision.retrieved),
            "policy_version": brain.policy_version,
            "latency_ms": round(latency_ms, 3),
        }

    async def _store_decision(self, record: DecisionRecord, decided: float) -> None:
        """Queue the decision for the next group commit. It is answered without waiting for
        the commit (its action_id is recognised without the database, see :class:`ActionIds`),
        except while storage is failing: then it waits, so the game hears ``unavailable``."""
        try:
            future = self.decision_writer.submit_soon(record)
        except RuntimeError as error:  # the writer is closed: the server is stopping
            raise Unavailable("the server is shutting down: nothing was stored; send the "
                              "request again after reconnecting") from error
        future.add_done_callback(lambda done: self._decision_stored(done, decided))
        if self.storage_failing:
            await future

    def _decision_stored(self, future: asyncio.Future[Any], decided: float) -> None:
        """On the event loop, once a decision's commit is over."""
        error = None if future.cancelled() else future.exception()
        self.storage_failing = isinstance(error, StorageUnavailable)
        if error is not None and not self.storage_failing:
            log.error("a decision could not be stored: %s", error)
        self.metrics.store_seconds.observe(perf_counter() - decided)

    def _count_decision(self, game: GameRuntime, decide_s: float, latency_ms: float) -> None:
        self.metrics.decisions.labels(game.game_id).inc()
        self.metrics.decision_seconds.observe(decide_s)
        self.metrics.request_seconds.observe(latency_ms / 1000.0)
        game.latency.add(latency_ms)

    # --- outcomes ---------------------------------------------------------------------------

    async def record_outcome(self, game_id: str, outcome: ActionOutcome,
                             received: float) -> dict[str, Any]:
        """Store an outcome (committed), then learn from it; see the module docstring.
        Raises ``UnknownAction``, ``StorageUnavailable`` or :class:`Unavailable`."""
        game = self.game(game_id)
        record = OutcomeRecord(outcome.action_id, game_id, outcome.outcome,
                               outcome.effectiveness_score, outcome.damage_dealt,
                               outcome.player_hit, outcome.execution_time, time.time())
        try:
            stored = await self._store_outcome(record)
        except UnknownAction:
            stand_in = self._stand_in(game, record)
            if stand_in is None:
                raise
            stored = await self._store_outcome(dataclasses.replace(record, stand_in=stand_in))
        if not stored:
            self.metrics.outcomes.labels(game_id, "duplicate").inc()
            self.metrics.outcome_seconds.observe(perf_counter() - received)
            return {"action_id": outcome.action_id, "duplicate": True,
                    "memory_size": game.brain.memory_size(),
                    "adapted": "nothing: this outcome was already stored"}
        adapted, memory_size = await self._learn(game, outcome)
        self.metrics.outcomes.labels(game_id, "stored").inc()
        self.metrics.outcome_seconds.observe(perf_counter() - received)
        return {"action_id": outcome.action_id, "duplicate": False,
                "memory_size": memory_size, "adapted": adapted}

    async def _store_outcome(self, record: OutcomeRecord) -> bool:
        try:
            future = self.outcome_writer.submit_soon(record)
        except RuntimeError as error:
            raise Unavailable("the server is shutting down: nothing was stored; send the "
                              "outcome again after reconnecting") from error
        return bool(await future)

    def _stand_in(self, game: GameRuntime, outcome: OutcomeRecord) -> DecisionRecord | None:
        """A stand-in for the decision of an action_id this server issued but never stored
        (lost in a crash before its commit); None for an action_id it never issued."""
        move = self.action_ids.issued(game.game_id, outcome.action_id)
        if move is None or move >= len(game.moves):
            return None
        log.warning("outcome for action %s of game %s: its decision was lost before it was "
                    "stored; the outcome is kept with a stand-in decision (not learnt)",
                    outcome.action_id, game.game_id)
        return DecisionRecord(outcome.action_id, game.game_id, LOST_SESSION, {},
                              game.moves[move], STAND_IN_VERSION, outcome.created_at)

    async def _learn(self, game: GameRuntime, outcome: ActionOutcome) -> tuple[str, int]:
        """Teach the brain and the player's profile a newly stored outcome."""
        issued = game.recent.take(outcome.action_id) or await self._stored_decision(
            game, outcome.action_id)
        if issued is None:
            return ("stored; not learnt now: its decision could not be read (the memory learns "
                    "it at the next start unless the decision was lost in a crash)",
                    game.brain.memory_size())
        memory_size = await self._teach(game, issued, outcome.effectiveness_score)
        profile = game.sessions.get(issued.session_id).profile
        record = profile.add_lesson(issued.situation.player, issued.move, outcome.outcome,
                                    outcome.effectiveness_score)
        mean = record.effectiveness
        return (f"memory +1: {issued.move} {outcome.outcome} "
                f"({outcome.effectiveness_score:.2f}); against this player {issued.move} "
                f"averages {mean.mean:.2f} over {mean.count}", memory_size)

    @staticmethod
    async def _teach(game: GameRuntime, issued: Issued, value: float) -> int:
        """The brain learns one stored outcome (batched when it has the key); the memory's
        size after it."""
        brain = game.brain
        lesson = Lesson(issued.situation, issued.move, value, issued.session_id)
        if isinstance(brain, RemoteBrain) and issued.key is None:
            return await brain.learn_soon(lesson)
        if issued.key is None or not isinstance(brain, (MemoryBrain, RemoteBrain)):
            return brain.learn(lesson)
        batch = game.lessons
        if batch is None or batch.learnt.done() or batch.brain is not brain:
            batch = game.lessons = LessonBatch(brain)
        return await batch.add(issued.key, issued.move, value, issued.session_id)

    async def _stored_decision(self, game: GameRuntime, action_id: str) -> Issued | None:
        try:
            record = await asyncio.to_thread(self.storage.get_decision, game.game_id, action_id)
        except StorageUnavailable as error:
            log.warning("decision %s not readable for learning: %s", action_id, error)
            return None
        if record is None or record.policy_version == STAND_IN_VERSION:
            return None
        return Issued(situation_from_json(record.situation), record.move, record.session_id)

    # --- reading ----------------------------------------------------------------------------

    def profile(self, game_id: str, session_id: str) -> dict[str, Any] | None:
        session = self.game(game_id).sessions.find(session_id)
        return None if session is None else session.to_json(game_id)

    async def stats(self, game_id: str) -> dict[str, Any]:
        game = self.game(game_id)
        stored = await asyncio.to_thread(self.storage.stats, game_id)
        return {
            "game_id": game_id,
            "open_sessions": game.sessions.open_count(),
            "actions_served": stored.decisions,
            "outcomes_stored": stored.outcomes,
            "mean_effectiveness": stored.mean_effectiveness,
            "action_mix": stored.action_mix,
            "latency_ms": game.latency.percentiles(),
            "memory_size": game.brain.memory_size(),
            "policy_version": game.brain.policy_version,
        }

    async def health(self) -> dict[str, Any]:
        try:
            await asyncio.wait_for(asyncio.to_thread(self.storage.ping), timeout=3.0)
            storage = "ok"
        except StorageUnavailable as error:
            storage = str(error)
        except TimeoutError:
            storage = "the database did not answer within 3 seconds"
        versions = [b.manifest.policy_version for b in self.bundles]
        healthy = storage == "ok" and bool(versions) and not self.draining
        return {
            "status": "ok" if healthy else "degraded",
            "policy_version": versions[0] if versions else None,
            "policies": versions,
            "memory_size": sum(g.brain.memory_size() for g in self.games.values()),
            "storage": storage,
            "games": len(self.games),
            "open_sockets": self.connection_limit.open,
            "draining": self.draining,
        }


BrainMaker = Callable[[Bundle, str], BossBrain]
"""Makes a fresh brain of a bundle for a game_id (``Service.new_brain``)."""


def new_game_brain(record: GameRecord, bundle: Bundle,
                   make_brain: BrainMaker) -> tuple[BossBrain, GameTerms]:
    """A fresh brain of ``bundle`` for a registered game (seeded by its id), and the game's
    terms (the bundle's vocabulary with the game's own names over it)."""
    manifest = bundle.manifest
    vocabulary = {**manifest.vocabulary,
                  **{k: v for k, v in record.vocabulary.items() if v is not None}}
    terms = game_terms(vocabulary, manifest.observation["names"],
                       manifest.vocabulary["battle_phases"])
    return make_brain(bundle, record.game_id), terms


StoredLessons = list[tuple[DecisionRecord, OutcomeRecord, Situation]]


def stored_lessons(storage: Storage, game_id: str,
                   skip: int = 0) -> tuple[StoredLessons, int]:
    """A game's stored lessons after the first ``skip``, in storage order, with their
    situations, and how many were read: a lesson whose stored situation cannot be read (a
    row changed by hand, a format this server does not know) is logged and left out, so one
    bad row cannot keep the server from starting."""
    rows = list(itertools.islice(storage.lessons(game_id), skip, None))
    lessons = [(decision, outcome, situation) for decision, outcome in rows
               if (situation := _stored_situation(game_id, decision)) is not None]
    return lessons, len(rows)


def _stored_situation(game_id: str, decision: DecisionRecord) -> Situation | None:
    try:
        return situation_from_json(decision.situation)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        log.warning("lesson %s of game %s skipped: its stored situation cannot be read "
                    "(%s: %s)", decision.action_id, game_id, type(error).__name__, error)
        return None


def replay_lessons(storage: Storage, game_id: str, brain: BossBrain, skip: int = 0) -> int:
    """Teach ``brain`` the stored lessons of a game after the first ``skip``, in storage
    order; returns how many were read (a lesson that cannot be read or that the brain refuses
    is logged and skipped)."""
    lessons, read = stored_lessons(storage, game_id, skip)
    teach_all(brain, game_id, lessons)
    return read


REPLAY_CHUNK = 2000
"""Stored lessons sent to the brain process in one call when replaying."""


def teach_all(brain: BossBrain, game_id: str, lessons: StoredLessons) -> list[bool]:
    """:func:`teach` every stored lesson in order (in chunks to a brain process); whether
    each was learnt."""
    if not isinstance(brain, RemoteBrain):
        return [teach(brain, game_id, *lesson) for lesson in lessons]
    learnt: list[bool] = []
    for start in range(0, len(lessons), REPLAY_CHUNK):
        chunk = lessons[start:start + REPLAY_CHUNK]
        _, refused = brain.learn_many([
            Lesson(situation, decision.move, outcome.effectiveness_score, decision.session_id)
            for decision, outcome, situation in chunk])
        for (decision, _, _), error in zip(chunk, refused, strict=True):
            if error is not None:
                log.warning("lesson %s of game %s skipped: %s", decision.action_id, game_id,
                            error)
            learnt.append(error is None)
    return learnt


def teach(brain: BossBrain, game_id: str, decision: DecisionRecord, outcome: OutcomeRecord,
          situation: Situation) -> bool:
    """Teach ``brain`` one stored lesson (a decision and its outcome); a lesson the brain
    refuses is logged and skipped (False)."""
    try:
        brain.learn(Lesson(situation, decision.move, outcome.effectiveness_score,
                           decision.session_id))
    except ValueError as error:
        log.warning("lesson %s of game %s skipped: %s", decision.action_id, game_id, error)
        return False
    return True


async def _decide(game: GameRuntime,
                  situation: Situation) -> tuple[Decision, Key | None, float]:
    """The brain's decision (batched with the turn's others when the brain can), the
    situation's memory key when the brain gives it, and the brain's time in seconds (for a
    batch: the whole batch's; the wait for the end of the turn is not counted)."""
    brain = game.brain
    if not isinstance(brain, (MemoryBrain, RemoteBrain)):
        started = perf_counter()
        return brain.decide(situation), None, perf_counter() - started
    batch = game.decisions
    if batch is None or batch.done or batch.brain is not brain:
        batch = game.decisions = DecisionBatch(brain)
    decision, key = await batch.add(situation)
    return decision, key, batch.seconds


def classify(error: BaseException) -> tuple[str, str]:
    """The protocol error ``(code, message)`` for an exception raised while handling a
    message."""
    if isinstance(error, ProtocolError):
        return error.code, error.message
    if isinstance(error, UnknownAction):
        return "unknown_action", str(error)
    if isinstance(error, (StorageUnavailable, Unavailable, BrainsLost)):
        return "unavailable", str(error)
    return ("internal", f"the server failed to handle this message ({type(error).__name__}); "
            "it was logged. Nothing was stored for it: send it again, and report it if it "
            "persists")
