"""``make bench``: the benchmarks, side by side with their baselines, in one run on this machine.

    .venv/bin/python bench/run.py [--seconds 10] [--only ingest,latency,consumer,memory,resub,cli]
                                  [--before DIR] [--batch 200]

Uses the Redis at TOSS_BENCH_REDIS_URL (default redis://127.0.0.1:6379/14; keys under
``bench:``, deleted before and after) and loopback ports only. Prints a Markdown table and writes
it to bench/results/latest.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import psutil
import redis
import redis.asyncio as aredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingestor.keys import Keys  # noqa: E402
from ingestor.resp import RespConnection, pack_command  # noqa: E402
from ingestor.settings import Settings  # noqa: E402

REDIS_URL = os.environ.get("TOSS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
PREFIX = "bench"
KEYS = Keys(PREFIX)
CODES = ["A005930", "A000660", "A035420", "A000020"]
PY = sys.executable
BATCH = Settings.model_fields["consumer_batch"].default  # what toss-consume reads at a time
rows: list[tuple[str, str, str]] = []


def row(what: str, result: str, target: str = "") -> None:
    rows.append((what, result, target))
    print(f"{what}: {result}" + (f"   (target {target})" if target else ""), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean() -> None:
    with redis.Redis.from_url(REDIS_URL) as r:
        keys = list(r.scan_iter(match=f"{PREFIX}:*", count=1000))
        if keys:
            r.delete(*keys)


def env_for(port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOSS_")}
    env.update(
        TOSS_REDIS_URL=REDIS_URL,
        TOSS_KEY_PREFIX=PREFIX,
        TOSS_WEBSOCKET_URL=f"ws://127.0.0.1:{port}/ws",
        TOSS_GUEST_KEY_URL=f"http://127.0.0.1:{port}/api/v1/refresh-utk",
        TOSS_INSTANCE_NAME="bench",
        TOSS_SPOOL_DIR="/tmp/toss-bench-spool",
        TOSS_LOG_LEVEL="WARNING",
        TOSS_HEALTH_INTERVAL_S="0.5",
    )
    env.update(extra)
    return env


def start_flood(port: int, rate: float = 0) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(
        [PY, str(ROOT / "bench" / "flood.py"), "--port", str(port), "--rate", str(rate)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return p
        time.sleep(0.05)
    raise RuntimeError("flood sender did not start")


def stop(*procs: subprocess.Popen[bytes]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()


def added(r: redis.Redis, key: str) -> int:
    """Entries ever added to the stream (``XINFO STREAM`` entries-added, Redis 7): unlike
    ``XLEN`` it keeps counting once ``MAXLEN ~`` trimming holds the length at the cap."""
    if not r.exists(key):
        return 0
    return int(r.xinfo_stream(key)["entries-added"])


def measure_rate(r: redis.Redis, key: str, seconds: float, warmup_s: float = 3.0) -> float:
    deadline = time.monotonic() + 20
    while added(r, key) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(warmup_s)
    a, t0 = added(r, key), time.monotonic()
    time.sleep(seconds)
    b, t1 = added(r, key), time.monotonic()
    return (b - a) / (t1 - t0)


# --- 1. ingest throughput ---------------------------------------------------------------------


def _ingest_rate(seconds: float, tree: Path) -> tuple[float, float]:
    """Ticks/s landed and the ingestor's CPU %, running the ingestor code found in ``tree``."""
    clean()
    r = redis.Redis.from_url(REDIS_URL)
    r.sadd(KEYS.subs, *[f"kr:trade:{c}" for c in CODES])
    port = free_port()
    flood = start_flood(port)
    ing = subprocess.Popen(
        [PY, "-m", "ingestor.cli", "run"], env=env_for(port, TOSS_SPOOL_MAX_MB="0"), cwd=tree
    )
    try:
        rate = measure_rate(r, KEYS.ticks("kr"), seconds)
        cpu = psutil.Process(ing.pid).cpu_percent(1.0)
    finally:
        stop(ing, flood)
    clean()
    return rate, cpu


