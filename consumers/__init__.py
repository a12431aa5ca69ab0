"""Consumer-group workers for the toss tick streams.

Public names::

    from consumers import Worker, WorkerOptions, Tick, per_tick
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from consumers.handlers import BUILTINS, HandlerError, per_tick
    from consumers.tick import Tick
    from consumers.worker import Worker, WorkerOptions

_EXPORTS = {
    "BUILTINS": "consumers.handlers",
    "HandlerError": "consumers.handlers",
    "per_tick": "consumers.handlers",
    "Tick": "consumers.tick",
    "Worker": "consumers.worker",
    "WorkerOptions": "consumers.worker",
}
__all__ = [
    "BUILTINS",
    "HandlerError",
    "Tick",
    "Worker",
    "WorkerOptions",
    "per_tick",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'consumers' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
