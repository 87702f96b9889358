"""A rate-limited Mistral client against the real API or the local emulator, for the demo
and the examples.

``MISTRAL_API_KEY`` set: the real API (the examples' default; the demo needs ``--real``).
Otherwise the emulator starts in-process on 127.0.0.1 with the same limits as the client,
so nothing needs setting up and no quota is spent.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..loop_local import LoopLocalAsyncTransport
from ..mistral import LOCAL_SERVER_KEY, MissingApiKey, MistralRatelimitClient
from ..sdk import detect_sdk_line
from .tracking import AsyncMarkSentTransport, MarkSentTransport, Tracker

if TYPE_CHECKING:
    from ..emulator import Emulator

#: A small, cheap model; the emulator answers for any name.
DEFAULT_MODEL = "mistral-small-latest"


@dataclass
class Session:
    client: MistralRatelimitClient
    tracker: Tracker
    model: str
    emulator: Emulator | None = None

    @property
    def real(self) -> bool:
        return self.emulator is None

    @property
    def where(self) -> str:
        if self.emulator is None:
            return "the real Mistral API (MISTRAL_API_KEY is set)"
        return f"the local emulator at {self.emulator.url} (no MISTRAL_API_KEY)"


def api_key_present() -> bool:
    return bool(os.environ.get("MISTRAL_API_KEY"))


def _tracked_client(
    tracker: Tracker, server_url: str | None, fields: Mapping[str, Any]
) -> MistralRatelimitClient:
    http: Any = detect_sdk_line().http
    client = MistralRatelimitClient(
        server_url=server_url,
        transport=MarkSentTransport(http.HTTPTransport(), tracker),
        async_transport=AsyncMarkSentTransport(
            LoopLocalAsyncTransport(http.AsyncHTTPTransport), tracker
        ),
        **fields,
    )
    client.http_client.event_hooks["response"].append(tracker.note_response)
    client.async_http_client.event_hooks["response"].append(tracker.anote_response)
    return client


@contextlib.contextmanager
def open_session(
    *,
    real: bool | None = None,
    emulator_settings: Mapping[str, Any] | None = None,
    model: str | None = None,
    tracker: Tracker | None = None,
    **client_fields: Any,
) -> Iterator[Session]:
    """Yield a :class:`Session`; close the client (and stop the emulator) on exit.

    ``real=None`` picks the real API exactly when ``MISTRAL_API_KEY`` is set. The emulator
    enforces ``requests_per_second`` and ``tokens_per_minute`` from ``client_fields``
    unless ``emulator_settings`` says otherwise.
    """
    tracker = tracker if tracker is not None else Tracker()
    if real is None:
        real = api_key_present()
    if real:
        if not api_key_present():
            raise MissingApiKey("the real API needs a key: set the MISTRAL_API_KEY variable")
        client = _tracked_client(tracker, None, client_fields)
        with client:
            yield Session(client, tracker, model or DEFAULT_MODEL)
        return

    from ..accounting.tokenizer import tokenizer_info
    from ..emulator import Emulator  # the [emulator] extra, only needed here

    # The emulator counts with the same tokenizer. Loading its vocabulary inside the first
    # request holds the GIL for a few hundred ms, delaying requests the limiter already let
    # go, so they reach the server later than booked: load it before anything is sent.
    tokenizer_info()

    settings: dict[str, Any] = {
        "requests_per_second": client_fields.get("requests_per_second", 1.0),
        "tokens_per_minute": client_fields.get("tokens_per_minute", 500_000),
    }
    settings.update(emulator_settings or {})
    with Emulator(**settings) as emu:
        # Never send a real key to a local server, even when one is in the environment.
        fields = {**client_fields, "api_key": LOCAL_SERVER_KEY}
        client = _tracked_client(tracker, emu.url, fields)
        with client:
            yield Session(client, tracker, model or DEFAULT_MODEL, emu)


__all__ = ["DEFAULT_MODEL", "Session", "api_key_present", "open_session"]
