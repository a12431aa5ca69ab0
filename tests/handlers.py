"""Handlers used by the consumer tests (loaded by ``toss-consume`` as tests.handlers:NAME).

They record every processed stream id in Redis (HINCRBY), so a test can count deliveries across
processes. The target hash comes from TOSS_TEST_RECORD_KEY.
"""

from __future__ import annotations

import os
import time

import redis

from consumers.tick import Tick

_client: redis.Redis | None = None


def _r() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["TOSS_REDIS_URL"])
    return _client


def record(ticks: list[Tick]) -> None:
    pipe = _r().pipeline(transaction=False)
    key = os.environ["TOSS_TEST_RECORD_KEY"]
    for t in ticks:
        pipe.hincrby(key, t.stream_id, 1)
    pipe.hincrby(key + ":batches", os.environ.get("TOSS_TEST_WORKER", "?"), 1)
    pipe.execute()


def slow_record(ticks: list[Tick]) -> None:
    """Announce the batch, take a while over it (so a test can kill or stop the worker mid-batch),
    then record it."""
    key = os.environ["TOSS_TEST_RECORD_KEY"]
    _r().rpush(key + ":started", ",".join(t.stream_id for t in ticks))
    time.sleep(float(os.environ.get("TOSS_TEST_SLOW_S", "1.0")))
    record(ticks)
