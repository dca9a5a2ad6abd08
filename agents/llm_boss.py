"""The LLM boss: a chat model picks the boss's moves, the baseline of the original prototypes.

For every decision (one observation row) :class:`LLMBoss` asks an OpenAI-compatible chat model
for one move, through the official ``openai`` client, against OpenAI or any compatible
``base_url`` (vLLM, Ollama, LM Studio, a test stub on loopback).

## The prompt (:func:`agents.llm_prompt.build_prompt`)
Two messages:

- system (the same for every decision of a game, :func:`system_prompt`): who the boss is, the
  goal (:attr:`LLMConfig.goal`), and the game's vocabulary from its
  :class:`~envs.game.GameDefinition`: every move with its action type, damage, reach,
  telegraph (wind-up), active and recovery seconds, cooldown, stamina cost and special traits;
  the phases with the HP at which they start, their moves and multipliers; the arenas; the
  difficulty levels with the designer's targets; and the answer format.
- user (:func:`user_prompt`): the player context and the fight state, read back from the
  observation row (:func:`situation_from_observation`: the layout's one-hots and scales
  inverted, the player part through :func:`envs.fights.observed_player`), rounded so that
  nearby situations share a prompt (and a cache entry); the moves that are legal right now
  (the action mask); and, when a memory is given, the ``neighbours`` nearest past decisions of
  any move (``EpisodicMemory.search_any`` on the embedder's key) with the move, the return that
  followed and the fight's outcome, nearest first, plus their mean return per move.

The model is asked for ``{"move": "<legal move>", "reason": "<short>"}``.

## The answer (:func:`parse_move`)
Parsed leniently: a JSON object (also inside a ```json fence or surrounded by text, and a
truncated one whose ``"move": "..."`` survived), a quoted or bare move name; names match
ignoring case, spaces and hyphens (``"Special Move"`` is ``special_move``); the protocol's
``boss_action`` key is read too. Validated strictly: the move must be in the game's vocabulary
and legal now. Otherwise the boss plays its scripted fallback boss's move for that row
(:attr:`LLMConfig.fallback`, one of ``envs.bosses.SCRIPTED_BOSSES``) and counts the reason in
:attr:`LLMBoss.fallbacks`:

================  ==================================================================
reason            when
================  ==================================================================
unparseable       no move could be read from the answer (empty, prose, broken JSON)
unknown_move      the answer names a move the game does not have
illegal_move      the move exists but is not legal now (phase, cooldown, stamina)
request_failed    the request failed after its retries (5xx, 429, timeouts, connection
                  errors), or was refused (400, e.g. a prompt too long for the model)
================  ==================================================================

## Errors that do not go away by themselves
A rejected key (401), a forbidden model (403) or an unknown model or wrong ``base_url`` (404)
raise :class:`LLMServiceError` saying how to fix it (the batch's calls are recorded first), as
do ``max_failures_in_a_row`` failed requests in a row: a baseline that silently plays its
fallback boss under the LLM's name would make evaluation tables lie. No key and no
``base_url``: ``ValueError`` when the boss is built; :func:`llm_status` says beforehand whether
an endpoint is configured, with the note an evaluation prints when it skips the baseline.

## Requests, retries, caching
One chat request per distinct prompt of a batch (rows with the same prompt share it), sent by
up to ``concurrency`` threads; the results come back in row order, so the moves do not depend
on the thread timing. Transient failures (408, 409, 429, 5xx, connection errors, timeouts) are
retried ``max_retries`` times with the embedder's exponential backoff
(:class:`rag.embedders.RetryPolicy`; the client's own retries are off). Answers are cached in
memory and, unless ``cache_path`` is None, in a SQLite file shared by processes, keyed by a
hash of (base_url, model, temperature, max_tokens, messages): an identical decision never
reaches the server twice. Invalid answers are cached too (they are what the model says to that
prompt); failed requests are not. With ``temperature`` > 0 the cache freezes one sample per
prompt; set ``cache_path: null`` to sample afresh in every run.

## Records
Every decision appends an :class:`LLMCall` to :attr:`LLMBoss.calls`: the prompt messages, the
raw answer, the parsed and the played move, validity, the fallback reason, the error, the
latency (seconds the decision waited, retries included), the prompt and completion tokens of
the response's ``usage`` (0 for cached answers: nothing was spent), whether it was cached and
how many requests it took. ``experiments.llm_log.log_llm_calls`` writes them to MLflow.

``select_moves`` is meant for one caller at a time (the calls list and counters are not
locked). Importing this module needs numpy and envs only; openai is imported when a boss is
built, FAISS only by the memory passed in.

## Example
>>> config = LLMConfig(model="gpt-4o-mini")
>>> boss, note = llm_baseline("duel", config)   # (None, "LLM baseline skipped: ...") w/o key
>>> moves = boss.select_moves(observations, env.action_masks())
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from agents.llm_prompt import (
    DEFAULT_GOAL,
    Encounter,
    Message,
    build_prompt,
    encounters_from,
    parse_move,
    situation_from_observation,
    system_prompt,
    user_prompt,
)
from envs.bosses import SCRIPTED_BOSSES, make_boss
from envs.game import GameDefinition, load_game
from envs.observation import ObservationLayout
from rag.embedders import OPENAI_INSTALL, Embedder, RetryPolicy, _digest, _is_transient

if TYPE_CHECKING:
    import openai

    from rag.memory import EpisodicMemory


DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_CACHE_PATH = "~/.cache/bosslab/llm_answers.sqlite"
FALLBACK_REASONS = ("unparseable", "unknown_move", "illegal_move", "request_failed")
"""Why a decision fell back to the scripted boss (see the module docstring)."""
NO_KEY = "unused"
"""The key sent to a ``base_url`` when no key is set (local servers ignore it)."""
OPENAI_KEYS_URL = "https://platform.openai.com/api-keys"


class LLMServiceError(RuntimeError):
    """The chat endpoint cannot serve the boss as configured; the message says how to fix it."""


# ---------------------------------------------------------------------------- config


@dataclass(frozen=True)
class LLMConfig:
    """How the LLM boss asks a chat model for moves: the schema of an ``llm`` config group."""

    model: str = DEFAULT_MODEL
    """Chat model name as the endpoint knows it, e.g. gpt-4o-mini or a local server's model."""
    base_url: str | None = None
    """API root of an OpenAI-compatible server, e.g. http://localhost:8000/v1; None: OpenAI
    (or $OPENAI_BASE_URL, which the openai client reads). With a base_url and no key, a
    placeholder key is sent."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable that holds the API key (keys never go in a config: configs are
    logged)."""
    temperature: float = 0.0
    """Sampling temperature, 0 to 2; 0 makes answers (nearly) deterministic and cacheable."""
    max_tokens: int = 120
    """Most tokens an answer may have: room for the JSON move and a one-sentence reason."""
    timeout_seconds: float = 30.0
    """Seconds one request may take before it counts as a (transient) failure."""
    max_retries: int = 3
    """Retries of a transient failure (408, 409, 429, 5xx, connection, timeout) per request."""
    initial_backoff: float = 0.5
    """Seconds before the first retry; doubles each retry (with jitter in [0.5, 1])."""
    max_backoff: float = 8.0
    """Longest wait between two attempts, in seconds."""
    max_failures_in_a_row: int = 10
    """Failed requests in a row (retries exhausted) after which the boss raises
    LLMServiceError instead of falling back again; 0: never."""
    cache_path: str | None = DEFAULT_CACHE_PATH
    """SQLite file of the answer cache, shared by processes; None: cache in memory only."""
    fallback: str = "reactive"
    """Scripted boss (envs.bosses.SCRIPTED_BOSSES) whose move is played when an answer is
    invalid or a request fails."""
    neighbours: int = 5
    """Retrieved past encounters shown in the prompt (needs a memory); 0: none."""
    concurrency: int = 4
    """Requests in flight at once when a batch has several new prompts; 1: one at a time."""
    goal: str = DEFAULT_GOAL
    """What the boss should aim for, in words: the prompt's instruction."""

    def __post_init__(self) -> None:
        self._check_endpoint()
        self._check_sampling()
        self._check_requests()
        if self.fallback not in SCRIPTED_BOSSES:
            raise ValueError(f"llm.fallback={self.fallback!r} is not a scripted boss: use one of "
                             f"{', '.join(SCRIPTED_BOSSES)} (reactive is the default).")
        _check_int("neighbours", self.neighbours, 0, "retrieved encounters in the prompt; 0 "
                   "shows none")
        if not self.goal.strip():
            raise ValueError("llm.goal is empty: describe what the boss should aim for, or "
                             "leave it unset for the default.")

    def _check_endpoint(self) -> None:
        if not self.model.strip():
            raise ValueError(f"llm.model is empty: name a chat model, e.g. {DEFAULT_MODEL}.")
        if self.base_url is not None and not re.match(r"https?://[^/\s]+", self.base_url):
            raise ValueError(f"llm.base_url={self.base_url!r} is not an http(s) URL: use the "
                             f"server's API root, e.g. http://localhost:8000/v1, or null for "
                             f"OpenAI.")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            raise ValueError(f"llm.api_key_env={self.api_key_env!r} must name an environment "
                             f"variable, e.g. OPENAI_API_KEY (the key itself never goes in a "
                             f"config).")

    def _check_sampling(self) -> None:
        if not (math.isfinite(self.temperature) and 0.0 <= self.temperature <= 2.0):
            raise ValueError(f"llm.temperature={self.temperature}: use 0 to 2 (0, the default, "
                             f"for repeatable answers).")
        _check_int("max_tokens", self.max_tokens, 1, "room for the JSON answer, e.g. 120")

    def _check_requests(self) -> None:
        if not (math.isfinite(self.timeout_seconds) and self.timeout_seconds > 0):
            raise ValueError(f"llm.timeout_seconds={self.timeout_seconds}: use a positive "
                             f"number of seconds, e.g. 30.")
        _check_int("max_retries", self.max_retries, 0, "retries of a transient failure")
        if not 0 <= self.initial_backoff <= self.max_backoff:
            raise ValueError(f"llm retries: need 0 <= initial_backoff={self.initial_backoff} "
                             f"<= max_backoff={self.max_backoff} (seconds).")
        _check_int("max_failures_in_a_row", self.max_failures_in_a_row, 0,
                   "failed requests in a row before giving up; 0 never gives up")
        _check_int("concurrency", self.concurrency, 1, "requests in flight at once, e.g. 4")

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(self.max_retries, self.initial_backoff, self.max_backoff)


