"""Credentials and settings: API keys, access tokens, the admin key, log redaction, flags."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import ValidationError

from serving.auth import (
    REDACTED,
    AuthError,
    JsonFormatter,
    RedactTokens,
    bearer_token,
    check_admin_key,
    check_api_key,
    configure_logging,
    hash_api_key,
    issue_token,
    new_api_key,
    verify_api_key,
    verify_token,
)
from serving.settings import DEV_SECRET_KEY, Settings, env_name, settings_from_cli

SECRET = "test-secret-key-that-is-long-enough-0123456789"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No BOSSLAB_* variable of the machine leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("BOSSLAB_"):
            monkeypatch.delenv(name)


@pytest.fixture
def settings() -> Settings:
    return Settings(secret_key=SECRET)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _hand_built(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    """A JWT built without PyJWT, signed with HMAC-SHA256 over ``key`` (or unsigned)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    if key is None:
        return signing_input + "."
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _claims(settings: Settings, game_id: str = "game-a", **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "sub": game_id,
        "aud": settings.jwt_audience,
        "iss": settings.jwt_issuer,
        "iat": now,
        "exp": now + 600,
        "jti": "j1",
    }
    claims.update(changes)
    return claims


def _reason(token: str | None, settings: Settings, game_id: str = "game-a") -> str:
    with pytest.raises(AuthError) as caught:
        verify_token(token, game_id, settings)
    return caught.value.reason


# --- API keys and the admin key -------------------------------------------------------------


def test_api_keys_are_random_and_stored_only_as_salted_hashes() -> None:
    keys = {new_api_key() for _ in range(50)}
    assert len(keys) == 50
    key = keys.pop()
    assert key.startswith("bl_") and len(key) >= 40
    first, second = hash_api_key(key), hash_api_key(key)
    assert first != second, "each hash has its own salt"
    assert key not in first and key[3:] not in first
    assert verify_api_key(key, first) and verify_api_key(key, second)


@pytest.mark.parametrize("given", [None, "", "bl_wrong", "x" * 1000])
def test_a_wrong_api_key_is_refused(given: str | None) -> None:
    stored = hash_api_key(new_api_key())
    assert not verify_api_key(given, stored)
    with pytest.raises(AuthError) as caught:
        check_api_key(given, stored)
    assert caught.value.reason == "bad_api_key"
    assert "X-API-Key" in str(caught.value)


@pytest.mark.parametrize("stored", ["", "plain", "scrypt$1$2$3$!!$!!", "md5$a$b$c$d$e"])
def test_a_corrupt_stored_hash_verifies_nothing(stored: str) -> None:
    assert not verify_api_key(new_api_key(), stored)


def test_admin_key_guards_registration_only_when_configured() -> None:
    check_admin_key(None, Settings())  # open registration
    guarded = Settings(admin_key="the-admin-key")
    check_admin_key("the-admin-key", guarded)
    for wrong in (None, "", "the-admin-kez"):
        with pytest.raises(AuthError) as caught:
            check_admin_key(wrong, guarded)
        assert caught.value.reason == "admin_key_required"


# --- Access tokens --------------------------------------------------------------------------


def test_issued_token_carries_every_claim(settings: Settings) -> None:
    token, expires_in = issue_token("game-a", settings)
    assert expires_in == settings.token_ttl_seconds
    claims = verify_token(token, "game-a", settings)
    assert claims["sub"] == "game-a"
    assert claims["aud"] == "bosslab-games" and claims["iss"] == "bosslab"
    assert claims["exp"] - claims["iat"] == settings.token_ttl_seconds
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    other, _ = issue_token("game-a", settings)
    assert jwt.decode(other, options={"verify_signature": False})["jti"] != claims["jti"]


@pytest.mark.parametrize("token", [None, ""])
def test_missing_token(settings: Settings, token: str | None) -> None:
    assert _reason(token, settings) == "missing"


@pytest.mark.parametrize(
    "token", ["abc", "a.b", "a.b.c.d", "###.###.###", "eyJhbGciOi.eyJzdWIi.sig", "a" * 5000]
)
def test_malformed_token(settings: Settings, token: str) -> None:
    assert _reason(token, settings) == "malformed"


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_refused(settings: Settings, alg: str) -> None:
    token = _hand_built({"alg": alg, "typ": "JWT"}, _claims(settings), key=None)
    assert _reason(token, settings) == "algorithm"


def test_rs256_token_is_refused(settings: Settings) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(_claims(settings), private, algorithm="RS256")
    assert _reason(token, settings) == "algorithm"


def test_rs_hs_confusion_is_refused(settings: Settings) -> None:
    """The classic attack: HMAC-sign with a public key, hoping the server uses it as secret."""
    public_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    token = _hand_built({"alg": "HS256", "typ": "JWT"}, _claims(settings), key=public_pem)
    assert _reason(token, settings) == "bad_signature"
    relabelled = _hand_built({"alg": "RS256", "typ": "JWT"}, _claims(settings), key=public_pem)
    assert _reason(relabelled, settings) == "algorithm"


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_another_hmac_size_is_refused_even_with_the_right_secret(settings: Settings) -> None:
    token = jwt.encode(_claims(settings), SECRET, algorithm="HS512")
    assert _reason(token, settings) == "algorithm"


