"""Token estimation benchmark: speed, tokenizer memory, and the fallback's error per language.

Run: ``.venv/bin/python bench/bench_estimate.py [--against REV]`` (prints a Markdown section).

Measures, each in a fresh subprocess where memory matters:

* the cheap estimate on the transport's hot path: bench_transport's 2 KB body, once more of
  a shape already seen (one program's requests come in a few shapes) and of a new shape each
  time; with ``--against REV``, the same for that git revision, alternating in one process
  (the machine is noisy: compare the ratio);

* time to load the shipped Tekken vocabulary and the RSS it adds;
* time to estimate a ~2 KB and a ~1 MB request body, exact (Tekken BPE) and cheap (UTF-8
  bytes, no BPE) modes, median of repeated runs;
* the same for OpenAI's ``cl100k_base`` through tiktoken, only if its file is already in
  tiktoken's cache (the network is blocked: nothing is ever downloaded);
* how far the cheap fallbacks are from the true Tekken count, per language.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests" / "corpus"))
sys.path.insert(0, str(ROOT / "bench"))

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


def _block_network() -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("network blocked by bench_estimate")

    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse  # type: ignore[assignment]


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _cl100k_cache_file() -> Path:
    cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    folder = Path(cache) if cache else Path(tempfile.gettempdir()) / "data-gym-cache"
    return folder / hashlib.sha1(CL100K_URL.encode()).hexdigest()


def _bodies() -> dict[str, bytes]:
    from build_corpus import TEXTS

    pool = [t for texts in TEXTS.values() for t in texts]
    small_inputs = []
    i = 0
    while len(json.dumps(small_inputs, ensure_ascii=False).encode()) < 1800:
        role = "user" if i % 2 == 0 else "assistant"
        kind = "message.input" if role == "user" else "message.output"
        small_inputs.append({"type": kind, "role": role, "content": pool[i % len(pool)]})
        i += 1
    small = {"inputs": small_inputs, "instructions": "Be brief.", "model": "mistral-medium-latest"}
    big_text = ""
    j = 0
    while len(big_text.encode()) < 490_000:
        big_text += pool[j % len(pool)] + "\n"
        j += 1
    big = {
        "model": "mistral-large-latest",
        "messages": [
            {"role": "system", "content": "Summarise."},
            {"role": "user", "content": big_text},
            {"role": "assistant", "content": "Which part?"},
            {"role": "user", "content": big_text},
        ],
    }
    return {
        "2 KB": json.dumps(small, ensure_ascii=False).encode(),
        "1 MB": json.dumps(big, ensure_ascii=False).encode(),
    }


def child_tekken() -> dict[str, Any]:
    _block_network()
    before = _rss_kb()
    t0 = time.perf_counter()
    from mistral_ratelimit.accounting.request import Estimator
    from mistral_ratelimit.accounting.tokenizer import count_tokens, tokenizer_info

    count_tokens("warm up")
    load = time.perf_counter() - t0
    after = _rss_kb()
    estimator = Estimator()
    out: dict[str, Any] = {
        "load_s": load,
        "rss_mb": (after - before) / 1024,
        "info": tokenizer_info(),
    }
    for name, raw in _bodies().items():
        try:
            json.loads(raw)
        except ValueError:
            raise SystemExit(f"{name} body is not JSON") from None
        for exact in (True, False):
            runs = 30 if name == "2 KB" else 5
            times = []
            est = None
            for _ in range(runs):
                t = time.perf_counter()
                est = estimator.estimate(
                    "POST",
                    "/v1/chat/completions" if name == "1 MB" else "/v1/conversations",
                    raw,
                    exact=exact,
                )
                times.append(time.perf_counter() - t)
            assert est is not None
            out[f"{name} {'exact' if exact else 'cheap'}"] = {
                "bytes": len(raw),
                "median_ms": statistics.median(times) * 1000,
                "prompt_tokens": est.prompt_tokens,
            }
    return out


def child_cl100k() -> dict[str, Any]:
    _block_network()
    path = _cl100k_cache_file()
    if not path.exists():
        return {"present": False, "path": str(path)}
    import tiktoken

    before = _rss_kb()
    t0 = time.perf_counter()
    enc = tiktoken.get_encoding("cl100k_base")
    load = time.perf_counter() - t0
    after = _rss_kb()
    out: dict[str, Any] = {"present": True, "load_s": load, "rss_mb": (after - before) / 1024}
    for name, raw in _bodies().items():
        text = raw.decode()
        times = []
        for _ in range(30 if name == "2 KB" else 5):
            t = time.perf_counter()
            enc.encode_ordinary(text)
            times.append(time.perf_counter() - t)
        out[name] = {"median_ms": statistics.median(times) * 1000}
    return out


def fallback_errors() -> dict[str, dict[str, float]]:
    from build_corpus import TEXTS

    from mistral_ratelimit.accounting.tokenizer import count_tokens

    rows: dict[str, dict[str, float]] = {}
    for lang, texts in TEXTS.items():
        text = "\n".join(texts)
        true = count_tokens(text)
        rows[lang] = {
            "tekken": true,
            "utf8_bytes": len(text.encode()) / true - 1,
            "chars_div_4": (len(text) / 4) / true - 1,
            "chars": len(text) / true - 1,
        }
    return rows


def _estimator_at(rev: str, folder: str) -> Any:
    """An ``Estimator`` from git revision ``rev``, imported as a package of its own."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "src/mistral_ratelimit"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    shutil.move(os.path.join(folder, "src", "mistral_ratelimit"), os.path.join(folder, "at_rev"))
    sys.path.insert(0, folder)
    return importlib.import_module("at_rev.accounting.request").Estimator()


