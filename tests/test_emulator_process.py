"""``EmulatorProcess``: a failed start says why, in the caller's process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")

import mistral_ratelimit
from mistral_ratelimit.emulator import EmulatorProcess

SRC = str(Path(mistral_ratelimit.__file__).resolve().parents[1])


def _run_script(path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=120
    )


def test_a_script_without_a_main_guard_is_told_to_add_one(tmp_path: Path) -> None:
    script = tmp_path / "no_guard.py"
    script.write_text(
        "from mistral_ratelimit.emulator import EmulatorProcess\n"
        "with EmulatorProcess(requests_per_second=5) as emu:\n"
        "    print(emu.url)\n"
    )
    done = _run_script(script)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: the emulator process exited before it ran")
    assert 'under `if __name__ == "__main__":`' in last
    assert "EOFError" not in done.stderr


def test_the_same_script_with_the_guard_serves(tmp_path: Path) -> None:
    script = tmp_path / "guarded.py"
    script.write_text(
        "from mistral_ratelimit.emulator import EmulatorProcess\n"
        'if __name__ == "__main__":\n'
        "    with EmulatorProcess(requests_per_second=5) as emu:\n"
        "        print(emu.url.startswith('http://127.0.0.1:'), len(emu.log()))\n"
    )
    done = _run_script(script)
    assert (done.returncode, done.stdout, done.stderr) == (0, "True 0\n", "")


def test_bad_settings_are_reported_from_the_child() -> None:
    with pytest.raises(RuntimeError, match=r"ValueError: requests_per_second must be >= 0"):
        EmulatorProcess(requests_per_second=-1).start()
