"""A Mistral-compatible server that enforces real limits (needs the ``[emulator]`` extra).

``with Emulator(requests_per_second=2, tokens_per_minute=50_000) as emu:`` serves the
Conversations, Agents and Models endpoints on ``emu.url``; ``emu.log`` records every
request. ``mistral-ratelimit serve`` runs the same server in the foreground.
"""

from .faults import Fault, FaultPlan, FaultRule
from .log import RequestLog, RequestRecord
from .replies import ReplyShape
from .server import Emulator, serve
from .settings import EmulatorConfig

__all__ = [
    "Emulator",
    "EmulatorConfig",
    "Fault",
    "FaultPlan",
    "FaultRule",
    "ReplyShape",
    "RequestLog",
    "RequestRecord",
    "serve",
]