def _check_int(name: str, value: object, low: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"llm.{name}={value!r}: use an int >= {low} ({what}).")


class LLMStatus(NamedTuple):
    """Whether the LLM baseline can run, and the note that says so (or why it is skipped)."""

    available: bool
    note: str


def llm_status(config: LLMConfig, environ: Mapping[str, str] | None = None) -> LLMStatus:
    """Whether a chat endpoint is configured: a key in ``config.api_key_env`` or a base_url.

    Sends nothing: a configured endpoint may still refuse the key (see LLMServiceError).
    """
    env = os.environ if environ is None else environ
    if importlib.util.find_spec("openai") is None:
        return LLMStatus(False, f"LLM baseline skipped: the openai package is not installed. "
                                f"Fix: {OPENAI_INSTALL}.")
    has_key = bool(env.get(config.api_key_env))
    if not has_key and config.base_url is None:
        return LLMStatus(False, (
            f"LLM baseline skipped: no chat model endpoint is configured ({config.api_key_env} "
            f"is not set and llm.base_url is null). To include it, export "
            f"{config.api_key_env}=sk-... (OpenAI keys: {OPENAI_KEYS_URL}), or set "
            f"llm.base_url=http://localhost:8000/v1 (an OpenAI-compatible server)."))
    where = config.base_url or "OpenAI"
    key = f"key from {config.api_key_env}" if has_key else \
        f"no key: {config.api_key_env} is not set, a placeholder is sent"
    return LLMStatus(True, f"LLM baseline: {config.model} at {where} ({key}).")


