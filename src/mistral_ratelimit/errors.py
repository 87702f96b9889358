"""Exceptions raised by mistral-ratelimit.

Messages name numbers and fields, never the API key.
"""

from __future__ import annotations


class RatelimitError(Exception):
    """Base class of every error this package raises on purpose."""


class RequestTooLarge(RatelimitError, ValueError):
    """One request costs more than a window can ever hold, so waiting would never end."""

    def __init__(self, estimate: float, limit_amount: float, per_seconds: float, unit: str) -> None:
        self.estimate = estimate
        self.limit_amount = limit_amount
        self.per_seconds = per_seconds
        self.unit = unit
        super().__init__(
            f"request needs {estimate:g} {unit} but the limit allows only "
            f"{limit_amount:g} {unit} per {per_seconds:g} s; it can never be sent "
            "(lower max_tokens or split the input)"
        )


class BudgetExhausted(RatelimitError):
    """The server says this budget cannot serve requests now (limit 0, or monthly cap spent)."""


class BackendUnavailable(RatelimitError):
    """The shared limiter backend (Redis) cannot be reached and on_backend_error='fail'."""
