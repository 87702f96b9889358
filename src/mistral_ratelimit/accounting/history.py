"""How big each stored conversation is, learnt from the server's usage.

An append or restart is billed for the whole stored conversation, which its body does not
contain. After each turn the server reports ``prompt_tokens`` (the history it read plus the
new input) and ``completion_tokens`` (the reply, which joins the history), so their sum is the
size of the conversation the next turn will be billed for. Sizes are kept per
``conversation_id`` in a bounded LRU; an unknown conversation is never assumed empty.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(slots=True)  # a value, never changed; not frozen: one is made on every turn
class ConversationState:
    tokens: int
    model: str | None = None


class ConversationHistory:
    """Thread-safe LRU of conversation sizes, at most ``capacity`` conversations."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = max(1, int(capacity))
        self._items: OrderedDict[str, ConversationState] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, conversation_id: str) -> ConversationState | None:
        with self._lock:
            state = self._items.get(conversation_id)
            if state is not None:
                self._items.move_to_end(conversation_id)
            return state

    def record(self, conversation_id: str, tokens: int, model: str | None = None) -> None:
        with self._lock:
            previous = self._items.pop(conversation_id, None)
            if model is None and previous is not None:
                model = previous.model
            self._items[conversation_id] = ConversationState(max(0, int(tokens)), model)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
