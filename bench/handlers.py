"""Handlers for the consumer benchmark (``--handler bench.handlers:NAME``)."""

from __future__ import annotations

from consumers.tick import Tick


def parse_every_payload(ticks: list[Tick]) -> None:
    """The least a real handler does: look at every tick's fields and parsed payload."""
    for t in ticks:
        if t.data.get("close") is None and t.code == "":
            raise ValueError(f"empty tick {t.stream_id}")
