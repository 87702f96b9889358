"""Run every Python snippet of README.md, so the README cannot drift from the code.

A snippet is a ```python block right after a marker comment:

- ``<!-- test: NAME [requires=MODULE,...] -->``: run here, as written (``requires=redis``
  also starts a throw-away redis-server and sets ``REDIS_URL`` to it);
- ``<!-- no-test: REASON -->``: shown only (say why).

An untagged ```python block fails this file. Snippets run unchanged, as a user would run
them against the real API: the harness sets a dummy ``MISTRAL_API_KEY`` and redirects the
default network transports of httpx and httpx2 from ``api.mistral.ai`` to the emulator on
127.0.0.1, so every layer of this package is exercised and only the socket's far end differs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("uvicorn")

from mistral_ratelimit.emulator import Emulator

pytestmark = pytest.mark.sdk

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = re.compile(r"<!--\s*(test|no-test):\s*(.*?)\s*-->\s*\n```python\n(.*?)^```", re.S | re.M)
PYTHON_BLOCK = re.compile(r"^```python\n", re.M)
MISTRAL_HOSTS = ("api.mistral.ai", "api.eu.mistral.ai", "api.us.mistral.ai")
#: What a snippet prints, all of it (a regular expression), where the README promises it.
EXPECTED_OUTPUT = {
    "errors": r"request needs 60,0\d\d tokens but the limit allows only 50,000 tokens per 60 s.*",
    # The reply and its tokens; the streamed story on a line of its own; usage; stats.
    "facade": r"[^\n]+ \d+\n[^\n]+\nprompt_tokens=\d+ [^\n]+\nLimiterStats\(.+\)",
    "shared-limiter": r"3",
    "emulator": r"pong 1 0",
    "byo-httpx2": r"\d+\n\d+\n2",
    "byo-httpx": r"\d+",
    "redis-workers": r"\d+ 1",  # one request admitted by the shared budget
    "emulator-faults": r"\[429, 429, 200\] 0",
}
#: A comment in the snippet that quotes the start of what it prints (group 1).
QUOTED_OUTPUT = {"errors": r"# (request needs [\d,]+ tokens but .*?); \.\.\."}
#: (requests, seconds): at most that many arrivals at the server in any such window, from
#: the snippet's limits (1.2 rps is one request per 0.83 s), less slack for arrival jitter.
EXPECTED_RATE = {"shared-limiter": (1, 0.9), "facade": (1, 0.75)}


@dataclass(frozen=True)
class Snippet:
    name: str
    requires: tuple[str, ...]
    code: str
    line: int


def snippets() -> list[Snippet]:
    text = README.read_text(encoding="utf-8")
    found = []
    for m in MARKER.finditer(text):
        if m.group(1) != "test":
            continue
        name, *options = m.group(2).split()
        requires: tuple[str, ...] = ()
        for option in options:
            key, _, value = option.partition("=")
            if key == "requires":
                requires = tuple(v for v in value.split(",") if v)
        found.append(Snippet(name, requires, m.group(3), text.count("\n", 0, m.start(3)) + 1))
    return found


SNIPPETS = snippets()


def test_every_python_block_is_tagged() -> None:
    text = README.read_text(encoding="utf-8")
    tagged = {m.start(3) for m in MARKER.finditer(text)}
    untagged = [
        text.count("\n", 0, m.start()) + 1
        for m in PYTHON_BLOCK.finditer(text)
        if m.end() not in tagged
    ]
    assert not untagged, (
        f"README.md lines {untagged}: put <!-- test: NAME --> (runs it in tests/test_readme.py) "
        "or <!-- no-test: REASON --> right above each ```python block"
    )


def test_the_sdk_sections_are_covered() -> None:
    names = {s.name for s in SNIPPETS}
    expected = {
        "facade",
        "byo-httpx2",
        "byo-httpx",
        "shared-limiter",
        "inner-transport",
        "errors",
        "redis-workers",
    }
    assert expected <= names, f"missing README snippets: {sorted(expected - names)}"
    assert len(names) == len(SNIPPETS), "two README snippets share a name"


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    # Limits far above any snippet's, so the snippets' own limiters do the pacing.
    with Emulator(requests_per_second=1000, tokens_per_minute=100_000_000) as emu:
        yield emu


def _redirect(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    """Send what would go to api.mistral.ai to the emulator, at the last transport."""

    def rewrite(request: Any) -> None:
        if request.url.host in MISTRAL_HOSTS:
            request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=port)

    for lib_name in ("httpx", "httpx2"):
        if importlib.util.find_spec(lib_name) is None:
            continue
        lib = importlib.import_module(lib_name)
        sync_send = lib.HTTPTransport.handle_request
        async_send = lib.AsyncHTTPTransport.handle_async_request

        def handle(self: Any, request: Any, _send: Any = sync_send) -> Any:
            rewrite(request)
            return _send(self, request)

        async def ahandle(self: Any, request: Any, _send: Any = async_send) -> Any:
            rewrite(request)
            return await _send(self, request)

        monkeypatch.setattr(lib.HTTPTransport, "handle_request", handle)
        monkeypatch.setattr(lib.AsyncHTTPTransport, "handle_async_request", ahandle)


def _left_open(namespace: dict[str, Any]) -> list[str]:
    """The HTTP clients a snippet left open: its own, and those it gave a ``Mistral``
    (the SDK never closes clients it was given; ``MistralRatelimitClient`` gives its own)."""
    found: list[tuple[str, Any]] = []
    for name, value in namespace.items():
        if type(value).__module__.split(".")[0] in ("httpx", "httpx2"):
            found.append((name, value))
        cfg = getattr(value, "sdk_configuration", None)
        if cfg is not None:
            if cfg.client_supplied:
                found.append((f"{name}'s client", cfg.client))
            if cfg.async_client_supplied:
                found.append((f"{name}'s async_client", cfg.async_client))
    return [name for name, client in found if getattr(client, "is_closed", True) is False]


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.name for s in SNIPPETS])
def test_readme_snippet_runs(
    snippet: Snippet, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in snippet.requires:
        pytest.importorskip(module)
    if "redis" in snippet.requires:  # a Redis snippet reads REDIS_URL, as a deployment would
        from redis_server import shared_server

        monkeypatch.setenv("REDIS_URL", shared_server().url)
    emulator.reset()
    monkeypatch.setenv("MISTRAL_API_KEY", "readme-test-key")
    for name in list(os.environ):
        if name.startswith("MISTRAL_RATELIMIT_"):
            monkeypatch.delenv(name)
    _redirect(monkeypatch, int(emulator.url.rsplit(":", 1)[1]))
    code = compile(
        snippet.code, f"README.md (snippet {snippet.name!r}, line {snippet.line})", "exec"
    )
    out = io.StringIO()
    namespace: dict[str, Any] = {"__name__": f"readme_{snippet.name.replace('-', '_')}"}
    with contextlib.redirect_stdout(out):
        exec(code, namespace)
    printed = out.getvalue()
    assert printed.strip(), "a README snippet should show its result"
    if snippet.name in EXPECTED_OUTPUT:
        assert re.fullmatch(EXPECTED_OUTPUT[snippet.name], printed.strip(), re.S), printed
    if snippet.name in QUOTED_OUTPUT:
        quoted = re.search(QUOTED_OUTPUT[snippet.name], snippet.code)
        assert quoted is not None, "the snippet's comment on its output is gone"
        assert printed.startswith(quoted.group(1)), (quoted.group(1), printed)
    assert _left_open(namespace) == [], "the snippet should close every HTTP client it opens"
    if snippet.name in ("errors", "emulator", "emulator-faults"):  # refused / its own emulator
        assert len(emulator.log) == 0
        return
    assert len(emulator.log) > 0, "the snippet sent nothing"
    assert emulator.log.count(429) == 0
    if snippet.name in EXPECTED_RATE:
        most, seconds = EXPECTED_RATE[snippet.name]
        assert emulator.log.max_in_window(seconds) <= most
