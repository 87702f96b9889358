"""The Lua scripts of the Redis backend, and the key layout they work on.

Every operation is one script run with ``EVALSHA`` (redis-py's ``Script`` loads it again on
``NOSCRIPT``, e.g. after a Redis restart). All keys of one budget share a hash tag, so the
scripts also run on Redis Cluster.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from ..config import Limit

SCRIPT_NAMES = (
    "reserve",
    "check",
    "cancel",
    "settle",
    "pause",
    "adopt",
    "charge",
    "stats",
    "renew",
    "anchor",
)


def _read(name: str) -> str:
    return (resources.files(__package__) / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def script_sources(*, test_clock: bool = False) -> dict[str, str]:
    """Each script's full text: the shared functions followed by its body.

    With ``test_clock`` the scripts read the time from their last argument instead of Redis
    ``TIME`` (a fake clock for tests). They differ from the production scripts, so no Redis
    writer can move a production budget's clock.
    """
    head = f"local TEST_CLOCK = {'true' if test_clock else 'false'}\n"
    common = _read("common")
    return {name: f"{head}{common}\n-- {name}\n{_read(name)}" for name in SCRIPT_NAMES}


_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")


def namespace_for(api_key: str | None, key: str | None) -> str:
    """The shared budget's name. Workers with the same API key meet under the same name.

    The API key itself is never stored: only a prefix of its SHA-256, which cannot be turned
    back into the key.
    """
    if key is not None:
        if not _SAFE_NAME.match(key):
            raise ValueError(
                "key must be 1-100 characters from A-Z a-z 0-9 _ . : - (no braces: the "
                f"limiter adds its own hash tag), got {key!r}"
            )
        return key
    if api_key:
        digest = hashlib.sha256(b"mistral-ratelimit\x00" + api_key.encode("utf-8")).hexdigest()
        return f"k-{digest[:24]}"
    return "default"


@dataclass(frozen=True)
class Keys:
    """Every key of one budget, in the order the scripts expect them (see common.lua)."""

    state: str
    stats: str
    inflight: str
    queue: str
    queue_leases: str
    settled: str
    ahead: str
    ahead_data: str

    @classmethod
    def for_namespace(cls, prefix: str, namespace: str) -> Keys:
        tag = f"{prefix}:{{{namespace}}}"  # the hash tag: one Cluster slot per budget
        return cls(
            f"{tag}:state",
            f"{tag}:stats",
            f"{tag}:inflight",
            f"{tag}:queue",
            f"{tag}:qlease",
            f"{tag}:settled",
            f"{tag}:ahead",
            f"{tag}:ahead-data",
        )

    def marker(self, member: str) -> bytes:
        """One booking's marker (KEYS[9] of the scripts that take it, see common.lua)."""
        return f"{self.state.removesuffix(':state')}:g:{member}".encode()

    def all(self) -> list[bytes]:
        """Encoded once: redis-py passes bytes through without work."""
        names = [
            self.state,
            self.stats,
            self.inflight,
            self.queue,
            self.queue_leases,
            self.settled,
            self.ahead,
            self.ahead_data,
        ]
        return [name.encode() for name in names]


@dataclass(frozen=True)
class WindowSpec:
    """One limit as the scripts see it. Workers share a ring when unit and period match."""

    amount: float
    per_seconds: float
    tokens: bool

    @classmethod
    def of(cls, limit: Limit) -> WindowSpec:
        return cls(float(limit.amount), float(limit.per_seconds), limit.unit == "tokens")

    @property
    def id(self) -> str:
        return f"{'t' if self.tokens else 'r'}{self.per_seconds!r}"

    def words(self) -> str:
        return f"{self.id} {self.amount!r} {self.per_seconds!r} {'1' if self.tokens else '0'}"


def window_spec(margin: float, specs: tuple[WindowSpec, ...]) -> str:
    """All windows as the one string the scripts parse (see ``parse_windows`` in common.lua)."""
    return " ".join([repr(float(margin)), str(len(specs)), *(s.words() for s in specs)])