def test_bad_signature(settings: Settings) -> None:
    token, _ = issue_token("game-a", settings)
    head, body, signature = token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    assert _reason(f"{head}.{body}.{flipped}", settings) == "bad_signature"
    foreign = _hand_built({"alg": "HS256"}, _claims(settings), key=b"another-secret" * 3)
    assert _reason(foreign, settings) == "bad_signature"


def test_token_expires_after_its_ttl() -> None:
    short = Settings(secret_key=SECRET, token_ttl_seconds=1)
    token, expires_in = issue_token("game-a", short)
    assert expires_in == 1
    verify_token(token, "game-a", short)
    time.sleep(2.05)
    assert _reason(token, short) == "expired"


def test_token_issued_long_ago_is_expired(settings: Settings) -> None:
    token, _ = issue_token("game-a", settings, now=time.time() - settings.token_ttl_seconds - 5)
    assert _reason(token, settings) == "expired"


def test_token_from_the_future_is_refused(settings: Settings) -> None:
    token, _ = issue_token("game-a", settings, now=time.time() + 300)
    assert _reason(token, settings) == "not_yet_valid"


def test_wrong_audience_and_issuer(settings: Settings) -> None:
    other_audience = Settings(secret_key=SECRET, jwt_audience="someone-else")
    other_issuer = Settings(secret_key=SECRET, jwt_issuer="someone-else")
    assert _reason(issue_token("game-a", other_audience)[0], settings) == "wrong_audience"
    assert _reason(issue_token("game-a", other_issuer)[0], settings) == "wrong_issuer"


def test_missing_claim_is_malformed(settings: Settings) -> None:
    claims = _claims(settings)
    del claims["jti"]
    assert _reason(_hand_built({"alg": "HS256"}, claims, SECRET.encode()), settings) == "malformed"


def test_token_of_another_game_gives_nothing(settings: Settings) -> None:
    token, _ = issue_token("game-a", settings)
    with pytest.raises(AuthError) as caught:
        verify_token(token, "game-b", settings)
    assert caught.value.reason == "other_game"
    assert token not in str(caught.value)


def test_changed_secret_voids_old_tokens(settings: Settings) -> None:
    token, _ = issue_token("game-a", settings)
    assert _reason(token, Settings(secret_key=SECRET + "-rotated")) == "bad_signature"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bearer   abc.def.ghi  ", "abc.def.ghi"),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearer", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, expected: str | None) -> None:
    assert bearer_token(header) == expected


# --- Logs -----------------------------------------------------------------------------------


@pytest.fixture
def captured_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A parent logger whose handler redacts and writes JSON lines to a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.addFilter(RedactTokens())
    handler.setFormatter(JsonFormatter())
    parent = logging.getLogger("bosslab-test-redaction")
    parent.addHandler(handler)
    parent.setLevel(logging.DEBUG)
    parent.propagate = False
    yield parent, buffer
    parent.removeHandler(handler)


def test_redaction_of_every_place_a_secret_can_hide(
    captured_log: tuple[logging.Logger, io.StringIO], settings: Settings
) -> None:
    _, buffer = captured_log
    child = logging.getLogger("bosslab-test-redaction.child")  # propagated records too
    token, _ = issue_token("game-a", settings)
    api_key = new_api_key()
    child.info(  # uvicorn's access log format
        '%s - "%s %s HTTP/%s" %d',
        "127.0.0.1:5555",
        "GET",
        f"/api/v1/ws/game-a?token={token}&session_id=s1",
        "1.1",
        101,
    )
    child.info("headers %s", [(b"authorization", f"Bearer {token}".encode())])
    child.warning(f"Authorization: Bearer {token} X-API-Key: {api_key}")
    child.info("registered", extra={"api_key": api_key, "header": f"Bearer {token}"})
    child.info("query %(q)s", {"q": "token=opaque-value-123&x=1"})
    child.info("connect token=%s session=%s", "opaque-raw-456", "s1")
    try:
        raise RuntimeError(f"handshake failed for {token}")
    except RuntimeError:
        child.exception("handshake with X-API-Key=%s failed", api_key)
    text = buffer.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 7
    for secret in (token, token.split(".")[2], api_key, "opaque-value-123", "opaque-raw-456"):
        assert secret not in text
    assert lines[0]["message"] == (
        f'127.0.0.1:5555 - "GET /api/v1/ws/game-a?token={REDACTED}&session_id=s1 HTTP/1.1" 101'
    )
    assert lines[3]["api_key"] == REDACTED and lines[3]["header"] == f"Bearer {REDACTED}"
    assert lines[5]["message"] == f"connect token={REDACTED} session=s1"
    assert "RuntimeError: handshake failed for" in lines[6]["exception"]
    assert lines[6]["message"] == f"handshake with X-API-Key={REDACTED} failed"
    assert lines[6]["level"] == "ERROR" and lines[6]["logger"] == child.name


