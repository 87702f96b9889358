"""The shipped Tekken vocabulary: same ids as mistral_common, offline, lazy, safe fallback."""

from __future__ import annotations

import json
import logging
import random
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from mistral_ratelimit.accounting import tokenizer
from mistral_ratelimit.accounting.tokenizer import count_tokens, fallback_count, tokenizer_info

CORPUS = Path(__file__).parent / "corpus"
ROOT = Path(__file__).resolve().parent.parent


def corpus_texts() -> list[str]:
    texts: list[str] = []
    for name in ("handmade.json", "random.json", "sdk_bodies.json"):
        for case in json.loads((CORPUS / name).read_text(encoding="utf-8")):
            stack: list[Any] = [json.loads(case["body"])]
            while stack:
                item = stack.pop()
                if isinstance(item, str) and not item.startswith("data:"):
                    texts.append(item)
                elif isinstance(item, dict):
                    stack.extend(item.values())
                elif isinstance(item, list):
                    stack.extend(item)
    return sorted(set(texts))


@pytest.fixture
def fresh_tokenizer() -> Iterator[None]:
    tokenizer._reset_for_tests()
    yield
    tokenizer._reset_for_tests()


def test_same_ids_as_mistral_common() -> None:
    mc = pytest.importorskip("mistral_common.tokens.tokenizers.tekken", reason="dev-only reference")
    data = resources.files("mistral_common").joinpath("data").joinpath("tekken_240911.json")
    reference = mc.Tekkenizer.from_file(str(data))
    texts = corpus_texts()
    rng = random.Random(7)
    # Random code points from many scripts, including astral planes and combining marks.
    for _ in range(200):
        texts.append(
            "".join(
                chr(rng.choice([rng.randint(32, 0x2FFF), rng.randint(0x1F300, 0x1FAFF)]))
                for _ in range(rng.randint(1, 80))
            )
        )
    assert len(texts) > 300
    for text in texts:
        assert tokenizer.encode(text) == reference.encode(text, bos=False, eos=False), text[:80]


def test_long_text_is_cut_only_where_pieces_end() -> None:
    rng = random.Random(3)
    words = [
        "alpha",
        "Beta",
        "42",
        "été",
        "東京",
        "  ",
        "!!",
        "\n",
        "\r\n",
        "\n\n",
        "x/y",
        "🎉",
        "\t",
    ]
    text = "".join(rng.choice(words) for _ in range(150_000))
    assert len(text) > tokenizer.SEGMENT_CHARS * 2
    segments = tokenizer._segments(text)
    assert len(segments) > 1 and "".join(segments) == text
    enc = tokenizer._get_encoding()
    assert count_tokens(text) == len(enc.encode_ordinary(text))


def test_pathological_whitespace_does_not_crash() -> None:
    # tiktoken's regex engine panics (a BaseException) on a million spaces.
    text = " " * 1_000_000
    assert count_tokens(text) > 0


def test_counts_are_zero_for_empty_and_non_text() -> None:
    assert count_tokens("") == 0
    assert count_tokens(None) == 0  # type: ignore[arg-type]
    assert count_tokens(b"abc") == 0  # type: ignore[arg-type]


def test_special_token_text_is_plain_text() -> None:
    # Text that looks like a control token is billed as text, never raises.
    assert count_tokens("<|endoftext|> [INST] </s>") > 3


