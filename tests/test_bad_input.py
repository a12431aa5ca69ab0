"""Bad input from people to toss-consume and toss-ingest: one clear line, exit 2 (usage) or 1
(environment), nothing written, no traceback. (toss-ctl's table is in test_ctl.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from consumers.cli import main as consume_main
from ingestor.cli import main as ingest_main

UNREACHABLE = "redis://127.0.0.1:1/0"


@pytest.fixture
def bad_env_file(tmp_path: Path) -> str:
    p = tmp_path / "bad.env"
    p.write_text("TOSS_MAX_RECONNECT_ATTEMPTS=-3\n")
    return str(p)


CASES = [
    # (program, args, extra env, exit code, text)
    ("consume", ["run"], {}, 2, "Missing option '--group'"),
    ("consume", ["run", "--group", "g", "--handler", "nosuch"], {}, 2, "unknown handler 'nosuch'"),
    (
        "consume",
        ["run", "--group", "g", "--handler", "no_such_mod:fn"],
        {},
        2,
        "cannot import handler module",
    ),
    ("consume", ["run", "--group", "g", "--handler", "json:nope"], {}, 2, "has no callable 'nope'"),
    ("consume", ["run", "--group", "g", "--markets", "kr,jp"], {}, 2, "unknown market"),
    ("consume", ["run", "--group", "g", "--batch", "0"], {}, 2, "Invalid value"),
    ("consume", ["run", "--group", "g"], {"TOSS_REDIS_URL": UNREACHABLE}, 1, "Redis unreachable"),
    (
        "consume",
        ["run", "--group", "g"],
        {"TOSS_CONSUMER_BATCH": "lots"},
        2,
        "invalid setting TOSS_CONSUMER_BATCH",
    ),
    ("consume", ["run", "--group", "g", "--env-file", "/nope.env"], {}, 2, "env file not found"),
    ("consume", ["check", "--group", "g"], {}, 2, "Missing option '--name'"),
    (
        "consume",
        ["check", "--group", "g", "--name", "w"],
        {"TOSS_REDIS_URL": UNREACHABLE},
        1,
        "Redis unreachable",
    ),
    ("consume", ["check", "--group", "g", "--name", "w"], {}, 1, "unhealthy (no heartbeat)"),
    ("ingest", ["run", "--symbols", "A005930"], {}, 2, "--symbols needs --market"),
    ("ingest", ["run", "--symbols", "AAPL", "--market", "us"], {}, 2, "Toss product code"),
    ("ingest", ["run", "--symbols", "A005930", "--market", "mars"], {}, 2, "unknown market"),
    ("ingest", ["run"], {"TOSS_WEBSOCKET_URL": "http://x"}, 2, "ws:// or wss://"),
    ("ingest", ["run"], {"TOSS_REDIS_URL": UNREACHABLE}, 1, "Redis unreachable"),
    (
        "ingest",
        ["run"],
        {"TOSS_REDIS_URL": "redis://al:wrongpw@127.0.0.1:6379/15"},
        1,
        "refused the credentials",
    ),
    ("ingest", ["simulate", "--scenario", "chaos"], {}, 2, "unknown scenario 'chaos'"),
    ("ingest", ["simulate", "--port", "ninety"], {}, 2, "Invalid value"),
    ("ingest", ["check"], {"TOSS_REDIS_URL": UNREACHABLE}, 1, "Redis unreachable"),
    ("ingest", ["run", "--env-file", "BAD"], {}, 2, "TOSS_MAX_RECONNECT_ATTEMPTS"),
    ("ingest", ["run", "--env-file", "/nope.env"], {}, 2, "env file not found"),
    (
        "ingest",
        ["run"],
        {"TOSS_SPOOL_DIR": "/proc/nope", "TOSS_SPOOL_MAX_MB": "16"},
        2,
        "cannot use spool directory /proc/nope",
    ),
]


@pytest.mark.parametrize(("prog", "args", "env", "exit_code", "text"), CASES)
def test_bad_input_table(
    prog: str,
    args: list[str],
    env: dict[str, str],
    exit_code: int,
    text: str,
    redis_url: str,
    prefix: str,
    bad_env_file: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOSS_REDIS_URL", redis_url)
    monkeypatch.setenv("TOSS_KEY_PREFIX", prefix)
    monkeypatch.setenv("TOSS_INSTANCE_NAME", "bad-input")
    monkeypatch.setenv("TOSS_SPOOL_MAX_MB", "0")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    args = [bad_env_file if a == "BAD" else a for a in args]
    main = consume_main if prog == "consume" else ingest_main
    result = CliRunner().invoke(main, args)
    out = result.output
    assert result.exit_code == exit_code, out
    assert text in out, out
    assert "Traceback" not in out and "wrongpw" not in out
    assert len([line for line in out.splitlines() if line.strip()]) <= 3  # one line (+ usage hint)
    with redis.Redis.from_url(redis_url) as r:
        assert list(r.scan_iter(match=f"{prefix}:*")) == []


def test_the_table_has_at_least_twenty_cases() -> None:
    assert len(CASES) >= 20
