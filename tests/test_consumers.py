"""Consumer-group workers against the real Redis: sharing, reclaim after kill -9, dead letters,
SIGTERM, NOGROUP recovery, and the built-in handlers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aredis

from consumers.tick import Tick
from consumers.worker import Worker, WorkerOptions
from ingestor.keys import Keys
from ingestor.settings import Settings
from tests.conftest import eventually, until

N = 1500


async def fill(r: aredis.Redis, keys: Keys, n: int = N, market: str = "kr") -> list[str]:
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        payload = orjson.dumps(
            {
                "code": f"A{i % 7:06d}",
                "close": 100 + i,
                "volume": 1,
                "cumulativeVolume": 1000 + i,
                "dt": "2026-11-26T09:00:00+09:00",
            }
        )
        pipe.xadd(
            keys.ticks(market),
            {
                "channel": "trade",
                "code": f"A{i % 7:06d}",
                "dt": "2026-11-26T09:00:00+09:00",
                "recv_ms": 1,
                "payload": payload,
            },
        )
    return [i.decode() for i in await pipe.execute()]


def worker_env(s: Settings, record_key: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOSS_")}
    env.update(
        TOSS_REDIS_URL=s.redis_url.get_secret_value(),
        TOSS_KEY_PREFIX=s.key_prefix,
        TOSS_TEST_RECORD_KEY=record_key,
        TOSS_HEALTH_INTERVAL_S="0.3",
        TOSS_CONSUMER_BLOCK_MS="100",
        **extra,
    )
    return env


def spawn(env: dict[str, str], name: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "consumers.cli",
            "run",
            "--group",
            "g",
            "--markets",
            "kr",
            "--name",
            name,
            *args,
        ],
        env={**env, "TOSS_TEST_WORKER": name},
        cwd=Path(__file__).parent.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def wait_exit(p: subprocess.Popen[bytes], timeout_s: float = 30) -> int:
    """The process's exit code; a process still running at the deadline is killed (so a failing
    test never leaves a worker, or a thread waiting for one, behind)."""
    deadline = time.monotonic() + timeout_s
    while p.poll() is None:
        if time.monotonic() > deadline:
            p.kill()
            p.wait()
            raise AssertionError(f"process {p.args} did not exit within {timeout_s} s")
        await asyncio.sleep(0.02)
    return p.returncode


async def counts(r: aredis.Redis, key: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in (await r.hgetall(key)).items()}


async def test_three_worker_processes_process_each_entry_exactly_once(
    settings: Settings, r: aredis.Redis
) -> None:
    keys = Keys(settings.key_prefix)
    rec = f"{settings.key_prefix}:record"
    env = worker_env(settings, rec)
    procs = [
        spawn(env, f"w{i}", "--handler", "tests.handlers:record", "--batch", "20") for i in range(3)
    ]

    async def all_running() -> bool:
        beats = [await r.hget(keys.health_consumer("g", f"w{i}"), "status") for i in range(3)]
        return beats == [b"running"] * 3

    try:
        await eventually(all_running, what="three workers running")
        check = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "consumers.cli", "check", "--group", "g", "--name", "w1"],
            env=env,
            capture_output=True,
            cwd=Path(__file__).parent.parent,
            timeout=30,
        )
        assert check.returncode == 0, check.stderr
        assert b"g/w1: ok (" in check.stdout and b"running" in check.stdout
        ids = await fill(r, keys, 3000)

        async def all_recorded() -> bool:
            return bool(await r.hlen(rec) == len(ids))

        await eventually(all_recorded, what="every entry processed")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
    codes = [await wait_exit(p) for p in procs]
    assert codes == [0, 0, 0], [p.stderr.read() if p.stderr else b"" for p in procs]
    got = await counts(r, rec)
    assert set(got) == set(ids)
    assert set(got.values()) == {1}
    batches = await counts(r, rec + ":batches")
    assert len(batches) >= 2, batches  # the work was shared


async def test_kill_9_mid_batch_is_reclaimed_nothing_lost(
    settings: Settings, r: aredis.Redis
) -> None:
    keys = Keys(settings.key_prefix)
    ids = await fill(r, keys, 300)
    rec = f"{settings.key_prefix}:record"
    env = worker_env(settings, rec, TOSS_CLAIM_IDLE_MS="300", TOSS_TEST_SLOW_S="30")
    victim = spawn(
        env, "victim", "--handler", "tests.handlers:slow_record", "--from-start", "--batch", "100"
    )
    started = await eventually(lambda: r.lindex(rec + ":started", 0), what="victim mid-batch")
    victim.send_signal(signal.SIGKILL)
    assert await wait_exit(victim) == -signal.SIGKILL
    in_flight = set(started.decode().split(","))
    env2 = worker_env(settings, rec, TOSS_CLAIM_IDLE_MS="300")
    rescuer = spawn(env2, "rescuer", "--handler", "tests.handlers:record", "--burst")
    assert await wait_exit(rescuer) == 0
    got = await counts(r, rec)
    assert set(got) == set(ids)  # nothing lost
    assert all(n == 1 for n in got.values())
    assert in_flight <= set(got)
    assert (await r.xpending(keys.ticks("kr"), "g"))["pending"] == 0


async def test_sigterm_finishes_and_acks_the_in_flight_batch(
    settings: Settings, r: aredis.Redis
) -> None:
    keys = Keys(settings.key_prefix)
    await fill(r, keys, 200)
    rec = f"{settings.key_prefix}:record"
    env = worker_env(settings, rec, TOSS_TEST_SLOW_S="0.5")
    p = spawn(env, "w", "--handler", "tests.handlers:slow_record", "--from-start", "--batch", "50")
    started = await eventually(lambda: r.lindex(rec + ":started", 0), what="a batch in flight")
    p.send_signal(signal.SIGTERM)
    assert await wait_exit(p) == 0
    batch = set(started.decode().split(","))
    got = await counts(r, rec)
    assert batch <= set(got)
    assert (await r.xpending(keys.ticks("kr"), "g"))["pending"] == 0
    assert not await r.exists(keys.health_consumer("g", "w"))


async def test_poison_entry_is_dead_lettered_after_max_deliveries(
    settings: Settings, r: aredis.Redis
) -> None:
    keys = Keys(settings.key_prefix)
    ids = await fill(r, keys, 20)
    poison = ids[7]
    seen: list[str] = []

    def handler(ticks: list[Tick]) -> None:
        for t in ticks:
            if t.stream_id == poison:
                raise ValueError("cannot digest this one")
        seen.extend(t.stream_id for t in ticks)

    s = settings.model_copy(update={"max_deliveries": 3})
    w = Worker(
        s,
        WorkerOptions(
            group="g",
            handler=handler,
            markets=("kr",),
            name="w",
            from_start=True,
            burst=True,
            batch=5,
            retry_idle_ms=20,
        ),
    )
    assert await asyncio.wait_for(w.run(), 20) == 0
    await w.redis.aclose()
    assert sorted(seen) == sorted(i for i in ids if i != poison)
    dead = await r.xrange(keys.dead("kr"))
    assert len(dead) == 1
    fields = dead[0][1]
    assert fields[b"stream_id"].decode() == poison
    assert b"cannot digest this one" in fields[b"error"]
    assert fields[b"deliveries"] == b"3"
    assert fields[b"code"] and fields[b"payload"]  # original fields kept
    assert (await r.xpending(keys.ticks("kr"), "g"))["pending"] == 0


@pytest.mark.real_redis("fakeredis does not unblock XREADGROUP on a deleted stream")
async def test_group_recreated_when_stream_disappears(settings: Settings, r: aredis.Redis) -> None:
    keys = Keys(settings.key_prefix)
    got: list[str] = []

    async def handler(ticks: list[Tick]) -> None:
        got.extend(t.code for t in ticks)

    s = settings.model_copy(update={"consumer_block_ms": 50})
    w = Worker(s, WorkerOptions(group="g", handler=handler, markets=("kr",), name="w"))
    task = asyncio.create_task(w.run())
    await until(lambda: w.status == "running")
    await fill(r, keys, 5)
    await until(lambda: len(got) == 5)
    await r.delete(keys.ticks("kr"))  # the worker is blocked reading it

    async def group_back() -> bool:
        with contextlib.suppress(aredis.ResponseError):
            return any(g["name"] == b"g" for g in await r.xinfo_groups(keys.ticks("kr")))
        return False

    await eventually(group_back, what="group recreated")
    await fill(r, keys, 4)
    await until(lambda: len(got) == 9, what="ticks after the group was recreated")
    w.stop()
    await task
    await w.redis.aclose()


async def test_gap_entries_reach_handlers_unless_ignored(
    settings: Settings, r: aredis.Redis
) -> None:
    keys = Keys(settings.key_prefix)
    await fill(r, keys, 2)
    await r.xadd(
        keys.ticks("kr"),
        {
            "channel": "gap",
            "code": "",
            "from_ms": 1,
            "to_ms": 2,
            "reason": "drop",
            "recv_ms": 2,
            "dt": "",
        },
    )
    kinds: dict[str, list[str]] = {"all": [], "ticks": []}

    def everything(ticks: list[Tick]) -> None:
        kinds["all"].extend(t.kind for t in ticks)

    def only_ticks(ticks: list[Tick]) -> None:
        kinds["ticks"].extend(t.kind for t in ticks)

    only_ticks.ignores_gaps = True  # type: ignore[attr-defined]
    for group, h in (("a", everything), ("b", only_ticks)):
        w = Worker(
            settings,
            WorkerOptions(group=group, handler=h, markets=("kr",), from_start=True, burst=True),
        )
        await w.run()
        await w.redis.aclose()
    assert kinds["all"] == ["tick", "tick", "gap"]
    assert kinds["ticks"] == ["tick", "tick"]


async def test_slow_handler_gets_each_entry_once(settings: Settings, r: aredis.Redis) -> None:
    """A handler slower than the own-entry retry delay: the handled batch's acks (which ride with
    the next read) go out before the worker looks for its own unacked entries, so nothing is
    handled twice."""
    keys = Keys(settings.key_prefix)
    ids = await fill(r, keys, 120)
    seen: list[str] = []

    async def slow(ticks: list[Tick]) -> None:
        seen.extend(t.stream_id for t in ticks)
        await asyncio.sleep(0.15)  # the slowness under test: longer than retry_idle_ms

    w = Worker(
        settings,
        WorkerOptions(
            group="slow", handler=slow, markets=("kr",), from_start=True, burst=True,
            batch=40, retry_idle_ms=50,
        ),
    )  # fmt: skip
    await w.run()
    await w.redis.aclose()
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))


async def test_next_read_is_sent_ahead_and_stop_leaves_nothing_pending(
    settings: Settings, r: aredis.Redis
) -> None:
    """While a batch is handled the next read is already in flight; stopping handles what it
    brought and acks everything, so the group has nothing pending."""
    keys = Keys(settings.key_prefix)
    ids = await fill(r, keys, 3000)
    seen: list[str] = []
    w = Worker(
        settings,
        WorkerOptions(
            group="ahead", handler=lambda ticks: seen.extend(t.stream_id for t in ticks),
            markets=("kr",), from_start=True, batch=500,
        ),
    )  # fmt: skip
    await w.ensure_groups()
    assert await w.read_once() == 500
    assert len(w._reads) == 1  # sent when the first reply began to arrive
    w.stop()
    await w.run()  # stopped at once: handles the read in flight, sends the acks
    await w.redis.aclose()
    assert seen == ids[:1000]
    assert (await r.xpending(keys.ticks("kr"), "ahead"))["pending"] == 0


def _tick(i: int, code: str, cum: int, price: float, vol: int, minute: str) -> Tick:
    payload = orjson.dumps(
        {
            "code": code,
            "close": price,
            "volume": vol,
            "cumulativeVolume": cum,
            "dt": f"2026-11-26T09:{minute}:00+09:00",
        }
    )
    return Tick(
        "kr",
        f"1-{i}",
        {
            b"channel": b"trade",
            b"code": code.encode(),
            b"dt": f"2026-11-26T09:{minute}:00+09:00".encode(),
            b"recv_ms": str(1000 + i).encode(),
            b"payload": payload,
        },
    )


@pytest.mark.real_redis("fakeredis runs no Lua without lupa")
async def test_bars_are_right_under_duplicates_and_late_ticks(
    settings: Settings, r: aredis.Redis
) -> None:
    from consumers.handlers import Context
    from consumers.handlers.bars import BarsHandler

    h = BarsHandler(Context(settings, r))
    t = [
        _tick(0, "A005930", 100, 70000, 10, "00"),
        _tick(1, "A005930", 105, 70100, 5, "00"),
        _tick(2, "A005930", 112, 69900, 7, "00"),
        _tick(3, "A005930", 120, 70200, 8, "01"),
    ]
    await h([t[0], t[2], t[3]])
    await h([t[2], t[1]])  # a duplicate, and a late tick of minute 00
    await h([t[0]])  # another duplicate
    raw = await r.hgetall(Keys(settings.key_prefix).bars("kr"))
    bars = {k.decode(): orjson.loads(v) for k, v in raw.items()}
    b0 = bars["A005930:2026-11-26T09:00"]
    assert (b0["o"], b0["h"], b0["l"], b0["c"], b0["v"]) == (70000, 70100, 69900, 69900, 22)
    b1 = bars["A005930:2026-11-26T09:01"]
    assert (b1["o"], b1["c"], b1["v"]) == (70200, 70200, 8)


@pytest.mark.real_redis("fakeredis runs no Lua without lupa")
async def test_latest_keeps_the_newest_even_when_older_arrives_later(
    settings: Settings, r: aredis.Redis
) -> None:
    from consumers.handlers import Context
    from consumers.handlers.latest import LatestHandler

    h = LatestHandler(Context(settings, r))
    new, old = _tick(5, "A005930", 200, 71000, 1, "02"), _tick(1, "A005930", 100, 70000, 1, "00")
    await h([new])
    await h([old])
    got = await r.hget(Keys(settings.key_prefix).latest("kr"), "A005930")
    assert orjson.loads(got)["close"] == 71000


def test_jsonl_archive_is_replayable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    from consumers.handlers.jsonl import JsonlHandler

    monkeypatch.setenv("TOSS_JSONL_DIR", str(tmp_path))
    h = JsonlHandler(None)
    ticks = [_tick(i, "A005930", 100 + i, 70000 + i, 1, "00") for i in range(3)]
    h(ticks)
    files = list(tmp_path.glob("kr/*.jsonl"))
    assert len(files) == 1
    lines = [orjson.loads(x) for x in files[0].read_bytes().splitlines()]
    assert [x["id"] for x in lines] == [t.stream_id for t in ticks]
    assert [orjson.dumps(x["payload"]) for x in lines] == [t.raw for t in ticks]


def test_tick_from_a_flat_reply_reads_like_one_from_a_dict() -> None:
    flat = [b"channel", b"trade", b"code", b"A005930", b"recv_ms", b"12", b"payload", b'{"a":1}']
    t = Tick("kr", b"5-0", flat)
    assert not t.is_gap and t._fields is flat  # no dict built just to say it is not a gap
    assert (t.channel, t.code, t.recv_ms, t.data) == ("trade", "A005930", 12, {"a": 1})
    assert t.fields == dict(zip(flat[::2], flat[1::2], strict=True))
    gap_first = Tick("kr", b"6-0", [b"channel", b"gap", b"from_ms", b"1", b"to_ms", b"2"])
    gap_later = Tick("kr", b"7-0", [b"reason", b"x", b"channel", b"gap"])
    assert gap_first.is_gap and gap_later.is_gap and gap_first.gap_window_ms == (1, 2)


async def test_a_plain_handler_runs_in_a_thread_noop_and_async_ones_in_the_loop(
    settings: Settings,
) -> None:
    seen: list[threading.Thread] = []

    def plain(ticks: list[Tick]) -> None:
        seen.append(threading.current_thread())

    async def in_loop(ticks: list[Tick]) -> None:
        seen.append(threading.current_thread())

    ticks = [_tick(1, "A005930", 100, 70000, 1, "00")]
    for handler in (plain, in_loop):
        w = Worker(settings, WorkerOptions(group="g", handler=handler, markets=("kr",)))
        assert await w._call(ticks) == ""
        await w.redis.aclose()
    assert seen[0] is not threading.main_thread() and seen[1] is threading.main_thread()
    noop = Worker(settings, WorkerOptions(group="g", handler="noop", markets=("kr",)))
    assert noop.is_async  # a no-op has nothing to block on: no thread hand-over per batch
    await noop.redis.aclose()
