"""The server's settings: environment variables with a ``BOSSLAB_`` prefix, or matching flags.

Every field below is read from ``BOSSLAB_<FIELD>`` (``BOSSLAB_DATABASE_URL``,
``BOSSLAB_SECRET_KEY``...) and can be given on the command line as ``--<field-with-dashes>``
(``--database-url``, ``--secret-key``); a flag wins over the environment variable.
``--bundle PATH`` is repeatable; ``BOSSLAB_BUNDLES`` takes a JSON list or comma-separated paths.

In production mode (``BOSSLAB_PRODUCTION=true`` / ``--production``) the server refuses to
start with the default secret key or one shorter than 32 characters, and refuses demo mode
(``--demo``: the playable page ``/demo``, which hands a token for the game ``demo`` to anyone).

Example::

    settings = settings_from_cli(["--port", "9000", "--bundle", "bundles/knight"])
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from serving.affinity import checked_cpus
from serving.bundle import ServedIndex

ENV_PREFIX = "BOSSLAB_"
DEV_SECRET_KEY = "bosslab-development-secret-do-not-use-in-production"
"""The default secret key: fine on a laptop, refused in production mode."""
MIN_SECRET_LENGTH = 32
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class Settings(BaseSettings):
    """How the server runs. Build with ``Settings()`` (environment) or :func:`settings_from_cli`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        use_attribute_docstrings=True,
        frozen=True,
        extra="forbid",
    )

    host: str = "127.0.0.1"
    """Address to listen on (0.0.0.0 for every interface)."""
    port: int = Field(default=8000, ge=0, le=65535)
    """TCP port to listen on (0 picks a free one)."""
    database_url: str = "sqlite:///bosslab-serving.db"
    """Where games, sessions, decisions and outcomes are stored: sqlite:///PATH (embedded,
    the default) or postgresql://USER:PASSWORD@HOST:PORT/DATABASE."""
    secret_key: str = Field(default=DEV_SECRET_KEY, repr=False, min_length=1)
    """Signs access tokens (JWT). Set a random value of 32+ characters in production, e.g.
    `python -c "import secrets; print(secrets.token_urlsafe(48))"`."""
    admin_key: str | None = Field(default=None, repr=False)
    """Required as X-Admin-Key to register a game; unset = open registration (development)."""
    production: bool = False
    """Production mode: refuses to start with a default or short secret key, or with --demo."""
    demo: bool = False
    """Development mode: registers the game `demo` at start and serves the playable page /demo,
    which gets a token for it from /demo/token (anyone can). Refused in production mode."""
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    """The one algorithm access tokens are signed and accepted with (pinned)."""
    jwt_audience: str = "bosslab-games"
    """The `aud` claim of access tokens."""
    jwt_issuer: str = "bosslab"
    """The `iss` claim of access tokens."""
    token_ttl_seconds: int = Field(default=3600, ge=1)
    """How long an access token is valid, in seconds."""
    max_message_bytes: int = Field(default=65536, ge=1024)
    """Largest WebSocket frame accepted; a bigger one closes the socket with 1009."""
    rate_limit_per_second: float = Field(default=50.0, gt=0)
    """Messages per second a socket may send on average (token bucket rate)."""
    rate_limit_burst: int = Field(default=100, ge=1)
    """Messages a socket may send at once before the rate limit applies (bucket size)."""
    max_connections: int = Field(default=2000, ge=1)
    """Open WebSocket connections the server accepts at once."""
    heartbeat_interval: float = Field(default=15.0, gt=0)
    """Seconds between the server's heartbeat messages on an idle socket."""
    idle_timeout: float = Field(default=60.0, gt=0)
    """Seconds without any message from the client before the socket is closed."""
    bundles: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    """Exported policy bundles to serve (directories holding manifest.json); repeat --bundle
    for several, or give BOSSLAB_BUNDLES as a JSON list or comma-separated paths."""
    brain_process: bool = True
    """Run the games' brains (memory search, policy, memory writes) in a child process, on
    another core than the event loop (false: in the server's own process)."""
    memory_index: ServedIndex = "ivf"
    """How each game's memory is indexed; it fills up with outcomes and then stays full:
    ivf (inverted lists sized for its capacity: exact until a move holds enough entries to
    train them, then a tenth of them, at least 8, scanned), exact (every entry scanned on
    every search and eviction), or bundle (as the bundle's memory was)."""
    cpus: Annotated[tuple[int, ...], NoDecode] = ()
    """CPUs to pin the server to, comma-separated (Linux): the event loop's process on the
    first, the brain and storage processes on the others (or the first too). On a dedicated
    2-core machine `0,1` keeps them out of each other's way; unset, nothing is pinned."""
    storage_nice: int = Field(default=10, ge=0, le=19)
    """How much nicer than the server its storage process runs (0-19; 0: as nice): its
    group commits can wait a few milliseconds, so they yield the CPU to the event loop and
    the brain, which a decision waits for."""
    log_level: LogLevel = "INFO"
    """Lowest level logged: DEBUG, INFO, WARNING, ERROR or CRITICAL."""
    log_json: bool = True
    """Log one JSON object per line (false: plain text for a terminal)."""

    @field_validator("bundles", mode="before")
    @classmethod
    def _split_bundles(cls, value: Any) -> Any:
        """Accept a JSON list or comma-separated paths from the environment."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]

    @field_validator("cpus", mode="before")
    @classmethod
    def _split_cpus(cls, value: Any) -> Any:
        """Accept comma-separated CPU numbers ("0,1") from the environment or a flag."""
        if not isinstance(value, str):
            return value
        try:
            return tuple(int(part) for part in value.split(",") if part.strip())
        except ValueError:
            raise ValueError(f"cpus must be CPU numbers separated by commas, e.g. 0,1 (got "
                             f"{value!r})") from None

    @field_validator("cpus", mode="after")
    @classmethod
    def _available_cpus(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        return checked_cpus(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _refuse_weak_secret_in_production(self) -> Settings:
        if not self.production:
            return self
        if self.secret_key == DEV_SECRET_KEY:
            raise ValueError(
                f"production mode refuses the default secret key: set {ENV_PREFIX}SECRET_KEY "
                "(or --secret-key) to a random value of at least "
                f"{MIN_SECRET_LENGTH} characters, e.g. the output of "
                '`python -c "import secrets; print(secrets.token_urlsafe(48))"`'
            )
        if len(self.secret_key) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"production mode refuses a secret key of {len(self.secret_key)} characters: "
                f"set {ENV_PREFIX}SECRET_KEY (or --secret-key) to a random value of at least "
                f"{MIN_SECRET_LENGTH} characters"
            )
        return self

    @model_validator(mode="after")
    def _refuse_demo_in_production(self) -> Settings:
        if self.production and self.demo:
            raise ValueError(
                "production mode refuses demo mode: /demo/token hands a token for the game "
                "`demo` to anyone who asks. Drop --demo (unset "
                f"{ENV_PREFIX}DEMO) in production, or drop --production to play the demo "
                "on a development server"
            )
        return self

    @property
    def uses_default_secret(self) -> bool:
        """True while the development secret key signs tokens (worth a warning at start)."""
        return self.secret_key == DEV_SECRET_KEY


def env_name(field: str) -> str:
    """The environment variable that sets a field: ``database_url`` -> ``BOSSLAB_DATABASE_URL``."""
    return f"{ENV_PREFIX}{field.upper()}"


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags: one per :class:`Settings` field, none with a default of its own
    (an absent flag leaves the environment variable or the field's default in force)."""
    parser = argparse.ArgumentParser(
        prog="python -m serving",
        description="Serve adaptive boss policies over HTTP and WebSocket (../shared/PROTOCOL.md). "
        "Every flag can also be set by the environment variable named in its help; "
        "a flag wins over the environment.",
        argument_default=argparse.SUPPRESS,
    )
    for name, info in Settings.model_fields.items():
        flags, options = _flag_for(name, info.annotation)
        default = info.get_default(call_default_factory=True)
        doc = (info.description or "").replace("%", "%%")
        shown = "(hidden)" if name in {"secret_key", "admin_key"} else default
        options["help"] = f"{doc} [env {env_name(name)}; default {shown}]"
        parser.add_argument(*flags, dest=name, **options)
    return parser


