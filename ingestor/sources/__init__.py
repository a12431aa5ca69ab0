"""Feed sources. Everything vendor-specific lives in one module per source; the core never names a
vendor. ``toss_web`` is the Toss web feed (STOMP over WebSocket with a guest key)."""

from ingestor.sources.toss_web import TossWebSource

SOURCES = {"toss-web": TossWebSource}

__all__ = ["SOURCES", "TossWebSource"]
