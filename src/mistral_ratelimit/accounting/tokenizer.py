"""Count text tokens with Mistral's Tekken vocabulary, offline.

The vocabulary is a compact file derived from ``mistral-common``'s ``tekken_240911.json``
(Apache-2.0, see ``data/NOTICE``) and shipped inside this package, so counting never touches
the network, never needs ``mistral-common`` (Python >= 3.11, ~180 MB of dependencies) and
never writes to a cache directory. tiktoken is only the BPE engine: the encoding is built
with ``tiktoken.Encoding`` directly, not ``tiktoken.load`` (which copies files into the
system temp directory).

Nothing loads at import time. The first call loads the vocabulary once per process under a
lock (about 0.2 s); later calls are lock-free reads of a module global. If the vocabulary
cannot be loaded, the fallback is the UTF-8 byte length of the text: the only cheap bound
measured never to under-count (``len(text) / 4`` under-counts Chinese by 64 % and emoji by
76 %). The failure is logged once, and ``tokenizer_info()`` reports it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import zlib
from importlib import resources
from typing import Any

logger = logging.getLogger(__name__)

VOCAB_RESOURCE = "tekken.vocab.z"
#: Tekken reserves the first 1 000 ids for control tokens; text ids start after them.
NUM_SPECIAL_TOKENS = 1000

# tiktoken's regex engine overflows its stack on some pathological inputs (1 M spaces panics
# with a Rust ``PanicException``, which is a ``BaseException``). Long texts are therefore cut
# into segments, only where the Tekken pattern always ends a piece, so the count is unchanged:
# after a line break and before a letter or digit. No alternative of the pattern can match
# across that point: letter pieces may start with one non-letter but never ``\r``/``\n``, the
# punctuation piece only trails ``[\r\n/]``, and the whitespace pieces hold no letters.
SEGMENT_CHARS = 100_000
_SAFE_CUT = re.compile(r"[\r\n](?=[^\W_])")

_lock = threading.Lock()
_encoding: Any = None  # tiktoken.Encoding once loaded
_state: dict[str, Any] = {"source": None, "error": None}
_failures_logged: set[str] = set()


def _load_encoding() -> tuple[Any, dict[str, Any]]:
    """The encoding, and what ``tokenizer_info`` reports about it."""
    import tiktoken  # imported here: importing tiktoken is not free and may be unnecessary

    started = time.perf_counter()
    blob = resources.files(__package__).joinpath("data").joinpath(VOCAB_RESOURCE).read_bytes()
    raw = zlib.decompress(blob)
    newline = raw.index(b"\n")
    header = json.loads(raw[:newline])
    if header.get("format") != 1:
        raise ValueError(f"unknown vocabulary format {header.get('format')!r}")
    body = memoryview(raw)[newline + 1 :]
    if hashlib.sha256(body).hexdigest() != header["sha256"]:
        raise ValueError("vocabulary file is corrupt (sha256 mismatch)")
    ranks: dict[bytes, int] = {}
    pos, rank, end = 0, 0, len(body)
    while pos < end:
        size = body[pos]
        ranks[bytes(body[pos + 1 : pos + 1 + size])] = rank
        rank += 1
        pos += 1 + size
    if rank != header["n_ranks"] or len(ranks) != rank:
        raise ValueError(f"vocabulary holds {len(ranks)} ranks, header says {header['n_ranks']}")
    encoding = tiktoken.Encoding(
        name="tekken", pat_str=header["pattern"], mergeable_ranks=ranks, special_tokens={}
    )
    info = {
        "source": "tekken",
        "vocab_source": header.get("source"),
        "n_ranks": rank,
        "num_special_tokens": header.get("num_special_tokens", NUM_SPECIAL_TOKENS),
        "load_seconds": round(time.perf_counter() - started, 4),
    }
    return encoding, info


def _get_encoding() -> Any:
    global _encoding
    if _state["source"] is not None:
        return _encoding
    with _lock:
        if _state["source"] is None:
            try:
                encoding, info = _load_encoding()
            except Exception as exc:
                _state.update(source="fallback", error=f"{type(exc).__name__}: {exc}")
                logger.warning(
                    "mistral_ratelimit: Tekken vocabulary could not be loaded (%s); "
                    "token estimates fall back to UTF-8 byte length (an upper bound)",
                    _state["error"],
                )
            else:
                # The encoding first: the lock-free path above returns ``_encoding`` as
                # soon as it sees a source, and None there means the byte fallback.
                _encoding = encoding
                _state.update(info)
    return _encoding


def fallback_count(text: str) -> int:
    """The cheap upper bound: one token per UTF-8 byte (never under-counts Tekken)."""
    try:
        return len(text.encode("utf-8", "surrogatepass"))
    except Exception:
        return 4 * len(text)


def _segments(text: str) -> list[str]:
    if len(text) <= SEGMENT_CHARS:
        return [text]
    out: list[str] = []
    start = 0
    while len(text) - start > SEGMENT_CHARS:
        cut = _SAFE_CUT.search(text, start + SEGMENT_CHARS)
        if cut is None:
            break
        out.append(text[start : cut.start() + 1])
        start = cut.start() + 1
    out.append(text[start:])
    return out


def _note_failure(kind: str, exc: BaseException) -> None:
    if kind not in _failures_logged:
        _failures_logged.add(kind)
        logger.warning(
            "mistral_ratelimit: tokenizer failed on one text (%s: %s); counted its UTF-8 bytes",
            kind,
            type(exc).__name__,
        )


def count_tokens(text: str) -> int:
    """Tekken tokens in ``text`` (no BOS, no control tokens). Never raises, never networks."""
    if not isinstance(text, str):
        return 0
    if not text:
        return 0
    encoding = _get_encoding()
    if encoding is None:
        return fallback_count(text)
    total = 0
    for segment in _segments(text):
        try:
            total += len(encoding.encode_ordinary(segment))
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # pyo3 PanicException derives from BaseException
            _note_failure(type(exc).__name__, exc)
            total += fallback_count(segment)
    return total


def encode(text: str) -> list[int]:
    """Tekken ids as ``mistral_common`` numbers them (offset by the 1 000 control slots).

    For tests and diagnostics; raises ``RuntimeError`` when the vocabulary is unavailable.
    """
    encoding = _get_encoding()
    if encoding is None:
        raise RuntimeError(f"Tekken vocabulary unavailable: {_state['error']}")
    return [t + NUM_SPECIAL_TOKENS for t in encoding.encode_ordinary(text)]


def tokenizer_info() -> dict[str, object]:
    """Where counts come from: ``{"source": "tekken"|"fallback", "error": str|None, ...}``.

    Loads the vocabulary if that has not happened yet.
    """
    _get_encoding()
    return dict(_state)


def is_loaded() -> bool:
    """Whether counting can start at once: the vocabulary is loaded (or known to be
    unavailable), so no count would wait for the load."""
    return _state["source"] is not None


def preload_in_background() -> None:
    """Start loading the vocabulary in a daemon thread, once per process, so the first exact
    count does not stall an event loop for the ~0.2 s the load takes."""
    global _preload_started
    with _preload_lock:  # not ``_lock``: the load holds that one for its whole length
        if _preload_started or _state["source"] is not None:
            return
        _preload_started = True
    threading.Thread(target=_get_encoding, name="mistral-ratelimit-tokenizer", daemon=True).start()


_preload_started = False
_preload_lock = threading.Lock()


def _reset_for_tests() -> None:
    global _encoding
    with _lock:
        _encoding = None
        _state.clear()
        _state.update(source=None, error=None)
        _failures_logged.clear()
