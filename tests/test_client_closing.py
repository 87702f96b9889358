"""Every way of ending a program with a client closes every socket: each scenario of
``closing_scenarios.py`` runs in a fresh interpreter with ResourceWarning as an error, so an
unclosed socket or asyncio transport fails the test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from closing_scenarios import CALLS, SCENARIOS

pytestmark = [pytest.mark.sdk, pytest.mark.realclock]

SCRIPT = Path(__file__).with_name("closing_scenarios.py")


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_socket_is_closed_without_a_warning(name: str) -> None:
    if name.startswith("trio"):
        pytest.importorskip("trio")
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", str(SCRIPT), name],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    # Warnings raised inside __del__ cannot fail the run; they are printed as "ignored".
    assert "ResourceWarning" not in done.stderr, done.stderr
    assert "unclosed" not in done.stderr, done.stderr
    runs = 2 if name == "two_runs" else 1
    assert f"requests {CALLS * runs}" in done.stdout  # the sockets were really used
