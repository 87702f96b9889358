"""Configuration: the budget a program must stay inside, and how hard to retry.

Every number is validated at construction; a bad one raises ``ValueError`` naming the field.
``repr()`` never shows the API key.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

Unit = Literal["requests", "tokens"]
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
#: Fields that may be switched off with ``none``/``off`` in the environment.
_NULLABLE = ("requests_per_second", "tokens_per_minute", "tokens_per_month", "max_concurrency")
_UNITS = ("requests", "tokens")
_PREFIX = "MISTRAL_RATELIMIT_"
_FLOATS = (
    "requests_per_second",
    "tokens_per_minute",
    "tokens_per_month",
    "base_delay",
    "max_delay",
    "timeout",
    "window_margin",
    "capacity_backoff_factor",
)
_INTS = ("max_retries", "max_concurrency", "default_max_tokens", "unknown_history_tokens")
#: Every ``MISTRAL_RATELIMIT_*`` variable ``from_env`` reads.
ENV_VARS = tuple(
    _PREFIX + name.upper() for name in (*_FLOATS, *_INTS, "retry_server_errors", "limits")
)
#: Variables of the package's other parts (``mistral-ratelimit-emulator``), not the config.
_OTHER_PREFIXES = (_PREFIX + "EMULATOR_",)

log = logging.getLogger("mistral_ratelimit")

SECONDS_PER_MONTH = 30 * 86_400.0


class Default(float):
    """A default value: a float that remembers it was not chosen by the user.

    Whether a field was set is a property of its value, not an equality, so an explicit
    ``timeout=60.0`` counts as set although it equals the default. Limits left at a
    (tier) default may be replaced by what the server reports in its
    ``x-ratelimit-limit-*`` headers, limits the user set never are; a timeout left at its
    default lets the SDK's own per-request timeout apply.
    """

    def __repr__(self) -> str:
        return float.__repr__(self)


def _blank(key: str | None) -> bool:
    return key is None or not key.strip()


#: Longest value an error message quotes. A longer one is described, not shown: an API key
#: pasted into the wrong variable must not reach a log or a traceback.
_SHOWN_CHARS = 16


def shown_value(raw: str) -> str:
    """A value from the environment (or a user's string) as an error message may show it."""
    if len(raw) <= _SHOWN_CHARS:
        return repr(raw)
    return f"a {len(raw)}-character value (not shown: it may be a secret)"


def _env_number(var: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{var}: not a number: {shown_value(raw)}") from None


def _env_integer(var: str, raw: str) -> int:
    """``3`` or ``3.0`` (as a float-minded tool may write it), never ``3.5``."""
    try:
        return int(raw)
    except ValueError:
        value = _env_number(var, raw)
    if not value.is_integer():
        raise ValueError(f"{var}: must be a whole number, got {shown_value(raw)}")
    return int(value)


def _check_number(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if math.isnan(v) or math.isinf(v):
        raise ValueError(f"{name} must be finite, got {v!r}")
    if v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {v!r}")
    return v


@dataclass(frozen=True)
class Limit:
    """At most ``amount`` of ``unit`` in any window of ``per_seconds`` seconds."""

    amount: float
    per_seconds: float
    unit: Unit = "tokens"

    def __post_init__(self) -> None:
        _check_number("Limit.amount", self.amount)
        _check_number("Limit.per_seconds", self.per_seconds)
        if self.unit not in _UNITS:
            unit = shown_value(self.unit) if isinstance(self.unit, str) else repr(self.unit)
            raise ValueError(f"Limit.unit must be one of {_UNITS}, got {unit}")

    @classmethod
    def parse(cls, text: str) -> Limit:
        """Parse ``"720/60:requests"`` or ``"50000/10"`` (tokens by default)."""
        spec, _, unit = text.strip().partition(":")
        amount, sep, per = spec.partition("/")
        if not sep:
            raise ValueError(f"limits: expected 'AMOUNT/SECONDS[:unit]', got {shown_value(text)}")
        try:
            numbers = float(amount), float(per)
        except ValueError:  # float()'s own message would quote the value whatever it is
            raise ValueError(
                f"limits: AMOUNT and SECONDS must be numbers, got {shown_value(text.strip())}"
            ) from None
        try:
            return cls(*numbers, (unit.strip() or "tokens"))  # type: ignore[arg-type]
        except ValueError as exc:
            raise ValueError(f"limits: {exc}") from None


@dataclass(frozen=True, repr=False)
class RatelimitConfig:
    """The budget and retry policy shared by every transport built from it."""

    api_key: str | None = None
    requests_per_second: float | None = Default(1.0)
    tokens_per_minute: float | None = Default(500_000)
    max_retries: int = 3
    base_delay: float = 1.0
    max_delay: float = 32.0
    timeout: float = Default(60.0)
    tokens_per_month: float | None = None
    max_concurrency: int | None = None
    limits: tuple[Limit, ...] = ()
    #: Seconds added to every window. The server counts a request when it arrives, which is
    #: a little after the permit is granted; this slack absorbs that network jitter.
    window_margin: float = 0.025
    #: Output tokens reserved when a request declares no ``max_tokens``.
    default_max_tokens: int = 1024
    #: Prompt tokens assumed for a stored conversation whose size is not yet known.
    unknown_history_tokens: int = 2048
    #: 500/502/503/504 and Cloudflare's 520-527 are retried only when this is set: a POST
    #: that reached the model is not safe to repeat.
    retry_server_errors: bool = False
    #: Extra delay multiplier for Mistral's capacity errors (code 3505), which are not quota.
    capacity_backoff_factor: float = 4.0

    def __post_init__(self) -> None:
        if self.api_key is not None and not isinstance(self.api_key, str):
            raise ValueError("api_key must be a string")
        # A blank key (an unset variable expanded to "") is no key: the real API would
        # only answer 401, where MissingApiKey says what to do.
        key = os.environ.get("MISTRAL_API_KEY") if _blank(self.api_key) else self.api_key
        object.__setattr__(self, "api_key", None if _blank(key) else key)
        for name in ("requests_per_second", "tokens_per_minute", "tokens_per_month"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Default):
                _check_number(name, value)
        for name in ("base_delay", "max_delay", "timeout", "capacity_backoff_factor"):
            _check_number(name, getattr(self, name))
        _check_number("window_margin", self.window_margin, allow_zero=True)
        if not isinstance(self.retry_server_errors, bool):
            raise ValueError(
                f"retry_server_errors must be True or False, got {self.retry_server_errors!r}"
            )
        for name in ("max_retries", "default_max_tokens", "unknown_history_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.max_concurrency is not None and (
            isinstance(self.max_concurrency, bool)
            or not isinstance(self.max_concurrency, int)
            or self.max_concurrency < 1
        ):
            raise ValueError(
                f"max_concurrency must be an integer >= 1, got {self.max_concurrency!r}"
            )
        if self.max_delay < self.base_delay:
            raise ValueError("max_delay must be >= base_delay")
        if not isinstance(self.limits, tuple):
            object.__setattr__(self, "limits", tuple(self.limits))
        for item in self.limits:
            if not isinstance(item, Limit):
                raise ValueError(f"limits must hold Limit objects, got {type(item).__name__}")

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "api_key":
                parts.append(f"api_key={'***' if value else None}")
            # A value equal to a Default but chosen by the user is shown: it behaves differently.
            elif value != f.default or (
                isinstance(f.default, Default) and not isinstance(value, Default)
            ):
                parts.append(f"{f.name}={value!r}")
        return f"RatelimitConfig({', '.join(parts)})"

    def replace(self, **changes: Any) -> RatelimitConfig:
        return replace(self, **changes)

    def engine_limits(self) -> list[tuple[Limit, bool]]:
        """Every window the engine enforces, each with whether the user set it explicitly.

        ``requests_per_second=r`` becomes ``max(1, floor(r))`` requests per matching period,
        so 1.2 rps paces one request every 0.833 s and 8 rps allows bursts of 8 per second.
        """
        out: list[tuple[Limit, bool]] = []
        rps = self.requests_per_second
        if rps is not None:
            out.append((pacing_limit(rps), not isinstance(rps, Default)))
        tpm = self.tokens_per_minute
        if tpm is not None:
            out.append((Limit(tpm, 60.0, "tokens"), not isinstance(tpm, Default)))
        if self.tokens_per_month is not None:
            out.append((Limit(self.tokens_per_month, SECONDS_PER_MONTH, "tokens"), True))
        out.extend((item, True) for item in self.limits)
        return out

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> RatelimitConfig:
        """Read ``MISTRAL_RATELIMIT_*`` variables (and ``MISTRAL_API_KEY``).

        ``MISTRAL_RATELIMIT_LIMITS`` holds extra windows: ``"720/60:requests,50000/10:tokens"``.
        Keyword overrides win over the environment.
        """
        env = os.environ if environ is None else environ
        _warn_unknown(env)
        kwargs: dict[str, Any] = {}
        # A field given as a keyword is not read at all: a bad variable it replaces is moot.
        for name in (*_FLOATS, *_INTS):
            if name in overrides:
                continue
            var = _PREFIX + name.upper()
            raw = env.get(var)
            if raw is None or raw.strip() == "":
                continue
            if raw.strip().lower() in ("none", "off"):
                if name not in _NULLABLE:
                    raise ValueError(f"{var} cannot be {raw.strip()!r}")
                kwargs[name] = None
                continue
            kwargs[name] = _env_integer(var, raw) if name in _INTS else _env_number(var, raw)
        raw_retry = env.get(_PREFIX + "RETRY_SERVER_ERRORS")
        if raw_retry and "retry_server_errors" not in overrides:
            flag = raw_retry.strip().lower()
            if flag not in _TRUE + _FALSE:
                raise ValueError(
                    f"MISTRAL_RATELIMIT_RETRY_SERVER_ERRORS must be one of {_TRUE + _FALSE}, "
                    f"got {shown_value(raw_retry)}"
                )
            kwargs["retry_server_errors"] = flag in _TRUE
        raw_limits = env.get(_PREFIX + "LIMITS")
        if raw_limits and "limits" not in overrides:
            kwargs["limits"] = tuple(Limit.parse(p) for p in raw_limits.split(",") if p.strip())
        key = env.get("MISTRAL_API_KEY")
        if not _blank(key) and "api_key" not in overrides:
            kwargs["api_key"] = key
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def coerce(cls, config: RatelimitConfig | None, fields_: Mapping[str, Any]) -> RatelimitConfig:
        """A config from an optional object plus keyword fields (keywords win)."""
        if config is None:
            return cls.from_env(**dict(fields_)) if fields_ else cls.from_env()
        return replace(config, **dict(fields_)) if fields_ else config


_warned: set[str] = set()


def _warn_unknown(env: Mapping[str, str]) -> None:
    """One warning naming every ``MISTRAL_RATELIMIT_*`` variable nothing reads (a typo
    would otherwise leave a limit at its default unnoticed), with the closest known name.
    Never the values: a misplaced one may be a secret."""
    unknown = sorted(
        var
        for var in env
        if var.upper().startswith(_PREFIX)
        and var not in ENV_VARS  # read as spelt: a lower-case name is not read either
        and not var.upper().startswith(_OTHER_PREFIXES)
        and var not in _warned  # once per process: every client reads the environment
    )
    if not unknown:
        return
    _warned.update(unknown)
    names = []
    for var in unknown:
        # Compared without the shared prefix, which would make every name look close.
        suffix = var.upper()[len(_PREFIX) :]
        close = difflib.get_close_matches(suffix, [v[len(_PREFIX) :] for v in ENV_VARS], n=1)
        names.append(f"{var} (did you mean {_PREFIX}{close[0]}?)" if close else var)
    log.warning("ignoring unknown environment variable(s): %s", ", ".join(names))


def pacing_limit(rate_per_second: float) -> Limit:
    """The requests window for a rate: ``max(1, floor(r))`` requests per that many over ``r``
    seconds, so 1.2/s paces one request every 0.833 s and 8/s allows bursts of 8."""
    burst = max(1, math.floor(rate_per_second))
    return Limit(burst, burst / rate_per_second, "requests")


def discovered_limits(unit: Unit, amount: float, per_seconds: float) -> list[Limit]:
    """Windows to enforce for a limit the server reported in its headers.

    A requests rung per minute comes with its per-second pace (Mistral's "RPS" is the
    per-minute rung / 60): the server's own per-second checks, if any, are then never
    burst into, and the minute's budget is still used in full.
    """
    found = [Limit(amount, per_seconds, unit)]
    if unit == "requests" and per_seconds > 1.0:
        found.append(pacing_limit(amount / per_seconds))
    return found


def one_per_window(pairs: Iterable[tuple[Limit, bool]]) -> list[tuple[Limit, bool]]:
    """One limit per unit and window length: the tightest the user set, else the tightest.

    Two limits on the same window are one limit (the smaller binds), and workers sharing a
    Redis key share one ring per unit and length, so the Redis scripts cannot hold two.
    A value the user set beats an assumed default even when the default is smaller.
    """
    best: dict[tuple[str, float], tuple[Limit, bool]] = {}
    for lim, explicit in pairs:
        key = (lim.unit, float(lim.per_seconds))
        held = best.get(key)
        if held is None or (explicit, -lim.amount) > (held[1], -held[0].amount):
            best[key] = (lim, explicit)
    return list(best.values())


def limits_from(items: Iterable[Limit | tuple[float, float, Unit]]) -> tuple[Limit, ...]:
    return tuple(i if isinstance(i, Limit) else Limit(*i) for i in items)


__all__ = ["SECONDS_PER_MONTH", "Default", "Limit", "RatelimitConfig", "Unit", "field"]
