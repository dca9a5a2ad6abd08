"""Boss brains for the server: a policy plus an episodic memory that adapts its choices online.

Two implementations of :class:`serving.decisions.BossBrain`:

- :class:`BundleBrain`: an exported bundle's ONNX policy (onnxruntime, CPU, one thread).
- :class:`ScriptedBrain`: a scripted boss of :mod:`envs.bosses` (no network, no training).

Both decide the same way (:meth:`decide`):

1. **Phase.** The request's ``battle_phase`` is one of the game's phase names, or one of the
   protocol's ``early_battle``, ``mid_battle``, ``late_battle``; a game that names its phases
   differently gets them mapped by order: early -> the first phase, late -> the last, mid ->
   the middle one (``round((n - 1) / 2)``, half up: with 2 phases, the second). Anything else
   is a ``ValueError`` naming the phases.
2. **Observation.** ``ObservationLayout.encode_situation`` (the simulator's encoder) of the
   situation, with the session's boss state the web layer fills (habits, last move,
   cooldowns, stamina).
3. **Legal moves.** The moves the game allows in that phase, less those the boss state says
   are still on cooldown (a remaining cooldown fraction > 0) or cost more stamina than the boss
   has (stamina fraction times ``max_stamina``). Every phase has a move with no cooldown and
   no cost, so there is always one; a web layer that tracks neither gets the phase's moves.
4. **Memory.** The numeric embedding of the situation (the player and the fight, not the boss's
   state), the k nearest memories of each move, ``rag.retrieval.retrieval_features``.
5. **Policy preference** per move: the masked softmax of the logits (``actor_critic``), the
   Q-values mapped through ``value_range`` (``q_values``: lo -> 0, hi -> 1, not clipped, so
   values outside the range keep their order), or the scripted boss's choice as
   a one-hot softened by :data:`SCRIPTED_EXPLORATION` (so the memory can steer it away from a
   move that keeps failing). A policy trained with retrieval inputs (``rag=episodic``) gets
   the memory's features appended as ``agents.retrieval.RetrievalVecEnv.augment`` does.
   ``memory_only`` bundles prefer every legal move equally: the memory alone decides.
6. **Blend.** Memory values mapped to 0..1 through ``value_range`` are blended with the
   preference by ``rag.retrieval.blend_values`` (EVA: a move with k close memories weighs
   them by ``1 - lam``; a move without any keeps the policy's preference).
7. **Choice.** Probabilities are the blended preferences renormalized over the legal moves.
   ``actor_critic`` and ``scripted`` draw from them with the brain's seeded generator (how a
   trained boss plays, ``agents.policy.SB3BossPolicy``); ``q_values`` plays the legal argmax
   of the blended values (as ``agents.retrieval.ValueBlendedBoss``). ``confidence`` is the
   chosen move's probability (for ``q_values``: its share of the legal moves' blended values,
   negatives counted as 0), ``retrieved`` the neighbours found for the
   legal moves, ``parameters`` the move's fields in the game definition.

``learn`` stores one memory per outcome: keyed by the situation's embedding, value
``lo + effectiveness * (hi - lo)`` (``value_range``), outcome tag = effectiveness, persona tag
= the session id. A move that keeps failing in a context is then blended toward 0 there and
chosen less.

The server embeds each situation once: :meth:`decide_keyed` returns the decision with the
memory key it searched with, and :meth:`learn_keyed` stores many outcomes by their keys in one
memory write (the memory's per-call cost is several times the cost of one more row).

Threads: ``decide`` and ``learn`` may run concurrently. The memory guards itself; the brain's
generator and the scripted boss (which has its own) are guarded by a lock held only for the
draw; the ONNX session is thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from types import MappingProxyType
from typing import Any

import faiss
import numpy as np
import onnxruntime as ort

from envs.bosses import make_boss
from envs.game import GameDefinition, load_game
from envs.observation import BATTLE_PHASES, BossState, ObservationLayout, Situation
from rag.embedders import NumericContextEmbedder
from rag.memory import EpisodicMemory
from rag.retrieval import RetrievalFeatures, blend_values, retrieval_features
from serving.bundle import (
    Bundle,
    RetrievalSpec,
    ServedIndex,
    empty_memory,
    numeric_embedder_spec,
)
from serving.decisions import Decision, Lesson

Key = np.ndarray
"""A situation's memory key: (dim,) float32, the numeric embedding it is searched by."""

