"""The demo's workload: what a real program does with the Conversations API, all at once.

Several async tasks each hold a conversation (start, append, a streamed append, a restart,
then a new conversation), and sync threads do the same with the blocking client, all on
one client and therefore one budget. Late in the run, openings carry a long document so
the history every append re-bills grows large and the tokens-per-minute limit binds too,
after the requests-per-second limit has bound for most of the run.

Every call is recorded by the :class:`Tracker`; a failed call is counted, never raised.
"""

from __future__ import annotations

import asyncio
import random
import threading
from dataclasses import dataclass
from typing import Any

from ..mistral import MistralRatelimitClient
from .tracking import CallRecord, Tracker

_TOPICS = (
    "rate limits",
    "sliding windows",
    "token budgets",
    "streaming replies",
    "retry policies",
    "monthly quotas",
    "tokenizers",
    "HTTP transports",
)
_QUESTIONS = (
    "Explain {topic} to a new engineer in a few sentences.",
    "What are the common mistakes people make with {topic}?",
    "Give me three practical tips about {topic}.",
    "How would you test a system that depends on {topic}?",
    "Compare two approaches to {topic} and say which you prefer.",
)
_FOLLOW_UPS = (
    "Can you give a concrete example?",
    "Summarise that in one sentence.",
    "What would change at ten times the traffic?",
    "Which part of that is hardest to get right, and why?",
)
_REPORT = (
    "the service records every request with its arrival time and the tokens it used, "
    "and the client reads the usage back to settle what it reserved; quotas are shared by "
    "every worker, so a burst from one part of the program delays the others, while the "
    "budget for the month sets an upper bound on what the whole team may spend"
)
_WORDS = tuple(_REPORT.split())


@dataclass(frozen=True)
class WorkloadPlan:
    """How much traffic, for how long."""

    duration: float = 42.0  # new calls stop after this many seconds; queued ones finish
    conversations: int = 4  # concurrent async conversations
    sync_threads: int = 1
    turns: int = 4  # calls per conversation before a new one starts
    max_tokens: int = 96
    #: Parts of the run, as fractions of ``duration``, in which new conversations open with
    #: a long document. The early one fills the token window with tokens that expire one
    #: minute later; the late one drives it to its limit, so the token limit binds until
    #: the early tokens slide out of the window.
    document_phases: tuple[tuple[float, float], ...] = ((0.0, 0.05), (0.78, 1.0))
    document_words: int = 1200
    seed: int = 7


def _question(rng: random.Random) -> str:
    return rng.choice(_QUESTIONS).format(topic=rng.choice(_TOPICS))


def _document(rng: random.Random, words: int) -> str:
    start = rng.randrange(len(_WORDS))
    body = " ".join(_WORDS[(start + i) % len(_WORDS)] for i in range(words))
    return f"Read this incident report, then list its three main points.\n\n{body}"


def _record_usage(record: CallRecord, usage: Any) -> None:
    prompt = getattr(usage, "prompt_tokens", None)
    total = getattr(usage, "total_tokens", None)
    record.prompt_tokens = prompt if isinstance(prompt, int) else 0
    record.tokens = total if isinstance(total, int) else record.prompt_tokens