def _missing_key_message(config: LLMConfig) -> str:
    return (
        f"LLMBoss has no API key for OpenAI: neither api_key nor the environment variable "
        f"{config.api_key_env} is set, and no base_url is configured. Fix: export "
        f"{config.api_key_env}=sk-... (OpenAI keys: {OPENAI_KEYS_URL}); for an "
        f"OpenAI-compatible server, set base_url (llm.base_url, e.g. http://localhost:8000/v1) "
        f"and export the key it expects, if any."
    )


def _import_openai() -> Any:
    try:
        import openai  # noqa: PLC0415 (optional: only an LLM boss needs it)
    except ImportError as error:
        raise ImportError(f"LLMBoss needs the openai package, which is not installed. Fix: "
                          f"{OPENAI_INSTALL}, or leave the LLM baseline out.") from error
    return openai


# ---------------------------------------------------------------------------- records


@dataclass(frozen=True)
class LLMCall:
    """One decision asked of the model: what was sent, what came back, what was played."""

    messages: tuple[Message, ...]
    """The prompt: system and user messages."""
    answer: str | None
    """The model's raw answer; None when the request failed."""
    move: str | None
    """The move the answer names (maybe unknown or illegal); None when none could be read."""
    played: str
    """The move the boss played: ``move`` when valid, else the fallback boss's."""
    valid: bool
    """The answer named a legal move (no fallback)."""
    fallback_reason: str | None
    """One of FALLBACK_REASONS, or None when valid."""
    error: str | None
    """What went wrong with the request and how to fix it; None when it succeeded."""
    latency_seconds: float
    """Seconds the decision waited for its answer, retries included (~0 when cached)."""
    prompt_tokens: int | None
    """Prompt tokens the response's usage reports (0 when cached, None when not reported)."""
    completion_tokens: int | None
    """Completion tokens the response's usage reports (0 when cached, None when not reported)."""
    cached: bool
    """The answer came from the cache (memory or disk, or an identical row of the batch)."""
    attempts: int
    """Requests sent for this decision (0 when cached)."""
    model: str
    """The model asked."""

    @property
    def total_tokens(self) -> int:
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready values (one line of the MLflow artifact)."""
        record = asdict(self)
        record["messages"] = [dict(m) for m in self.messages]
        record["total_tokens"] = self.total_tokens
        return record


class _Reply(NamedTuple):
    """What one prompt got: an answer or an error, and what it cost."""

    answer: str | None
    latency: float
    prompt_tokens: int | None
    completion_tokens: int | None
    attempts: int
    cached: bool
    error: str | None = None
    fatal: bool = False


# ---------------------------------------------------------------------------- the boss


class LLMBoss:
    """A :class:`envs.bosses.BossPolicy` that asks a chat model for every move.

    ``memory`` and ``embedder`` (optional, together): the episodic memory of the game's past
    decisions and the embedder its keys were made with; the nearest ``config.neighbours``
    entries are shown in each prompt. ``seed`` seeds the fallback boss. ``api_key`` overrides
    the environment variable (for tests and notebooks; configs never hold keys).
    """

    def __init__(self, game: GameDefinition | str | Path | Mapping[str, Any],
                 config: LLMConfig | None = None, *, memory: EpisodicMemory | None = None,
                 embedder: Embedder | None = None, seed: int = 0,
                 api_key: str | None = None) -> None:
        self.config = config = config or LLMConfig()
        self.game = load_game(game)
        self.layout = ObservationLayout.for_game(self.game)
        self.moves = self.game.move_names
        _check_memory(memory, embedder, self.moves)
        self.memory, self.embedder = memory, embedder
        openai_module = _import_openai()
        key = api_key or os.environ.get(config.api_key_env)
        if not key and config.base_url is None:
            raise ValueError(_missing_key_message(config))
        self._client = openai_module.OpenAI(api_key=key or NO_KEY, base_url=config.base_url,
                                            max_retries=0, timeout=config.timeout_seconds)
        self.base_url = str(self._client.base_url)
        self.fallback = make_boss(config.fallback, self.game, seed)
        self.name = f"llm:{config.model}"
        self.system = system_prompt(self.game, config.goal)
        self.calls: list[LLMCall] = []
        """Every decision so far, in order."""
        self.fallbacks: Counter[str] = Counter()
        """Decisions that fell back to the scripted boss, by reason (FALLBACK_REASONS)."""
        self._answers: dict[str, str] = {}
        self._disk = None if config.cache_path is None else _AnswerCache(
            Path(config.cache_path).expanduser())
        self._failures_in_a_row = 0

    # -- the BossPolicy

    def select_moves(self, observations: np.ndarray, action_masks: np.ndarray) -> np.ndarray:
        """One legal move per row: the model's when valid, the fallback boss's otherwise."""
        rows, masks = self._checked(observations, action_masks)
        fallback = self.fallback.select_moves(rows, masks)  # also rejects rows without a move
        prompts = self.prompts(rows, masks)
        keys = [self._cache_key(messages) for messages in prompts]
        replies = self._replies(keys, prompts)
        chosen = np.empty(len(rows), dtype=np.int64)
        asked: set[str] = set()
        for row, (messages, key) in enumerate(zip(prompts, keys, strict=True)):
            reply = replies[key]
            if key in asked:  # an identical row of this batch: answered by its request
                reply = reply._replace(latency=0.0, prompt_tokens=0, completion_tokens=0,
                                       attempts=0, cached=True)
            asked.add(key)
            call = self._decide(messages, reply, masks[row], int(fallback[row]))
            chosen[row] = self.moves.index(call.played)
            self.calls.append(call)
            if call.fallback_reason is not None:
                self.fallbacks[call.fallback_reason] += 1
        self._give_up_if_failing([replies[key] for key in dict.fromkeys(keys)])
        return chosen

    def prompts(self, observations: np.ndarray, action_masks: np.ndarray) -> list[tuple[
            Message, ...]]:
        """The chat messages of every row (retrieval included), without asking anything."""
        rows, masks = self._checked(observations, action_masks)
        encounters = self.encounters(rows)
        system = {"role": "system", "content": self.system}
        prompts: list[tuple[Message, ...]] = []
        for row in range(len(rows)):
            legal = [m for m, ok in zip(self.moves, masks[row], strict=True) if ok]
            situation = situation_from_observation(self.layout, rows[row])
            user = user_prompt(self.game, situation, legal,
                               None if encounters is None else encounters[row])
            prompts.append((system, {"role": "user", "content": user}))
        return prompts

    def encounters(self, observations: np.ndarray) -> list[tuple[Encounter, ...]] | None:
        """The nearest past decisions of each row; None without a memory or with neighbours 0."""
        if self.memory is None or self.embedder is None or self.config.neighbours == 0:
            return None
        hits = self.memory.search_any(self.embedder.embed(observations),
                                      k=self.config.neighbours)
        return encounters_from(hits, self.moves)

    def _checked(self, observations: np.ndarray,
                 action_masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(observations, dtype=np.float32)
        masks = np.asarray(action_masks, dtype=bool)
        if rows.ndim != 2 or rows.shape[1] != self.layout.size:
            raise ValueError(f"observations must be (n, {self.layout.size}) for game "
                             f"{self.game.name!r}, got {rows.shape}.")
        if masks.shape != (len(rows), len(self.moves)):
            raise ValueError(f"action_masks must be (n, moves) = ({len(rows)}, "
                             f"{len(self.moves)}), got {masks.shape}.")
        return rows, masks

    # -- answers

    def _decide(self, messages: tuple[Message, ...], reply: _Reply, legal: np.ndarray,
                fallback: int) -> LLMCall:
        named = None if reply.answer is None else parse_move(reply.answer, self.moves)
        legal_moves = {m for m, ok in zip(self.moves, legal, strict=True) if ok}
        reason: str | None
        if reply.answer is None:
            reason = "request_failed"
        elif named is None:
            reason = "unparseable"
        elif named not in self.moves:
            reason = "unknown_move"
        elif named not in legal_moves:
            reason = "illegal_move"
        else:
            reason = None
        played = named if reason is None and named is not None else self.moves[fallback]
        return LLMCall(messages=messages, answer=reply.answer, move=named, played=played,
                       valid=reason is None, fallback_reason=reason, error=reply.error,
                       latency_seconds=reply.latency, prompt_tokens=reply.prompt_tokens,
                       completion_tokens=reply.completion_tokens, cached=reply.cached,
                       attempts=reply.attempts, model=self.config.model)

    def _replies(self, keys: Sequence[str],
                 prompts: Sequence[tuple[Message, ...]]) -> dict[str, _Reply]:
        """One reply per distinct prompt: from the cache, or asked (concurrently)."""
        replies: dict[str, _Reply] = {}
        missing: dict[str, tuple[Message, ...]] = {}
        for key, messages in zip(keys, prompts, strict=True):
            if key in replies or key in missing:
                continue
            start = time.perf_counter()
            stored = self._lookup(key)
            if stored is None:
                missing[key] = messages
            else:
                replies[key] = _Reply(stored, time.perf_counter() - start, 0, 0, 0, cached=True)
        workers = min(self.config.concurrency, len(missing))
        if workers > 1:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                fetched = list(pool.map(self._request, missing.values()))
        else:
            fetched = [self._request(messages) for messages in missing.values()]
        for key, reply in zip(missing, fetched, strict=True):
            if reply.answer is not None:
                self._store(key, reply.answer)
            replies[key] = reply
        return replies

    def _request(self, messages: tuple[Message, ...]) -> _Reply:
        """Ask the model once, retrying transient failures; never raises an API error."""
        import openai  # noqa: PLC0415 (imported when the boss was built)

        config = self.config
        start = time.perf_counter()
        attempts = 0
        while True:
            attempts += 1
            try:
                response = self._client.chat.completions.create(
                    model=config.model, messages=[dict(m) for m in messages],
                    temperature=config.temperature, max_tokens=config.max_tokens)
            except openai.APIError as error:
                if attempts <= config.max_retries and _is_transient(error):
                    time.sleep(config.retry.delay(attempts - 1))
                    continue
                message, fatal = self._explain(error, attempts)
                return _Reply(None, time.perf_counter() - start, None, None, attempts,
                              cached=False, error=message, fatal=fatal)
            usage = response.usage
            content = response.choices[0].message.content if response.choices else None
            return _Reply(content or "", time.perf_counter() - start,
                          None if usage is None else usage.prompt_tokens,
                          None if usage is None else usage.completion_tokens, attempts,
                          cached=False)

    def _explain(self, error: openai.APIError, attempts: int) -> tuple[str, bool]:
        """What went wrong and how to fix it, and whether it will go away by itself."""
        import openai  # noqa: PLC0415

        where = f"the chat server at {self.base_url}"
        env = self.config.api_key_env
        if isinstance(error, openai.AuthenticationError):
            return (f"{where} rejected the API key (HTTP 401). Fix: export {env}=<a valid key> "
                    f"(OpenAI keys: {OPENAI_KEYS_URL}); for an OpenAI-compatible server, set "
                    f"llm.base_url to it and export the key it expects."), True
        if isinstance(error, openai.PermissionDeniedError):
            return (f"{where} refused access to model {self.config.model!r} (HTTP 403: "
                    f"{error.message}). Fix: use a key with access to it, or another "
                    f"llm.model."), True
        if isinstance(error, openai.NotFoundError):
            return (f"{where} has no chat model {self.config.model!r} (HTTP 404: "
                    f"{error.message}). Fix: set llm.model to one it serves, and llm.base_url "
                    f"to its API root (e.g. http://host:port/v1)."), True
        if isinstance(error, openai.APIConnectionError):
            return (f"could not reach {where} in {attempts} attempts ({error.message}). Fix: "
                    f"check llm.base_url and the network, or raise llm.max_retries or "
                    f"llm.timeout_seconds."), False
        status = error.status_code if isinstance(error, openai.APIStatusError) else "?"
        if _is_transient(error):
            return (f"{where} kept failing: HTTP {status} in all {attempts} attempts "
                    f"({error.message}). Fix: try again later, or raise llm.max_retries or "
                    f"the backoff."), False
        return f"{where} refused the request (HTTP {status}: {error.message}).", False

    def _give_up_if_failing(self, replies: Sequence[_Reply]) -> None:
        for reply in replies:
            if reply.fatal:
                raise LLMServiceError(reply.error)
            if reply.cached:
                continue
            self._failures_in_a_row = self._failures_in_a_row + 1 if reply.error else 0
            limit = self.config.max_failures_in_a_row
            if limit and self._failures_in_a_row >= limit:
                raise LLMServiceError(
                    f"{self._failures_in_a_row} requests in a row failed, the last with: "
                    f"{reply.error} The LLM boss stops rather than keep playing its fallback "
                    f"boss ({self.config.fallback}) under its own name; raise "
                    f"llm.max_failures_in_a_row (0: never stop) to carry on regardless.")

    # -- cache

    def _cache_key(self, messages: Sequence[Message]) -> str:
        c = self.config
        return _digest(self.base_url, c.model, c.temperature, c.max_tokens,
                       json.dumps(list(messages), sort_keys=True))

    def _lookup(self, key: str) -> str | None:
        if key in self._answers:
            return self._answers[key]
        stored = None if self._disk is None else self._disk.get(key)
        if stored is not None:
            self._answers[key] = stored
        return stored

    def _store(self, key: str, answer: str) -> None:
        self._answers[key] = answer
        if self._disk is not None:
            self._disk.put(key, answer, self.config.model)


def _check_memory(memory: EpisodicMemory | None, embedder: Embedder | None,
                  moves: Sequence[str]) -> None:
    if memory is None and embedder is None:
        return
    if memory is None or embedder is None:
        raise ValueError("pass memory and embedder together: the embedder must be the one the "
                         "memory's keys were made with (e.g. rag.embedders."
                         "NumericContextEmbedder(game)), or neither for prompts without "
                         "retrieved encounters.")
    if memory.config.dim != embedder.dim:
        raise ValueError(f"the memory holds keys of width {memory.config.dim} but the embedder "
                         f"{embedder.name} makes {embedder.dim}: pass the embedder the memory "
                         f"was built with.")
    if memory.config.moves != len(moves):
        raise ValueError(f"the memory has {memory.config.moves} moves, the game "
                         f"{len(moves)} ({', '.join(moves)}): pass this game's memory.")


class _AnswerCache:
    """Answers in one SQLite file, keyed by a prompt's hash; safe to share between processes."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT, "
                       "model TEXT, created REAL)")
            db.commit()

    def _connect(self) -> closing[sqlite3.Connection]:
        return closing(sqlite3.connect(self.path, timeout=30.0))

    def get(self, key: str) -> str | None:
        with self._connect() as db:
            found = db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return None if found is None else str(found[0])

    def put(self, key: str, answer: str, model: str) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?)",
                       (key, answer, model, time.time()))
            db.commit()


def llm_baseline(game: GameDefinition | str | Path | Mapping[str, Any], config: LLMConfig,
                 *, memory: EpisodicMemory | None = None, embedder: Embedder | None = None,
                 seed: int = 0) -> tuple[LLMBoss | None, str]:
    """The LLM boss for an evaluation table and the note to print, or None and the note that
    says why it is skipped (no endpoint configured, or no openai package)."""
    status = llm_status(config)
    if not status.available:
        return None, status.note
    return LLMBoss(game, config, memory=memory, embedder=embedder, seed=seed), status.note


__all__ = [
    "DEFAULT_GOAL",
    "FALLBACK_REASONS",
    "Encounter",
    "LLMBoss",
    "LLMCall",
    "LLMConfig",
    "LLMServiceError",
    "LLMStatus",
    "build_prompt",
    "encounters_from",
    "llm_baseline",
    "llm_status",
    "parse_move",
    "situation_from_observation",
    "system_prompt",
    "user_prompt",
]
