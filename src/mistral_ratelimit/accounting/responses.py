"""What kind of answer a response status and body are, for the retry decision.

Bodies seen in the wild (reference, §4 "429 bodies"):

- quota: ``{"object":"error","message":"Rate limit exceeded","type":"rate_limited",
  "param":null,"code":"1300","raw_status_code":429}``, or the older
  ``{"message":"Requests rate limit exceeded"}``;
- provider capacity, usually 429, reportedly also 503:
  ``{"message":"Service tier capacity exceeded for this model.",
  "type":"service_tier_capacity_exceeded","param":null,"code":"3505"}``, or an older variant
  with ``"type":"invalid_request_error","code":null``;
- Cloudflare 520-527 with an HTML page.

Only the body's first ``MAX_BODY_BYTES`` are inspected: error bodies are small, and a huge
one must not cost a large parse on the retry path.
"""

from __future__ import annotations

import json
from typing import Any

from .types import ErrorClass

MAX_BODY_BYTES = 64 * 1024

_CAPACITY_CODE = "3505"
_CAPACITY_TYPE = "service_tier_capacity_exceeded"
_CAPACITY_TEXT = "capacity exceeded"
_SERVER_STATUSES = frozenset({500, 502, 503, 504, *range(520, 528)})


def _is_capacity_error(doc: Any, depth: int = 0) -> bool:
    if not isinstance(doc, dict):
        return False
    code = doc.get("code")
    if (isinstance(code, str) and code.strip() == _CAPACITY_CODE) or (
        isinstance(code, int) and not isinstance(code, bool) and code == int(_CAPACITY_CODE)
    ):
        return True
    if doc.get("type") == _CAPACITY_TYPE:
        return True
    message = doc.get("message")
    if isinstance(message, str) and _CAPACITY_TEXT in message.lower():
        return True
    # Proxies and gateways sometimes wrap the upstream error one level down.
    if depth == 0:
        return any(_is_capacity_error(doc.get(key), 1) for key in ("error", "detail"))
    return False


def _says_capacity(body: bytes | None) -> bool:
    if not body:
        return False
    head = bytes(body[:MAX_BODY_BYTES])
    try:
        doc = json.loads(head)
    except Exception:
        # Not JSON (plain text, HTML, truncated): fall back to the message text alone.
        return _CAPACITY_TEXT in head.decode("utf-8", "replace").lower()
    return _is_capacity_error(doc)


def classify_response(status: int, body: bytes | None) -> ErrorClass:
    """Classify a response; never raises, whatever the body."""
    try:
        if 200 <= status < 400:
            return ErrorClass.OK
        if status == 429:
            return ErrorClass.CAPACITY if _says_capacity(body) else ErrorClass.RATE_LIMITED
        if status == 503 and _says_capacity(body):
            return ErrorClass.CAPACITY
        if status in _SERVER_STATUSES:
            return ErrorClass.SERVER
    except Exception:
        # Only a pathological body can get here; its status still tells most of the story.
        if status == 429:
            return ErrorClass.RATE_LIMITED
        if status in _SERVER_STATUSES:
            return ErrorClass.SERVER
    return ErrorClass.OTHER
