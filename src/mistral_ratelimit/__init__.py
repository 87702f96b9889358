"""mistral-ratelimit: keep a program inside its Mistral AI budget, at the HTTP transport layer."""

from .config import Limit, RatelimitConfig
from .errors import BackendUnavailable, BudgetExhausted, RatelimitError, RequestTooLarge
from .limiter import Limiter, LimiterStats, RateLimiter, Reservation
from .mistral import MissingApiKey, MistralRatelimitClient

__all__ = [
    "BackendUnavailable",
    "BudgetExhausted",
    "Limit",
    "Limiter",
    "LimiterStats",
    "MissingApiKey",
    "MistralRatelimitClient",
    "RateLimiter",
    "RatelimitConfig",
    "RatelimitError",
    "RequestTooLarge",
    "Reservation",
]
