"""Sessions: one player's fight with a game's boss, and what the server knows about the player.

A :class:`Session` holds

- the boss's **habits** against this player (:class:`HabitCounter`), counted exactly as the
  simulator counts them (``envs/kernel.py``): ``counts[previous + 1][move] += 1`` after every
  move served, row 0 meaning "no move yet"; the brain sees the row of the session's last move
  as shares ``count / (row total + 2)``. Cooldowns and stamina are not known live: the boss
  state leaves cooldowns empty and stamina full.
- the player's **profile** (:class:`PlayerProfile`): running means of the numeric
  ``player_context`` fields, how often each movement style was seen, and which moves worked
  against them (per move: outcomes by kind, mean effectiveness). Like the brain's memory, the
  profile is derived from stored outcomes (each lesson: the decision's context and its
  outcome), so it is rebuilt exactly from storage at start.

Everything here runs on the event loop (no locks needed) except :meth:`Sessions.restore`,
which runs before the server accepts connections.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from envs.observation import BossState, PlayerContext

NUMERIC_CONTEXT = ("dodge_frequency", "reaction_time", "health_percentage", "session_duration",
                   "recent_deaths", "equipment_level")


class HabitCounter:
    """How often the boss followed each move with each move in one session (the kernel's
    ``habits`` and ``habits_total``)."""

    def __init__(self, moves: Sequence[str], counts: Sequence[Sequence[float]] | None = None,
                 last: str | None = None) -> None:
        self.moves = tuple(moves)
        self._index = {move: i for i, move in enumerate(self.moves)}
        size = len(self.moves)
        self.counts = [[0.0] * size for _ in range(size + 1)]
        if counts is not None and len(counts) == size + 1 and all(len(r) == size for r in counts):
            self.counts = [[float(c) for c in row] for row in counts]
        self.last = last if last in self._index else None

    def boss_state(self) -> BossState:
        """The boss state a decision sees: last move and the habits of its row."""
        row = self.counts[self._row()]
        total = sum(row)
        return BossState(last_action=self.last, habits=tuple(c / (total + 2.0) for c in row))

    def played(self, move: str) -> None:
        """Count ``move`` after the last one, and make it the last."""
        self.counts[self._row()][self._index[move]] += 1.0
        self.last = move

    def snapshot(self) -> list[list[float]]:
        return [list(row) for row in self.counts]

    def _row(self) -> int:
        return 0 if self.last is None else self._index[self.last] + 1


@dataclass
class RunningMean:
    count: int = 0
    mean: float = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.mean += (value - self.mean) / self.count


@dataclass
class MoveRecord:
    """How one move fared against a player."""

    outcomes: Counter[str] = field(default_factory=Counter)
    effectiveness: RunningMean = field(default_factory=RunningMean)

    def to_json(self) -> dict[str, Any]:
        return {"outcomes": dict(self.outcomes), "count": self.effectiveness.count,
                "mean_effectiveness": round(self.effectiveness.mean, 6)}


@dataclass
class PlayerProfile:
    """A player's context statistics and the moves that worked against them."""

    context: dict[str, RunningMean] = field(
        default_factory=lambda: {name: RunningMean() for name in NUMERIC_CONTEXT})
    movement_styles: Counter[str] = field(default_factory=Counter)
    moves: dict[str, MoveRecord] = field(default_factory=dict)
    lessons: int = 0

    def add_lesson(self, player: PlayerContext, move: str, outcome: str,
                   effectiveness: float) -> MoveRecord:
        """Count one stored outcome; returns the move's updated record."""
        self.lessons += 1
        for name, mean in self.context.items():
            mean.add(float(getattr(player, name)))
        self.movement_styles[player.movement_style] += 1
        record = self.moves.setdefault(move, MoveRecord())
        record.outcomes[outcome] += 1
        record.effectiveness.add(effectiveness)
        return record

    def to_json(self) -> dict[str, Any]:
        return {
            "lessons": self.lessons,
            "context_means": {name: round(m.mean, 6) for name, m in self.context.items()},
            "movement_styles": dict(self.movement_styles),
            "moves": {move: record.to_json() for move, record in sorted(self.moves.items())},
        }


class Session:
    """One player's fight session of one game."""

    def __init__(self, session_id: str, moves: Sequence[str]) -> None:
        self.session_id = session_id
        self.habits = HabitCounter(moves)
        self.profile = PlayerProfile()
        self.decisions = 0
        """Decisions served in this session since the server started."""
        self.open_sockets = 0
        self.stored = False
        """Whether the session is recorded in storage (done once per server run)."""
        self._lock: asyncio.Lock | None = None
        self._restored_at = -1.0

    @property
    def lock(self) -> asyncio.Lock:
        """Serializes the session's decisions, so habits count moves in order."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def to_json(self, game_id: str) -> dict[str, Any]:
        state = self.habits.boss_state()
        return {"game_id": game_id, "session_id": self.session_id,
                "connected": self.open_sockets > 0, "decisions": self.decisions,
                "last_boss_action": state.last_action,
                "habits": dict(zip(self.habits.moves, state.habits, strict=True)),
                **self.profile.to_json()}


class Sessions:
    """The sessions of one game, by id."""

    def __init__(self, moves: Sequence[str]) -> None:
        self.moves = tuple(moves)
        self._sessions: dict[str, Session] = {}

    def get(self, session_id: str) -> Session:
        """The session (made on first use)."""
        session = self._sessions.get(session_id)
        if session is None:
            session = self._sessions[session_id] = Session(session_id, self.moves)
        return session

    def find(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def __iter__(self) -> Iterator[Session]:
        return iter(self._sessions.values())

    def __len__(self) -> int:
        return len(self._sessions)

    def open_count(self) -> int:
        """Sessions with at least one open socket."""
        return sum(1 for session in self._sessions.values() if session.open_sockets > 0)

    def restore(self, session_id: str, lesson: StoredLesson) -> None:
        """Replay one stored lesson: the profile counts it, and the session's habits become
        those after its decision if it is the latest decision seen for the session."""
        session = self.get(session_id)
        session.stored = True
        session.profile.add_lesson(lesson.player, lesson.move, lesson.outcome,
                                   lesson.effectiveness)
        if lesson.created_at >= session._restored_at and lesson.move in self.moves:
            session.habits = HabitCounter(self.moves, lesson.counts_before, lesson.last_before)
            session.habits.played(lesson.move)
            session._restored_at = lesson.created_at


@dataclass(frozen=True)
class StoredLesson:
    """What a session keeps of one stored decision and its outcome."""

    player: PlayerContext
    move: str
    outcome: str
    effectiveness: float
    counts_before: Sequence[Sequence[float]] | None
    """The session's habit counts when the decision was made (stored with it)."""
    last_before: str | None
    """The session's last move when the decision was made."""
    created_at: float