SCRIPTED_EXPLORATION = 0.2
"""Share of a scripted boss's preference spread evenly over the legal moves: its own choice
gets ``1 - 0.2 + 0.2 / legal``. Without it a one-hot choice could never be outweighed by
memories that it keeps failing."""


class GameView:
    """What a brain needs to know of a game: phases, legal moves, move parameters."""

    def __init__(self, game: GameDefinition) -> None:
        self.game = game
        self.layout = ObservationLayout.for_game(game)
        self.moves = game.move_names
        self.phase_names = tuple(phase.name for phase in game.phases)
        self.phase_index = self._phase_index()
        self.allowed = np.array([[m in phase.moves for m in self.moves]
                                 for phase in game.phases], dtype=bool)
        self.free = np.array([spec.cooldown == 0 and spec.stamina_cost == 0
                              for spec in game.moves.values()], dtype=bool)
        self.stamina_cost = np.array([spec.stamina_cost for spec in game.moves.values()])
        self.parameters = tuple(_parameters(game, move) for move in self.moves)
        self.action_types = tuple(spec.action_type for spec in game.moves.values())

    def _phase_index(self) -> dict[str, int]:
        """Requested phase name -> the game's phase index (see the module docstring)."""
        count = len(self.phase_names)
        by_order = {name: int(i * (count - 1) / 2 + 0.5) for i, name in enumerate(BATTLE_PHASES)}
        return {**by_order, **{name: i for i, name in enumerate(self.phase_names)}}

    def phase_of(self, requested: str) -> int:
        index = self.phase_index.get(requested)
        if index is None:
            raise ValueError(f"unknown battle_phase {requested!r}: this game ({self.game.name}) "
                             f"has phases {', '.join(self.phase_names)}; "
                             f"{', '.join(BATTLE_PHASES)} are also accepted (mapped by order).")
        return index

    def in_game_terms(self, situation: Situation) -> tuple[Situation, int]:
        """The situation with its phase named as the game names it, and the phase's index."""
        phase = self.phase_of(situation.battle_phase)
        name = self.phase_names[phase]
        if name != situation.battle_phase:
            situation = replace(situation, battle_phase=name)
        return situation, phase

    def legal(self, phase: int, boss: BossState) -> np.ndarray:
        """(moves,) bool: allowed in the phase, off cooldown, affordable (see module doc)."""
        legal = self.allowed[phase].copy()
        if boss.cooldowns:
            legal &= np.asarray(boss.cooldowns, dtype=float) <= 0.0
        stamina = boss.stamina * self.game.boss.max_stamina
        legal &= self.stamina_cost <= stamina + 1e-9
        if not legal.any():
            legal = self.allowed[phase] & self.free
        return legal

    def move_index(self, move: str) -> int:
        if move not in self.moves:
            raise ValueError(f"unknown move {move!r}: this game's moves are "
                             f"{', '.join(self.moves)}.")
        return self.moves.index(move)


def _parameters(game: GameDefinition, move: str) -> Mapping[str, Any]:
    """The move's fields in the game definition (its free-form parameters merged in), frozen."""
    fields = asdict(game.moves[move])
    fields.pop("action_type")
    free_form = fields.pop("parameters")
    return MappingProxyType({**free_form, **fields})


