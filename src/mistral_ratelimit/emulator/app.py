"""The ASGI application: Mistral's Conversations, Agents and Models endpoints with limits.

Order of work for every ``/v1`` request, chosen to match how a gateway meters traffic:

1. arrival: when the request reached the server's socket, by the kernel's account
   (``arrival.py``), else when the ASGI app is called (the request line and headers are
   in), before the body is read;
2. bearer authentication (401 without charging anything);
3. a zero limit refuses at once; then the request rungs (and the concurrency cap) admit or
   refuse it, at its arrival time;
4. a body the API cannot use is answered with a 422 (``bodies.py``): counted as a request
   by step 3, never billed tokens;
5. a generation request's prompt tokens (stored history + new inputs + instructions + tools
   + template overhead) are charged to the token rungs when its body has been read; if they
   do not fit, the request is refused and its request charge given back, so a refused
   request never consumes quota;
6. output tokens are charged as they are generated: per chunk for streams, at completion
   for JSON replies.

Every response except a 401 carries the ``x-ratelimit-*`` headers of the configured rungs,
added in one place (the ``send`` wrapper), computed when the response starts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route, Router

from .arrival import Connections
from .bodies import AGENT, APPEND, RESTART, START, Expect, body_errors, parse_json
from .faults import Fault
from .limits import Charge, LimitSet, Rung
from .log import RequestLog, RequestRecord
from .replies import Reply, generate
from .settings import EmulatorConfig
from .store import Conversation, Store, iso_now, new_id, normalise_inputs
from .tokens import prompt_tokens

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

RATE_LIMITED_BODY = {
    "object": "error",
    "message": "Rate limit exceeded",
    "type": "rate_limited",
    "param": None,
    "code": "1300",
    "raw_status_code": 429,
}
CAPACITY_BODY = {
    "object": "error",
    "message": "Service tier capacity exceeded for this model.",
    "type": "service_tier_capacity_exceeded",
    "param": None,
    "code": "3505",
}
# Mistral's edge has answered a bad key with {"detail":"Unauthorized"} since mid-2025
# (nextcloud/integration_openai#332, agent0ai/agent-zero#539).
UNAUTHORIZED_BODY = {"detail": "Unauthorized"}
HTML_520 = (
    "<!DOCTYPE html>\n<html><head><title>api.mistral.ai | 520: Web server is returning an "
    "unknown error</title></head><body><h1>Web server is returning an unknown error</h1>"
    "<p>Error code 520</p><p>Cloudflare Ray ID: 0000000000000000</p></body></html>\n"
)
SERVER_ERROR_MESSAGES = {
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
}
GENERATION_TIMEOUT = 600.0
#: What the log records for a client gone before its body arrived (nginx's status).
CLIENT_CLOSED = 499

MODELS = (
    ("mistral-small-latest", 131072, ["mistral-small-2506"]),
    ("mistral-medium-latest", 131072, ["mistral-medium-2508"]),
    ("mistral-large-latest", 131072, ["mistral-large-2411"]),
    ("codestral-latest", 262144, ["codestral-2508"]),
    ("open-mistral-nemo", 131072, ["open-mistral-nemo-2407"]),
)


class AbruptCut(Exception):
    """Raised inside a stream to drop the connection mid-body (fault ``stream_cut``)."""


def error_body(
    message: str, type_: str = "invalid_request_error", code: str | None = None
) -> dict[str, Any]:
    return {"object": "error", "message": message, "type": type_, "param": None, "code": code}


def validation_error(
    loc: list[str | int], msg: str, type_: str = "value_error", input_: Any = None
) -> JSONResponse:
    """A 422 with one error, in the shape of every 422 here (see bodies.py)."""
    detail = {"type": type_, "loc": loc, "msg": msg, "input": input_}
    return JSONResponse({"detail": [detail]}, status_code=422)


def sse(event: str, data: dict[str, Any]) -> bytes:
    payload = json.dumps({"type": event, **data}, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event}\ndata: {payload}\n\n".encode()


@dataclass
class Ctx:
    """What the gate learned about one request, passed to the handlers through the scope."""

    record: RequestRecord
    request_charges: list[tuple[Rung, Charge]] = field(default_factory=list)
    token_charges: list[tuple[Rung, Charge]] = field(default_factory=list)
    query_cost: int = 0
    retry_after: float | None = None
    zero_limit: bool = False
    headers: bool = True  # False for 401: nothing is known about the caller's organisation


class EmulatorState:
    """Shared mutable state. One lock guards the limits and the in-flight count."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.lock = threading.Lock()
        self.limits: LimitSet = config.build_limits(time.monotonic())
        self.inflight = 0
        self.log = RequestLog(config.max_log_records)
        self.store = Store()

    def reset(self) -> None:
        with self.lock:
            self.limits = self.config.build_limits(time.monotonic())
        self.log.clear()
        self.store.clear()
        self.config.fault_plan.reset()

    def charge_output(self, ctx: Ctx, tokens: int) -> None:
        if tokens <= 0:
            return
        now = time.monotonic()
        with self.lock:
            ctx.token_charges.extend(self.limits.charge(now, "tokens", tokens))
        self.log.charge(ctx.record, now, completion=tokens)

    def refund_tokens(self, ctx: Ctx) -> None:
        now = time.monotonic()
        with self.lock:
            self.limits.refund(now, ctx.token_charges)
        ctx.token_charges.clear()
        self.log.refund(ctx.record, now)