def _us_per_tick(cpu_percent: float, rate: float) -> float:
    return cpu_percent / 100 / rate * 1e6 if rate else float("nan")


def bench_ingest(seconds: float, before: Path | None) -> None:
    if before is not None:
        then, then_cpu = _ingest_rate(seconds, before)
    ours, cpu = _ingest_rate(seconds, ROOT)
    r = redis.Redis.from_url(REDIS_URL)
    port = free_port()
    flood = start_flood(port)
    naive = subprocess.Popen(
        [
            PY,
            str(ROOT / "bench" / "naive.py"),
            "--ws",
            f"ws://127.0.0.1:{port}/ws",
            "--redis",
            REDIS_URL,
            "--key",
            f"{PREFIX}:naive",
            "--codes",
            ",".join(CODES),
        ],
    )
    try:
        base = measure_rate(r, f"{PREFIX}:naive", seconds)
    finally:
        stop(naive, flood)
    clean()
    payload = "x" * 300
    host, port_s, db = re.match(r"redis://([^:/]+):(\d+)/(\d+)", REDIS_URL).groups()  # type: ignore[union-attr]
    out = subprocess.run(
        [
            "redis-benchmark",
            "-h",
            host,
            "-p",
            port_s,
            "--dbnum",
            db,
            "-c",
            "1",
            "-P",
            "100",
            "-n",
            "500000",
            "-q",
            "XADD",
            f"{PREFIX}:rb",
            "*",
            "channel",
            "trade",
            "code",
            "A005930",
            "payload",
            payload,
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    m = re.search(r"([\d.]+) requests per second", out.replace(",", ""))
    ceiling = float(m.group(1)) if m else float("nan")
    clean()
    row(
        "ingest: flood -> toss-ingest run -> Redis",
        f"{ours:,.0f} ticks/s (ingestor CPU {cpu:.0f} %, {_us_per_tick(cpu, ours):.1f} µs/tick)",
        ">= 100,000 ticks/s",
    )
    row("ingest baseline: one awaited XADD per tick", f"{base:,.0f} ticks/s")
    row("ingest ceiling: redis-benchmark XADD -P 100, one connection", f"{ceiling:,.0f} XADD/s")
    row("ingest ratio: ours / naive", f"{ours / base:.1f}x", ">= 10x")
    row("ingest ratio: ours / redis-benchmark", f"{ours / ceiling:.2f}")
    if before is not None:
        row(
            f"ingest, the ingestor code in {before}",
            f"{then:,.0f} ticks/s (ingestor CPU {then_cpu:.0f} %, "
            f"{_us_per_tick(then_cpu, then):.1f} µs/tick); this tree {ours / then:.2f}x",
        )


# --- 2. latency ---------------------------------------------------------------------------------


async def _latency_at(rate: float, seconds: float) -> list[float]:
    clean()
    r = aredis.Redis.from_url(REDIS_URL)
    await r.sadd(KEYS.subs, *[f"kr:trade:{c}" for c in CODES])
    port = free_port()
    flood = start_flood(port, rate)
    ing = subprocess.Popen([PY, "-m", "ingestor.cli", "run"], env=env_for(port), cwd=ROOT)
    lat_ms: list[float] = []
    try:
        last = "$"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not lat_ms:
            resp = await r.xread({KEYS.ticks("kr"): last}, block=500, count=1000)
            for _, entries in resp or []:
                last = entries[-1][0]
                lat_ms.append(0)
        lat_ms.clear()
        await asyncio.sleep(1.0)  # warm-up
        # the measuring reader reads raw replies over the lean connection: it shares the two
        # cores with the sender, the ingestor and Redis, so it should cost as little as it can
        conn = RespConnection(r)
        last: Any = b"$"
        end = time.monotonic() + seconds
        key = KEYS.ticks("kr")
        while time.monotonic() < end:
            read = pack_command("XREAD", "COUNT", 5000, "BLOCK", 200, "STREAMS", key, last)
            [resp] = await conn.execute([read], 1)
            now = time.time_ns()
            for _, entries in resp or []:
                last = entries[-1][0]
                for _, flat in entries:
                    payload = flat[flat.index(b"payload") + 1]
                    i = payload.rfind(b'"sent_ns":')
                    if i >= 0:
                        lat_ms.append((now - int(payload[i + 10 : -1])) / 1e6)
        await conn.close()
    finally:
        stop(ing, flood)
        await r.aclose()
    return lat_ms


def bench_latency(seconds: float) -> None:
    for rate in (1000, 5000, 10000):
        lat = asyncio.run(_latency_at(rate, min(seconds, 6)))
        if not lat:
            row(f"latency at {rate:,} ticks/s", "no samples")
            continue
        q = statistics.quantiles(lat, n=100)
        row(
            f"latency at {rate:,} ticks/s (frame sent -> entry readable)",
            f"p50 {q[49]:.2f} ms, p99 {q[98]:.2f} ms, max {max(lat):.1f} ms ({len(lat):,} ticks)",
            "p99 <= 5 ms at 10k" if rate == 10000 else "",
        )
    clean()


# --- 3. consumers -----------------------------------------------------------------------------


def _fill(n: int) -> None:
    r = redis.Redis.from_url(REDIS_URL)
    payload = orjson.dumps({"code": "A005930", "close": 70000, "volume": 1, "x": "y" * 200})
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(
            KEYS.ticks("kr"),
            {"channel": "trade", "code": "A005930", "dt": "", "recv_ms": i, "payload": payload},
        )
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


def _acked(r: redis.Redis, group: str) -> int:
    """Entries the group has read and acknowledged so far."""
    if not r.exists(KEYS.ticks("kr")):
        return 0
    for g in r.xinfo_groups(KEYS.ticks("kr")):
        if g["name"].decode() == group:
            return int(g.get("entries-read") or 0) - int(g["pending"])
    return 0


def _cpu_s(r: redis.Redis, procs: list[subprocess.Popen[bytes]]) -> list[float]:
    """CPU seconds used so far by Redis (first) and by each process."""
    info = r.info("cpu")
    out = [float(info["used_cpu_user"]) + float(info["used_cpu_sys"])]
    for p in procs:
        t = psutil.Process(p.pid).cpu_times()
        out.append(t.user + t.system)
    return out


def _consume(
    workers: int,
    group: str,
    n: int,
    handler: str = "noop",
    minimal: bool = False,
    batch: int = BATCH,
) -> tuple[float, str, float]:
    """Entries/s between 10 % and 90 % of the stream acked (process start-up excluded), the
    CPU use of Redis and of each process over the same window, and Redis's share of one core
    (0-1). ``minimal``: the baseline reader ``bench/minreader.py`` instead of toss-consume."""
    env = env_for(free_port(), TOSS_CONSUMER_BLOCK_MS="100", TOSS_HEALTH_INTERVAL_S="2")
    r = redis.Redis.from_url(REDIS_URL)
    key = KEYS.ticks("kr")
    args = ["--handler", handler, "--markets", "kr", "--from-start", "--burst"]
    args += ["--batch", str(batch)]
    minreader = [PY, str(ROOT / "bench" / "minreader.py"), REDIS_URL, key, group]
    its_handler = [] if handler == "noop" else [handler]
    procs = [
        subprocess.Popen(
            [*minreader, f"c{i}", str(batch), *its_handler]
            if minimal
            else [PY, "-m", "consumers.cli", "run", "--group", group, "--name", f"c{i}", *args],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        for i in range(workers)
    ]
    t10 = t90 = 0.0
    while t90 == 0.0:
        done = _acked(r, group)
        now = time.monotonic()
        if not t10 and done >= n * 0.1:
            t10, a10, cpu10 = now, done, _cpu_s(r, procs)
        if done >= n * 0.9:
            t90, a90, cpu90 = now, done, _cpu_s(r, procs)
        time.sleep(0.005)
    for p in procs:
        p.wait(300)
    use = [(b - a) / (t90 - t10) * 100 for a, b in zip(cpu10, cpu90, strict=True)]
    who = "reader" if minimal else "worker"
    cpu = f"CPU: Redis {use[0]:.0f} %, {who}{'s' if workers > 1 else ''} " + ", ".join(
        f"{u:.0f} %" for u in use[1:]
    )
    return (a90 - a10) / (t90 - t10), cpu, use[0] / 100


def bench_consumer(n: int, batch: int) -> None:
    clean()
    _fill(n)
    base1, base1_cpu, _ = _consume(1, "base1", n, minimal=True, batch=batch)
    base2, base2_cpu, _ = _consume(2, "base2", n, minimal=True, batch=batch)
    one, one_cpu, _ = _consume(1, "one", n, batch=batch)
    two, two_cpu, two_redis = _consume(2, "two", n, batch=batch)
    parse = "bench.handlers:parse_every_payload"
    one_p, one_p_cpu, _ = _consume(1, "one-p", n, parse, batch=batch)
    two_p, two_p_cpu, _ = _consume(2, "two-p", n, parse, batch=batch)
    base1_p, base1_p_cpu, _ = _consume(1, "base1-p", n, parse, minimal=True, batch=batch)
    base2_p, base2_p_cpu, _ = _consume(2, "base2-p", n, parse, minimal=True, batch=batch)
    clean()
    if batch != BATCH:
        row("consumer rows below: entries per read (--batch), not the default", f"{batch:,}")
    row(
        "consumer: 1 worker, noop handler, read+ack",
        f"{one:,.0f} entries/s, {one / base1:.2f} of the baseline ({one_cpu})",
        ">= 200,000",
    )
    row(
        "consumer: 2 workers, same group",
        f"{two:,.0f} entries/s, {two / one:.2f}x ({two_cpu})",
        ">= 1.6x",
    )
    ceiling = two / two_redis  # Redis is one thread: at 100 % of a core it serves no more
    row(
        "consumer ceiling: Redis at 100 % of its core (2-worker rate / Redis CPU share)",
        f"{ceiling:,.0f} entries/s = {ceiling / one:.2f}x one worker",
    )
    row(
        "consumer baseline: 1 minimal reader (bench/minreader.py: read+ack, nothing else)",
        f"{base1:,.0f} entries/s ({base1_cpu})",
    )
    row(
        "consumer baseline: 2 minimal readers, same group",
        f"{base2:,.0f} entries/s, {base2 / base1:.2f}x ({base2_cpu})",
    )
    row(
        "consumer: 1 worker, handler parsing every payload",
        f"{one_p:,.0f} entries/s ({one_p_cpu})",
    )
    row(
        "consumer: 2 workers, handler parsing every payload",
        f"{two_p:,.0f} entries/s, {two_p / one_p:.2f}x ({two_p_cpu})",
    )
    row(
        "consumer baseline: 1 minimal reader calling the same parsing handler",
        f"{base1_p:,.0f} entries/s ({base1_p_cpu})",
    )
    row(
        "consumer baseline: 2 minimal readers calling the same parsing handler",
        f"{base2_p:,.0f} entries/s, {base2_p / base1_p:.2f}x ({base2_p_cpu})",
    )


# --- 4. memory ----------------------------------------------------------------------------------


def bench_memory(seconds: float) -> None:
    clean()
    r = redis.Redis.from_url(REDIS_URL)
    codes = [f"A{i:06d}" for i in range(1000)]
    r.sadd(KEYS.subs, *[f"kr:trade:{c}" for c in codes])
    port = free_port()
    flood = start_flood(port, 10000)
    ing = subprocess.Popen(
        [PY, "-m", "ingestor.cli", "run"],
        env=env_for(port, TOSS_SUBSCRIPTION_BUDGET="1000", TOSS_SUBSCRIBE_BATCH_INTERVAL_MS="20"),
        cwd=ROOT,
    )
    peak = 0.0
    try:
        rate = measure_rate(r, KEYS.ticks("kr"), seconds)
        proc = psutil.Process(ing.pid)
        for _ in range(5):
            peak = max(peak, proc.memory_info().rss / 1048576)
            time.sleep(0.2)
        active = int(r.hget(KEYS.health_ingestor("bench"), "active") or 0)
    finally:
        stop(ing, flood)
    clean()
    row(
        "memory: ingestor RSS, 1,000 subscriptions at 10k ticks/s",
        f"{peak:.1f} MB ({active} active, {rate:,.0f} ticks/s landed)",
        "<= 80 MB",
    )


# --- 5. resubscribe -----------------------------------------------------------------------------


async def _resub() -> tuple[float, float]:
    from ingestor.service import Ingestor
    from ingestor.settings import load_settings
    from ingestor.simulator import Scenario, Simulator

    clean()
    sim = Simulator(rate=50, heartbeat_ms=5000, scenario=Scenario(budget=200))
    await sim.start()
    members = {f"kr:trade:A{i:06d}" for i in range(100)}
    r = aredis.Redis.from_url(REDIS_URL)
    await r.sadd(KEYS.subs, *members)
    s = load_settings(
        redis_url=REDIS_URL,
        key_prefix=PREFIX,
        websocket_url=sim.ws_url,
        guest_key_url=sim.guest_key_url,
        reconnect_initial_s=0.05,
        reconnect_max_s=0.1,
        spool_max_mb=0,
        log_level="WARNING",
    )
    ing = Ingestor(s)
    task = asyncio.create_task(ing.run())
    while sim.active_subscriptions() != members:
        await asyncio.sleep(0.01)
    t_drop = time.monotonic()
    await sim.drop_all()
    while ing.status != "connected" or ing.reconnects < 1:
        await asyncio.sleep(0.001)
    t_conn = time.monotonic()
    while sim.active_subscriptions() != members:
        await asyncio.sleep(0.001)
    t_done = time.monotonic()
    ing.stop()
    await task
    await ing.redis.aclose()
    await sim.stop()
    await r.aclose()
    clean()
    return t_done - t_conn, t_done - t_drop


def bench_resub() -> None:
    after_connect, after_drop = asyncio.run(_resub())
    row(
        "resubscribe: 100 subscriptions after a reconnect",
        f"{after_connect:.2f} s from CONNECTED ({after_drop:.2f} s from the drop)",
        "<= 2.5 s",
    )


# --- 6. CLI start-up ----------------------------------------------------------------------------


def bench_cli() -> None:
    exe = str(Path(PY).parent / "toss-ctl")
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        subprocess.run([exe, "--help"], stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    row(
        "CLI: toss-ctl --help wall time",
        f"median {statistics.median(times) * 1000:.0f} ms "
        f"(max {max(times) * 1000:.0f} ms, 10 runs)",
        "<= 300 ms",
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--only", default="ingest,latency,consumer,memory,resub,cli")
    ap.add_argument(
        "--before",
        type=Path,
        help="also run the ingest benchmark on the ingestor code in this directory, e.g. a\n"
        "`git worktree add /tmp/before <commit>`: a before/after in the same run",
    )
    ap.add_argument(
        "--batch",
        type=int,
        default=BATCH,
        help=f"entries per read of the consumer rows, workers and baseline (default {BATCH})",
    )
    a = ap.parse_args()
    which = set(a.only.split(","))
    cpu = f"{psutil.cpu_count()} cores"
    print(f"benchmarks on {cpu}, Python {sys.version.split()[0]}, Redis {REDIS_URL}", flush=True)
    if "ingest" in which:
        bench_ingest(a.seconds, a.before)
    if "latency" in which:
        bench_latency(a.seconds)
    if "consumer" in which:
        bench_consumer(1_000_000, a.batch)
    if "memory" in which:
        bench_memory(a.seconds)
    if "resub" in which:
        bench_resub()
    if "cli" in which:
        bench_cli()
    table = ["| benchmark | result | target |", "| --- | --- | --- |"]
    table += [f"| {w} | {res} | {t} |" for w, res, t in rows]
    text = "\n".join(table) + "\n"
    print("\n" + text)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
