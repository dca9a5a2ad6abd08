"""The ``rag`` config group: whether a boss uses an episodic memory, and how.

``rag.mode`` picks the route (:mod:`agents.retrieval` has the designs):

============  ============================================================================
mode          what trains and what plays
============  ============================================================================
none          no memory (the default)
episodic      retrieval features as extra inputs: any agent trains on
              :class:`~agents.retrieval.RetrievalVecEnv`; plays as RetrievalPolicyBoss
blend         EVA value blending: a DQN trains on raw observations; plays as
              ValueBlendedBoss (Q = lam_eff * Q_learned + (1 - lam_eff) * Q_memory)
memory_only   MFEC: the memory alone decides (the agent trained only fills the memory)
============  ============================================================================

In every mode but ``none`` the memory is written while training (episode ends, with the
values of ``returns``/``gamma``/``n``) and while the boss plays afterwards (online adaptation, no
gradient steps). ``returns=effect`` stores each move's effect on the HP margin instead of a
return; the blend and memory-only bosses then steer it by the player's recent win rate
(:class:`agents.retrieval.Steering`: effective moves when the player wins more than the level's
target, gentle ones when less). ``k``, ``lam`` (EVA's lambda), ``capacity``, ``index`` and
``embedder`` are the knobs; see :class:`rag.memory.MemoryConfig` and
:class:`rag.embedders.EmbedderConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm

from agents.retrieval import (
    MemoryOnlyBoss,
    RetrievalConfig,
    RetrievalPolicyBoss,
    Steering,
    ValueBlendedBoss,
    dqn_q_values,
)
from envs.bosses import BossPolicy
from envs.observation import ObservationLayout
from rag.embedders import Embedder, EmbedderConfig, make_embedder
from rag.memory import INDEX_KINDS, EpisodicMemory, MemoryConfig

RAG_MODES = ("none", "episodic", "blend", "memory_only")
"""The options of ``rag.mode`` (see the module docstring)."""


@dataclass
class RagConfig:
    """The schema of the ``rag`` config group."""

    mode: str = "none"
    """One of RAG_MODES: none, episodic (extra inputs), blend (EVA, DQN only), memory_only."""
    k: int = 8
    """Neighbours read per move."""
    lam: float = 0.5
    """EVA's lambda (``lambda`` is a Python keyword): the learned value's weight when the
    memory has k neighbours at distance 0; it rises toward 1 as they get fewer or farther."""
    capacity: int = 20_000
    """Most memories kept (all moves together); the oldest go first."""
    index: str = "exact"
    """FAISS index per move: exact, ivf or hnsw (rag.memory)."""
    gamma: float = 0.99
    """Discount of the stored returns."""
    returns: str = "monte_carlo"
    """Stored values: monte_carlo (the return to the fight's end), n_step (of the next n
    rewards) or effect (the next n exchanges' changes of the HP margin, steered when read)."""
    n: int = 10
    """n_step and effect: rewards (margin changes) per value."""
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    """How memory keys are made from the player context (numeric by default: no network)."""

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def retrieval(self) -> RetrievalConfig:
        return RetrievalConfig(k=self.k, lam=self.lam, gamma=self.gamma,
                               returns=self.returns, n=self.n)  # type: ignore[arg-type]

    def validate(self, algo: str) -> None:
        """Raise ValueError naming the key, the allowed values and the fix."""
        if self.mode not in RAG_MODES:
            raise ValueError(f"rag.mode={self.mode!r} is unknown: use one of "
                             f"{', '.join(RAG_MODES)} (e.g. rag=episodic).")
        if self.index not in INDEX_KINDS:
            raise ValueError(f"rag.index={self.index!r} is unknown: use one of "
                             f"{', '.join(INDEX_KINDS)}.")
        if self.mode == "blend" and algo != "dqn":
            raise ValueError(f"rag=blend blends learned Q-values with the memory's, so it "
                             f"needs agent=dqn (got agent={algo}); for {algo} use rag=episodic.")
        if self.capacity < 1:
            raise ValueError(f"rag.capacity must be >= 1, got {self.capacity}.")
        self.retrieval()  # checks k, lam, gamma, returns, n


def new_memory(rag: RagConfig, layout: ObservationLayout) -> tuple[EpisodicMemory, Embedder]:
    """An empty memory for the game of ``layout``, and the embedder that makes its keys."""
    embedder = make_embedder(rag.embedder, layout)
    config = MemoryConfig(dim=embedder.dim, moves=len(layout.moves), capacity=rag.capacity,
                          index=rag.index)  # type: ignore[arg-type]
    return EpisodicMemory(config), embedder


def memory_boss(rag: RagConfig, model: BaseAlgorithm, memory: EpisodicMemory,
                embedder: Embedder, layout: ObservationLayout, *, name: str,
                seed: int, steering: Steering | None = None) -> BossPolicy:
    """The boss of ``rag.mode`` (not none): it reads ``memory`` and keeps writing it.

    ``steering`` (``Steering.for_game(game)``) gives the blend and memory-only bosses the
    game's win-rate bands when ``rag.returns=effect``; None: 0.5 ± 0.1 at every level.
    """
    common: dict[str, Any] = {"config": rag.retrieval(), "name": name, "layout": layout,
                              "persona_names": ()}  # play_fights passes persona names
    if rag.mode == "episodic":
        return RetrievalPolicyBoss(model, memory, embedder, seed=seed, **common)
    if rag.mode == "blend":
        return ValueBlendedBoss(dqn_q_values(model), memory, embedder, steering=steering,
                                **common)
    if rag.mode == "memory_only":
        return MemoryOnlyBoss(memory, embedder, seed=seed, steering=steering, **common)
    raise ValueError(f"rag.mode={rag.mode!r} has no memory boss: use one of "
                     f"{', '.join(RAG_MODES[1:])}.")
