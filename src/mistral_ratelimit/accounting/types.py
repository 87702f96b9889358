"""Value types shared by the accounting functions and the request lifecycle."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ..limiter.base import ObservedLimit


@dataclass(slots=True)
class Usage:
    """Token usage as the server reported it. A value, as ``Estimate`` is, and not frozen
    for the same reason: one is read from every response."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @property
    def total(self) -> int:
        return self.total_tokens or (self.prompt_tokens + self.completion_tokens)


@dataclass(slots=True)
class Estimate:
    """What a request is expected to cost before it is sent.

    A value: change one with ``dataclasses.replace``. Not frozen, because one is built on
    every request's hot path and a frozen dataclass's ``__init__`` costs four times as much.
    """

    prompt_tokens: int
    completion_tokens: int  # output reserved: max_tokens, or the configured default
    stream: bool = False
    #: "conversations.start" | "conversations.append" | "conversations.restart" | "chat" |
    #: "fim" | "agents.completions" | "embeddings" | "ocr" | "no_usage" | "read" | "other"
    endpoint: str = "other"
    conversation_id: str | None = None  # for append / restart: the stored history it bills
    model: str | None = None
    exact: bool = True  # False when a cheap upper bound or a fallback was used

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class ResponseFacts:
    """What a response body tells the accountant (a value, as ``Usage`` is)."""

    usage: Usage | None = None
    conversation_id: str | None = None


@dataclass(frozen=True)
class ServerView:
    """What the rate-limit headers of one response say."""

    observed: list[ObservedLimit] = field(default_factory=list)
    query_cost: int | None = None
    zero_limit: bool = False  # some x-ratelimit-limit-* is 0: never allowed, do not retry
    month_exhausted: bool = False  # remaining tokens this month is 0
    month_remaining: float | None = None  # tokens left this month, when the server says


class ErrorClass(enum.Enum):
    OK = "ok"
    RATE_LIMITED = "rate_limited"  # 429, the organisation's quota
    CAPACITY = "capacity"  # code 3505, provider overload (429 or 503): longer backoff
    SERVER = "server"  # 500/502/503/504/52x: retried only on opt-in
    OTHER = "other"  # everything else: returned as is
