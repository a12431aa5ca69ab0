"""Retry policy as data: capped exponential backoff with full jitter (pure, seedable)."""

from __future__ import annotations

import random


class Backoff:
    """``next()`` gives the next delay: uniform in [d/2, d] where d doubles up to ``max_s``."""

    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.max_s = max_s
        self.initial_s = min(initial_s, max_s)
        self.rng = rng or random.Random()
        self._ceiling = self.initial_s

    def next(self) -> float:
        ceiling = self._ceiling
        self._ceiling = min(self.max_s, ceiling * 2)
        return self.rng.uniform(ceiling / 2, ceiling)

    def to_cap(self) -> float:
        """For failures that should not be hammered (access denied): wait the full cap."""
        self._ceiling = self.max_s
        return self.max_s

    def reset(self) -> None:
        self._ceiling = self.initial_s