class Workload:
    """Drives ``client`` until ``plan.duration`` has passed; :meth:`run` from async code."""

    def __init__(
        self, client: MistralRatelimitClient, tracker: Tracker, plan: WorkloadPlan, model: str
    ) -> None:
        self.client = client
        self.tracker = tracker
        self.plan = plan
        self.model = model
        self.started = tracker.clock()
        self.deadline = self.started + plan.duration

    def running(self) -> bool:
        return self.tracker.clock() < self.deadline

    def _opening(self, rng: random.Random) -> str:
        at = (self.tracker.clock() - self.started) / self.plan.duration
        if any(lo <= at < hi for lo, hi in self.plan.document_phases):
            return _document(rng, self.plan.document_words)
        return _question(rng)

    def _args(self) -> dict[str, Any]:
        # A declared max_tokens keeps the reservation close to what is really used.
        return {"completion_args": {"max_tokens": self.plan.max_tokens, "temperature": 0.3}}

    async def run(self) -> None:
        threads = [
            threading.Thread(
                target=self._sync_worker, args=(i,), name=f"demo-sync-{i}", daemon=True
            )
            for i in range(self.plan.sync_threads)
        ]
        for t in threads:
            t.start()
        try:
            await asyncio.gather(*(self._async_worker(i) for i in range(self.plan.conversations)))
        finally:

            def join_all() -> None:
                for t in threads:
                    t.join()

            await asyncio.to_thread(join_all)

    # -- async conversations -----------------------------------------------------------------
    async def _astream(self, record: CallRecord, events: Any) -> str | None:
        """Consume a stream to its end; returns the conversation id it names."""
        conversation_id = None
        async with events:
            async for event in events:
                if event.event == "conversation.response.started":
                    conversation_id = getattr(event.data, "conversation_id", None)
                elif event.event == "conversation.response.done":
                    _record_usage(record, getattr(event.data, "usage", None))
        return conversation_id

    async def _async_worker(self, index: int) -> None:
        rng = random.Random(self.plan.seed * 1000 + index)
        conv = self.client.beta.conversations
        number = 0
        while self.running():
            number += 1
            cid: str | None = None
            first_entry: str | None = None
            streamed = (index + number) % 2 == 0
            kind = "start_stream" if streamed else "start"
            with self.tracker.call(kind, "async") as rec:
                if streamed:
                    events = await conv.start_stream_async(
                        inputs=self._opening(rng), model=self.model, **self._args()
                    )
                    cid = await self._astream(rec, events)
                else:
                    r = await conv.start_async(
                        inputs=self._opening(rng),
                        model=self.model,
                        instructions="Answer briefly and precisely.",
                        **self._args(),
                    )
                    cid, first_entry = r.conversation_id, r.outputs[0].id
                    _record_usage(rec, r.usage)
            if cid is None:
                await asyncio.sleep(0.5)  # the failure is counted; do not spin on it
                continue
            for turn in range(1, self.plan.turns):
                if not self.running():
                    return
                follow_up = rng.choice(_FOLLOW_UPS)
                if turn == 2 and first_entry is not None:
                    with self.tracker.call("restart", "async") as rec:
                        r = await conv.restart_async(
                            conversation_id=cid,
                            from_entry_id=first_entry,
                            inputs=follow_up,
                            **self._args(),
                        )
                        cid = r.conversation_id
                        _record_usage(rec, r.usage)
                elif turn % 2 == 1:
                    with self.tracker.call("append_stream", "async") as rec:
                        events = await conv.append_stream_async(
                            conversation_id=cid, inputs=follow_up, **self._args()
                        )
                        await self._astream(rec, events)
                else:
                    with self.tracker.call("append", "async") as rec:
                        r = await conv.append_async(
                            conversation_id=cid, inputs=follow_up, **self._args()
                        )
                        _record_usage(rec, r.usage)

    # -- sync calls from a thread ------------------------------------------------------------
    def _sync_worker(self, index: int) -> None:
        rng = random.Random(self.plan.seed * 1000 + 500 + index)
        conv = self.client.beta.conversations
        while self.running():
            cid: str | None = None
            with self.tracker.call("start", "sync") as rec:
                r = conv.start(inputs=self._opening(rng), model=self.model, **self._args())
                cid = r.conversation_id
                _record_usage(rec, r.usage)
            if cid is None:
                self.tracker_sleep(0.5)
                continue
            for turn in range(1, self.plan.turns):
                if not self.running():
                    return
                follow_up = rng.choice(_FOLLOW_UPS)
                if turn % 2 == 1:
                    with self.tracker.call("append", "sync") as rec:
                        r = conv.append(conversation_id=cid, inputs=follow_up, **self._args())
                        _record_usage(rec, r.usage)
                else:
                    with (
                        self.tracker.call("append_stream", "sync") as rec,
                        conv.append_stream(
                            conversation_id=cid, inputs=follow_up, **self._args()
                        ) as events,
                    ):
                        for event in events:
                            if event.event == "conversation.response.done":
                                _record_usage(rec, getattr(event.data, "usage", None))

    @staticmethod
    def tracker_sleep(seconds: float) -> None:
        threading.Event().wait(seconds)


__all__ = ["Workload", "WorkloadPlan"]
