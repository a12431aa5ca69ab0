from __future__ import annotations

import random

from ingestor.backoff import Backoff
from ingestor.reconcile import plan
from ingestor.sources.toss_web import parse_member


def test_plan_keeps_active_fills_budget_and_flags_the_rest() -> None:
    desired = ["kr:trade:A000001", "kr:trade:A000002", "kr:trade:A000003", "junk", "kr:trade:A9"]
    p = plan(desired, active={"kr:trade:A000003", "kr:trade:A000009"}, budget=2, parse=parse_member)
    assert p.unsubscribe == ["kr:trade:A000009"]
    assert [s.member for s in p.subscribe] == ["kr:trade:A000001"]
    assert p.over_budget == ["kr:trade:A000002"]
    assert set(p.invalid) == {"junk", "kr:trade:A9"}


def test_plan_skips_failed_members() -> None:
    p = plan(
        ["kr:trade:A000001"],
        active=set(),
        budget=5,
        parse=parse_member,
        skip={"kr:trade:A000001": "refused"},
    )
    assert p.subscribe == [] and p.over_budget == []


def test_backoff_doubles_with_jitter_up_to_the_cap_and_resets() -> None:
    b = Backoff(1.0, 8.0, random.Random(1))
    delays = [b.next() for _ in range(6)]
    for d, ceiling in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert ceiling / 2 <= d <= ceiling
    assert b.to_cap() == 8.0
    b.reset()
    assert b.next() <= 1.0
    assert Backoff(1.0, 0.2).next() <= 0.2
