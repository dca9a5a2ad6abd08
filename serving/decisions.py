"""What the server asks of a boss policy: the one boundary between the web layer and the brain.

The web layer (``serving.main`` and its routers) turns a ``boss_action_request`` into an
:class:`envs.observation.Situation` (the protocol's request plus the session's boss state) and
asks a :class:`BossBrain` for a :class:`Decision`; when the game reports how the move went, the
stored outcome becomes a :class:`Lesson` the brain learns from (its episodic memory), with no
gradient steps. At start the server replays every stored lesson (``learn`` in order), so a
restart loses nothing learned.

Implementations: ``serving.brain.BundleBrain`` (an exported bundle: ONNX policy + memory) and
``serving.brain.ScriptedBrain`` (a scripted boss with the same memory, for development and
tests while no bundle is at hand).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

from envs.observation import Situation


class Decision(NamedTuple):
    """One boss move chosen for a situation (``boss_action_response`` data, less the ids)."""

    move: str
    """A name from the game's ``boss_actions``."""
    action_type: str
    """The move's type (``action_types`` of the vocabulary)."""
    parameters: Mapping[str, Any]
    """What the game needs to play the move (damage, wind-up, reach...)."""
    confidence: float
    """How strongly the policy preferred this move, 0..1."""
    retrieved: int
    """How many memories informed the decision."""


class Lesson(NamedTuple):
    """A stored outcome of a decision: what the brain learns from."""

    situation: Situation
    """The situation the decision was made in (its memory key)."""
    move: str
    """The move that was played."""
    value: float
    """How well it went for the boss, 0..1 (``effectiveness_score`` of the outcome)."""
    session_id: str
    """The player's session, for the per-player profile."""


@runtime_checkable
class BossBrain(Protocol):
    """Picks boss moves for one game definition and learns from their outcomes.

    Thread-safe: ``decide`` may run concurrently with ``learn`` (the memory guards itself).
    """

    policy_version: str
    """Names the policy that decides (``manifest.json``'s ``policy_version``)."""
    boss_actions: Sequence[str]
    """The move names it serves, in the game's order."""

    def decide(self, situation: Situation) -> Decision: ...

    def learn(self, lesson: Lesson) -> int:
        """Add an outcome to the memory; returns the memory's size after it."""
        ...

    def memory_size(self) -> int: ...
