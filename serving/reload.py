"""Hot reload: serve a new policy bundle without dropping a connection.

:func:`reload_bundle` (``POST /api/v1/admin/bundles``, :mod:`serving.routers.admin`):

1. **Load** the bundle (``serving.bundle.load_bundle``, in a worker thread). A bundle that does
   not load is :class:`BundleRefused` with the loader's message; nothing changes.
2. **Choose the games** it serves: every served game whose ``boss_actions`` the bundle serves
   (``Bundle.serves``). A game whose moves the bundle orders differently is skipped and said
   so: its sessions count the boss's habits in the old order.
3. **Build their brains** (in a worker thread, while the old brains keep serving): a fresh
   brain from the new bundle per game, its memory the bundle's snapshot plus every stored
   lesson of the game replayed, as ``Service.start`` does at startup, then the lessons stored
   while that replay ran (up to :data:`CATCH_UP_ROUNDS` more passes).
4. **Swap** (on the event loop, in one step): each game's runtime keeps its identity, its
   sessions (ids, habits, profiles) and every open socket; its ``brain``, ``bundle`` and
   ``terms`` are replaced, and its recent decisions are dropped, so outcomes of decisions the
   old brain served are read back from storage and learnt by the new brain with its own keys.
   The new bundle replaces the loaded bundles with the same ``boss_actions`` in
   ``Service.bundles`` (at the first one's place, so ``/api/v1/health`` reports it when it
   replaces the first), or is added after them when it serves new ones.
5. **Announce**: every open socket of a swapped game gets a ``status`` message (session_id,
   game_id, the new policy_version, server_time).

Decisions already being decided finish on the old brain (a decision batch keeps its brain);
later ones use the new brain. Outcomes of decisions the old version served are accepted and
stored as always. An outcome stored between the last replay and the swap is learnt by the old
brain only; the new brain learns it at the next start (the memory is derived from storage).

A reload lives in memory: a restarted server serves its ``--bundle`` paths again. Reloads of
one server run one at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from weakref import WeakKeyDictionary

from serving.brain_host import RemoteBrain
from serving.bundle import Bundle, load_bundle
from serving.decisions import BossBrain
from serving.protocol import GameTerms, server_time
from serving.service import (
    BrainMaker,
    GameRuntime,
    RecentDecisions,
    Service,
    new_game_brain,
    replay_lessons,
)
from serving.storage import Storage

log = logging.getLogger("serving.reload")

CATCH_UP_ROUNDS = 3
"""Replays of the lessons stored while the previous replay ran (each one shorter)."""


class BundleRefused(ValueError):  # noqa: N818 (reads as the answer: 422 bundle refused)
    """The bundle cannot be loaded; nothing changed."""


@dataclass(frozen=True)
class ReloadReport:
    """What a reload changed."""

    policy_version: str
    """The new bundle's policy_version."""
    name: str
    """The new bundle's name."""
    path: str
    """Where it was loaded from (on the server's disk)."""
    games: tuple[str, ...]
    """The games now served by it."""
    skipped: Mapping[str, str]
    """Games whose boss_actions it serves but which keep their brain -> why."""
    replaced: tuple[str, ...]
    """policy_versions of the bundles it replaced in the server's list."""
    notified: int
    """Open sockets that were sent the ``status`` with the new policy_version."""
    memory_sizes: Mapping[str, int]
    """Memory entries of each swapped game's new brain (snapshot plus replayed lessons)."""


@dataclass(frozen=True)
class FreshBrain:
    """A game's new brain, built while its old one kept serving."""

    brain: BossBrain
    terms: GameTerms
    lessons: int
    """Stored lessons replayed into it."""


@runtime_checkable
class StatusSocket(Protocol):
    """An open socket the reload can announce the new policy to (``routers.ws.Connection``)."""

    game: GameRuntime
    session_id: str

    async def send(self, kind: str, data: dict[str, Any],
                   request_id: str | None = None) -> bool: ...


_locks: WeakKeyDictionary[Service, asyncio.Lock] = WeakKeyDictionary()


def _lock(service: Service) -> asyncio.Lock:
    """One reload at a time per server."""
    lock = _locks.get(service)
    if lock is None:
        lock = _locks[service] = asyncio.Lock()
    return lock


