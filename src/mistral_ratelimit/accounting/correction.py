"""Learning from the server: a bounded per-model correction, and estimate-error figures.

The template rules reproduce ``mistral_common`` exactly, but the server may render prompts
with a newer template, inject its own text for agents and built-in tools, or use another
vocabulary for some model. Each response reports the true ``prompt_tokens``, so the ratio
true / estimated is tracked per model and applied to later estimates.

It is bounded so one outlier cannot swing it: each observed ratio is clipped to
``[1/MAX_STEP_RATIO, MAX_STEP_RATIO]``, folded into an exponential average of the log-ratio
with weight ``ALPHA``, only applied after ``MIN_OBSERVATIONS`` observations, and the applied
factor is clipped to ``[MIN_FACTOR, MAX_FACTOR]``. Small prompts (under ``MIN_TOKENS``) do
not teach it: a few tokens of template difference would read as a large ratio.
"""

from __future__ import annotations

import math
import threading
from collections import deque

ALPHA = 0.1
MAX_STEP_RATIO = 1.5
MIN_OBSERVATIONS = 5
MIN_FACTOR = 0.8
MAX_FACTOR = 1.5
MIN_TOKENS = 32
#: Relative errors kept for the figures (a rolling window).
ERROR_WINDOW = 2048
MAX_MODELS = 256


class ModelCorrection:
    """Thread-safe per-model correction factors and estimate-error figures."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._log_ratio: dict[str, float] = {}
        self._seen: dict[str, int] = {}
        self._errors: deque[float] = deque(maxlen=ERROR_WINDOW)
        self._abs_tokens: deque[int] = deque(maxlen=ERROR_WINDOW)
        self._count = 0

    def factor(self, model: str | None) -> float:
        key = model or ""
        with self._lock:
            if self._seen.get(key, 0) < MIN_OBSERVATIONS:
                return 1.0
            value = math.exp(self._log_ratio[key])
        return min(MAX_FACTOR, max(MIN_FACTOR, value))

    def apply(self, model: str | None, tokens: int) -> int:
        factor = self.factor(model)
        if factor == 1.0:
            return tokens
        return max(0, math.ceil(tokens * factor))

    def observe(self, model: str | None, estimated: int, actual: int) -> None:
        """Learn from one estimate (before correction) and the server's count for it."""
        if estimated <= 0 or actual <= 0 or max(estimated, actual) < MIN_TOKENS:
            return
        key = model or ""
        with self._lock:
            if key not in self._seen and len(self._seen) >= MAX_MODELS:
                return
            step = math.log(min(MAX_STEP_RATIO, max(1 / MAX_STEP_RATIO, actual / estimated)))
            seen = self._seen.get(key, 0)
            previous = self._log_ratio.get(key, 0.0)
            # The first observations average plainly so the factor converges quickly.
            weight = max(ALPHA, 1.0 / (seen + 1))
            self._log_ratio[key] = previous + weight * (step - previous)
            self._seen[key] = seen + 1

    def record_error(self, estimated: int, actual: int) -> None:
        """One estimate as sent (after correction) against the server's ``prompt_tokens``."""
        if actual <= 0 or estimated < 0:
            return
        with self._lock:
            self._count += 1
            self._errors.append((estimated - actual) / actual)
            self._abs_tokens.append(abs(estimated - actual))

    def stats(self) -> dict[str, float]:
        """``count``, ``mean`` (signed relative error), ``mean_abs``, ``p95_abs``, ``p95_abs_tokens``."""
        with self._lock:
            errors = list(self._errors)
            tokens = sorted(self._abs_tokens)
            count = self._count
        if not errors:
            return {
                "count": float(count),
                "mean": 0.0,
                "mean_abs": 0.0,
                "p95_abs": 0.0,
                "p95_abs_tokens": 0.0,
            }
        abs_sorted = sorted(abs(e) for e in errors)
        idx = min(len(abs_sorted) - 1, math.ceil(0.95 * len(abs_sorted)) - 1)
        return {
            "count": float(count),
            "mean": sum(errors) / len(errors),
            "mean_abs": sum(abs_sorted) / len(abs_sorted),
            "p95_abs": abs_sorted[idx],
            "p95_abs_tokens": float(tokens[idx]),
        }

    def factors(self) -> dict[str, float]:
        with self._lock:
            keys = list(self._seen)
        return {k: self.factor(k) for k in keys}