def hot_path(against: str | None) -> dict[str, dict[str, float]]:
    """µs per cheap estimate of the transport benchmark's body, min over alternating rounds;
    and ms per estimate of a body too big to walk."""
    from bench_transport import BODY

    from mistral_ratelimit.accounting.request import Estimator

    headers = {"accept": "application/json", "content-type": "application/json"}
    # A new shape each call: only the cap differs, which the scan reads.
    shapes = [BODY.replace(b'"max_tokens": 256', b'"max_tokens": %d' % n) for n in range(4096)]
    assert len(set(shapes)) == len(shapes)
    with tempfile.TemporaryDirectory() as folder:
        estimators = {"this": Estimator()}
        if against:
            estimators[against] = _estimator_at(against, folder)
        out: dict[str, dict[str, float]] = {}
        for case, bodies in (("same shape", [BODY] * len(shapes)), ("new shape", shapes)):
            runs: dict[str, list[float]] = {name: [] for name in estimators}
            for _ in range(9):
                for name, estimator in estimators.items():
                    calls = iter(bodies)

                    def run(e: Any = estimator, c: Any = calls) -> Any:
                        return e.estimate(
                            "POST", "/v1/conversations", next(c), headers, exact=False
                        )

                    seconds = timeit.timeit(run, number=len(bodies))
                    runs[name].append(seconds / len(bodies) * 1e6)
            out[case] = {name: min(times) for name, times in runs.items()}
        # A body too big to walk: a million short messages (55 MB), timed once each.
        turns = [{"role": "user", "content": "hello there\nfriend"}, {"role": "assistant"}]
        huge = json.dumps({"model": "mistral-x", "messages": turns * 500_000}).encode()
        for exact in (True, False):
            row = out[f"1M messages, {'exact' if exact else 'cheap'} (ms)"] = {}
            for name, estimator in estimators.items():
                started = time.perf_counter()
                estimator.estimate("POST", "/v1/chat/completions", huge, headers, exact=exact)
                row[name] = (time.perf_counter() - started) * 1e3
        return out


def _run_child(name: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, name], capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def main(against: str | None) -> None:
    tekken = _run_child("--tekken")
    cl100k = _run_child("--cl100k")
    errors = fallback_errors()
    hot = hot_path(against)
    flag = f" --against {against}" if against else ""
    print("## Token estimation\n")
    print(
        f"Command: `.venv/bin/python bench/bench_estimate.py{flag}` (network blocked inside the benchmark).\n"
    )
    print(f"Machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}.\n")
    print(
        "Cheap estimate on the hot path (the transport benchmark's 2 KB body), µs per call,"
        " and a body too big to walk:\n"
    )
    names = list(hot["same shape"])
    print("| body | " + " | ".join(names) + (" | ratio |" if against else " |"))
    print("|---" * (len(names) + 1 + bool(against)) + "|")
    for case, row in hot.items():
        cells = " | ".join(f"{row[n]:.1f}" for n in names)
        ratio = f" | {row[names[1]] / row['this']:.1f}x" if against else ""
        print(f"| {case} | {cells}{ratio} |")
    print()
    print("| tokenizer | load time | RSS added |")
    print("|---|---|---|")
    print(
        f"| Tekken (shipped file, {tekken['info'].get('n_ranks')} ranks) | {tekken['load_s']:.2f} s | {tekken['rss_mb']:.0f} MB |"
    )
    if cl100k["present"]:
        print(
            f"| cl100k_base (tiktoken cache) | {cl100k['load_s']:.2f} s | {cl100k['rss_mb']:.0f} MB |"
        )
    else:
        print(
            f"| cl100k_base | not measured: its file is not in tiktoken's cache ({cl100k['path']}) and the benchmark never downloads | |"
        )
    print("\n| body | mode | size | median time | prompt tokens |")
    print("|---|---|---|---|---|")
    for key, row in tekken.items():
        if isinstance(row, dict) and "median_ms" in row:
            name, mode = key.rsplit(" ", 1)
            print(
                f"| {name} | {mode} | {row['bytes']:,} B | {row['median_ms']:.2f} ms | {row['prompt_tokens']:,} |"
            )
            if cl100k["present"] and mode == "exact":
                print(
                    f"| {name} | cl100k_base, raw text | {row['bytes']:,} B | {cl100k[name]['median_ms']:.2f} ms | |"
                )
    print("\nFallback error against the true Tekken count (positive = over-count, safe):\n")
    print("| text | Tekken tokens | UTF-8 bytes | len/4 | len |")
    print("|---|---|---|---|---|")
    for lang, row in errors.items():
        print(
            f"| {lang} | {row['tekken']:.0f} | {row['utf8_bytes']:+.0%} | {row['chars_div_4']:+.0%} | {row['chars']:+.0%} |"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--tekken":
        print(json.dumps(child_tekken()))
    elif len(sys.argv) > 1 and sys.argv[1] == "--cl100k":
        print(json.dumps(child_cl100k()))
    else:
        parser = argparse.ArgumentParser()
        parser.add_argument("--against", help="also time the hot path at this git revision")
        main(parser.parse_args().against)
