"""Who may do what: API keys, access tokens (JWT), the admin key, and logs that keep them secret.

- An **API key** (``new_api_key``) is shown to a game once, at registration, and stored only as
  ``hash_api_key(key)``: salted scrypt with light parameters. The keys carry 256 random bits,
  so no hash speed makes guessing them feasible; scrypt only makes a leaked table useless
  at no real cost (a few milliseconds per token request). Verification compares in
  constant time.
- An **access token** (``issue_token``) is a JWT signed with ``settings.secret_key`` by the
  one pinned algorithm, with ``sub`` = game_id, ``aud``, ``iss``, ``iat``, ``exp`` and ``jti``.
  ``verify_token`` accepts nothing else: see :class:`AuthError` for every refusal.
- **Logs** never show a token or a key: :class:`RedactTokens` rewrites every record (message,
  arguments, exception text) and :class:`JsonFormatter` writes one JSON object per line;
  :func:`configure_logging` installs both on the root logger and routes uvicorn's loggers
  through it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any

import jwt

from serving.settings import Settings

API_KEY_PREFIX = "bl_"
"""Marks BossLab API keys, so secret scanners and the log filter recognise them."""
MAX_TOKEN_CHARS = 4096
REDACTED = "[REDACTED]"

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**12, 8, 1
_REQUIRED_CLAIMS = ["sub", "aud", "iss", "iat", "exp", "jti"]

_FIXES = {
    "missing": "send it as ?token=JWT or an 'Authorization: Bearer JWT' header; "
    "get one from POST /api/v1/games/{game_id}/token with your X-API-Key",
    "malformed": "send the access_token exactly as the server returned it",
    "algorithm": "use a token issued by this server (its signing algorithm is pinned)",
    "bad_signature": "use a token issued by this server; tokens issued before a secret-key "
    "change are void: get a fresh one from POST /api/v1/games/{game_id}/token",
    "expired": "get a fresh one from POST /api/v1/games/{game_id}/token with your X-API-Key",
    "not_yet_valid": "check the clocks: the token claims to be issued in the future",
    "wrong_audience": "use a token issued by this server for games",
    "wrong_issuer": "use a token issued by this server",
    "other_game": "a token is valid only for the game it was issued to: use that game's token",
    "bad_api_key": "send the api_key returned at registration in the X-API-Key header",
    "admin_key_required": "this server requires its admin key in the X-Admin-Key header "
    "to register games",
}


class AuthError(Exception):
    """A credential was refused. ``reason`` is one of: missing, malformed, algorithm,
    bad_signature, expired, not_yet_valid, wrong_audience, wrong_issuer, other_game,
    bad_api_key, admin_key_required. The message says what was wrong and how to fix it, and
    never contains the credential itself."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        fix = _FIXES.get(reason, "")
        text = f"{reason}: {detail}" if detail else reason
        super().__init__(f"{text}; {fix}" if fix else text)


# --- API keys -------------------------------------------------------------------------------


def new_api_key() -> str:
    """A fresh random API key (256 bits, URL-safe), shown to the game once."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(api_key: str) -> str:
    """What is stored instead of the key: ``scrypt$N$r$p$salt$digest`` (base64url parts)."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(api_key, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    parts = ["scrypt", str(_SCRYPT_N), str(_SCRYPT_R), str(_SCRYPT_P), _b64(salt), _b64(digest)]
    return "$".join(parts)


