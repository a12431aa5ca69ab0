"""Errors of the ingestor, one family::

IngestError
├── InvalidSymbol      a subscription member or code does not fit the market/channel rules
├── FeedError          the feed connection failed; retry with backoff
│   └── AccessDenied   credentials refused (HTTP 401/403, login redirect, ERROR on CONNECT):
│                      back off to the cap, do not hammer
└── GaveUp             too many consecutive failed connection attempts
"""

from __future__ import annotations


class IngestError(Exception):
    """Base of the ingestor's errors; the message is one line, safe to show."""


class InvalidSymbol(IngestError, ValueError):
    pass


class FeedError(IngestError):
    pass


class AccessDenied(FeedError):
    pass


class GaveUp(IngestError):
    pass
