"""The wire messages of ../shared/PROTOCOL.md (v1) as strict pydantic models, and their codec.

Every message is one JSON object ``{"type": str, "request_id"?: str, "data": object}``.
:func:`parse_message` turns a text frame into a :class:`Message` or raises
:class:`ProtocolError` with the protocol's error ``code`` and a ``message`` naming the field
that was wrong and how to fix it. Validation is strict: unknown fields are rejected, numbers
must be JSON numbers (never strings), NaN and Infinity are refused, ranges, string lengths and
list lengths are bounded.

What depends on the game (its battle phases, difficulty levels, arenas, the player fields its
policy reads) is checked by :func:`check_request` against the game's :class:`GameTerms`.
:func:`to_situation` turns a valid request into the :class:`envs.observation.Situation` a brain
decides on; :func:`situation_json` / :func:`situation_from_json` store it with the decision.
"""

from __future__ import annotations

import json
import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from envs.observation import BATTLE_PHASES, MOVEMENT_STYLES, BossState, PlayerContext, Situation

PROTOCOL_VERSION = "v1"
MAX_REQUEST_ID = 128
MAX_NAME = 64
MAX_LIST = 32
MAX_ERRORS_SHOWN = 3

ErrorCode = Literal["invalid_json", "invalid_message", "unknown_type", "unknown_action",
                    "rate_limited", "unavailable", "internal"]
ERROR_CODES: tuple[str, ...] = typing.get_args(ErrorCode)
CLIENT_TYPES = ("boss_action_request", "action_outcome", "heartbeat")
SERVER_TYPES = ("status", "boss_action_response", "learning_update", "heartbeat", "error")


class ProtocolError(Exception):
    """A message the server refuses: answered with an ``error`` message, the socket stays."""

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


class Strict(BaseModel):
    """Base of every wire model: no unknown fields, no coercion, finite numbers only."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


Unit = Annotated[float, Field(ge=0.0, le=1.0)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]
Names = Annotated[list[Name], Field(max_length=MAX_LIST)]
ActionId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]
RequestId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_REQUEST_ID)]


class PlayerContextIn(Strict):
    """``player_context``: fields the policy does not read may be omitted."""

    frequent_actions: Names | None = None
    dodge_frequency: Unit | None = None
    attack_patterns: Names | None = None
    movement_style: Literal["aggressive", "defensive", "balanced", "evasive"] | None = None
    reaction_time: Annotated[float, Field(ge=0.0, le=60.0)] | None = None
    """Seconds."""
    health_percentage: Unit | None = None
    difficulty_preference: Name | None = None
    session_duration: Annotated[float, Field(ge=0.0, le=100_000.0)] | None = None
    """Minutes."""
    recent_deaths: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    equipment_level: Annotated[int, Field(ge=0, le=1_000_000)] | None = None


class EnvironmentFactors(Strict):
    """``environment_factors``: where the fight takes place."""

    environment: Name | None = None
    """One of the game's ``environments`` (arenas)."""
    distance: Annotated[float, Field(ge=0.0, le=1000.0)] | None = None
    """Metres between the boss and the player (3 when absent)."""


class BossActionRequest(Strict):
    """``boss_action_request`` data."""

    player_context: PlayerContextIn
    boss_health_percentage: Unit
    battle_phase: Name
    environment_factors: EnvironmentFactors | None = None
    difficulty: Name | None = None


class ActionOutcome(Strict):
    """``action_outcome`` data."""

    action_id: ActionId
    outcome: Literal["success", "failure", "partial"]
    effectiveness_score: Unit
    damage_dealt: Annotated[float, Field(ge=0.0, le=1e9)]
    player_hit: bool
    execution_time: Annotated[float, Field(ge=0.0, le=3600.0)]
    """Seconds."""


class HeartbeatIn(Strict):
    """``heartbeat`` data (optional): ``client_time`` is echoed back, to measure round trips."""

    client_time: Annotated[float, Field(ge=0.0)] | None = None


# --- server -> client (documentation and the REST response models) -------------------------


class BossActionOut(Strict):
    boss_action: str
    action_type: str
    parameters: dict[str, Any]


class BossActionResponse(Strict):
    """``boss_action_response`` data (and the REST boss-action response)."""

    action_id: str
    boss_action: BossActionOut
    confidence: float
    retrieved: int
    policy_version: str
    latency_ms: float


class LearningUpdate(Strict):
    """``learning_update`` data: sent once the outcome is durably stored."""

    action_id: str
    duplicate: bool
    memory_size: int
    adapted: str


class StatusData(Strict):
    session_id: str
    game_id: str
    policy_version: str
    server_time: str


class ErrorData(Strict):
    code: ErrorCode
    message: str