def verify_api_key(api_key: str | None, stored_hash: str) -> bool:
    """True if ``api_key`` is the key ``stored_hash`` was made from (constant-time compare)."""
    if not api_key or len(api_key) > 256:
        return False
    try:
        scheme, n, r, p, salt, digest = stored_hash.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        actual = _scrypt(api_key, _unb64(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def check_api_key(api_key: str | None, stored_hash: str) -> None:
    """Raise ``AuthError("bad_api_key")`` unless ``api_key`` matches ``stored_hash``."""
    if not verify_api_key(api_key, stored_hash):
        raise AuthError("bad_api_key", "the X-API-Key is missing or wrong")


def check_admin_key(provided: str | None, settings: Settings) -> None:
    """Raise ``AuthError("admin_key_required")`` unless registration is open (no admin key
    configured) or ``provided`` is the admin key (constant-time compare)."""
    if settings.admin_key is None:
        return
    given = (provided or "").encode()
    if not hmac.compare_digest(given, settings.admin_key.encode()):
        raise AuthError("admin_key_required", "the X-Admin-Key is missing or wrong")


def _scrypt(api_key: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(api_key.encode(), salt=salt, n=n, r=r, p=p, dklen=32)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as error:
        raise ValueError("not base64url") from error


# --- Access tokens --------------------------------------------------------------------------


def issue_token(game_id: str, settings: Settings, *, now: float | None = None) -> tuple[str, int]:
    """A fresh access token for ``game_id`` and its lifetime in seconds (``expires_in``).

    ``now`` (seconds since the epoch) is for tests; the server leaves it to the clock.
    """
    issued_at = int(time.time() if now is None else now)
    claims = {
        "sub": game_id,
        "aud": settings.jwt_audience,
        "iss": settings.jwt_issuer,
        "iat": issued_at,
        "exp": issued_at + settings.token_ttl_seconds,
        "jti": uuid.uuid4().hex,
    }
    token = jwt.encode(claims, settings.secret_key, algorithm=settings.jwt_algorithm)
    return token, settings.token_ttl_seconds


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header value, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def verify_token(token: str | None, game_id: str, settings: Settings) -> dict[str, Any]:
    """The claims of a valid access token for ``game_id``; raises :class:`AuthError` otherwise.

    Checks, in order: present, well-formed, signed by the pinned algorithm (``alg:none``, an
    RS*/ES* header or another HMAC size are refused before any key is used), the signature,
    expiry, audience, issuer, and that ``sub`` is this game.
    """
    if not token:
        raise AuthError("missing", "no access token")
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
        raise AuthError("malformed", "not a JWT (three dot-separated parts)")
    _check_header(token, settings)
    claims = _decode(token, settings)
    if claims.get("sub") != game_id:
        raise AuthError("other_game", f"the token is not for game {game_id!r}")
    return claims


def _check_header(token: str, settings: Settings) -> None:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as error:
        raise AuthError("malformed", "unreadable token header") from error
    algorithm = header.get("alg")
    if algorithm != settings.jwt_algorithm:
        raise AuthError(
            "algorithm", f"alg {str(algorithm)[:16]!r} is not the pinned {settings.jwt_algorithm}"
        )


_DECODE_ERRORS: tuple[tuple[type[jwt.PyJWTError], str, str], ...] = (
    (jwt.ExpiredSignatureError, "expired", "the token has expired"),
    (jwt.InvalidSignatureError, "bad_signature", "the signature does not match"),
    (jwt.ImmatureSignatureError, "not_yet_valid", "the token is not valid yet"),
    (jwt.InvalidAudienceError, "wrong_audience", "the token's aud is not this server's"),
    (jwt.InvalidIssuerError, "wrong_issuer", "the token's iss is not this server"),
    (jwt.InvalidAlgorithmError, "algorithm", "the signing algorithm is not allowed"),
    (jwt.MissingRequiredClaimError, "malformed", "a required claim is missing"),
)


def _decode(token: str, settings: Settings) -> dict[str, Any]:
    try:
        return jwt.decode(
            token,
            settings.secret_key,
            algorithms=[settings.jwt_algorithm],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": _REQUIRED_CLAIMS, "verify_signature": True},
        )
    except jwt.PyJWTError as error:
        for kind, reason, detail in _DECODE_ERRORS:
            if isinstance(error, kind):
                raise AuthError(reason, detail) from error
        raise AuthError("malformed", "the token could not be decoded") from error


# --- Logs -----------------------------------------------------------------------------------

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
_API_KEY = re.compile(re.escape(API_KEY_PREFIX) + r"[A-Za-z0-9_-]{16,}")
# A secret value: up to a delimiter; "%" only as URL escape (%2F), never a %s placeholder;
# never one already redacted (redact is idempotent).
_VALUE = r"(?!\[REDACTED\])(?:[^\s'\",;&}\]\\%]|%[0-9A-Fa-f]{2})+"
_QUERY_SECRET = re.compile(r"(?i)((?:access_)?token=|api_key=)" + _VALUE)
_HEADER_SECRET = re.compile(
    r"(?i)((?:authorization|x-api-key|x-admin-key|access_token|api_key|secret_key|admin_key)"
    r"['\"]?\s*[:=,]\s*(?:b?['\"])?(?:(?:bearer|basic)\s+)?)(?!(?:bearer|basic)\s)" + _VALUE
)


def redact(text: str) -> str:
    """``text`` with every JWT, API key, ``token=`` query value and credential header or
    field value replaced by ``[REDACTED]``."""
    text = _HEADER_SECRET.sub(lambda m: m.group(1) + REDACTED, text)
    text = _QUERY_SECRET.sub(lambda m: m.group(1) + REDACTED, text)
    text = _JWT.sub(REDACTED, text)
    return _API_KEY.sub(REDACTED, text)


def _redact_value(value: Any) -> Any:
    """A log argument with secrets redacted; untouched (same type) when it holds none."""
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    text = value if isinstance(value, str) else str(value)
    cleaned = redact(text)
    if cleaned == text:
        return value
    return cleaned


class RedactTokens(logging.Filter):
    """Redacts tokens and keys from a log record's message, arguments and exception text.

    Attach it to handlers (as :func:`configure_logging` does) so it sees records propagated
    from every logger, uvicorn's access log included. Arguments keep their type unless they
    held a secret, so %d-style formats keep working.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _redact_value(record.msg)
        record.args = _redact_args(record.args)
        _redact_combined(record)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for name, value in _extra_fields(record).items():
            setattr(record, name, _redact_value(value))
        return True


def _redact_combined(record: logging.LogRecord) -> None:
    """A secret only recognisable once message and arguments meet (``"token=%s", raw``):
    keep the formatted, redacted message and drop the arguments."""
    if not record.args:
        return
    try:
        message = record.getMessage()
    except (TypeError, ValueError):
        return  # a broken format: logging itself reports it
    cleaned = redact(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None


def _redact_args(args: Any) -> Any:
    if isinstance(args, tuple):
        return tuple(_redact_value(arg) for arg in args)
    if isinstance(args, Mapping):
        return {key: _redact_value(value) for key, value in args.items()}
    return args


_STANDARD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """What a caller added with ``extra=`` (anything not a standard LogRecord attribute)."""
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _STANDARD_ATTRIBUTES and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``,
    ``message``, then any ``extra=`` fields, then ``exception`` when there is one.
    Everything is redacted again here, so the formatter is safe even without the filter."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in _extra_fields(record).items():
            entry[key] = _redact_value(value) if not _json_native(value) else value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact(record.stack_info)
        return json.dumps(entry, default=lambda value: redact(str(value)), ensure_ascii=False)

    @staticmethod
    def _iso_time(created: float) -> str:
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def _json_native(value: Any) -> bool:
    return isinstance(value, (int, float, bool)) or value is None


_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "fastapi")


def configure_logging(level: str = "INFO", json_logs: bool = True) -> logging.Handler:
    """Log to stderr through :class:`RedactTokens`, as JSON lines or plain text.

    Replaces the handler a previous call installed (so it is safe to call twice), leaves
    other root handlers alone, and makes uvicorn's loggers propagate to the root (run uvicorn
    with ``log_config=None`` so it does not install handlers of its own). Returns the handler.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_bosslab", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler._bosslab = True  # type: ignore[attr-defined]
    handler.addFilter(RedactTokens())
    plain = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(JsonFormatter() if json_logs else plain)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in _UVICORN_LOGGERS:
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = True
    return handler
