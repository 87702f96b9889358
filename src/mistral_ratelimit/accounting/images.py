"""What an image in a request costs, from its header only.

Mistral's vision models turn an image into a grid of patch tokens: one token per 16x16 patch,
one break token per row (the last one is the end token), after scaling the image down to fit
1024x1024 (``mistral_common`` ``ImageEncoder``, multimodal config of ``tekken_240911``). So
the cost depends on the pixel size alone, which every common format stores in its first bytes.
An image is therefore never charged its base64 length, and never zero: when the size cannot
be read (a remote URL, an unknown or truncated format) it costs the largest grid,
:data:`MAX_IMAGE_TOKENS`.
"""

from __future__ import annotations

import base64
import binascii
import struct

PATCH_SIZE = 16
MAX_IMAGE_SIZE = 1024
#: The largest grid: 64 rows of 64 patch tokens plus one break/end token each.
MAX_IMAGE_TOKENS = (MAX_IMAGE_SIZE // PATCH_SIZE + 1) * (MAX_IMAGE_SIZE // PATCH_SIZE)
#: Base64 characters decoded to look for the size; a JPEG's frame header usually sits in the
#: first few kilobytes, after EXIF data.
_HEADER_B64_CHARS = 256 * 1024


def grid_tokens(width: int, height: int) -> int:
    """Tokens for an image of ``width`` x ``height`` pixels (the ``ImageEncoder`` rule)."""
    w: float = width
    h: float = height
    ratio = max(h / MAX_IMAGE_SIZE, w / MAX_IMAGE_SIZE)
    if ratio > 1:
        w = max(round(w / ratio), 1)
        h = max(round(h / ratio), 1)
    w_tokens = (int(w) - 1) // PATCH_SIZE + 1
    h_tokens = (int(h) - 1) // PATCH_SIZE + 1
    return (w_tokens + 1) * h_tokens


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    end = len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > end:
                return None
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        if length < 2:
            return None
        pos += 2 + length
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from the first bytes of a PNG, JPEG, GIF, WebP or BMP file."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return width, height
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        kind = data[12:16]
        if kind == b"VP8 ":
            width, height = struct.unpack("<HH", data[26:30])
            return width & 0x3FFF, height & 0x3FFF
        if kind == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if kind == b"VP8X":
            width = int.from_bytes(data[24:27], "little") + 1
            height = int.from_bytes(data[27:30], "little") + 1
            return width, height
        return None
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)
    return None


def _decode_prefix(b64: str) -> bytes:
    head = b64[:_HEADER_B64_CHARS]
    head = "".join(head.split())  # tolerate line-wrapped base64
    head = head[: len(head) - len(head) % 4]
    try:
        return base64.b64decode(head, validate=False)
    except (binascii.Error, ValueError):
        try:
            return base64.urlsafe_b64decode(head)
        except (binascii.Error, ValueError):
            return b""


def image_url_tokens(url: object) -> tuple[int, bool]:
    """``(tokens, exact)`` for an ``image_url`` value: a data URL, an http URL or raw base64.

    ``exact`` is False when the size could not be read and the largest grid was charged.
    """
    if isinstance(url, dict):
        url = url.get("url")
    if not isinstance(url, str) or not url:
        return MAX_IMAGE_TOKENS, False
    if url.startswith("data:"):
        _, sep, payload = url.partition(",")
        if not sep:
            return MAX_IMAGE_TOKENS, False
    elif url.startswith(("http://", "https://", "file:")):
        return MAX_IMAGE_TOKENS, False
    else:
        payload = url
    size = image_size(_decode_prefix(payload))
    if size is None or size[0] <= 0 or size[1] <= 0:
        return MAX_IMAGE_TOKENS, False
    return grid_tokens(*size), True