class MemoryReader:
    """The episodic memory of one brain: reading features, blending, writing lessons."""

    def __init__(self, memory: EpisodicMemory, layout: ObservationLayout,
                 spec: RetrievalSpec) -> None:
        self.memory = memory
        self.spec = spec
        self.embedder = NumericContextEmbedder(layout, spec.embedder.get("feature_weights"))
        if memory.config.dim != self.embedder.dim or memory.config.moves != len(layout.moves):
            raise ValueError(f"the memory has keys of dim {memory.config.dim} for "
                             f"{memory.config.moves} moves; this game's numeric embedder makes "
                             f"dim {self.embedder.dim} for {len(layout.moves)} moves.")
        self.lo, self.hi = spec.value_range
        self._threads = threading.local()

    def keys(self, observations: np.ndarray) -> np.ndarray:
        """(n, dim) memory keys of (n, size) encoded observations."""
        return self.embedder.embed(observations)

    def features(self, keys: np.ndarray) -> RetrievalFeatures:
        """What the k nearest memories of each move say about each of (n, dim) keys."""
        if not getattr(self._threads, "faiss_single", False):
            faiss.omp_set_num_threads(1)  # per thread: a few queries at a time need no pool
            self._threads.faiss_single = True
        hits = self.memory.search(keys, self.spec.k)
        return retrieval_features(hits, delta=self.spec.delta,
                                  distance_scale=self.spec.distance_scale)

    def input_rows(self, features: RetrievalFeatures) -> np.ndarray:
        """Features as a network's extra inputs, as ``agents.retrieval.feature_rows`` makes them."""
        stacked = features.as_array()
        stacked[..., 0] = np.clip(stacked[..., 0], -self.spec.value_clip, self.spec.value_clip)
        return stacked.reshape(len(stacked), -1)

    def scaled(self, values: np.ndarray) -> np.ndarray:
        """Values in the memory's units mapped through ``value_range`` (lo -> 0, hi -> 1)."""
        return (values - self.lo) / (self.hi - self.lo)

    def to_unit(self, values: np.ndarray) -> np.ndarray:
        """Values in the memory's units mapped to 0..1 through ``value_range``, clipped."""
        return np.clip(self.scaled(values), 0.0, 1.0)

    def blend(self, preference: np.ndarray, features: RetrievalFeatures) -> np.ndarray:
        """``rag.retrieval.blend_values`` of (n, moves) preferences with the memory's values."""
        memory = self.to_unit(features.values.astype(np.float64))
        return blend_values(preference, memory, features.counts, features.distances,
                            lam=self.spec.lam, k=self.spec.k)

    def learn(self, keys: Sequence[Key] | np.ndarray, moves: Sequence[int],
              effectiveness: Sequence[float], session_ids: Sequence[str]) -> int:
        """Store outcomes (one memory write; ``keys`` as rows or one (n, dim) array); returns
        the memory's size after it."""
        for value in effectiveness:
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"lesson value {value} must be an effectiveness in 0..1.")
        scores = np.asarray(effectiveness, dtype=np.float64)
        rows = keys if isinstance(keys, np.ndarray) else np.stack(keys)
        self.memory.add(rows, list(moves), self.lo + scores * (self.hi - self.lo),
                        outcomes=scores, personas=list(session_ids), times=time.time())
        return len(self.memory)