DATA_MODELS: dict[str, type[Strict]] = {
    "boss_action_request": BossActionRequest,
    "action_outcome": ActionOutcome,
    "heartbeat": HeartbeatIn,
}


class Message(NamedTuple):
    """A parsed client message."""

    type: str
    request_id: str | None
    data: Any


# --- parsing --------------------------------------------------------------------------------


def _non_finite(constant: str) -> float:
    """JSON has no NaN/Infinity; keep them as floats so validation names the field."""
    return math.nan if constant == "NaN" else math.inf


_DECODER = json.JSONDecoder(parse_constant=_non_finite)
"""The standard library's decoder, one for every frame (``json.loads`` with a keyword builds a
new one per call): for what orjson refuses (NaN, Infinity, lone surrogates, numbers beyond a
double, deep nesting, bad JSON), so those frames get the same answers as ever. (orjson reads
integers beyond 64 bits as floats: every integer field is bounded far below, so such a frame
is refused either way.)"""
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def _loads(text: str) -> Any:
    """A frame's JSON: orjson (3x faster) for valid JSON, else the standard library's
    decoder, which keeps NaN/Infinity for validation to name and words the errors."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return _DECODER.decode(text)


def _dumps(message: Mapping[str, Any]) -> str:
    """A message as compact JSON: orjson (10x faster), else the standard library's encoder
    for what orjson does not take (numpy scalars, non-string keys)."""
    try:
        return orjson.dumps(message).decode()
    except TypeError:
        return _COMPACT.encode(message)


def parse_message(text: str) -> Message:
    """A client text frame as a validated :class:`Message`; raises :class:`ProtocolError`."""
    try:
        raw = _loads(text)
    except (ValueError, RecursionError) as error:
        raise ProtocolError("invalid_json", f"the frame is not valid JSON ({error}); send one "
                            "JSON object per text frame") from None
    if not isinstance(raw, dict):
        raise ProtocolError("invalid_message", "a message must be a JSON object "
                            '{"type": ..., "request_id": ..., "data": {...}}')
    request_id = _request_id(raw)
    kind = _message_type(raw, request_id)
    extra = set(raw) - {"type", "request_id", "data"}
    if extra:
        raise ProtocolError("invalid_message", f"unknown top-level field(s) {sorted(extra)}: a "
                            "message has only type, request_id and data", request_id)
    data = raw.get("data")
    if data is None and kind == "heartbeat":
        data = {}
    if not isinstance(data, dict):
        raise ProtocolError("invalid_message", f"data: a {kind} message needs a JSON object "
                            "as data", request_id)
    try:
        model = DATA_MODELS[kind].model_validate(data)
    except ValidationError as error:
        raise ProtocolError("invalid_message", explain(error), request_id) from None
    return Message(kind, request_id, model)


def peek_request_id(text: str) -> str | None:
    """The request_id of a frame, if it parses (to echo it on errors that skip validation)."""
    try:
        raw = _loads(text)
    except (ValueError, RecursionError):
        return None
    return _echoable(raw.get("request_id")) if isinstance(raw, dict) else None


def _echoable(value: Any) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= MAX_REQUEST_ID:
        return value
    return None


def _request_id(raw: dict[str, Any]) -> str | None:
    value = raw.get("request_id")
    if value is None:
        return None
    echoed = _echoable(value)
    if echoed is None:
        raise ProtocolError("invalid_message", f"request_id must be a string of 1 to "
                            f"{MAX_REQUEST_ID} characters, e.g. a counter or a uuid")
    return echoed


def _message_type(raw: dict[str, Any], request_id: str | None) -> str:
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("invalid_message", "type: missing or not a string; use one of "
                            f"{', '.join(CLIENT_TYPES)}", request_id)
    if kind not in DATA_MODELS:
        raise ProtocolError("unknown_type", f"unknown message type {kind[:MAX_NAME]!r}: "
                            f"send one of {', '.join(CLIENT_TYPES)}", request_id)
    return kind


_HINTS = {
    "missing": "add it",
    "extra_forbidden": "remove it (the field is not part of protocol v1)",
    "float_type": "send a JSON number, not a string",
    "int_type": "send a whole JSON number (no decimals, not a string)",
    "bool_type": "send true or false",
    "string_type": "send a JSON string",
    "list_type": "send a JSON array",
    "model_type": "send a JSON object",
    "dict_type": "send a JSON object",
    "finite_number": "send a finite number: NaN and Infinity are not allowed",
}


def explain(error: ValidationError, prefix: str = "data") -> str:
    """What was wrong with which field, and how to fix it (the first few problems)."""
    problems = error.errors(include_url=False)
    parts = []
    for problem in problems[:MAX_ERRORS_SHOWN]:
        where = ".".join([prefix, *(str(part) for part in problem["loc"])])
        hint = _HINTS.get(problem["type"])
        shown = "" if problem["type"] in ("missing", "extra_forbidden") else (
            f" (got {_short(problem.get('input'))})")
        parts.append(f"{where}: {problem['msg']}{shown}" + (f"; {hint}" if hint else ""))
    more = len(problems) - MAX_ERRORS_SHOWN
    return "; ".join(parts) + (f"; and {more} more problem(s)" if more > 0 else "")


def _short(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else (
        type(value).__name__)
    return text if len(text) <= 40 else text[:37] + "..."


# --- the game's terms -----------------------------------------------------------------------


class GameTerms(NamedTuple):
    """What a request is checked against beyond its schema: one registered game's names."""

    phases: tuple[str, ...]
    """The bundle's phase names plus the protocol's early/mid/late_battle."""
    difficulty_levels: tuple[str, ...]
    environments: tuple[str, ...]
    required_player_fields: tuple[str, ...]
    """player_context fields the policy reads (its observation names them)."""


