"""Exceptions raised by mistral-ratelimit.

Messages name numbers and fields, never the API key.
"""

from __future__ import annotations

import math


def format_amount(value: float) -> str:
    """A count as people write it, never in e-notation: ``4,800,010``, ``1,000,000,000``;
    a fractional amount (a requests-per-second pace, a fractional cost) keeps up to three
    decimals: ``12,345.5``, ``0.833``."""
    if not math.isfinite(value):
        return str(value)
    if float(value).is_integer():
        return f"{int(value):,}"
    if abs(value) < 1:
        return f"{value:.3g}"
    return f"{value:,.3f}".rstrip("0").rstrip(".")


def spent_message(cost: float, amount: float, unit: str, per_seconds: float, wait: float) -> str:
    """Why a request waiting on a long window fails fast (``BudgetExhausted``). A request
    larger than a window the server reported waits for it to be empty (only a limit the
    user set refuses it outright): that is said, rather than that the budget is spent."""
    budget = f"{format_amount(amount)} {unit} per {format_amount(per_seconds)} s budget"
    if cost > amount:
        return (
            f"this request may need {format_amount(cost)} {unit}, more than the whole "
            f"{budget}; it would wait for that budget to be empty, in {wait:,.0f} s"
        )
    return f"the {budget} is spent; it frees up in {wait:,.0f} s"


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
            f"request needs {format_amount(estimate)} {unit} but the limit allows only "
            f"{format_amount(limit_amount)} {unit} per {format_amount(per_seconds)} s; "
            "it can never be sent "
            "(lower max_tokens or split the input)"
        )


class BudgetExhausted(RatelimitError):
    """The server says this budget cannot serve requests now (limit 0, or monthly cap spent)."""


class BackendUnavailable(RatelimitError):
    """The shared limiter backend (Redis) cannot be reached and on_backend_error='fail'."""
