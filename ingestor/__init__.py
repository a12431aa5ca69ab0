"""toss-ingest: the Toss real-time feed into Redis Streams.

Public names (everything else is private by convention)::

    from ingestor import Ingestor, Subscriptions, Settings, load_settings, Keys, Simulator

They are imported on first use, so ``import ingestor.keys`` (and the CLIs) stay light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ingestor.control import Subscriptions, parse_codes
    from ingestor.errors import AccessDenied, FeedError, GaveUp, IngestError, InvalidSymbol
    from ingestor.keys import MARKETS, Keys
    from ingestor.service import Ingestor
    from ingestor.settings import ConfigError, Settings, load_settings
    from ingestor.simulator import Scenario, Simulator
    from ingestor.subs import Sub

_EXPORTS = {
    "Subscriptions": "ingestor.control",
    "parse_codes": "ingestor.control",
    "AccessDenied": "ingestor.errors",
    "FeedError": "ingestor.errors",
    "GaveUp": "ingestor.errors",
    "IngestError": "ingestor.errors",
    "InvalidSymbol": "ingestor.errors",
    "MARKETS": "ingestor.keys",
    "Keys": "ingestor.keys",
    "Ingestor": "ingestor.service",
    "ConfigError": "ingestor.settings",
    "Settings": "ingestor.settings",
    "load_settings": "ingestor.settings",
    "Scenario": "ingestor.simulator",
    "Simulator": "ingestor.simulator",
    "Sub": "ingestor.subs",
}
__all__ = [
    "MARKETS",
    "AccessDenied",
    "ConfigError",
    "FeedError",
    "GaveUp",
    "IngestError",
    "Ingestor",
    "InvalidSymbol",
    "Keys",
    "Scenario",
    "Settings",
    "Simulator",
    "Sub",
    "Subscriptions",
    "load_settings",
    "parse_codes",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ingestor' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