def test_lazy_nothing_loads_at_import() -> None:
    code = (
        "import sys, mistral_ratelimit.accounting.request as r, mistral_ratelimit.accounting.tokenizer as t;"
        "assert t._encoding is None and t._state['source'] is None;"
        "assert 'tiktoken' not in sys.modules, 'tiktoken imported eagerly'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_loads_once_across_threads(fresh_tokenizer: None, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = tokenizer._load_encoding

    def counting() -> Any:
        calls.append(1)
        return real()

    monkeypatch.setattr(tokenizer, "_load_encoding", counting)
    results: list[int] = []
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        results.append(count_tokens("Bonjour le monde"))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(set(results)) == 1 and results[0] > 0


def test_no_fallback_count_while_the_vocabulary_is_published(
    fresh_tokenizer: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hold the loader between building the encoding and returning it, and count from another
    # thread meanwhile: that count must wait for Tekken, not see the state say "tekken" and
    # take the byte fallback (such a count would be flagged exact and teach the correction).
    real = tokenizer._load_encoding
    built, release = threading.Event(), threading.Event()

    def slow() -> Any:
        loaded = real()
        built.set()
        release.wait(5)
        return loaded

    monkeypatch.setattr(tokenizer, "_load_encoding", slow)
    text = "Bonjour tout le monde, comment allez-vous ?"
    seen: list[tuple[int, object]] = []

    def count() -> None:
        seen.append((count_tokens(text), tokenizer_info()["source"]))

    loader = threading.Thread(target=count_tokens, args=("warm up",))
    loader.start()
    assert built.wait(10)
    reader = threading.Thread(target=count)
    reader.start()
    reader.join(0.3)  # long enough for a lock-free read to finish during the load
    release.set()
    loader.join(10)
    reader.join(10)
    assert seen == [(count_tokens(text), "tekken")]
    assert seen[0][0] < fallback_count(text)


def test_offline_no_socket(fresh_tokenizer: None, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    text = "Bonjour, 世界! 🎉"
    got = count_tokens(text)
    assert tokenizer_info()["source"] == "tekken"
    monkeypatch.undo()
    mc = pytest.importorskip("mistral_common.tokens.tokenizers.tekken", reason="dev-only reference")
    data = resources.files("mistral_common").joinpath("data").joinpath("tekken_240911.json")
    assert got == len(mc.Tekkenizer.from_file(str(data)).encode(text, bos=False, eos=False))


def test_no_temp_cache_written(
    fresh_tokenizer: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tk"))
    monkeypatch.setattr("tempfile.tempdir", None)
    count_tokens("warm up")
    assert list(tmp_path.iterdir()) == []


def test_fallback_when_vocabulary_missing(
    fresh_tokenizer: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tokenizer, "VOCAB_RESOURCE", "missing.vocab.z")
    with caplog.at_level(logging.WARNING, logger=tokenizer.__name__):
        first = count_tokens("请用三句话总结")
        second = count_tokens("🎉🎉")
    assert first == len("请用三句话总结".encode())
    assert second == 8
    info = tokenizer_info()
    assert info["source"] == "fallback" and "missing.vocab.z" in str(info["error"])
    assert sum("could not be loaded" in r.message for r in caplog.records) == 1


def test_fallback_when_vocabulary_corrupt(
    fresh_tokenizer: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zlib

    blob = (
        resources.files("mistral_ratelimit.accounting")
        .joinpath("data")
        .joinpath("tekken.vocab.z")
        .read_bytes()
    )
    raw = bytearray(zlib.decompress(blob))
    raw[-1] ^= 0xFF
    monkeypatch.setattr(tokenizer.zlib, "decompress", lambda _b: bytes(raw))
    assert count_tokens("abc") == 3
    assert "sha256" in str(tokenizer_info()["error"])


def test_fallback_never_under_counts_corpus() -> None:
    for text in corpus_texts():
        assert fallback_count(text) >= count_tokens(text), text[:80]


def test_vocabulary_resolves_as_package_data() -> None:
    data = resources.files("mistral_ratelimit.accounting").joinpath("data")
    assert data.joinpath("tekken.vocab.z").is_file()
    assert "Apache" in data.joinpath("NOTICE").read_text(encoding="utf-8")


def test_vocabulary_ships_in_the_wheel(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("hatchling") is None:
        pytest.skip("hatchling (in the dev extra) is not installed, so no offline wheel build")
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(tmp_path.glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "mistral_ratelimit/accounting/data/tekken.vocab.z" in names
    assert "mistral_ratelimit/accounting/data/NOTICE" in names


def test_first_requests_do_not_wait_for_the_vocabulary(
    fresh_tokenizer: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the vocabulary loads (the first ~0.3 s of a process), a request whose cheap
    bound fits the budget goes at once: an exact count would wait for the load, stalling an
    event loop."""
    import httpx

    from mistral_ratelimit import RatelimitConfig, RateLimiter
    from mistral_ratelimit.httpx import RateLimitTransport

    real = tokenizer._load_encoding
    release = threading.Event()

    def held() -> Any:
        release.wait(10)
        return real()

    monkeypatch.setattr(tokenizer, "_load_encoding", held)
    loader = threading.Thread(target=count_tokens, args=("warm up",))  # the background load
    loader.start()
    usage = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    cfg = RatelimitConfig(api_key="k", requests_per_second=100, tokens_per_minute=1_000_000)
    limiter = RateLimiter(cfg)
    transport = RateLimitTransport(
        httpx.MockTransport(lambda r: httpx.Response(200, json={"usage": usage})),
        limiter=limiter,
        config=cfg,
    )
    body = {"inputs": "Bonjour !", "model": "mistral-small-latest"}
    try:
        with httpx.Client(transport=transport, base_url="https://api.mistral.ai") as client:
            for _ in range(3):
                assert client.post("/v1/conversations", json=body).status_code == 200
            assert not release.is_set() and not tokenizer.is_loaded()  # done during the load
            s = limiter.stats()
            assert s.tokens_reserved - s.tokens_refunded + s.tokens_charged == 3 * 15
            assert s.estimate_samples == 0  # nothing was counted exactly
    finally:
        release.set()
        loader.join(10)
