"""TLS to Redis (rediss:// with a CA file): the ingestor, a worker and toss-ctl, against a
redis-server the test starts with a certificate it makes itself."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from pydantic import SecretStr

from cli.main import main as ctl_main
from consumers.worker import Worker, WorkerOptions
from ingestor.settings import Settings
from ingestor.simulator import Simulator
from tests.conftest import sim_settings, until
from tests.test_ingestor import running

PASSWORD = "tls-s3cret"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[str, str]]:
    if shutil.which("openssl") is None or shutil.which("redis-server") is None:
        pytest.fail("openssl and redis-server are needed for the TLS test", pytrace=False)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=toss-test-ca",
        cwd=tmp_path,
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
        cwd=tmp_path,
    )
    (tmp_path / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        cwd=tmp_path,
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            "server.crt",
            "--tls-key-file",
            "server.key",
            "--tls-ca-cert-file",
            "ca.crt",
            "--tls-auth-clients",
            "no",
            "--requirepass",
            PASSWORD,
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0"
    ca = str(tmp_path / "ca.crt")
    deadline = time.monotonic() + 10
    while True:
        try:
            with redis.Redis.from_url(url, ssl_ca_certs=ca, socket_connect_timeout=0.5) as r:
                r.ping()
                break
        except (redis.RedisError, OSError):
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    yield url, ca
    proc.kill()
    proc.wait()


async def test_ingestor_worker_and_ctl_over_tls(
    tls_redis: tuple[str, str],
    settings: Settings,
    sim: Simulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, ca = tls_redis
    s = sim_settings(settings, sim, redis_url=SecretStr(url), redis_ssl_ca_certs=ca)
    monkeypatch.setenv("TOSS_REDIS_URL", url)
    monkeypatch.setenv("TOSS_REDIS_SSL_CA_CERTS", ca)
    monkeypatch.setenv("TOSS_KEY_PREFIX", s.key_prefix)
    out = CliRunner().invoke(ctl_main, ["subscribe", "A005930", "kr"])
    assert out.exit_code == 0, out.output
    async with running(s) as ing:
        assert ing.publisher._resp is None  # TLS goes through redis-py
        await until(lambda: ing.publisher.written > 20, what="ticks written over TLS")

        def status_connected() -> str | None:
            res = CliRunner().invoke(ctl_main, ["status"])
            ok = res.exit_code == 0 and "test-ingestor: connected" in res.output
            return res.output if ok else None

        status_text = await until(status_connected, what="toss-ctl status over TLS")
    w = Worker(
        s, WorkerOptions(group="g", handler="noop", markets=("kr",), from_start=True, burst=True)
    )
    assert await asyncio.wait_for(w.run(), 20) == 0
    await w.redis.aclose()
    assert w.processed == ing.publisher.written
    assert PASSWORD not in status_text + out.output


def test_tls_without_the_ca_is_one_clear_line(
    tls_redis: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = tls_redis
    monkeypatch.setenv("TOSS_REDIS_URL", url)
    monkeypatch.delenv("TOSS_REDIS_SSL_CA_CERTS", raising=False)
    out = CliRunner().invoke(ctl_main, ["subs"])
    assert out.exit_code == 1
    assert "Redis unreachable at rediss://:***@127.0.0.1" in out.output
    assert PASSWORD not in out.output and len(out.output.strip().splitlines()) == 1


def test_plain_redis_url_has_the_ca_ignored(settings: Settings) -> None:
    from ingestor.redisconn import async_client

    s = settings.model_copy(update={"redis_ssl_ca_certs": "/nonexistent.crt"})
    client = async_client(s)  # a CA for a redis:// URL is simply not used
    assert "ssl_ca_certs" not in client.connection_pool.connection_kwargs
