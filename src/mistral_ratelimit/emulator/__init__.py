"""A Mistral-compatible server that enforces real limits (needs the ``[emulator]`` extra).

``with Emulator(requests_per_second=2, tokens_per_minute=50_000) as emu:`` serves the
Conversations, Agents and Models endpoints on ``emu.url``; ``emu.log`` records every
request. ``mistral-ratelimit serve`` runs the same server in the foreground.

Names load on first use, so ``mistral_ratelimit.emulator.command`` (the CLI's argument
definitions) imports without Starlette or uvicorn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .faults import Fault, FaultPlan, FaultRule
    from .log import RequestLog, RequestRecord
    from .process import EmulatorProcess
    from .replies import ReplyShape
    from .server import Emulator, serve
    from .settings import EmulatorConfig

_WHERE = {
    "Emulator": ".server",
    "serve": ".server",
    "EmulatorConfig": ".settings",
    "EmulatorProcess": ".process",
    "Fault": ".faults",
    "FaultPlan": ".faults",
    "FaultRule": ".faults",
    "ReplyShape": ".replies",
    "RequestLog": ".log",
    "RequestRecord": ".log",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


__all__ = [
    "Emulator",
    "EmulatorConfig",
    "EmulatorProcess",
    "Fault",
    "FaultPlan",
    "FaultRule",
    "ReplyShape",
    "RequestLog",
    "RequestRecord",
    "serve",
]