def _is_generation(method: str, path: str) -> bool:
    if method != "POST" or not path.startswith("/v1/conversations"):
        return False
    parts = path.strip("/").split("/")
    return len(parts) == 2 or len(parts) == 3 or (len(parts) == 4 and parts[3] == "restart")


class EmulatorApp:
    """The ASGI entry: the gate in ``__call__``, then a Starlette router."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.state = EmulatorState(config)
        #: Filled by the server's protocol (arrival.stamping_protocol); empty under any other
        #: server, or when ``kernel_arrival`` is off, and then the app's clock stamps.
        self.connections = Connections()
        self.router = Router(routes=self._routes())

    # the gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        now, wall_now = time.monotonic(), time.time()
        arrival = self.connections.arrival(scope.get("client"), now)
        wall = wall_now - (now - arrival)
        method, path = scope["method"], scope["path"]
        if not path.startswith("/v1/"):
            await self.router(scope, receive, send)
            return
        record = self.state.log.open(RequestRecord(arrival, wall, method, path))
        ctx = Ctx(record)
        scope["emulator.ctx"] = ctx
        slot = [False]  # holds an in-flight slot; a list so the closure can clear it

        def finish() -> None:
            # Runs before the last body byte is handed over, so a client that sends its
            # next request as soon as it has the answer finds the slot already free.
            if record.finished is None:
                record.finished = time.monotonic()
            if slot[0]:
                slot[0] = False
                with self.state.lock:
                    self.state.inflight -= 1

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                if ctx.headers:
                    message["headers"] = [*message.get("headers", []), *self._headers(ctx)]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finish()
            await send(message)

        try:
            refusal = self._admit(scope, ctx, arrival)
            if refusal is not None:
                await refusal(scope, receive, send_with_headers)
                return
            slot[0] = self.config.max_concurrency is not None
            await self.router(scope, receive, send_with_headers)
        finally:
            finish()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _admit(self, scope: Scope, ctx: Ctx, arrival: float) -> Response | None:
        """Authentication, zero limit, request rungs, concurrency. None: admitted."""
        record, cfg = ctx.record, self.config
        if cfg.api_key is not None and not self._authorised(scope):
            ctx.headers = False
            record.reason = "auth"
            return JSONResponse(UNAUTHORIZED_BODY, status_code=401)
        generation = _is_generation(record.method, record.path)
        if cfg.zero_limit or cfg.fault_plan.zero_limit(generation):
            ctx.zero_limit = True
            record.reason = record.fault = "zero_limit"
            return JSONResponse(RATE_LIMITED_BODY, status_code=429)
        with self.state.lock:
            if cfg.max_concurrency is not None and self.state.inflight >= cfg.max_concurrency:
                record.reason = "concurrency"
                return JSONResponse(RATE_LIMITED_BODY, status_code=429)
            charges, refused = self.state.limits.admit(arrival, "requests", 1)
            if refused is not None:
                record.reason = refused.rung
                ctx.retry_after = refused.retry_after
                return JSONResponse(RATE_LIMITED_BODY, status_code=429)
            if cfg.max_concurrency is not None:
                self.state.inflight += 1
        ctx.request_charges = charges
        record.admitted = True
        return None

    def _authorised(self, scope: Scope) -> bool:
        import hmac

        expected = f"Bearer {self.config.api_key}".encode()
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                return hmac.compare_digest(value.strip(), expected)
        return False

    def _headers(self, ctx: Ctx) -> list[tuple[bytes, bytes]]:
        now = time.monotonic()
        with self.state.lock:
            values = self.state.limits.header_values(now)
        if ctx.zero_limit:
            values["x-ratelimit-limit-req-minute"] = 0
            values["x-ratelimit-remaining-req-minute"] = 0
        values["x-ratelimit-tokens-query-cost"] = ctx.query_cost
        out = [(k.encode(), str(v).encode()) for k, v in values.items()]
        out.append((b"mistral-correlation-id", uuid.uuid4().hex.encode()))
        if ctx.retry_after is not None and self.config.retry_after is not None:
            # Whole seconds either way, rounded up: a client that waits as long as it is
            # told must not come back before the window has room (a date is written to the
            # second, so the time it names is rounded up, not the wait).
            value = (
                str(max(1, math.ceil(ctx.retry_after)))
                if self.config.retry_after == "seconds"
                else formatdate(math.ceil(time.time() + max(1.0, ctx.retry_after)), usegmt=True)
            )
            out.append((b"retry-after", value.encode()))
        return out

    # routes

    def _routes(self) -> list[Route]:
        return [
            Route("/health", self.health, methods=["GET"]),
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/conversations", self.start, methods=["POST"]),
            Route("/v1/conversations", self.list_conversations, methods=["GET"]),
            Route("/v1/conversations/{cid}", self.append, methods=["POST"]),
            Route("/v1/conversations/{cid}", self.get_conversation, methods=["GET"]),
            Route("/v1/conversations/{cid}", self.delete_conversation, methods=["DELETE"]),
            Route("/v1/conversations/{cid}/restart", self.restart, methods=["POST"]),
            Route("/v1/conversations/{cid}/history", self.history, methods=["GET"]),
            Route("/v1/conversations/{cid}/messages", self.messages, methods=["GET"]),
            Route("/v1/agents", self.create_agent, methods=["POST"]),
            Route("/v1/agents", self.list_agents, methods=["GET"]),
            Route("/v1/agents/pages", self.list_agent_pages, methods=["GET"]),
            Route("/v1/agents/{aid}", self.get_agent, methods=["GET"]),
            Route("/v1/agents/{aid}", self.update_agent, methods=["PATCH"]),
            Route("/v1/agents/{aid}", self.delete_agent, methods=["DELETE"]),
        ]

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def list_models(self, request: Request) -> Response:
        created = 1_700_000_000
        data = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "mistralai",
                "name": name,
                "description": f"{name} (emulated)",
                "max_context_length": ctx_len,
                "aliases": aliases,
                "deprecation": None,
                "default_model_temperature": 0.3,
                "type": "base",
                "capabilities": {
                    "completion_chat": True,
                    "function_calling": True,
                    "completion_fim": name.startswith("codestral"),
                    "fine_tuning": False,
                    "vision": False,
                    "classification": False,
                },
            }
            for name, ctx_len, aliases in MODELS
        ]
        return JSONResponse({"object": "list", "data": data})

    # conversations: reads

    def _conversation(self, request: Request) -> Conversation | Response:
        cid = request.path_params["cid"]
        conv = self.state.store.get(cid)
        if conv is None:
            return JSONResponse(error_body(f"Conversation {cid} not found"), status_code=404)
        return conv

    async def list_conversations(self, request: Request) -> Response:
        try:
            page = int(request.query_params.get("page", 0))
            page_size = int(request.query_params.get("page_size", 100))
        except ValueError:
            return validation_error(["query", "page"], "Input should be a valid integer")
        metadata: dict[str, Any] | None = None
        raw = request.query_params.get("metadata")
        if raw:
            try:
                parsed = parse_json(raw)
            except ValueError:
                parsed = None
            # SDK 3.7.0 sends an "unset" sentinel string here; only a JSON object filters.
            metadata = parsed if isinstance(parsed, dict) else None
        convs = self.state.store.list_conversations(max(0, page), max(1, page_size), metadata)
        return JSONResponse([c.as_json() for c in convs])

    async def get_conversation(self, request: Request) -> Response:
        conv = self._conversation(request)
        return conv if isinstance(conv, Response) else JSONResponse(conv.as_json())

    async def delete_conversation(self, request: Request) -> Response:
        cid = request.path_params["cid"]
        if not self.state.store.delete(cid):
            return JSONResponse(error_body(f"Conversation {cid} not found"), status_code=404)
        return Response(status_code=204)

    async def history(self, request: Request) -> Response:
        conv = self._conversation(request)
        if isinstance(conv, Response):
            return conv
        return JSONResponse(
            {"object": "conversation.history", "conversation_id": conv.id, "entries": conv.entries}
        )

    async def messages(self, request: Request) -> Response:
        conv = self._conversation(request)
        if isinstance(conv, Response):
            return conv
        msgs = [e for e in conv.entries if e.get("type") in ("message.input", "message.output")]
        return JSONResponse(
            {"object": "conversation.messages", "conversation_id": conv.id, "messages": msgs}
        )

    # agents

    async def _json_body(
        self, request: Request, fields: Mapping[str, Expect], required: tuple[str, ...] = ()
    ) -> dict[str, Any] | Response:
        """The body as a dict, or the 422 the API answers for it (see bodies.py)."""
        try:
            raw = await request.body()
        except ClientDisconnect:
            # Gone before its body arrived (a cancelled client): nobody reads this answer,
            # and the log records nginx's "client closed request".
            return Response(status_code=CLIENT_CLOSED)
        try:
            body = parse_json(raw or b"{}")
        except ValueError:  # not JSON, not UTF-8, or nested too deep
            return validation_error(["body"], "JSON decode error", "json_invalid")
        if not isinstance(body, dict):
            return validation_error(["body"], "Input should be an object", "dict_type", body)
        errors = body_errors(body, fields, required)
        if errors:
            return JSONResponse({"detail": errors}, status_code=422)
        return body

    async def create_agent(self, request: Request) -> Response:
        body = await self._json_body(request, AGENT, required=("model", "name"))
        if isinstance(body, Response):
            return body
        return JSONResponse(self.state.store.create_agent(body))

    async def list_agents(self, request: Request) -> Response:
        try:
            page = int(request.query_params.get("page", 0))
            page_size = int(request.query_params.get("page_size", 20))
        except ValueError:
            return validation_error(["query", "page"], "Input should be a valid integer")
        return JSONResponse(self.state.store.list_agents(max(0, page), max(1, page_size)))

    async def list_agent_pages(self, request: Request) -> Response:
        """Cursor pages (``AgentListPage``); the cursor is an opaque offset."""
        try:
            page_size = max(1, int(request.query_params.get("page_size", 20)))
            offset = int(request.query_params.get("page_token") or 0)
        except ValueError:
            return validation_error(["query", "page_token"], "Invalid page token")
        agents = self.state.store.list_agents(0, offset + page_size + 1)[offset:]
        more = len(agents) > page_size
        return JSONResponse(
            {
                "object": "list",
                "data": agents[:page_size],
                "next_page_token": str(offset + page_size) if more else None,
            }
        )

    async def get_agent(self, request: Request) -> Response:
        agent = self.state.store.get_agent(request.path_params["aid"])
        if agent is None:
            return JSONResponse(error_body("Agent not found"), status_code=404)
        return JSONResponse(agent)

    async def update_agent(self, request: Request) -> Response:
        body = await self._json_body(request, AGENT)
        if isinstance(body, Response):
            return body
        agent = self.state.store.update_agent(request.path_params["aid"], body)
        if agent is None:
            return JSONResponse(error_body("Agent not found"), status_code=404)
        return JSONResponse(agent)

    async def delete_agent(self, request: Request) -> Response:
        if not self.state.store.delete_agent(request.path_params["aid"]):
            return JSONResponse(error_body("Agent not found"), status_code=404)
        return Response(status_code=204)

    # conversations: generation

    async def start(self, request: Request) -> Response:
        body = await self._json_body(request, START, required=("inputs",))
        if isinstance(body, Response):
            return body
        now = iso_now()
        conv = Conversation(
            new_id("conv_"),
            now,
            now,
            name=body.get("name"),
            description=body.get("description"),
            metadata=body.get("metadata"),
        )
        agent_id = body.get("agent_id")
        if agent_id:
            agent = self.state.store.get_agent(str(agent_id))
            if agent is None:
                return JSONResponse(error_body(f"Agent {agent_id} not found"), status_code=404)
            conv.agent_id = agent["id"]
            conv.agent_version = agent["version"]
            conv.model = agent["model"]
            conv.instructions = agent.get("instructions")
            conv.tools = agent.get("tools")
            conv.completion_args = dict(agent.get("completion_args") or {})
        else:
            conv.model = body.get("model") or self.config.default_model
        if body.get("instructions") is not None:
            conv.instructions = body["instructions"]
        if body.get("tools") is not None:
            conv.tools = body["tools"]
        conv.completion_args = {
            **(conv.completion_args or {}),
            **(body.get("completion_args") or {}),
        }
        return await self._generate(request, body, conv, history=[])

    async def append(self, request: Request) -> Response:
        body = await self._json_body(request, APPEND)
        if isinstance(body, Response):
            return body
        conv = self._conversation(request)
        if isinstance(conv, Response):
            return conv
        return await self._generate(request, body, conv, history=list(conv.entries))

    async def restart(self, request: Request) -> Response:
        body = await self._json_body(request, RESTART, required=("from_entry_id",))
        if isinstance(body, Response):
            return body
        source = self._conversation(request)
        if isinstance(source, Response):
            return source
        entry_id = body["from_entry_id"]
        index = next((i for i, e in enumerate(source.entries) if e.get("id") == entry_id), None)
        if index is None:
            return JSONResponse(error_body(f"Entry {entry_id} not found"), status_code=404)
        now = iso_now()
        # A restart forks a new conversation holding the entries up to and including
        # ``from_entry_id``; the model sees (and the bill counts) that history.
        conv = Conversation(
            new_id("conv_"),
            now,
            now,
            model=source.model,
            agent_id=source.agent_id,
            agent_version=source.agent_version,
            instructions=source.instructions,
            tools=source.tools,
            completion_args=dict(source.completion_args or {}),
            name=source.name,
            description=source.description,
            metadata=body.get("metadata", source.metadata),
        )
        history = [dict(e) for e in source.entries[: index + 1]]
        return await self._generate(request, body, conv, history=history)

    async def _generate(
        self,
        request: Request,
        body: dict[str, Any],
        conv: Conversation,
        history: list[dict[str, Any]],
    ) -> Response:
        ctx: Ctx = request.scope["emulator.ctx"]
        record, state = ctx.record, self.state
        stream = body.get("stream") is True or "text/event-stream" in request.headers.get(
            "accept", ""
        )
        record.stream = stream
        record.conversation_id = conv.id
        try:
            new_entries = normalise_inputs(body.get("inputs"))
        except ValueError as exc:
            return validation_error(["body", "inputs"], str(exc), input_=body.get("inputs"))
        completion_args = {**(conv.completion_args or {}), **(body.get("completion_args") or {})}
        prompt = prompt_tokens(
            [*history, *new_entries], instructions=conv.instructions, tools=conv.tools
        )

        now = time.monotonic()
        with state.lock:
            charges, refused = state.limits.admit(now, "tokens", prompt)
            if refused is not None:
                state.limits.refund(now, ctx.request_charges)
        if refused is not None:
            record.admitted = False
            record.reason = refused.rung
            ctx.retry_after = refused.retry_after
            return JSONResponse(RATE_LIMITED_BODY, status_code=429)
        ctx.token_charges = charges
        state.log.charge(record, now, prompt=prompt)
        ctx.query_cost = prompt

        fault = self.config.fault_plan.pick(generation=True, stream=stream)
        if fault is not None:
            record.fault = fault.kind
            if fault.kind == "slow_first_byte":
                await anyio.sleep(fault.delay)
            elif fault.kind in ("capacity", "server_error", "html_520"):
                state.refund_tokens(ctx)
                ctx.query_cost = 0
                record.reason = fault.kind
                return self._fault_response(fault)

        new_tokens = prompt_tokens(new_entries) - 1  # without the BOS: the new input alone
        reply = generate(
            inputs=new_entries,
            input_tokens=max(0, new_tokens),
            history=history,
            model=conv.model,
            instructions=conv.instructions,
            tools=conv.tools,
            completion_args=completion_args,
            shape=self.config.reply,
            seed=self.config.seed,
        )
        store = body.get("store") is not False
        if stream:
            return StreamingResponse(
                self._stream(ctx, conv, history, new_entries, reply, fault, store),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache"},
            )
        await self._pace(reply.completion_tokens)
        state.charge_output(ctx, reply.completion_tokens)
        output = self._output_entry(conv, reply)
        if store:
            self._save(conv, history, new_entries, output)
        ctx.query_cost = prompt + reply.completion_tokens
        return JSONResponse(
            {
                "object": "conversation.response",
                "conversation_id": conv.id,
                "outputs": [output],
                "usage": self._usage(prompt, reply.completion_tokens),
            }
        )

    async def _pace(self, tokens: int) -> None:
        cfg = self.config
        if not cfg.pace_json:
            return
        delay = cfg.time_to_first_token
        if cfg.stream_tokens_per_second:
            delay += tokens / cfg.stream_tokens_per_second
        if delay > 0:
            await anyio.sleep(delay)

    @staticmethod
    def _usage(prompt: int, completion: int) -> dict[str, int]:
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    @staticmethod
    def _output_entry(conv: Conversation, reply: Reply) -> dict[str, Any]:
        now = iso_now()
        common = {
            "object": "entry",
            "created_at": now,
            "completed_at": now,
            "agent_id": conv.agent_id,
            "model": conv.model,
        }
        if reply.kind == "function_call":
            return {
                **common,
                "type": "function.call",
                "id": new_id("fc_"),
                "tool_call_id": reply.tool_call_id,
                "name": reply.name,
                "arguments": reply.text,
            }
        return {
            **common,
            "type": "message.output",
            "id": new_id("msg_"),
            "role": "assistant",
            "content": reply.text,
        }

    def _save(
        self,
        conv: Conversation,
        history: list[dict[str, Any]],
        new_entries: list[dict[str, Any]],
        output: dict[str, Any] | None,
    ) -> None:
        conv.entries = [*history, *new_entries, *([output] if output else [])]
        conv.updated_at = iso_now()
        self.state.store.put(conv)

    def _fault_response(self, fault: Fault) -> Response:
        if fault.kind == "capacity":
            return JSONResponse(CAPACITY_BODY, status_code=429)
        if fault.kind == "html_520":
            return HTMLResponse(HTML_520, status_code=520)
        message = SERVER_ERROR_MESSAGES.get(fault.status, "Server error")
        return JSONResponse(error_body(message, "server_error"), status_code=fault.status)

    async def _stream(
        self,
        ctx: Ctx,
        conv: Conversation,
        history: list[dict[str, Any]],
        new_entries: list[dict[str, Any]],
        reply: Reply,
        fault: Fault | None,
        store: bool,
    ) -> AsyncIterator[bytes]:
        cfg, state = self.config, self.state
        tps = cfg.stream_tokens_per_second
        output = self._output_entry(conv, reply)
        yield sse(
            "conversation.response.started", {"conversation_id": conv.id, "created_at": iso_now()}
        )
        if cfg.time_to_first_token > 0:
            await anyio.sleep(cfg.time_to_first_token)
        cut_at = (
            fault.after_chunks if fault and fault.kind in ("stream_cut", "stream_error") else None
        )
        for i, (chunk, tokens) in enumerate(zip(reply.chunks, reply.chunk_tokens, strict=True)):
            if cut_at is not None and i >= cut_at:
                break
            base = {
                "id": output["id"],
                "output_index": 0,
                "model": conv.model,
                "agent_id": conv.agent_id,
                "created_at": iso_now(),
            }
            if reply.kind == "function_call":
                yield sse(
                    "function.call.delta",
                    {
                        **base,
                        "name": reply.name,
                        "tool_call_id": reply.tool_call_id,
                        "arguments": chunk,
                    },
                )
            else:
                yield sse(
                    "message.output.delta",
                    {**base, "content_index": 0, "role": "assistant", "content": chunk},
                )
            state.charge_output(ctx, tokens)
            if tps:
                await anyio.sleep(tokens / tps)
            else:
                await anyio.sleep(0)  # let the chunk reach the socket before the next one
        if fault is not None and fault.kind == "stream_cut":
            if fault.abrupt:
                raise AbruptCut("emulated stream cut")
            return
        if fault is not None and fault.kind == "stream_error":
            yield sse(
                "conversation.response.error",
                {
                    "message": "Internal error while generating",
                    "code": 3000,
                    "created_at": iso_now(),
                },
            )
            return
        if store:
            self._save(conv, history, new_entries, output)
        yield sse(
            "conversation.response.done",
            {
                "usage": self._usage(ctx.record.prompt_tokens, reply.completion_tokens),
                "created_at": iso_now(),
            },
        )


class _DropAbruptCut(logging.Filter):
    """uvicorn logs an app exception with a traceback. An emulated cut is not an error, nor
    is a stream cancelled because the emulator is stopping."""

    quiet = (AbruptCut, asyncio.CancelledError)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        seen: list[BaseException] = []
        while exc is not None and len(seen) < 10:  # the cause chain, and task groups
            seen.append(exc)
            group = getattr(exc, "exceptions", None)
            exc = group[0] if isinstance(group, tuple) and group else exc.__context__
        return not any(isinstance(e, self.quiet) for e in seen)


def quiet_abrupt_cuts() -> None:
    log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropAbruptCut) for f in log.filters):
        log.addFilter(_DropAbruptCut())


__all__ = ["RATE_LIMITED_BODY", "AbruptCut", "EmulatorApp", "EmulatorState", "quiet_abrupt_cuts"]
