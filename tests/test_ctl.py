"""``toss-ctl`` through click's runner against the real Redis, the shell through stdin, and a
table of bad input: one clear line, the right exit code, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from cli.main import main
from ingestor.cli import main as ingest_main
from ingestor.keys import Keys
from ingestor.settings import Settings
from ingestor.simulator import Simulator
from tests.conftest import sim_settings, until
from tests.test_ingestor import running


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    e = {
        "TOSS_REDIS_URL": settings.redis_url.get_secret_value(),
        "TOSS_KEY_PREFIX": settings.key_prefix,
        "TOSS_HEALTH_INTERVAL_S": "0.3",
    }
    for k, v in e.items():
        monkeypatch.setenv(k, v)
    return e


@pytest.fixture
def sr(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def ctl(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), input=input)
    return result.exit_code, result.output


def test_subscribe_unsubscribe_bulk(env: dict[str, str], settings: Settings, sr: redis.Redis):
    keys = Keys(settings.key_prefix)
    pubsub = sr.pubsub()
    pubsub.subscribe(keys.control)
    assert ctl("subscribe", "a005930", "KR") == (0, "kr:trade:A005930: added\n")
    assert ctl("subscribe", "A005930", "kr")[1] == "kr:trade:A005930: already present\n"
    code, out = ctl("bulk", "A000660, A035420,A005930", "kr")
    assert code == 0
    assert out.splitlines() == [
        "kr:trade:A000660: added",
        "kr:trade:A035420: added",
        "kr:trade:A005930: already present",
    ]
    assert ctl("subscribe", "KGG01P", "kr")[1] == "kr:index:KGG01P: added\n"
    assert ctl("subscribe", "VWAP.KRW-BTC", "crypto")[1] == "crypto:vwap:VWAP.KRW-BTC: added\n"
    assert ctl("unsubscribe", "A035420", "kr")[1] == "kr:trade:A035420: removed\n"
    assert ctl("unsubscribe", "A035420", "kr")[1] == "kr:trade:A035420: not present\n"
    members = {m.decode() for m in sr.smembers(keys.subs)}
    assert members == {
        "kr:trade:A005930",
        "kr:trade:A000660",
        "kr:index:KGG01P",
        "crypto:vwap:VWAP.KRW-BTC",
    }
    nudges = [
        m for m in iter(lambda: pubsub.get_message(timeout=0.2), None) if m["type"] == "message"
    ]
    assert len(nudges) == 5  # one per command that changed something
    code, out = ctl("subs", "--json")
    assert code == 0
    assert {row["member"] for row in json.loads(out)} == members


@pytest.mark.parametrize(
    ("args", "exit_code", "text"),
    [
        (["subscribe", "AAPL", "us"], 2, "Toss product code"),
        (["subscribe", "A00593", "kr"], 2, "e.g. A005930\n"),  # a digit short: no hint
        (["subscribe", "005930", "kr"], 2, "did you mean A005930"),
        (["subscribe", "A005930", "jp"], 2, "unknown market"),
        (["subscribe", "A005930", "kr", "--channel", "vwap"], 2, "does not exist for market kr"),
        (["subscribe", "KGG99P", "kr", "--channel", "index"], 2, "not a known kr index"),
        (["subscribe", "VWAP.KRW-DOGE", "crypto"], 2, "not a known crypto code"),
        (["subscribe", "US123", "us"], 2, "not a US stock code"),
        (["bulk", "A005930,BAD", "kr"], 2, "BAD"),
        (["bulk", ",,", "kr"], 2, "no codes given"),
        (["subscribe", " ", "kr"], 2, "no codes given"),
        (["subscribe", "A005930"], 2, "Missing argument"),
        (["tail", "jp"], 2, "unknown market"),
        (["tail", "kr", "-n", "0"], 2, "Invalid value"),
        (["nosuchcommand"], 2, "No such command"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    env: dict[str, str],
    settings: Settings,
    sr: redis.Redis,
    args: list[str],
    exit_code: int,
    text: str,
) -> None:
    code, out = ctl(*args)
    assert code == exit_code, out
    assert text in out
    assert "Traceback" not in out
    assert not sr.exists(Keys(settings.key_prefix).subs)


@pytest.mark.parametrize(
    ("envs", "exit_code", "text"),
    [
        (
            {"TOSS_REDIS_URL": "redis://127.0.0.1:1/0"},
            1,
            "Redis unreachable at redis://127.0.0.1:1/0",
        ),
        ({"TOSS_REDIS_URL": "redis://bob:hunter2@127.0.0.1:1/0"}, 1, "redis://bob:***@127.0.0.1:1"),
        ({"TOSS_REDIS_URL": "http://x"}, 2, "invalid setting TOSS_REDIS_URL"),
        ({"TOSS_HEALTH_INTERVAL_S": "soon"}, 2, "invalid setting TOSS_HEALTH_INTERVAL_S"),
        ({"TOSS_KEY_PREFIX": "has space"}, 2, "invalid setting TOSS_KEY_PREFIX"),
    ],
)
def test_bad_environment(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    envs: dict[str, str],
    exit_code: int,
    text: str,
) -> None:
    for k, v in envs.items():
        monkeypatch.setenv(k, v)
    code, out = ctl("subscribe", "A005930", "kr")
    assert code == exit_code, out
    assert text in out
    assert "hunter2" not in out and "Traceback" not in out
    assert len(out.strip().splitlines()) == 1


def test_missing_env_file(env: dict[str, str]) -> None:
    code, out = ctl("--env-file", "/nonexistent/.env", "subs")
    assert code == 2 and "env file not found" in out


@pytest.mark.real_redis("fakeredis accepts any password")
def test_wrong_password_on_a_real_redis(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    monkeypatch.setenv("TOSS_REDIS_URL", redis_url.replace("redis://", "redis://nobody:wrong@"))
    code, out = ctl("subs")
    assert code == 1
    assert "refused the credentials" in out or "unreachable" in out
    assert "wrong@" not in out


async def test_status_health_streams_tail_with_a_running_ingestor(
    env: dict[str, str], settings: Settings, sim: Simulator
) -> None:
    s = sim_settings(settings, sim)
    keys = Keys(s.key_prefix)
    assert ctl("health")[0] == 1  # nothing running yet
    ctl("bulk", "A005930,A000660", "kr")
    async with running(s) as ing:
        await until(lambda: ing.ticks_total >= 10 and ing.status == "connected")

        def healthy_and_connected() -> bool:
            return ctl("health")[0] == 0 and "test-ingestor: connected" in ctl("status")[1]

        await until(healthy_and_connected, what="toss-ctl health ok, status connected")
        code, out = ctl("status")
        assert code == 0
        assert "test-ingestor: connected" in out
        assert f"{keys.ticks('kr')}:" in out
        assert "desired 2" in out
        code, out = ctl("status", "--json")
        st = json.loads(out)
        assert st["ingestors"][0]["status"] == "connected"
        code, out = ctl("streams")
        assert keys.ticks("kr") in out
        code, out = ctl("tail", "kr", "-n", "5", "--code", "a000660")
        lines = out.splitlines()
        assert code == 0 and len(lines) == 5
        assert all("A000660" in line and " kr trade" in line for line in lines)
        rows = json.loads(ctl("tail", "kr", "-n", "3", "--json")[1])
        assert len(rows) == 3 and all(json.loads(row["payload"])["code"] for row in rows)
        ok = CliRunner().invoke(ingest_main, ["check", "--name", s.instance_name])
        assert ok.exit_code == 0 and "ok (healthy, connected)" in ok.output
        guest_keys = set(sim.issued_keys)
    code, out = ctl("health")
    assert code == 1 and "no ingestor heartbeat" in out  # stopped: its key is gone
    gone = CliRunner().invoke(ingest_main, ["check", "--name", s.instance_name])
    assert gone.exit_code == 1 and "no heartbeat" in gone.output
    for k in guest_keys:
        assert k not in out


def test_shell_through_stdin(
    env: dict[str, str], settings: Settings, sr: redis.Redis, tmp_path: Path
) -> None:
    script = (
        "sub A005930 kr\nsub AAPL us\nbulk A000660,A035420 kr\nunsub A035420 kr\nsubs\n"
        "frobnicate\nstatus\nquit\n"
    )
    p = subprocess.run(
        [sys.executable, "-m", "cli.main", "shell"],
        input=script.encode(),
        capture_output=True,
        env={**os.environ, **env, "TOSS_CTL_HISTORY": str(tmp_path / "hist")},
        cwd=Path(__file__).parent.parent,
        timeout=30,
    )
    out = p.stdout.decode() + p.stderr.decode()
    assert p.returncode == 0, out
    assert "kr:trade:A005930: added" in out
    assert "looks like a ticker" in out
    assert "kr:trade:A035420: removed" in out
    assert "unknown command 'frobnicate'" in out
    assert "subscriptions: desired 2" in out
    assert "Traceback" not in out
    members = {m.decode() for m in sr.smembers(Keys(settings.key_prefix).subs)}
    assert members == {"kr:trade:A005930", "kr:trade:A000660"}
