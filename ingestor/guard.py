"""The memory guard (pure: the caller measures RSS and acts on the verdict)."""

from __future__ import annotations


class MemoryGuard:
    """Over ``soft_mb``: collect garbage once per crossing. Over ``hard_mb``: stop, flush and exit
    for the supervisor to restart the process. 0 turns a limit off."""

    def __init__(self, soft_mb: int, hard_mb: int) -> None:
        self.soft_mb = soft_mb
        self.hard_mb = hard_mb
        self._soft_tripped = False
        self.hard_tripped = False

    def check(self, rss_mb: float) -> str | None:
        """``"hard"`` (once), ``"soft"`` (once per crossing) or None."""
        if self.hard_mb and rss_mb >= self.hard_mb:
            if self.hard_tripped:
                return None
            self.hard_tripped = True
            return "hard"
        if self.soft_mb and rss_mb >= self.soft_mb:
            if self._soft_tripped:
                return None
            self._soft_tripped = True
            return "soft"
        self._soft_tripped = False
        return None
