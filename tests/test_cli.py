"""``mistral-ratelimit demo | serve``: every bad argument is one argparse error line naming
the option and what it takes, with exit code 2 and no traceback."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from mistral_ratelimit.cli import main

BAD_ARGUMENTS = [
    (["serve", "--rps", "-1"], "argument --rps: expected a number >= 0 or 'off', got '-1'"),
    (["serve", "--rps", "abc"], "argument --rps: expected a number >= 0 or 'off', got 'abc'"),
    (["serve", "--rps", "inf"], "argument --rps: expected a number >= 0 or 'off', got 'inf'"),
    (["serve", "--rpm", "nan"], "argument --rpm: expected a number >= 0 or 'off', got 'nan'"),
    (["serve", "--tpm", "0"], "argument --tpm: expected a number > 0 or 'off', got '0'"),
    (
        ["serve", "--tokens-per-month", "-5"],
        "argument --tokens-per-month: expected a number > 0 or 'off', got '-5'",
    ),
    (
        ["serve", "--port", "99999"],
        "argument --port: expected an integer from 0 to 65535, got '99999'",
    ),
    (["serve", "--port", "-1"], "argument --port: expected an integer from 0 to 65535, got '-1'"),
    (
        ["serve", "--max-concurrency", "0"],
        "argument --max-concurrency: expected an integer >= 1, got '0'",
    ),
    (["serve", "--limit", "5"], "argument --limit: expected 'AMOUNT/SECONDS[:unit]', got '5'"),
    (["serve", "--stream-tps", "0"], "argument --stream-tps: expected a number > 0, got '0'"),
    (["serve", "--ttft", "-1"], "argument --ttft: expected a number >= 0, got '-1'"),
    (
        ["serve", "--log-level", "loud"],
        "argument --log-level: invalid choice: 'loud' (choose from 'critical', 'error', "
        "'warning', 'info', 'debug', 'trace')",
    ),
    (["demo", "--rps", "0"], "argument --rps: expected a number > 0, got '0'"),
    (["demo", "--rps", "abc"], "argument --rps: expected a number > 0, got 'abc'"),
    (["demo", "--tpm", "-5"], "argument --tpm: expected a number > 0, got '-5'"),
    (["demo", "--duration", "0"], "argument --duration: expected a number > 0, got '0'"),
    (["demo", "--duration", "nan"], "argument --duration: expected a number > 0, got 'nan'"),
]


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"usage: mistral-ratelimit {argv[0]}")
    return lines[-1]


@pytest.mark.parametrize(("argv", "message"), BAD_ARGUMENTS, ids=" ".join)
def test_a_bad_argument_is_a_usage_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _usage_error(argv, capsys) == f"mistral-ratelimit {argv[0]}: error: {message}"


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_port_in_use_is_a_usage_error(busy_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("uvicorn")
    line = _usage_error(["serve", "--port", str(busy_port)], capsys)
    assert line == (
        f"mistral-ratelimit serve: error: argument --port: port {busy_port} is in use on "
        "127.0.0.1 (choose another, or 0 for a free one)"
    )


def test_a_host_that_is_not_local_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("uvicorn")
    line = _usage_error(["serve", "--host", "192.0.2.1", "--port", "0"], capsys)  # TEST-NET-1
    assert line.startswith(
        "mistral-ratelimit serve: error: argument --host: cannot listen on 192.0.2.1 port 0: "
    )


@pytest.mark.parametrize(
    ("text", "value"), [("off", None), ("None", None), ("0", 0.0), ("2.5", 2.5), (" 7 ", 7.0)]
)
def test_good_rates_are_read(text: str, value: float | None) -> None:
    from mistral_ratelimit.emulator.command import _request_rate

    assert _request_rate(text) == value


@pytest.mark.realclock
def test_serve_accepts_connections_as_soon_as_it_prints_its_url() -> None:
    """A script that starts the server and connects on reading the URL line is not refused
    (the socket used to start listening only when uvicorn began serving, ~5 ms later)."""
    pytest.importorskip("uvicorn")
    import subprocess
    import sys
    from pathlib import Path

    import httpx

    command = Path(sys.executable).with_name("mistral-ratelimit")
    proc = subprocess.Popen(
        [str(command), "serve", "--port", "0", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
        host, port = url.removeprefix("http://").rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=5).close()  # once, no retry
        assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)
