"""Conversations and agents kept in memory, in the shapes the mistralai SDK parses.

Shapes follow the SDK's pydantic models (mistralai 3.7.0 ``client/models``): entries carry
``object: "entry"``, a ``type``, an ``id`` and ISO-8601 ``created_at``; a conversation is a
``ModelConversation`` (with ``model``) or an ``AgentConversation`` (with ``agent_id``).
"""

from __future__ import annotations

import copy
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

ENTRY_PREFIX = {
    "message.input": "msg_",
    "message.output": "msg_",
    "function.call": "fc_",
    "function.result": "fr_",
    "tool.execution": "tool_exec_",
    "agent.handoff": "handoff_",
}


def iso_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


def normalise_inputs(inputs: Any) -> list[dict[str, Any]]:
    """``inputs`` (a string or entry list) as stored entries with ids and timestamps."""
    if inputs is None:
        return []
    items: list[Any] = (
        [{"role": "user", "content": inputs, "type": "message.input"}]
        if isinstance(inputs, str)
        else list(inputs)
    )
    now = iso_now()
    out: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, Mapping):
            raise ValueError("inputs must be a string or a list of entries")
        entry = dict(item)
        entry.setdefault("type", "message.input")
        entry["object"] = "entry"
        if entry["type"] == "message.input":
            entry.setdefault("role", "user")
            entry.setdefault("prefix", False)
            if "content" not in entry:
                raise ValueError("message.input entries need a content")
        entry["id"] = entry.get("id") or new_id(ENTRY_PREFIX.get(entry["type"], "entry_"))
        entry["created_at"] = entry.get("created_at") or now
        entry["completed_at"] = entry.get("completed_at") or now
        out.append(entry)
    return out


@dataclass
class Conversation:
    id: str
    created_at: str
    updated_at: str
    model: str | None = None
    agent_id: str | None = None
    agent_version: int | None = None
    instructions: str | None = None
    tools: list[Any] | None = None
    completion_args: dict[str, Any] | None = None
    name: str | None = None
    description: str | None = None
    metadata: dict[str, Any] | None = None
    entries: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "object": "conversation",
            "id": self.id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "name": self.name,
            "description": self.description,
            "metadata": self.metadata,
        }
        if self.agent_id is not None:
            out["agent_id"] = self.agent_id
            out["agent_version"] = self.agent_version
        else:
            out["model"] = self.model
            out["instructions"] = self.instructions
            out["tools"] = self.tools or []
            out["completion_args"] = self.completion_args or {}
        return out


AGENT_FIELDS = (
    "model",
    "name",
    "instructions",
    "tools",
    "completion_args",
    "guardrails",
    "description",
    "handoffs",
    "metadata",
    "version_message",
)


class Store:
    """Thread-safe: the server thread writes, tests and ``reset()`` read from others."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.conversations: dict[str, Conversation] = {}
        self.agents: dict[str, dict[str, Any]] = {}

    def clear(self) -> None:
        with self._lock:
            self.conversations.clear()
            self.agents.clear()

    # conversations

    def put(self, conv: Conversation) -> None:
        with self._lock:
            self.conversations[conv.id] = conv

    def get(self, conversation_id: str) -> Conversation | None:
        with self._lock:
            return self.conversations.get(conversation_id)

    def delete(self, conversation_id: str) -> bool:
        with self._lock:
            return self.conversations.pop(conversation_id, None) is not None

    def list_conversations(
        self, page: int, page_size: int, metadata: Mapping[str, Any] | None = None
    ) -> list[Conversation]:
        with self._lock:
            convs = sorted(self.conversations.values(), key=lambda c: c.created_at, reverse=True)
        if metadata:
            convs = [
                c for c in convs if all((c.metadata or {}).get(k) == v for k, v in metadata.items())
            ]
        return convs[page * page_size : (page + 1) * page_size]

    # agents

    def create_agent(self, body: Mapping[str, Any]) -> dict[str, Any]:
        now = iso_now()
        agent: dict[str, Any] = {
            "object": "agent",
            "id": new_id("ag_"),
            "version": 0,
            "versions": [0],
            "created_at": now,
            "updated_at": now,
            "deployment_chat": False,
            "source": "api",
            "tools": [],
            "completion_args": {},
        }
        agent.update({k: copy.deepcopy(body[k]) for k in AGENT_FIELDS if k in body})
        with self._lock:
            self.agents[agent["id"]] = agent
        return copy.deepcopy(agent)

    def get_agent(self, agent_id: str) -> dict[str, Any] | None:
        with self._lock:
            agent = self.agents.get(agent_id)
            return copy.deepcopy(agent) if agent is not None else None

    def update_agent(self, agent_id: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        with self._lock:
            agent = self.agents.get(agent_id)
            if agent is None:
                return None
            agent.update(
                {
                    k: copy.deepcopy(body[k])
                    for k in AGENT_FIELDS
                    if k in body and body[k] is not None
                }
            )
            agent["version"] = max(agent["versions"]) + 1
            agent["versions"].append(agent["version"])
            agent["updated_at"] = iso_now()
            return copy.deepcopy(agent)

    def delete_agent(self, agent_id: str) -> bool:
        with self._lock:
            return self.agents.pop(agent_id, None) is not None

    def list_agents(self, page: int, page_size: int) -> list[dict[str, Any]]:
        with self._lock:
            agents = sorted(self.agents.values(), key=lambda a: a["created_at"], reverse=True)
            return copy.deepcopy(agents[page * page_size : (page + 1) * page_size])


__all__ = ["Conversation", "Store", "iso_now", "new_id", "normalise_inputs"]