class MemoryBrain:
    """What both brains share: the game, the memory, the choice. Subclasses score moves."""

    sample = True
    """Draw the move from the blended probabilities (else play the argmax)."""

    def __init__(self, game: GameDefinition, memory: EpisodicMemory, retrieval: RetrievalSpec,
                 policy_version: str, seed: int) -> None:
        self.view = GameView(game)
        self.reader = MemoryReader(memory, self.view.layout, retrieval)
        self.policy_version = policy_version
        self.boss_actions: Sequence[str] = self.view.moves
        self.memory_only = retrieval.mode == "memory_only"
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()

    def decide(self, situation: Situation) -> Decision:
        """One boss move for ``situation`` (see the module docstring for how)."""
        return self.decide_many([situation])[0][0]

    def decide_keyed(self, situation: Situation) -> tuple[Decision, Key]:
        """:meth:`decide`, and the situation's memory key (for :meth:`learn_keyed`)."""
        return self.decide_many([situation])[0]

    def decide_many(self, situations: Sequence[Situation]) -> list[tuple[Decision, Key]]:
        """:meth:`decide_keyed` for several situations at once, as if one by one in order:
        one embedding, one memory search and one policy call for all of them (their fixed
        costs dominate a single decision). A bad situation fails the whole call."""
        in_terms = [self.view.in_game_terms(situation) for situation in situations]
        observations = np.stack([self.view.layout.encode_situation(situation)
                                 for situation, _ in in_terms])
        legal = np.stack([self.view.legal(phase, situation.boss)
                          for situation, phase in in_terms])
        keys = self.reader.keys(observations)
        features = self.reader.features(keys)
        if self.memory_only:
            preference = legal.astype(np.float64) * 0.5
        else:
            preference = self.preference(observations, features, legal)
        blended = self.reader.blend(preference, features)
        retrieved = np.where(legal, features.counts, 0).sum(axis=1)
        return [(self._choose(blended[row], legal[row], int(retrieved[row])), keys[row])
                for row in range(len(situations))]

    def _choose(self, blended: np.ndarray, legal: np.ndarray, retrieved: int) -> Decision:
        """The move of one situation from its blended (moves,) values (module doc, step 7)."""
        probabilities = _renormalized(blended, legal)
        move = self._draw(probabilities) if self.sample else _legal_argmax(blended, legal)
        return Decision(move=self.view.moves[move], action_type=self.view.action_types[move],
                        parameters=dict(self.view.parameters[move]),
                        confidence=float(probabilities[move]), retrieved=retrieved)

    def preference(self, observations: np.ndarray, features: RetrievalFeatures,
                   legal: np.ndarray) -> np.ndarray:
        """(n, moves) float64 in 0..1: how much the policy prefers each move."""
        raise NotImplementedError

    def _draw(self, probabilities: np.ndarray) -> int:
        """A move drawn with ``probabilities`` (zero for illegal moves), seeded."""
        with self._lock:
            draw = self._rng.random()
        chosen = int(np.searchsorted(np.cumsum(probabilities), draw, side="right"))
        if chosen >= len(probabilities) or probabilities[chosen] <= 0.0:
            return int(probabilities.argmax())  # rounding past the last legal move
        return chosen

    def learn(self, lesson: Lesson) -> int:
        """Store the outcome in the memory; returns the memory's size after it."""
        return self.learn_keyed([self.key_of(lesson.situation)], [lesson.move],
                                [float(lesson.value)], [lesson.session_id])

    def key_of(self, situation: Situation) -> Key:
        """The memory key :meth:`decide_keyed` gives for ``situation``."""
        situation, _ = self.view.in_game_terms(situation)
        return self.reader.keys(self.view.layout.encode_situation(situation)[np.newaxis])[0]

    def learn_keyed(self, keys: Sequence[Key] | np.ndarray, moves: Sequence[str],
                    values: Sequence[float], session_ids: Sequence[str]) -> int:
        """Store several outcomes at once by their situations' keys (as :meth:`learn` does one
        by one, in order); returns the memory's size after them. A bad move or value raises
        ``ValueError`` and stores none of them."""
        indexes = [self.view.move_index(move) for move in moves]
        return self.reader.learn(keys, indexes, values, session_ids)

    def memory_size(self) -> int:
        return len(self.reader.memory)


def _legal_argmax(values: np.ndarray, legal: np.ndarray) -> int:
    return int(np.where(legal, values, -np.inf).argmax())


def _renormalized(blended: np.ndarray, legal: np.ndarray) -> np.ndarray:
    """Blended preferences as probabilities over the legal moves (uniform if all are 0)."""
    weights = np.where(legal, np.maximum(blended, 0.0), 0.0)
    total = weights.sum()
    if total <= 0.0:
        return legal / legal.sum()
    return weights / total


