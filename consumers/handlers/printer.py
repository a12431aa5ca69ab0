"""``print``: one readable line per tick on stdout."""

from __future__ import annotations

import sys
from typing import Any

from consumers.tick import Tick
from ingestor.ticks import format_entry


class PrintHandler:
    ignores_gaps = False

    def __init__(self, ctx: Any) -> None:
        self.out = sys.stdout

    def __call__(self, ticks: list[Tick]) -> None:
        lines = [format_entry(t.market, t.stream_id, t.fields) for t in ticks]
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
