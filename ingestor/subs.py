"""Subscriptions as the core sees them: ``market:channel:code`` members of the desired set."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class Sub:
    market: str
    channel: str
    code: str

    @property
    def member(self) -> str:
        return f"{self.market}:{self.channel}:{self.code}"

    def __str__(self) -> str:
        return self.member