class ScriptedBrain(MemoryBrain):
    """A scripted boss (``envs.bosses``: random, rotation, reactive) with the episodic memory.

    ``ScriptedBrain("duel")`` needs nothing else: an empty memory, default blending.
    """

    def __init__(self, game: str | GameDefinition = "duel", boss: str = "reactive", *,
                 memory: EpisodicMemory | None = None, retrieval: RetrievalSpec | None = None,
                 policy_version: str | None = None, seed: int = 0) -> None:
        definition = load_game(game)
        spec = retrieval or RetrievalSpec(embedder=numeric_embedder_spec(definition))
        if memory is None:  # not `or`: an empty memory is falsy, and its config is wanted
            memory = empty_memory(definition, spec.embedder)
        super().__init__(definition, memory, spec, policy_version or f"scripted-{boss}", seed)
        self.boss = make_boss(boss, definition, seed=seed)

    def preference(self, observations: np.ndarray, features: RetrievalFeatures,
                   legal: np.ndarray) -> np.ndarray:
        with self._lock:  # scripted bosses draw from their own generator
            choices = self.boss.select_moves(observations, legal)
        preference = legal * (SCRIPTED_EXPLORATION / legal.sum(axis=1, keepdims=True))
        preference[np.arange(len(legal)), choices] += 1.0 - SCRIPTED_EXPLORATION
        return preference


class BundleBrain(MemoryBrain):
    """An exported bundle's ONNX policy (``actor_critic`` or ``q_values``) with its memory."""

    def __init__(self, bundle: Bundle, seed: int = 0,
                 memory: EpisodicMemory | None = None) -> None:
        manifest = bundle.manifest
        if manifest.policy.kind == "scripted" or bundle.policy is None:
            raise ValueError(f"{bundle.path}: a scripted bundle has no network; use "
                             f"bundle.new_brain() (a ScriptedBrain).")
        own = memory if memory is not None else bundle.memory_copy()
        super().__init__(bundle.game, own, manifest.retrieval, manifest.policy_version, seed)
        self.kind = manifest.policy.kind
        self.sample = self.kind == "actor_critic"
        self.retrieval_inputs = manifest.policy.retrieval_inputs
        try:
            self.session = onnx_session(bundle.policy)
        except Exception as error:  # onnxruntime's own exception types (InvalidProtobuf, Fail)
            raise ValueError(f"{bundle.path}: {manifest.policy.file} is not a loadable ONNX "
                             f"model ({error}). Fix: export the bundle again.") from error
        self._check_io(manifest.policy.input_size, bundle)

    def _check_io(self, input_size: int, bundle: Bundle) -> None:
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if inputs.get("observation", [None, None])[-1] != input_size or "scores" not in outputs:
            raise ValueError(f"{bundle.path}: the ONNX policy takes {inputs} and outputs "
                             f"{sorted(outputs)}; the manifest needs input 'observation' of "
                             f"width {input_size} and output 'scores'. Fix: export the bundle "
                             f"again.")

    def preference(self, observations: np.ndarray, features: RetrievalFeatures,
                   legal: np.ndarray) -> np.ndarray:
        rows = observations
        if self.retrieval_inputs:
            rows = np.concatenate([rows, self.reader.input_rows(features)], axis=1)
        scores = self.session.run(["scores"], {"observation": rows.astype(np.float32)})[0]
        scores = scores.astype(np.float64)
        if self.kind == "q_values":  # in value_range units, unclipped: argmax keeps its order
            return np.where(legal, self.reader.scaled(scores), 0.0)
        logits = np.where(legal, scores, -np.inf)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)


def onnx_session(model: str | bytes) -> ort.InferenceSession:
    """An onnxruntime session on the CPU with one thread (decisions come one at a time)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def brain_for(bundle: Bundle, seed: int = 0,
              memory_index: ServedIndex = "bundle") -> MemoryBrain:
    """The brain a bundle's policy kind needs, with its own copy of the memory snapshot
    (indexed as ``Bundle.memory_copy`` says)."""
    manifest = bundle.manifest
    memory = bundle.memory_copy(memory_index)
    if manifest.policy.kind == "scripted":
        assert manifest.policy.scripted is not None  # read_manifest checks it
        return ScriptedBrain(bundle.game, manifest.policy.scripted, memory=memory,
                             retrieval=manifest.retrieval,
                             policy_version=manifest.policy_version, seed=seed)
    return BundleBrain(bundle, seed=seed, memory=memory)


__all__ = ["SCRIPTED_EXPLORATION", "BundleBrain", "GameView", "Key", "MemoryBrain",
           "MemoryReader", "ScriptedBrain", "brain_for", "onnx_session"]
