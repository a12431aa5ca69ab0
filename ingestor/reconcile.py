"""Desired vs active subscriptions -> what to do (pure: no I/O)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ingestor.errors import InvalidSymbol
from ingestor.subs import Sub


@dataclass
class Plan:
    subscribe: list[Sub] = field(default_factory=list)
    unsubscribe: list[str] = field(default_factory=list)  # members
    invalid: dict[str, str] = field(default_factory=dict)  # member -> reason
    over_budget: list[str] = field(default_factory=list)  # members
    desired: dict[str, Sub] = field(default_factory=dict)  # valid desired members


def plan(
    desired_members: Iterable[str],
    active: Iterable[str],
    budget: int,
    parse: Callable[[str], Sub],
    skip: Mapping[str, object] | None = None,
) -> Plan:
    """Members in ``active`` are on the connection now; ``skip`` members (failed) are left alone.

    Active members keep their slot; new ones fill the remaining budget in sorted order, so the
    same input always gives the same plan.
    """
    p = Plan()
    for member in sorted(set(desired_members)):
        try:
            p.desired[member] = parse(member)
        except InvalidSymbol as exc:
            p.invalid[member] = str(exc)
    active_set = set(active)
    p.unsubscribe = sorted(m for m in active_set if m not in p.desired)
    kept = len(active_set) - len(p.unsubscribe)
    room = budget - kept
    skip = skip or {}
    for member, sub in p.desired.items():
        if member in active_set or member in skip:
            continue
        if room > 0:
            p.subscribe.append(sub)
            room -= 1
        else:
            p.over_budget.append(member)
    return p
