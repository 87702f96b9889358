"""The installed ``mistralai`` SDK line, and the pieces that wire this package into it.

Three SDK lines are in use (reference: mistral-wire.md §5):

- 1.x: ``from mistralai import Mistral``, on httpx;
- 2.x: ``from mistralai.client import Mistral``, on httpx;
- 3.x: ``from mistralai.client import Mistral``, on httpx2.

The HTTP library is read from the SDK's own ``httpclient`` module rather than from a
version table, so a future line that switches library again is wired correctly.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import ipaddress
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from .accounting.responses import classify_response
from .accounting.types import ErrorClass
from .lifecycle import EXTENSION_KEY

log = logging.getLogger("mistral_ratelimit")


@dataclass(frozen=True)
class SdkLine:
    """What differs between mistralai releases, resolved once per process."""

    version: str
    major: int
    package: str  # "mistralai.client" (2.x, 3.x) or "mistralai" (1.x)
    mistral_class: type[Any]
    http: ModuleType  # the module the SDK imports as ``httpx``: httpx or httpx2
    transport_module: ModuleType  # mistral_ratelimit.httpx or mistral_ratelimit.httpx2
    retry_config_class: type[Any]
    backoff_strategy_class: type[Any]
    sdk_error_class: type[Exception]

    @property
    def http_name(self) -> str:
        return self.http.__name__

    def no_retries(self) -> Any:
        """A ``RetryConfig`` that turns the SDK's own retry loop off.

        Off is already the SDK default (``retry_config=UNSET``); it is set explicitly so
        that a default changing in a future release cannot multiply our retries by its own.
        """
        backoff = self.backoff_strategy_class(1, 1, 1.0, 1)
        return self.retry_config_class("none", backoff, False)


def _import_first(*names: str) -> ModuleType:
    error: ImportError | None = None
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            error = exc
    assert error is not None
    raise error


@functools.cache
def detect_sdk_line() -> SdkLine:
    """Find the installed ``mistralai`` and the HTTP library it is built on."""
    try:
        version = importlib.metadata.version("mistralai")
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(
            "mistral_ratelimit.MistralRatelimitClient needs the mistralai SDK: "
            "pip install mistralai"
        ) from None
    major = int(version.split(".", 1)[0]) if version.split(".", 1)[0].isdigit() else 0
    # 2.x and later moved everything under mistralai.client; 1.x has it at the top level.
    package = "mistralai" if major == 1 else "mistralai.client"
    try:
        sdk_module = importlib.import_module(f"{package}.sdk")
    except ImportError:
        package = "mistralai.client" if package == "mistralai" else "mistralai"
        sdk_module = importlib.import_module(f"{package}.sdk")
    httpclient = importlib.import_module(f"{package}.httpclient")
    http: ModuleType = httpclient.httpx
    # Imported lazily: each adapter imports its own HTTP library, which may be absent.
    suffix = "httpx2" if http.__name__ == "httpx2" else "httpx"
    transport_module = importlib.import_module(f"{__package__}.{suffix}")
    retries = importlib.import_module(f"{package}.utils.retries")
    errors = _import_first(f"{package}.errors", f"{package}.models")
    return SdkLine(
        version=version,
        major=major,
        package=package,
        mistral_class=sdk_module.Mistral,
        http=http,
        transport_module=transport_module,
        retry_config_class=retries.RetryConfig,
        backoff_strategy_class=retries.BackoffStrategy,
        sdk_error_class=errors.SDKError,
    )


def is_loopback_url(url: str | None) -> bool:
    """True for ``http://127.0.0.1:…``, ``localhost`` and ``[::1]``: a local emulator."""
    if not url:
        return False
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- the retry note ---------------------------------------------------------------------
def attempts_record(response: Any) -> Mapping[str, Any] | None:
    """What the lifecycle recorded on a delivered response: attempts and seconds waited."""
    extensions = getattr(response, "extensions", None)
    record = extensions.get(EXTENSION_KEY) if isinstance(extensions, Mapping) else None
    return record if isinstance(record, Mapping) else None


