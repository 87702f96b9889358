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

Agents are different: the agent's instructions and tools are stored on the server and added
to every prompt, a constant the body never shows. For keys starting with ``agent:`` the
correction is an additive overhead instead: each observed gap is clipped to
``+-MAX_OFFSET_STEP`` tokens, averaged the same way, and the applied overhead stays within
``[0, MAX_OFFSET]``.
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
MAX_OFFSET_STEP = 2048
MAX_OFFSET = 16_384
ADDITIVE_PREFIX = "agent:"
#: Relative errors kept for the figures (a rolling window).
ERROR_WINDOW = 2048
MAX_MODELS = 256


class ModelCorrection:
    """Thread-safe per-model correction factors and estimate-error figures."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._log_ratio: dict[str, float] = {}
        self._seen: dict[str, int] = {}
        self._offset: dict[str, float] = {}
        #: What ``apply`` uses, per key with enough observations: a factor, or for agents an
        #: overhead. Written under the lock, read without it (one dict read), because the
        #: cheap estimate on every request's hot path applies it too.
        self._applied: dict[str, float] = {}
        self._errors: deque[float] = deque(maxlen=ERROR_WINDOW)
        self._abs_tokens: deque[int] = deque(maxlen=ERROR_WINDOW)
        self._count = 0
        self._cheap_count = 0
        self._cheap_sum = 0.0

    def factor(self, model: str | None) -> float:
        return self._applied.get(model or "", 1.0)

    def offset(self, model: str | None) -> int:
        return int(self._applied.get(model or "", 0))

    def apply(self, model: str | None, tokens: int) -> int:
        key = model or ""
        value = self._applied.get(key)
        if value is None:
            return tokens
        if key.startswith(ADDITIVE_PREFIX):
            return tokens + int(value)
        return max(0, math.ceil(tokens * value))

    def observe(self, model: str | None, estimated: int, actual: int) -> None:
        """Learn from one estimate (before correction) and the server's count for it."""
        key = model or ""
        additive = key.startswith(ADDITIVE_PREFIX)
        if estimated <= 0 or actual <= 0:
            return
        if not additive and max(estimated, actual) < MIN_TOKENS:
            return
        with self._lock:
            if key not in self._seen and len(self._seen) >= MAX_MODELS:
                return
            seen = self._seen.get(key, 0)
            # The first observations average plainly so the correction converges quickly.
            weight = max(ALPHA, 1.0 / (seen + 1))
            if additive:
                gap = min(MAX_OFFSET_STEP, max(-MAX_OFFSET_STEP, actual - estimated))
                previous = self._offset.get(key, 0.0)
                self._offset[key] = previous + weight * (gap - previous)
            else:
                step = math.log(min(MAX_STEP_RATIO, max(1 / MAX_STEP_RATIO, actual / estimated)))
                previous = self._log_ratio.get(key, 0.0)
                self._log_ratio[key] = previous + weight * (step - previous)
            self._seen[key] = seen + 1
            if seen + 1 >= MIN_OBSERVATIONS:
                self._applied[key] = (
                    min(MAX_OFFSET, max(0.0, math.ceil(self._offset[key])))
                    if additive
                    else min(MAX_FACTOR, max(MIN_FACTOR, math.exp(self._log_ratio[key])))
                )

    def record_error(self, estimated: int, actual: int, *, exact: bool = True) -> None:
        """One estimate as sent (after correction) against the server's ``prompt_tokens``.

        Cheap-bound estimates (``exact=False``) are kept apart: they over-count by design
        (about 3x for English) and would drown the tokenizer's own error.
        """
        if actual <= 0 or estimated < 0:
            return
        with self._lock:
            if not exact:
                self._cheap_count += 1
                self._cheap_sum += (estimated - actual) / actual
                return
            self._count += 1
            self._errors.append((estimated - actual) / actual)
            self._abs_tokens.append(abs(estimated - actual))

    def stats(self) -> dict[str, float]:
        """Error of exact estimates against the server's ``prompt_tokens``.

        ``count``, ``mean`` (signed relative error: negative means under-estimates),
        ``mean_abs``, ``p95_abs`` (relative), ``p95_abs_tokens``; and for cheap-bound
        estimates ``cheap_count`` and ``cheap_mean``.
        """
        with self._lock:
            errors = list(self._errors)
            tokens = sorted(self._abs_tokens)
            count = self._count
            cheap = {
                "cheap_count": float(self._cheap_count),
                "cheap_mean": self._cheap_sum / self._cheap_count if self._cheap_count else 0.0,
            }
        if not errors:
            return {
                "count": float(count),
                "mean": 0.0,
                "mean_abs": 0.0,
                "p95_abs": 0.0,
                "p95_abs_tokens": 0.0,
                **cheap,
            }
        abs_sorted = sorted(abs(e) for e in errors)
        idx = min(len(abs_sorted) - 1, math.ceil(0.95 * len(abs_sorted)) - 1)
        return {
            **cheap,
            "count": float(count),
            "mean": sum(errors) / len(errors),
            "mean_abs": sum(abs_sorted) / len(abs_sorted),
            "p95_abs": abs_sorted[idx],
            "p95_abs_tokens": float(tokens[idx]),
        }

    def factors(self) -> dict[str, float]:
        """The applied correction per key: a factor for models, an overhead for agents."""
        with self._lock:
            keys = list(self._seen)
        return {
            k: float(self.offset(k)) if k.startswith(ADDITIVE_PREFIX) else self.factor(k)
            for k in keys
        }