def test_redaction_leaves_ordinary_records_alone(
    captured_log: tuple[logging.Logger, io.StringIO],
) -> None:
    parent, buffer = captured_log
    parent.info("served %d moves to %s in %.1f ms", 12, "game-a", 3.25, extra={"moves": 12})
    entry = json.loads(buffer.getvalue())
    assert entry["message"] == "served 12 moves to game-a in 3.2 ms"
    assert entry["moves"] == 12


def test_configure_logging_routes_uvicorn_through_the_filter(
    capsys: pytest.CaptureFixture[str], settings: Settings
) -> None:
    root = logging.getLogger()
    level = root.level
    handler = configure_logging("INFO", json_logs=True)
    try:
        assert configure_logging("INFO", json_logs=True) is not handler
        handler = root.handlers[-1]
        assert sum(getattr(h, "_bosslab", False) for h in root.handlers) == 1
        token, _ = issue_token("game-a", settings)
        logging.getLogger("uvicorn.error").info('"WebSocket %s" [accepted]', f"/ws?token={token}")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    err = capsys.readouterr().err
    assert token not in err
    assert json.loads(err.strip().splitlines()[-1])["logger"] == "uvicorn.error"


# --- Settings -------------------------------------------------------------------------------


def test_development_accepts_the_default_secret() -> None:
    settings = Settings()
    assert settings.secret_key == DEV_SECRET_KEY and settings.uses_default_secret
    assert settings.admin_key is None
    assert DEV_SECRET_KEY not in repr(settings)


@pytest.mark.parametrize(
    ("secret", "complaint"),
    [(DEV_SECRET_KEY, "default secret key"), ("short-but-not-default", "secret key of 21")],
)
def test_production_refuses_weak_secrets(secret: str, complaint: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(production=True, secret_key=secret)
    assert complaint in str(caught.value)
    assert "BOSSLAB_SECRET_KEY" in str(caught.value)
    assert Settings(production=True, secret_key="s" * 32).production


def test_production_refusal_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOSSLAB_PRODUCTION", "true")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.setenv("BOSSLAB_SECRET_KEY", "k" * 40)
    assert Settings().production


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOSSLAB_PORT", "9100")
    monkeypatch.setenv("BOSSLAB_DATABASE_URL", "postgresql://u@db/bosslab")
    monkeypatch.setenv("BOSSLAB_BUNDLES", "bundles/a, bundles/b")
    monkeypatch.setenv("BOSSLAB_LOG_JSON", "false")
    monkeypatch.setenv("BOSSLAB_LOG_LEVEL", "debug")
    settings = settings_from_cli([])
    assert settings.port == 9100 and settings.database_url == "postgresql://u@db/bosslab"
    assert [str(path) for path in settings.bundles] == ["bundles/a", "bundles/b"]
    assert settings.log_json is False and settings.log_level == "DEBUG"
    monkeypatch.setenv("BOSSLAB_BUNDLES", '["x/one", "x/two"]')
    assert [str(path) for path in Settings().bundles] == ["x/one", "x/two"]


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOSSLAB_PORT", "9100")
    monkeypatch.setenv("BOSSLAB_HOST", "0.0.0.0")
    monkeypatch.setenv("BOSSLAB_BUNDLES", "from/env")
    settings = settings_from_cli(
        [
            "--port", "9200",
            "--database-url", "sqlite:///elsewhere.db",
            "--secret-key", "x" * 40,
            "--admin-key", "adm",
            "--bundle", "b/one",
            "--bundle", "b/two",
            "--production",
            "--no-log-json",
            "--rate-limit-per-second", "7.5",
            "--jwt-algorithm", "hs512",
            "--memory-index", "exact",
            "--cpus", "0",
        ]
    )  # fmt: skip
    assert settings.port == 9200 and settings.host == "0.0.0.0"
    assert settings.database_url == "sqlite:///elsewhere.db"
    assert settings.admin_key == "adm" and settings.production and not settings.log_json
    assert [str(path) for path in settings.bundles] == ["b/one", "b/two"]
    assert settings.rate_limit_per_second == 7.5 and settings.jwt_algorithm == "HS512"
    assert settings.memory_index == "exact" and Settings().memory_index == "ivf"
    assert settings.cpus == (0,) and Settings().cpus == ()


def test_help_lists_every_flag_with_its_environment_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        settings_from_cli(["--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in Settings.model_fields:
        flag = "--bundle" if name == "bundles" else "--" + name.replace("_", "-")
        assert flag in text, flag
        assert env_name(name) in text.replace("- ", "-"), env_name(name)
    assert DEV_SECRET_KEY not in text


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--production"], "default secret key"),
        (["--port", "70000"], "--port / BOSSLAB_PORT"),
        (["--port", "eighty"], "invalid int value"),
        (["--log-level", "chatty"], "invalid choice"),
        (["--memory-index", "hnsw"], "invalid choice"),
        (["--cpus", "0,4096"], "[4096] are not available to this process"),
        (["--cpus", "0;1"], "CPU numbers separated by commas"),
    ],
)
def test_bad_settings_exit_with_a_clear_message(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        settings_from_cli(argv)
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err
