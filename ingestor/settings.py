"""Every setting of toss-ingest, in one place.

Environment variables carry the prefix ``TOSS_`` (``TOSS_REDIS_URL``, ``TOSS_KEY_PREFIX`` ...); an
optional ``.env`` file can be named with ``--env-file``. Durations carry their unit in the name.
Secrets are ``SecretStr``: they are never printed and ``repr`` masks them.

``load_settings`` turns pydantic's validation errors into one ``ConfigError`` line that names the
variable, what was expected and what arrived.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "TOSS_"


class ConfigError(Exception):
    """A setting has an invalid value (one line, safe to show to a user)."""


def _env(name: str, *older: str) -> AliasChoices:
    """Accept ``TOSS_<NAME>`` plus older spellings kept for the original project's users."""
    return AliasChoices(name, ENV_PREFIX + name.upper(), *(ENV_PREFIX + o for o in older))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        populate_by_name=True,
        hide_input_in_errors=True,
    )

    # --- the feed (Toss web feed defaults) -------------------------------------------------------
    websocket_url: str = "wss://realtime-socket.tossinvest.com/ws"
    guest_key_url: str = "https://wts-api.tossinvest.com/api/v1/refresh-utk"
    origin: str = "https://www.tossinvest.com"
    stomp_host: str = "realtime-socket.tossinvest.com"
    stock_destination: str = "/topic/v1/{market}/stock/{channel}/{code}"
    crypto_destination: str = "/topic/v1/crypto/{channel}/{code}"
    heartbeat_interval_ms: int = Field(
        5000, ge=0, validation_alias=_env("heartbeat_interval_ms", "HEARTBEAT_INTERVAL")
    )
    connect_timeout_s: float = Field(10.0, gt=0)
    dead_peer_factor: float = Field(3.0, ge=1.5)
    max_frame_bytes: int = Field(256 * 1024, ge=1024)
    max_ws_message_bytes: int = Field(1024 * 1024, ge=1024)
    max_reconnect_attempts: int = Field(10, ge=0)
    reconnect_initial_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(60.0, gt=0)
    healthy_session_s: float = Field(30.0, ge=0)
    stale_feed_s: float = Field(0.0, ge=0)

    # --- subscriptions -------------------------------------------------------------------------
    subscribe_batch_size: int = Field(20, ge=1)
    subscribe_batch_interval_ms: int = Field(400, ge=0)
    subscription_budget: int = Field(100, ge=1)
    reconcile_interval_s: float = Field(3.0, gt=0)

    # --- Redis -----------------------------------------------------------------------------------
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    redis_password: SecretStr | None = None
    redis_ssl_ca_certs: str | None = None
    redis_socket_timeout_s: float = Field(5.0, gt=0)
    key_prefix: str = Field("toss", min_length=1, pattern=r"^[A-Za-z0-9_.:{}-]+$")
    stream_maxlen: int = Field(1_000_000, ge=0)
    invalid_maxlen: int = Field(10_000, ge=1)

    # --- the ingest path -------------------------------------------------------------------------
    max_message_queue_size: int = Field(10_000, ge=1)
    publish_batch_max: int = Field(1000, ge=1)
    spool_dir: Path = Path("spool")
    spool_max_mb: int = Field(512, ge=0)

    # --- health ----------------------------------------------------------------------------------
    instance_name: str = Field(default_factory=socket.gethostname, min_length=1)
    health_interval_s: float = Field(2.0, gt=0)
    health_down_critical_s: float = Field(60.0, ge=0)
    health_reconnects_per_hour: int = Field(10, ge=1)
    health_reconnects_per_hour_critical: int = Field(60, ge=1)
    health_failed_ratio_critical: float = Field(0.5, ge=0, le=1)
    health_invalid_ratio: float = Field(0.001, ge=0, le=1)
    health_invalid_ratio_critical: float = Field(0.05, ge=0, le=1)
    health_queue_fill: float = Field(0.5, ge=0, le=1)
    health_queue_fill_critical: float = Field(0.9, ge=0, le=1)
    health_spool_fill_critical: float = Field(0.8, ge=0, le=1)
    health_tick_age_s: float = Field(0.0, ge=0)
    health_cpu_percent: float = Field(90.0, ge=0)
    health_lag: int = Field(10_000, ge=0)
    health_lag_critical: int = Field(1_000_000, ge=0)
    health_pending_age_s: float = Field(60.0, ge=0)
    health_error_ratio: float = Field(0.01, ge=0, le=1)
    health_error_ratio_critical: float = Field(0.5, ge=0, le=1)
    rss_soft_mb: int = Field(256, ge=0)
    rss_hard_mb: int = Field(1024, ge=0)
    failed_retry_initial_s: float = Field(30.0, gt=0)
    failed_retry_max_s: float = Field(1800.0, gt=0)

    # --- consumers -------------------------------------------------------------------------------
    worker_thread_count: int = Field(1, ge=1)
    # entries per read and per handler call. Redis writes at most 64 KB to one client per turn of
    # its event loop, and a bigger reply waits behind other clients' commands: with ~300-byte
    # ticks, 200 keeps a reply near that size, so several workers are served side by side
    consumer_batch: int = Field(200, ge=1)
    consumer_block_ms: int = Field(1000, ge=1)
    max_deliveries: int = Field(5, ge=1)
    claim_idle_ms: int = Field(30_000, ge=1)
    dead_maxlen: int = Field(100_000, ge=1)

    log_level: str = "INFO"

    @field_validator("websocket_url")
    @classmethod
    def _ws_scheme(cls, v: str) -> str:
        if urlsplit(v).scheme not in ("ws", "wss"):
            raise ValueError("must start with ws:// or wss://")
        return v

    @field_validator("guest_key_url")
    @classmethod
    def _http_scheme(cls, v: str) -> str:
        if v and urlsplit(v).scheme not in ("http", "https"):
            raise ValueError(
                "must start with http:// or https:// (or be empty for no authorization)"
            )
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: SecretStr) -> SecretStr:
        if urlsplit(v.get_secret_value()).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v

    @field_validator("stock_destination", "crypto_destination")
    @classmethod
    def _template(cls, v: str) -> str:
        try:
            v.format(market="kr", channel="trade", code="A005930")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"placeholders are {{market}}, {{channel}}, {{code}} ({exc})"
            ) from None
        return v

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return v.upper()

    @property
    def redis_url_masked(self) -> str:
        return mask_url(self.redis_url.get_secret_value())


def mask_url(url: str) -> str:
    """``redis://user:secret@host`` -> ``redis://user:***@host`` (safe for logs and errors)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _field_env_name(loc: tuple[int | str, ...]) -> str:
    return ENV_PREFIX + str(loc[0]).upper() if loc else "settings"


def load_settings(env_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Build settings from the environment (and ``env_file``), or raise one-line ``ConfigError``."""
    if env_file is not None and not Path(env_file).is_file():
        raise ConfigError(f"env file not found: {env_file}")
    try:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        raise ConfigError(f"invalid setting {_field_env_name(err.get('loc', ()))}: {msg}") from None
