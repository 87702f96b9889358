"""Regenerate the compact Tekken vocabulary that the package ships (dev-only).

Reads ``tekken_240911.json`` from an installed ``mistral-common`` (or a path given on the
command line), keeps the BPE ranks exactly as ``mistral_common``'s ``Tekkenizer`` keeps them
(the first ``default_vocab_size - default_num_special_tokens`` entries; the rest of the file is
never used by the model), and writes ``src/mistral_ratelimit/accounting/data/tekken.vocab.z``.

File format (version 1), zlib-compressed as a whole:

* one JSON header line: format, source, pattern, num_special_tokens, n_ranks, sha256 of body;
* the body: for each rank in order, one length byte then the token's bytes.

Ranks are implicit (the position), so the file is about a third of tiktoken's text format.

Usage: ``python tools/make_tekken_vocab.py [path/to/tekken_240911.json]``
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import sys
import zlib
from pathlib import Path

OUT = (
    Path(__file__).resolve().parent.parent
    / "src"
    / "mistral_ratelimit"
    / "accounting"
    / "data"
    / "tekken.vocab.z"
)
SOURCE_NAME = "tekken_240911.json"


def find_source() -> Path:
    # find_spec locates the package without importing it (importing costs ~0.5 s and 160 MB).
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("mistral_common is not installed; pass the path to tekken_240911.json")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / SOURCE_NAME


def build(source: Path) -> bytes:
    data = json.loads(source.read_text(encoding="utf-8"))
    config = data["config"]
    n_special = int(config["default_num_special_tokens"])
    n_ranks = int(config["default_vocab_size"]) - n_special
    body = bytearray()
    for i, entry in enumerate(data["vocab"][:n_ranks]):
        if entry["rank"] != i:
            raise SystemExit(f"rank {entry['rank']} at position {i}: file is not in rank order")
        token = base64.b64decode(entry["token_bytes"])
        if not 0 < len(token) < 256:
            raise SystemExit(f"token {i} has {len(token)} bytes; the format stores at most 255")
        body.append(len(token))
        body += token
    version = "unknown"
    try:
        from importlib.metadata import version as dist_version

        version = dist_version("mistral-common")
    except Exception:
        pass
    header = {
        "format": 1,
        "source": f"mistral-common {version} data/{source.name}",
        "license": "Apache-2.0",
        "pattern": config["pattern"],
        "num_special_tokens": n_special,
        "n_ranks": n_ranks,
        "sha256": hashlib.sha256(bytes(body)).hexdigest(),
    }
    raw = json.dumps(header, ensure_ascii=True).encode("ascii") + b"\n" + bytes(body)
    return zlib.compress(raw, 9)


def main(argv: list[str]) -> int:
    source = Path(argv[1]) if len(argv) > 1 else find_source()
    blob = build(source)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_bytes(blob)
    print(f"wrote {OUT} ({len(blob):,} bytes) from {source}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
