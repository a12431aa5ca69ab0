"""Shared fixtures: a Redis per test session (the real one when it answers), a key prefix per test,
settings pointing at a local simulator, and condition polling with deadlines (no bare sleeps)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
import redis
import redis.asyncio as aredis

from ingestor.settings import Settings, load_settings
from ingestor.simulator import Scenario, Simulator

T = TypeVar("T")
DEFAULT_TEST_REDIS = "redis://127.0.0.1:6379/15"
_backend: dict[str, str] = {}


def _reachable(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=1) as r:
            return bool(r.ping())
    except (redis.RedisError, OSError):
        return False


def _start_fakeredis() -> str:
    from fakeredis import TcpFakeServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = TcpFakeServer(("127.0.0.1", port), server_type="redis", server_version=(7, 0))
    server.RequestHandlerClass = _keep_open_after_errors(server.RequestHandlerClass)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"redis://127.0.0.1:{port}/0"


def _keep_open_after_errors(base: Any) -> Any:
    """fakeredis's TCP server hangs up after any error reply (``XINFO STREAM`` of a new stream,
    ``BUSYGROUP``...); real Redis keeps the connection, and redis-py then reuses it. This handler
    goes on reading after an error reply, as Redis does; it stops when the client hangs up.
    (It wraps fakeredis internals of 2.40; where they differ, the server is left unchanged.)"""

    class KeepOpen(base):  # type: ignore[misc, valid-type]
        error_replies = 0

        def setup(self) -> None:
            super().setup()
            dump = getattr(getattr(self, "writer", None), "dump", None)
            if dump is None:  # another fakeredis layout: leave it as it is
                return

            def noting(value: Any) -> None:
                if isinstance(value, Exception):
                    self.error_replies += 1
                dump(value)

            self.writer.dump = noting

        def handle(self) -> None:
            seen = -1
            while self.error_replies != seen:  # the loop ended on an error reply: go on
                seen = self.error_replies
                super().handle()

    return KeepOpen


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("TOSS_TEST_REDIS_URL", DEFAULT_TEST_REDIS)
    if _reachable(url):
        _backend["name"] = f"real Redis at {url}"
        return url
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and no real Redis answers at {url}", pytrace=False)
    _backend["name"] = "fakeredis TCP server (no real Redis answered at " + url + ")"
    return _start_fakeredis()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without a real Redis (a laptop, CI unset) the suite runs on fakeredis, which lacks Lua,
    AUTH/ACL and some stream and connection semantics: tests marked ``real_redis`` say so and
    are skipped there. Under CI a real Redis is required, so they always run."""
    url = os.environ.get("TOSS_TEST_REDIS_URL", DEFAULT_TEST_REDIS)
    if os.environ.get("CI") == "true" or _reachable(url):
        return
    for item in items:
        marker = item.get_closest_marker("real_redis")
        if marker is not None:
            why = marker.args[0] if marker.args else "needs a real Redis"
            item.add_marker(pytest.mark.skip(reason=f"fakeredis backend: {why}"))


def pytest_report_header(config: pytest.Config) -> str:
    url = os.environ.get("TOSS_TEST_REDIS_URL", DEFAULT_TEST_REDIS)
    return f"redis backend: {'real Redis at ' + url if _reachable(url) else 'fakeredis (fallback)'}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if "name" in _backend:
        terminalreporter.write_line(f"redis backend used: {_backend['name']}")


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    p = "test-" + uuid.uuid4().hex[:10]
    yield p
    with redis.Redis.from_url(redis_url) as r:
        keys = list(r.scan_iter(match=f"{p}:*", count=1000))
        if keys:
            r.delete(*keys)


@pytest.fixture
def settings(redis_url: str, prefix: str, tmp_path: Any) -> Settings:
    return load_settings(
        redis_url=redis_url,
        key_prefix=prefix,
        instance_name="test-ingestor",
        heartbeat_interval_ms=500,
        reconnect_initial_s=0.05,
        reconnect_max_s=0.3,
        healthy_session_s=60,
        reconcile_interval_s=0.5,
        health_interval_s=0.3,
        connect_timeout_s=3,
        subscribe_batch_interval_ms=100,
        spool_dir=tmp_path / "spool",
        max_reconnect_attempts=0,
    )


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[aredis.Redis]:
    client = aredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    s = Simulator(rate=200.0, scenario=Scenario(), heartbeat_ms=500)
    await s.start()
    yield s
    await s.stop()


def sim_settings(settings: Settings, sim: Simulator, **changes: Any) -> Settings:
    return settings.model_copy(
        update={"websocket_url": sim.ws_url, "guest_key_url": sim.guest_key_url, **changes}
    )


async def eventually(
    probe: Callable[[], Awaitable[T]], timeout_s: float = 10.0, what: str = "condition"
) -> T:
    """Poll ``probe`` until it returns something truthy, or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last={last!r}")


def db_of(url: str) -> int:
    path = urlsplit(url).path.strip("/")
    return int(path) if path else 0


async def until(
    predicate: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition"
) -> Any:
    """Like ``eventually`` for a plain (non-async) predicate."""

    async def probe() -> Any:
        return predicate()

    return await eventually(probe, timeout_s, what)


class PrivateRedis:
    """A redis-server of the test's own, on a free loopback port, with an fsync'ed AOF so that
    stopping and starting it loses nothing that was acknowledged. Never the shared Redis."""

    def __init__(self, directory: Any, extra: tuple[str, ...] = ()) -> None:
        import shutil

        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed", pytrace=False)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = directory
        self.extra = extra
        self.proc: Any = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import subprocess

        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with redis.Redis(port=self.port, socket_connect_timeout=0.2) as r:
                    if r.ping():
                        return
            except redis.AuthenticationError:
                return
            except (redis.RedisError, OSError):
                time.sleep(0.02)
        raise RuntimeError("private redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def private_redis(tmp_path: Any) -> Iterator[PrivateRedis]:
    pr = PrivateRedis(tmp_path)
    pr.start()
    yield pr
    pr.kill()
