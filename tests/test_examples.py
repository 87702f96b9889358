"""The examples: the budget timeline they draw is the engine's, and each script runs green
against the in-process emulator with no key."""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from mistral_ratelimit import RatelimitConfig, RateLimiter
from mistral_ratelimit.limiter.window import SLOTS_PER_WINDOW

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the timeline of visualize_rate_limiting.py ---------------------------------------------
def test_requests_timeline_is_one_window_plus_margin_apart() -> None:
    viz = load("visualize_rate_limiting")
    grants = viz.requests_timeline(rps=1.2, count=6)
    cfg = RatelimitConfig(api_key="-")
    window = 1 / 1.2
    # The engine books a charge in a slot of window/100 and keeps it for one window plus
    # the margin after the slot ends; grants after the first land on slot boundaries.
    step = window + cfg.window_margin + window / SLOTS_PER_WINDOW
    assert grants[0] == 0.0
    for k, at in enumerate(grants):
        assert at == pytest.approx(k * step, abs=1e-9), (k, grants)
    # The seed's claim (requests 3 and 4 both at 0.67 s) is impossible: no two requests in
    # one window, and never sooner than one window apart.
    assert len(set(grants)) == len(grants)
    assert all(b - a >= window for a, b in itertools.pairwise(grants))
    assert grants[2] == pytest.approx(1.733, abs=5e-4)
    assert grants[3] == pytest.approx(2.600, abs=5e-4)


def test_requests_timeline_matches_a_limiter_driven_directly() -> None:
    viz = load("visualize_rate_limiting")
    now = [0.0]
    limiter = RateLimiter(
        RatelimitConfig(api_key="-", requests_per_second=1.2, tokens_per_minute=None),
        clock=lambda: now[0],
    )
    direct = [limiter.reserve(0).at for _ in range(6)]
    assert viz.requests_timeline(rps=1.2, count=6) == direct


def test_token_timeline_waits_for_the_first_charge_to_leave_the_window() -> None:
    viz = load("visualize_rate_limiting")
    cfg = RatelimitConfig(api_key="-", requests_per_second=None, tokens_per_minute=10_000)
    requests = [(5.0 * i, 3_000.0) for i in range(5)]
    grants, limit, margin = viz.grant_times(cfg, requests)
    assert grants[:3] == [0.0, 5.0, 10.0]  # 9,000 of 10,000: no wait
    slot = 60.0 / SLOTS_PER_WINDOW

    def leaves(t: float) -> float:  # one minute and the margin after the end of t's slot
        return (math.floor(t / slot) + 1) * slot + 60.0 + margin

    # The fourth needs the first 3,000 back, the fifth the second's.
    assert grants[3] == pytest.approx(leaves(0.0))
    assert grants[4] == pytest.approx(leaves(5.0))
    # And the fill curve never exceeds the limit.
    _, used = viz.fill_curve(grants, [c for _, c in requests], limit, margin, 140.0)
    assert max(used) <= limit.amount
    assert max(used) == 9_000.0


# -- every example, as a user runs it ---------------------------------------------------------
def run_example(name: str, *args: str, cwd: Path, timeout: float = 60) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISTRAL_")}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.sdk
def test_comprehensive_passes_every_case(tmp_path: Path) -> None:
    out = run_example("test_comprehensive", cwd=tmp_path)
    assert "local emulator" in out
    assert out.count("PASS ") == 7
    assert "FAIL" not in out
    assert "7/7 cases passed" in out


@pytest.mark.sdk
def test_rate_limiting_verdict(tmp_path: Path) -> None:
    out = run_example("test_rate_limiting", cwd=tmp_path)
    assert "VERDICT: PASS" in out
    assert "sync burst: 5 calls" in out and "async burst: 5 calls" in out
    average = float(out.split("average gap ")[1].split(" s")[0])
    assert average >= 0.97 / 1.5  # never faster than the limit


@pytest.mark.sdk
@pytest.mark.parametrize("name", ["test_sync", "test_async"])
def test_basics(tmp_path: Path, name: str) -> None:
    out = run_example(name, cwd=tmp_path)
    assert out.rstrip().endswith("PASS")


def test_visualize_saves_png_and_svg(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = run_example("visualize_rate_limiting", "--output", str(tmp_path / "charts"), cwd=tmp_path)
    png = tmp_path / "charts" / "rate-limiting-timeline.png"
    svg = tmp_path / "charts" / "rate-limiting-timeline.svg"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in svg.read_bytes()[:2000]
    assert "0.867" in out and "1.733" in out
