"""Redis clients built from settings, and one-line messages for Redis failures."""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aredis
from redis.exceptions import (
    AuthenticationError,
    ConnectionError,
    NoPermissionError,
    RedisError,
    ResponseError,
)

from ingestor.settings import Settings


def _kwargs(s: Settings) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "socket_timeout": s.redis_socket_timeout_s,
        "socket_connect_timeout": s.redis_socket_timeout_s,
        "health_check_interval": 30,
    }
    if s.redis_password is not None:
        kw["password"] = s.redis_password.get_secret_value()
    if s.redis_ssl_ca_certs and s.redis_url.get_secret_value().startswith("rediss://"):
        kw["ssl_ca_certs"] = s.redis_ssl_ca_certs
    return kw


def async_client(s: Settings, **extra: Any) -> aredis.Redis:
    return aredis.Redis.from_url(s.redis_url.get_secret_value(), **{**_kwargs(s), **extra})


def sync_client(s: Settings, **extra: Any) -> redis.Redis:
    return redis.Redis.from_url(s.redis_url.get_secret_value(), **{**_kwargs(s), **extra})


def describe(exc: BaseException, s: Settings) -> str:
    """One line for a user: what failed and where (password masked)."""
    url = s.redis_url_masked
    if isinstance(exc, AuthenticationError) or (
        isinstance(exc, ResponseError) and "WRONGPASS" in str(exc)
    ):
        return f"Redis at {url} refused the credentials (wrong user or password)"
    if isinstance(exc, NoPermissionError) or (
        isinstance(exc, ResponseError) and "NOPERM" in str(exc)
    ):
        why = str(exc).rsplit("caused error: ", 1)[-1].splitlines()[0]
        return f"Redis at {url}: the user lacks a permission ({why})"
    if isinstance(exc, ConnectionError | TimeoutError | OSError):
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"Redis unreachable at {url}: {why}"
    if isinstance(exc, RedisError):
        return f"Redis error at {url}: {str(exc).splitlines()[0]}"
    return f"{type(exc).__name__}: {exc}"