PLAYER_FIELDS = tuple(f.name for f in fields(PlayerContext))


def game_terms(vocabulary: Mapping[str, Sequence[str]], observation_names: Sequence[str],
               battle_phases: Sequence[str]) -> GameTerms:
    """A game's terms from its registered vocabulary and its bundle's observation names."""
    features = {name.split("[", 1)[0] for name in observation_names}
    required = tuple(f for f in PLAYER_FIELDS if f in features)
    phases = tuple(dict.fromkeys([*battle_phases, *BATTLE_PHASES]))
    return GameTerms(phases, tuple(vocabulary.get("difficulty_levels", ())),
                     tuple(vocabulary.get("environments", ())), required)


def check_request(request: BossActionRequest, terms: GameTerms,
                  request_id: str | None = None) -> None:
    """Raise ``invalid_message`` for names the game does not know or fields its policy needs."""
    def fail(message: str) -> ProtocolError:
        return ProtocolError("invalid_message", message, request_id)

    player = request.player_context
    missing = [f for f in terms.required_player_fields if getattr(player, f) is None]
    if missing:
        raise fail(f"data.player_context.{missing[0]}: required by this game's policy; add it"
                   + (f" (also missing: {', '.join(missing[1:])})" if missing[1:] else ""))
    if request.battle_phase not in terms.phases:
        raise fail(f"data.battle_phase: unknown phase {request.battle_phase!r}; use one of "
                   f"{', '.join(terms.phases)}")
    if request.difficulty is not None and request.difficulty not in terms.difficulty_levels:
        raise fail(f"data.difficulty: {request.difficulty!r} is not one of this game's "
                   f"difficulty_levels ({', '.join(terms.difficulty_levels)}); use one or omit it")
    factors = request.environment_factors
    if factors and factors.environment and factors.environment not in terms.environments:
        raise fail(f"data.environment_factors.environment: {factors.environment!r} is not one "
                   f"of this game's environments ({', '.join(terms.environments)})")


def to_situation(request: BossActionRequest, boss: BossState) -> Situation:
    """The situation a brain decides on: the request plus the session's boss state."""
    given = {name: value for name, value in request.player_context if value is not None}
    for name in ("frequent_actions", "attack_patterns"):
        if name in given:
            given[name] = tuple(given[name])
    factors = request.environment_factors or EnvironmentFactors()
    return Situation(
        player=PlayerContext(**given),
        boss_health_percentage=request.boss_health_percentage,
        battle_phase=request.battle_phase,
        environment=factors.environment,
        distance=3.0 if factors.distance is None else factors.distance,
        difficulty=request.difficulty,
        boss=boss,
    )


SITUATION_FIELDS = tuple(f.name for f in fields(Situation))
BOSS_FIELDS = tuple(f.name for f in fields(BossState))


def situation_json(situation: Situation) -> dict[str, Any]:
    """A situation as JSON data (stored with its decision): what ``dataclasses.asdict``
    gives, built field by field (asdict's deep copy costs more than the decision's policy)."""
    data = {name: getattr(situation, name) for name in SITUATION_FIELDS}
    data["player"] = {name: getattr(situation.player, name) for name in PLAYER_FIELDS}
    data["boss"] = {name: getattr(situation.boss, name) for name in BOSS_FIELDS}
    return data