async def reload_bundle(service: Service, path: str | Path) -> ReloadReport:
    """Serve the bundle at ``path`` (see the module docstring). Raises :class:`BundleRefused`
    for a bundle that does not load, ``StorageUnavailable`` when the lessons cannot be read
    (in both cases nothing changes)."""
    async with _lock(service):
        bundle = await asyncio.to_thread(_load, path)
        targets, skipped = choose_games(service, bundle)
        fresh = await asyncio.to_thread(build_brains, service.storage, bundle, targets,
                                        service.new_brain)
        replaced = install(service, bundle, fresh)
        notified = await announce(service, tuple(fresh))
    manifest = bundle.manifest
    log.info("bundle %s (%s) loaded from %s: serves games %s (skipped %s), replaced %s, "
             "%d socket(s) notified", manifest.name, manifest.policy_version, path,
             ", ".join(fresh) or "none", dict(skipped) or "none", ", ".join(replaced) or "none",
             notified)
    return ReloadReport(manifest.policy_version, manifest.name, str(bundle.path), tuple(fresh),
                        skipped, replaced, notified,
                        {game_id: item.brain.memory_size() for game_id, item in fresh.items()})


def _load(path: str | Path) -> Bundle:
    try:
        return load_bundle(path)
    except ValueError as error:
        raise BundleRefused(f"the bundle was not loaded and nothing changed: {error}") from error


def choose_games(service: Service,
                 bundle: Bundle) -> tuple[dict[str, GameRuntime], dict[str, str]]:
    """The served games the bundle takes over, and those it serves but skips (-> why)."""
    moves = tuple(bundle.game.move_names)
    targets: dict[str, GameRuntime] = {}
    skipped: dict[str, str] = {}
    for game_id, game in service.games.items():
        if not bundle.serves(game.record.vocabulary["boss_actions"]):
            continue
        if tuple(game.brain.boss_actions) != moves:
            skipped[game_id] = (f"the bundle orders the moves {list(moves)}, the game's brain "
                                f"{list(game.brain.boss_actions)}: restart the server with "
                                "--bundle to serve it")
            continue
        targets[game_id] = game
    return targets, skipped


def build_brains(storage: Storage, bundle: Bundle, targets: Mapping[str, GameRuntime],
                 make_brain: BrainMaker) -> dict[str, FreshBrain]:
    """A fresh brain per game with its stored lessons replayed (blocking: a worker thread)."""
    return {game_id: FreshBrain(*_brain_for(storage, bundle, game, make_brain))
            for game_id, game in targets.items()}


def _brain_for(storage: Storage, bundle: Bundle, game: GameRuntime,
               make_brain: BrainMaker) -> tuple[BossBrain, GameTerms, int]:
    brain, terms = new_game_brain(game.record, bundle, make_brain)
    replayed = 0
    for _ in range(1 + CATCH_UP_ROUNDS):
        added = replay_lessons(storage, game.game_id, brain, skip=replayed)
        replayed += added
        if added == 0:
            break
    return brain, terms, replayed


def install(service: Service, bundle: Bundle, fresh: Mapping[str, FreshBrain]) -> tuple[str, ...]:
    """Swap the games' brains and the server's bundle list (synchronous: one step of the
    event loop); returns the policy_versions of the bundles replaced."""
    for game_id, item in fresh.items():
        game = service.games[game_id]
        if isinstance(game.brain, RemoteBrain):
            game.brain.drop()
        game.bundle, game.brain, game.terms = bundle, item.brain, item.terms
        game.decisions = game.lessons = None
        game.recent = RecentDecisions()
    return _replace_bundle(service, bundle)


def _replace_bundle(service: Service, bundle: Bundle) -> tuple[str, ...]:
    """Put ``bundle`` in the place of the first loaded bundle with its boss_actions (dropping
    the others with them), or last; returns the policy_versions it replaced."""
    actions = bundle.manifest.vocabulary["boss_actions"]
    replaced = [b.manifest.policy_version for b in service.bundles if b.serves(actions)]
    updated: list[Bundle] = []
    for loaded in service.bundles:
        if not loaded.serves(actions):
            updated.append(loaded)
        elif bundle not in updated:
            updated.append(bundle)
    if bundle not in updated:
        updated.append(bundle)
    service.bundles[:] = updated
    return tuple(replaced)


async def announce(service: Service, game_ids: Sequence[str]) -> int:
    """Send every open socket of ``game_ids`` a ``status`` with its game's policy_version;
    returns how many were sent."""
    wanted = set(game_ids)
    sockets = [c for c in list(service.connections) if isinstance(c, StatusSocket)
               and c.session_id and c.game.game_id in wanted]
    sent = await asyncio.gather(*(_status(socket) for socket in sockets))
    return sum(bool(ok) for ok in sent)


async def _status(socket: StatusSocket) -> bool:
    return await socket.send("status", {"session_id": socket.session_id,
                                        "game_id": socket.game.game_id,
                                        "policy_version": socket.game.brain.policy_version,
                                        "server_time": server_time()})
