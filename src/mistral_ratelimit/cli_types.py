"""Argument types for the command line: each refuses a bad value with a message saying what
is allowed, which argparse prints as ``error: argument --rps: ...`` and exits with 2."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from .config import Limit

OFF = ("off", "none")


def number(
    *, minimum: float = 0.0, inclusive: bool = False, off: bool = False
) -> Callable[[str], float | None]:
    """A finite number above ``minimum`` (or at it, when ``inclusive``); with ``off``,
    also ``off``/``none`` for no limit (``None``)."""
    allowed = f"a number {'>=' if inclusive else '>'} {minimum:g}"
    if off:
        allowed += " or 'off'"

    def parse(text: str) -> float | None:
        if off and text.strip().lower() in OFF:
            return None
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}")
        return value

    return parse


def integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An integer from ``minimum`` (to ``maximum``, when given)."""
    allowed = (
        f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"
    )

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}")
        return value

    return parse


def limit(text: str) -> Limit:
    """An extra window, ``AMOUNT/SECONDS[:unit]``."""
    try:
        return Limit.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("limits: ")) from None


__all__ = ["integer", "limit", "number"]