def _flag_for(name: str, annotation: Any) -> tuple[list[str], dict[str, Any]]:
    """The argparse flag and options for one field, from its type."""
    flag = "--" + name.replace("_", "-")
    base = _strip_annotated(annotation)
    if base is bool:
        return [flag], {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(base) is list:
        return ["--bundle"], {"action": "append", "metavar": "PATH"}
    if typing.get_origin(base) is Literal:
        choices = list(typing.get_args(base))
        fold = str.upper if all(choice.isupper() for choice in choices) else str.lower
        return [flag], {"choices": choices, "type": fold}
    if base in (int, float):
        return [flag], {"type": base, "metavar": base.__name__.upper()}
    if typing.get_origin(base) is tuple:
        return [flag], {"metavar": "N,N"}
    return [flag], {"metavar": "TEXT"}


def _strip_annotated(annotation: Any) -> Any:
    """``Annotated[X, ...]`` -> X and ``X | None`` -> X."""
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if isinstance(annotation, types.UnionType):
        non_none = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        annotation = non_none[0]
    return annotation


def settings_from_cli(argv: Sequence[str] | None = None) -> Settings:
    """Settings from command-line flags over ``BOSSLAB_*`` environment variables.

    Invalid settings (a bad value, a weak secret in production) print what was wrong and
    exit with status 2, like any bad flag.
    """
    parser = build_parser()
    flags = vars(parser.parse_args(argv))
    try:
        return Settings(**flags)
    except ValidationError as error:
        parser.exit(2, f"{parser.prog}: error: {_explain(error)}\n")


def _explain(error: ValidationError) -> str:
    """One line per invalid setting, naming its flag and environment variable."""
    lines = ["invalid settings:"]
    for problem in error.errors():
        field = str(problem["loc"][0]) if problem["loc"] else ""
        where = f"--{field.replace('_', '-')} / {env_name(field)}: " if field else ""
        message = problem["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}{message}")
    return "\n".join(lines)
