"""Each process under its minimal ACL user (``toss-ctl acl``) on a Redis the test starts itself,
and no password in logs, keys, or CLI output."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aredis
from click.testing import CliRunner
from pydantic import SecretStr

from cli.main import main as ctl_main
from consumers.worker import Worker, WorkerOptions
from ingestor.acl import ROLES, rules
from ingestor.keys import Keys
from ingestor.settings import Settings
from ingestor.simulator import Simulator
from tests.conftest import PrivateRedis, sim_settings, until
from tests.test_ingestor import running

PASSWORDS = {role: f"pw-{role}-s3cr3t" for role in ROLES}


async def test_every_role_works_under_its_acl_user_and_no_password_leaks(
    private_redis: PrivateRedis,
    settings: Settings,
    sim: Simulator,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level("DEBUG")
    admin = aredis.Redis.from_url(private_redis.url)
    prefix = settings.key_prefix
    for role in ROLES:
        await admin.execute_command(
            "ACL",
            "SETUSER",
            f"toss-{role}",
            "on",
            f">{PASSWORDS[role]}",
            *rules(role, prefix).split(),
        )

    def url(role: str) -> str:
        return f"redis://toss-{role}:{PASSWORDS[role]}@127.0.0.1:{private_redis.port}/0"

    keys = Keys(prefix)
    # toss-ctl as its user
    monkeypatch.setenv("TOSS_REDIS_URL", url("ctl"))
    monkeypatch.setenv("TOSS_KEY_PREFIX", prefix)
    runner = CliRunner()
    out = runner.invoke(ctl_main, ["bulk", "A005930,A000660", "kr"])
    assert out.exit_code == 0, out.output
    # the ingestor as its user
    s = sim_settings(settings, sim, redis_url=SecretStr(url("ingestor")))
    async with running(s) as ing:
        await until(lambda: ing.publisher.written > 20 and ing.status == "connected")
        await until(lambda: not ing._dirty_states, what="states written")
        status = runner.invoke(ctl_main, ["status"])
        health = runner.invoke(ctl_main, ["subs"])
        assert status.exit_code == 0, status.output
        assert "kr:trade:A005930" in health.output and "active" in health.output
    # a worker as its user, with a handler that uses scripts
    ws = settings.model_copy(update={"redis_url": SecretStr(url("consumer"))})
    w = Worker(
        ws,
        WorkerOptions(
            group="g", handler="latest", markets=("kr",), name="w1", from_start=True, burst=True
        ),
    )
    assert await asyncio.wait_for(w.run(), 20) == 0
    await w.redis.aclose()
    assert w.processed > 0 and w.errors == 0
    assert await admin.hget(keys.latest("kr"), "A005930")
    dump = []
    async for key in admin.scan_iter(match=f"{prefix}:*"):
        t = (await admin.type(key)).decode()
        if t == "hash":
            dump.append(repr(await admin.hgetall(key)))
        elif t == "stream":
            dump.append(repr(await admin.xrange(key)))
    text = caplog.text + status.output + health.output + out.output + "\n".join(dump)
    assert "NOPERM" not in text
    for pw in PASSWORDS.values():
        assert pw not in text
    await admin.aclose()


async def test_a_user_without_the_rights_gets_one_clear_line(
    private_redis: PrivateRedis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = aredis.Redis.from_url(private_redis.url)
    await admin.execute_command(
        "ACL",
        "SETUSER",
        "reader",
        "on",
        ">pw-reader",
        "~*",
        "-@all",
        "+ping",
        "+smembers",
    )
    monkeypatch.setenv(
        "TOSS_REDIS_URL", f"redis://reader:pw-reader@127.0.0.1:{private_redis.port}/0"
    )
    monkeypatch.setenv("TOSS_KEY_PREFIX", settings.key_prefix)
    out = CliRunner().invoke(ctl_main, ["subscribe", "A005930", "kr"])
    assert out.exit_code == 1
    assert "lacks a permission" in out.output and "pw-reader" not in out.output
    assert len(out.output.strip().splitlines()) == 1
    await admin.aclose()
