"""mistral-ratelimit: keep a program inside its Mistral AI budget, at the HTTP transport layer."""

import logging

from .config import Limit, RatelimitConfig
from .errors import BackendUnavailable, BudgetExhausted, RatelimitError, RequestTooLarge
from .httpx import AsyncRateLimitTransport, RateLimitTransport
from .limiter import Limiter, LimiterStats, RateLimiter, Reservation
from .mistral import MissingApiKey, MistralRatelimitClient

__all__ = [
    "AsyncRateLimitTransport",
    "BackendUnavailable",
    "BudgetExhausted",
    "Limit",
    "Limiter",
    "LimiterStats",
    "MissingApiKey",
    "MistralRatelimitClient",
    "RateLimitTransport",
    "RateLimiter",
    "RatelimitConfig",
    "RatelimitError",
    "RequestTooLarge",
    "Reservation",
]

# A library logs, the application decides where: silent unless logging is configured.
logging.getLogger("mistral_ratelimit").addHandler(logging.NullHandler())
