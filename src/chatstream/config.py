"""Settings: every knob chatstream has, read once from the environment.

`Settings()` is built once (by the CLI, or by a test with explicit values) and
passed to `create_app(settings)`; nothing reads the environment afterwards.
Names follow the contract: `CHATSTREAM_*`, plus the standard `OPENAI_API_KEY`
and `OPENAI_BASE_URL`.
"""

from __future__ import annotations

import re
from ipaddress import ip_network
from pathlib import Path
from typing import Annotated, Literal

from limits import parse_many
from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from chatstream.config_urls import (
    check_base_url,
    check_database_url,
    check_redis_url,
    check_store_url,
)
from chatstream.limiting.quotas.window import window_seconds

CommaList = Annotated[list[str], NoDecode]


class ConfigurationError(ValueError):
    """A setting that cannot work, found after `Settings` was built (a tool name, a key file).

    Its message is one line that names the variable and says what to change.
    """


DEMO_MODEL = "demo"  # the model name of the built-in offline demo upstream


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CHATSTREAM_",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    # --- upstream -----------------------------------------------------------
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key")
    )
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL", "openai_base_url")
    )
    models: CommaList = Field(default_factory=lambda: ["gpt-4o-mini"], min_length=1)
    upstream_connect_timeout_s: float = Field(default=10.0, gt=0)
    # Until the first token: covers queueing on the model server and prompt processing.
    upstream_first_token_timeout_s: float = Field(default=60.0, gt=0)
    # Between two reads once the stream flows.
    upstream_idle_timeout_s: float = Field(default=60.0, gt=0)
    upstream_max_retries: int = Field(default=2, ge=0, le=10)
    upstream_max_connections: int = Field(default=4096, ge=1)

    # --- storage ------------------------------------------------------------
    database_url: str = "sqlite+aiosqlite:///./chatstream.db"
    # Bring an older schema up to this release's at start-up (else refuse to start).
    auto_migrate: bool = True
    # Shares runs, limits and the run cap between instances (contract §6).
    redis_url: str | None = None
    # A run's instance renews its lease this often (a third of it); when a lease
    # lapses, another instance ends the run as interrupted.
    run_lease_s: float = Field(default=15.0, gt=0)
    # `serve --workers N`: a worker whose event loop sends no heartbeat this long
    # (stuck, or paused) is killed and replaced.
    worker_heartbeat_timeout_s: float = Field(default=10.0, gt=0)
    # Clients of this instance following runs of other instances at once: each
    # holds one Redis connection while it waits for events.
    redis_max_followers: int = Field(default=10000, ge=1)
    spool_dir: Path = Path("./spool")
    # The most the spool's waiting answers may take on disk (unset: the disk's free space).
    # Beyond it (or with the disk full), answers are held in memory until one of the
    # database and the spool takes them.
    spool_max_bytes: int | None = Field(default=None, gt=0)
    database_busy_timeout_s: float = Field(default=5.0, gt=0)  # SQLite: wait this long for a lock
    checkpoint_interval_s: float = Field(default=1.0, gt=0)  # live runs' text to the spool

    # --- requests and runs --------------------------------------------------
    max_message_chars: int = Field(default=4000, ge=1)
    max_tokens: int = Field(default=4096, ge=1)
    max_body_bytes: int = Field(default=65536, ge=1024)
    history_messages: int = Field(default=10, ge=1)
    history_chars: int = Field(default=24000, ge=1)
    thinking_interval_s: float = Field(default=5.0, gt=0)
    keepalive_interval_s: float = Field(default=15.0, gt=0)
    run_retention_s: float = Field(default=300.0, ge=0)
    max_run_duration_s: float = Field(default=600.0, gt=0)
    on_disconnect: Literal["continue", "cancel"] = "continue"
    max_live_runs: int = Field(default=2000, ge=1)
    # Ended runs kept followable (for CHATSTREAM_RUN_RETENTION_S); beyond this
    # many the oldest are forgotten first (still readable from the database).
    max_retained_runs: int = Field(default=10000, ge=0)
    # ... and beyond this many bytes of their events (64 MiB), the same.
    run_retention_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    ws_max_runs: int = Field(default=8, ge=1)  # live runs one WebSocket may follow at once
    # A client whose connection accepts nothing for this long is dropped (SSE and WebSocket).
    send_timeout_s: float = Field(default=10.0, gt=0)
    ws_auth_timeout_s: float = Field(default=10.0, gt=0)  # the first `auth` frame must come by then
    # A WebSocket that sends no frame (a `ping` will do) this long, while it follows no run,
    # is closed (1000, "idle").
    ws_idle_timeout_s: float = Field(default=300.0, gt=0)
    shutdown_grace_s: float = Field(default=25.0, ge=0)

    # --- tools ----------------------------------------------------------------
    tools: CommaList = Field(default_factory=lambda: ["get_current_time"])
    max_tool_rounds: int = Field(default=5, ge=0)
    tool_timeout_s: float = Field(default=30.0, gt=0)
    # Offer the built-in tools on `/v1` calls that bring no tools of their own.
    openai_server_tools: bool = False
    # Models that take no images: a /v1 request with an image for one is a 400.
    models_without_vision: CommaList = Field(default_factory=list)

    # --- auth and limits ----------------------------------------------------
    auth: Literal["none", "jwt"] = "none"
    jwt_secret: SecretStr | None = None
    jwt_public_key: str | None = None
    jwt_public_key_file: Path | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    # "N/second|minute|hour|day" (limits syntax) per owner, or per client IP with
    # auth off, on starting chats; empty: no limit.
    rate_limit: str = "30/minute"
    rate_limit_storage: str = "memory://"  # or redis://…, shared by every instance
    # While that Redis is unreachable: refuse chats (503, the default) or let them through.
    rate_limit_fail_open: bool = False
    max_concurrent_runs: int = Field(default=4, ge=1)
    redis_key_prefix: str = Field(default="chatstream", min_length=1)
    # Token quotas per owner (chatstream.limiting.quotas): this many tokens per window, shared by
    # every model without a limit of its own in quota_models ("model=N,…"); unset: off.
    quota_tokens: int | None = Field(default=None, ge=0)
    quota_window: str = "day"  # minute, hour, day (UTC) or N seconds, aligned to the epoch
    quota_models: Annotated[dict[str, int], NoDecode] = Field(default_factory=dict)
    cors_origins: CommaList = Field(default_factory=list)
    trusted_proxies: CommaList = Field(default_factory=list)  # addresses or CIDR networks

    # --- bots and after-the-answer work (issue 15) -----------------------------
    # Telegram (contract section 10): the webhook exists only with both of these.
    telegram_bot_token: SecretStr | None = None
    telegram_webhook_secret: SecretStr | None = None
    telegram_api_base: str = "https://api.telegram.org"
    telegram_mode: Literal["draft", "edit", "chunks"] = "draft"
    telegram_chunk_chars: int = Field(default=300, ge=1, le=4096)
    # Post-run hooks: each call gets this long before it is cancelled (and logged).
    hook_timeout_s: float = Field(default=30.0, gt=0)
    # A session with no title gets one: from its first user message (set with
    # it), from the model (a hook after the first answer), or not at all.
    auto_title: Literal["message", "model", "off"] = "message"
    # The answer cache: off unless a TTL is set; memory:// or redis://… (its own
    # setting, so that it does not depend on where the rate limits live).
    cache_ttl_s: float | None = Field(default=None, gt=0)
    cache_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    cache_storage: str = "memory://"

    # --- serving --------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # --- observability: metrics and tracing (chatstream.metrics, chatstream.tracing) ---
    metrics: bool = True  # `GET /metrics` and the collectors behind it
    # Set when several processes serve as one (`serve --workers N`): each writes its
    # figures here and a scrape of any of them reads them all (prometheus_client's
    # multiprocess mode). Unset: each process counts in memory.
    metrics_dir: Path | None = None
    # OpenTelemetry tracing is on when this standard variable is set (OTLP over
    # HTTP, e.g. http://collector:4318; needs `pip install chatstream[otel]`).
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT", "otel_exporter_otlp_endpoint"),
    )

    _split = field_validator("models", "tools", "cors_origins", "trusted_proxies", mode="before")(
        _split_commas
    )

    @field_validator("openai_base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        return check_base_url(value) if value else value

    @field_validator("rate_limit")
    @classmethod
    def _check_rate_limit(cls, value: str) -> str:
        if value.strip():
            try:
                parse_many(value)
            except ValueError:
                raise ValueError("must look like 30/minute (limits syntax), or be empty") from None
        return value.strip()

    @field_validator("quota_window")
    @classmethod
    def _check_quota_window(cls, value: str) -> str:
        window_seconds(value)
        return value.strip().lower()

    @field_validator("quota_models", mode="before")
    @classmethod
    def _parse_quota_models(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        limits: dict[str, str] = {}
        for item in (part.strip() for part in value.split(",")):
            model, equals, tokens = item.rpartition("=")
            if item and not (equals and model.strip() and tokens.strip().isdigit()):
                raise ValueError(f"{item!r} is not model=tokens (as in gpt-4o=100000)")
            if item:
                limits[model.strip()] = tokens.strip()
        return limits

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        return check_database_url(value)

    @field_validator("rate_limit_storage", "cache_storage")
    @classmethod
    def _check_storage(cls, value: str) -> str:
        return check_store_url(value)

    @field_validator("telegram_webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # Telegram's own rule for secret_token: 1-256 characters A-Z, a-z, 0-9, _ and -.
        if value is not None and not re.fullmatch(
            r"[A-Za-z0-9_-]{1,256}", value.get_secret_value()
        ):
            raise ValueError("must be 1-256 characters of A-Z, a-z, 0-9, _ and -")
        return value

    @model_validator(mode="after")
    def _check_telegram(self) -> Settings:
        if (self.telegram_bot_token is None) != (self.telegram_webhook_secret is None):
            raise ValueError(
                "CHATSTREAM_TELEGRAM_BOT_TOKEN and CHATSTREAM_TELEGRAM_WEBHOOK_SECRET go together: "
                "set both (the webhook refuses requests without the secret) or neither"
            )
        return self

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not an IP address or network") from None
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        return check_redis_url(value) if value else None

    @model_validator(mode="after")
    def _demo_model(self) -> Settings:
        # The offline demo is not a real model: it says so under its own name,
        # unless CHATSTREAM_MODELS names models (clients written for a real server).
        if self.demo and "models" not in self.model_fields_set:
            object.__setattr__(self, "models", [DEMO_MODEL])
        return self

    @model_validator(mode="after")
    def _check_jwt(self) -> Settings:
        if self.auth != "jwt":
            return self
        keys = [self.jwt_secret, self.jwt_public_key, self.jwt_public_key_file]
        if sum(key is not None for key in keys) != 1:
            raise ValueError(
                "CHATSTREAM_AUTH=jwt needs exactly one of CHATSTREAM_JWT_SECRET, "
                "CHATSTREAM_JWT_PUBLIC_KEY or CHATSTREAM_JWT_PUBLIC_KEY_FILE"
            )
        if self.jwt_secret is not None and len(self.jwt_secret.get_secret_value().encode()) < 32:
            raise ValueError("CHATSTREAM_JWT_SECRET must be at least 32 bytes long")
        return self

    @model_validator(mode="after")
    def _check_quota_models(self) -> Settings:
        if not self.quota_models:
            return self
        if self.quota_tokens is None:
            raise ValueError(
                "CHATSTREAM_QUOTA_MODELS needs CHATSTREAM_QUOTA_TOKENS, the limit of the "
                "models it does not name (set it, or unset CHATSTREAM_QUOTA_MODELS)"
            )
        unknown = [model for model in self.quota_models if model not in self.models]
        negative = [model for model, tokens in self.quota_models.items() if tokens < 0]
        if unknown:
            raise ValueError(
                f"CHATSTREAM_QUOTA_MODELS names {', '.join(unknown)}, not in CHATSTREAM_MODELS "
                f"({', '.join(self.models)})"
            )
        if negative:
            raise ValueError(f"CHATSTREAM_QUOTA_MODELS: a limit must be 0 or more ({negative[0]})")
        return self

    @property
    def quota_window_s(self) -> int:
        return window_seconds(self.quota_window)

    @property
    def demo(self) -> bool:
        """No key and no base URL: run on the built-in offline demo upstream."""
        return self.openai_api_key is None and not self.openai_base_url

    @property
    def default_model(self) -> str:
        return self.models[0]

    @property
    def cache_store(self) -> str:
        """Where answers are cached: CHATSTREAM_CACHE_STORAGE, else the shared Redis."""
        if self.cache_storage.startswith("memory://") and self.redis_url:
            return self.redis_url
        return self.cache_storage

    @property
    def limits_storage(self) -> str:
        """Where limits live: CHATSTREAM_RATE_LIMIT_STORAGE, else the shared Redis, else memory."""
        if self.rate_limit_storage.startswith("memory://") and self.redis_url:
            return self.redis_url
        return self.rate_limit_storage

    @property
    def telegram_enabled(self) -> bool:
        return self.telegram_bot_token is not None and self.telegram_webhook_secret is not None

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