def retry_note(record: Mapping[str, Any], kind: ErrorClass, status: int) -> str:
    """What our retries did and why they stopped, in the words of the error's class."""
    attempts = int(record.get("attempts", 1))
    waited = float(record.get("waited", 0.0))
    tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
    gave_up = f"mistral-ratelimit: gave up after {tries}, having waited {waited:.1f} s in total"
    if kind is ErrorClass.CAPACITY:
        return (
            f"{gave_up}: Mistral had no capacity for this model (code 3505), not your quota "
            "(try again later, another model, or raise max_retries)"
        )
    if kind is ErrorClass.SERVER:
        return (
            f"{gave_up}: the server answered {status}, a server error, not your quota "
            "(try again later or raise max_retries)"
        )
    return f"{gave_up} for the rate limit (raise max_retries or lower your request rate)"


def add_note(exc: BaseException, note: str) -> None:
    if sys.version_info >= (3, 11):
        exc.add_note(note)
    elif hasattr(exc, "message"):  # pragma: no cover - Python 3.10: the SDK's str() is .message
        object.__setattr__(exc, "message", f"{exc.message}\n{note}")


def _is_error_through_us(response: Any) -> bool:
    return int(getattr(response, "status_code", 0)) >= 400 and attempts_record(response) is not None


def read_error_body(response: Any) -> None:
    """httpx ``response`` event hook of the facade's sync client: reads the body of an
    error response that came through our transport, even on a streamed call.

    The SDK's stream operations (``start_stream``, ...) send with ``stream=True`` and read
    an error body only after its ``after_error`` hooks ran, so without this the
    :class:`RetryNoteHook` would meet an unread body and give up on its note. The SDK
    reads that whole body itself right after; reading it here changes nothing but the
    moment, and error bodies only are read: a 200 stream passes untouched.
    """
    if _is_error_through_us(response):
        response.read()


async def aread_error_body(response: Any) -> None:
    """The async client's twin of :func:`read_error_body`: the SDK's hooks are sync (and
    2.x runs them in a worker thread), so they cannot read an async body themselves."""
    if _is_error_through_us(response):
        await response.aread()


class RetryNoteHook:
    """An SDK ``after_error`` hook: a 429, capacity error or retried 5xx that still failed
    after our retries raises the SDK's own ``SDKError``, with a note saying how many times
    the client tried, how long it waited, and why it stopped.

    The SDK raises ``SDKError("API error occurred", response, text)`` for these statuses
    *after* its hooks ran, leaving no way to annotate it; the hook builds that same error
    itself and returns it, which the SDK raises in place of its own.
    """

    def __init__(self, sdk_error_class: type[Exception]) -> None:
        self._sdk_error = sdk_error_class

    def after_error(
        self, hook_ctx: Any, response: Any, error: Exception | None
    ) -> tuple[Any, Exception | None]:
        if response is None or error is not None:
            return response, error
        record = attempts_record(response)
        if record is None:
            return response, error
        status = int(getattr(response, "status_code", 0))
        try:
            text = response.text  # read by read_error_body / aread_error_body, or the SDK
            kind = classify_response(status, response.content)
            if kind not in (ErrorClass.RATE_LIMITED, ErrorClass.CAPACITY, ErrorClass.SERVER):
                return response, error
            if kind is ErrorClass.SERVER and int(record.get("attempts", 1)) < 2:
                return response, error  # a 5xx we did not retry: nothing to say about waiting
            exc = self._sdk_error("API error occurred", response, text)
        except Exception:  # an SDK whose error class is built differently: leave it be
            log.debug("could not build the SDK's error; no retry note", exc_info=True)
            return response, error
        add_note(exc, retry_note(record, kind, status))
        return None, exc


def install_retry_note(sdk: Any, line: SdkLine) -> bool:
    """Register :class:`RetryNoteHook` on a Mistral SDK object; False if it has no hooks."""
    hooks = getattr(sdk, "sdk_configuration", None)
    hooks = getattr(hooks, "__dict__", {}).get("_hooks")
    register = getattr(hooks, "register_after_error_hook", None)
    if not callable(register):
        log.debug("this mistralai SDK has no after_error hooks; retry notes are off")
        return False
    register(RetryNoteHook(line.sdk_error_class))
    return True


__all__ = [
    "RetryNoteHook",
    "SdkLine",
    "aread_error_body",
    "attempts_record",
    "detect_sdk_line",
    "install_retry_note",
    "is_loopback_url",
    "read_error_body",
    "retry_note",
]