def situation_from_json(data: Mapping[str, Any]) -> Situation:
    """The situation :func:`situation_json` stored (extra keys are ignored)."""
    player = dict(data["player"])
    for name in ("frequent_actions", "attack_patterns"):
        player[name] = tuple(player.get(name, ()))
    boss = dict(data.get("boss") or {})
    return Situation(
        player=PlayerContext(**player),
        boss_health_percentage=float(data["boss_health_percentage"]),
        battle_phase=str(data["battle_phase"]),
        environment=data.get("environment"),
        distance=float(data.get("distance", 3.0)),
        difficulty=data.get("difficulty"),
        boss=BossState(stamina=float(boss.get("stamina", 1.0)),
                       cooldowns=tuple(boss.get("cooldowns", ())),
                       last_action=boss.get("last_action"),
                       habits=tuple(boss.get("habits", ()))),
    )


# --- encoding -------------------------------------------------------------------------------


def encode(kind: str, data: Mapping[str, Any], request_id: str | None = None) -> str:
    """One server message as a JSON text frame."""
    message: dict[str, Any] = {"type": kind, "data": data}
    if request_id is not None:
        message["request_id"] = request_id
    return _dumps(message)


def error_message(code: str, message: str, request_id: str | None = None) -> str:
    return encode("error", {"code": code, "message": message}, request_id)


def server_time() -> str:
    """Now, ISO 8601 UTC with milliseconds (``server_time`` of status and heartbeat)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Limits:
    """What ``/websocket-info`` tells clients about this server."""

    max_message_bytes: int
    rate_limit_per_second: float
    rate_limit_burst: int
    max_connections: int
    heartbeat_interval: float
    idle_timeout: float


def websocket_info(limits: Limits) -> dict[str, Any]:
    """The ``/websocket-info`` document: message types, limits, heartbeat, version."""
    return {
        "version": PROTOCOL_VERSION,
        "url": "/api/v1/ws/{game_id}?token=JWT&session_id=OPTIONAL",
        "auth": "?token=JWT or 'Authorization: Bearer JWT'; a bad token is refused with "
                "HTTP 403 at the handshake",
        "client_messages": {kind: DATA_MODELS[kind].model_json_schema() for kind in CLIENT_TYPES},
        "server_messages": list(SERVER_TYPES),
        "error_codes": list(ERROR_CODES),
        "movement_styles": list(MOVEMENT_STYLES),
        "battle_phases": list(BATTLE_PHASES),
        "limits": asdict(limits),
        "heartbeat_interval": limits.heartbeat_interval,
        "conventions": {
            "request_id": f"any string of 1 to {MAX_REQUEST_ID} characters; echoed on the "
                          "answer and on errors",
            "session_id": "1 to 64 of letters, digits, _ . : - ; made by the server when absent",
            "environment_factors": "{environment: one of the game's environments, distance: "
                                   "metres 0..1000 (3 when absent)}; nothing else",
            "player_context": "every field the game's policy reads is required (all but "
                              "difficulty_preference for the bundled observation layout)",
            "heartbeat": "send {type: heartbeat, data: {client_time?}}; the answer echoes "
                         "client_time; the server sends one when it sent nothing for "
                         "heartbeat_interval seconds",
            "handshake_refusals": "403 bad or missing token or unregistered game; 400 bad "
                                  "session_id; 503 connection limit or restarting",
            "rest": "POST /api/v1/games/{game_id}/boss-action takes ?session_id= and returns "
                    "it as X-Session-Id; POST /api/v1/games/{game_id}/action-outcome answers "
                    "learning_update data; 401/403 token, 404 unknown game/action, 422 invalid "
                    "request, 503 storage down (nothing stored: send again)",
            "health": "200 when ok, 503 when degraded (storage down, restarting)",
        },
        "close_codes": {
            "1000": "idle timeout: no message for idle_timeout seconds (send heartbeats)",
            "1008": "policy: a bad token, or sustained flooding past the rate limit",
            "1009": "a frame larger than max_message_bytes",
            "1012": "the server is restarting: reconnect and resend unacknowledged outcomes",
        },
    }


# --- REST: registration ---------------------------------------------------------------------

GameId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class Vocabulary(Strict):
    """A game's names. Lists left out default to those of the bundle that serves the game."""

    boss_actions: Annotated[list[Name], Field(min_length=1, max_length=MAX_LIST)]
    action_types: Names | None = None
    environments: Names | None = None
    difficulty_levels: Names | None = None


class RegisterRequest(Strict):
    """``POST /api/v1/games/register`` body."""

    game_id: GameId
    name: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    description: Annotated[str, StringConstraints(max_length=2000)] = ""
    vocabulary: Vocabulary
    policy: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    """A loaded bundle's name (or policy_version); the first bundle serving the vocabulary
    when absent."""


class Registered(Strict):
    """``POST /api/v1/games/register`` answer (201)."""

    game_id: str
    api_key: str
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class TokenOut(Strict):
    """``POST /api/v1/games/{game_id}/token`` answer."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
