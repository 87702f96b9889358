"""Rebuild the request-body corpus (dev-only; the JSON files it writes are committed).

* ``sdk_bodies.json``: what the real mistralai SDK (3.x, httpx2) puts on the wire, captured
  through an ``httpx2.MockTransport``: conversations start/append/restart (plain and stream),
  chat, FIM, agents, embeddings, moderation, classification and OCR.
* ``handmade.json``: every conversation entry type, tools, tool calls and results, images in
  five formats, thinking chunks, documents, response formats, multilingual text.
* ``random.json``: 300 seeded random chat and conversation bodies.

Each case: ``{"name", "method", "path", "accept", "body"}`` where ``body`` is the exact
request text. Run: ``.venv/bin/python tests/corpus/build_corpus.py``.
"""

# ruff: noqa: RUF001  (full-width punctuation in the CJK samples is the point)
from __future__ import annotations

import base64
import contextlib
import io
import json
import random
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

TEXTS: dict[str, list[str]] = {
    "english": [
        "Summarise the quarterly report in three bullet points, focusing on revenue growth.",
        "The quick brown fox jumps over the lazy dog. It was the best of times, it was the "
        "worst of times, it was the age of wisdom, it was the age of foolishness.",
        "Can you explain how rate limiting with a sliding window differs from a token bucket?",
    ],
    "french": [
        "Peux-tu m'expliquer la différence entre « rate limiting » et « throttling » ? "
        "J'aimerais un exemple concret, s'il te plaît.",
        "Après le déjeuner, nous irons à la bibliothèque étudier l'économie européenne.",
        "Ça coûte combien, un café crème à Paris ? Où est la gare Saint-Lazare ?",
    ],
    "code": [
        "def fib(n: int) -> int:\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
        "    return a\n\nprint([fib(i) for i in range(10)])\n",
        "fn main() {\n    let v: Vec<u32> = (1..=10).map(|x| x * x).collect();\n"
        '    println!("{:?}", v);\n}\n',
        "SELECT user_id, COUNT(*) AS n FROM events WHERE ts > NOW() - INTERVAL '1 day' "
        "GROUP BY user_id HAVING COUNT(*) > 10 ORDER BY n DESC;",
    ],
    "json": [
        '{"id": 42, "name": "Ada", "tags": ["math", "engine"], "active": true, "score": 9.5}',
        '[{"sku": "A-1", "qty": 3}, {"sku": "B-22", "qty": 1, "note": null}]',
    ],
    "cjk": [
        "请用三句话总结这篇文章的主要观点，并给出你的看法。",
        "東京の天気は明日晴れるでしょうか。傘を持っていくべきですか。",
        "안녕하세요, 오늘 회의는 오후 세 시에 시작합니다.",
    ],
    "emoji": [
        "🎉🎉 Party time! 🥳🍕🍺 See you at 8 👋😀",
        "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👍🏽 thumbs, 🇫🇷🇯🇵 flags",
    ],
    "other": [
        "Привет! Как дела? Сегодня мы будем изучать русскую литературу.",
        "مرحبا بك في عالم البرمجة، هل تريد أن تتعلم بايثون؟",
        "Grüße aus München! Straßenbahn fährt um 7:45 Uhr ab.",
        "नमस्ते, आप कैसे हैं? आज मौसम बहुत अच्छा है।",
    ],
}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search_docs",
        "description": "Recherche dans la documentation interne.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
        },
    },
}


def _image(fmt: str, size: tuple[int, int]) -> str:
    from PIL import Image

    img = Image.new("RGB", size, (200, 30, 90))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    mime = {"PNG": "png", "JPEG": "jpeg", "GIF": "gif", "WEBP": "webp", "BMP": "bmp"}[fmt]
    return f"data:image/{mime};base64," + base64.b64encode(buf.getvalue()).decode()


def _case(name: str, path: str, body: Any, accept: str = "application/json") -> dict[str, Any]:
    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    return {"name": name, "method": "POST", "path": path, "accept": accept, "body": text}


# -- the SDK --------------------------------------------------------------------------------


def capture_sdk() -> list[dict[str, Any]]:
    import httpx2
    from mistralai.client import Mistral

    captured: list[dict[str, Any]] = []
    conv = {
        "object": "conversation.response",
        "conversation_id": "conv_1",
        "outputs": [],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }

    def handler(request: httpx2.Request) -> httpx2.Response:
        captured.append(
            {
                "method": request.method,
                "path": request.url.path,
                "accept": request.headers.get("accept", ""),
                "body": request.content.decode("utf-8"),
            }
        )
        if request.headers.get("accept") == "text/event-stream":
            return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=b"")
        return httpx2.Response(200, json=conv)

    client = Mistral(
        api_key="test-key", client=httpx2.Client(transport=httpx2.MockTransport(handler))
    )
    calls: list[tuple[str, Any]] = []
    c = client.beta.conversations
    img = _image("PNG", (300, 200))
    calls += [
        (
            "sdk conversations.start tools",
            lambda: c.start(
                inputs=[{"role": "user", "content": "What is the weather in Paris?"}],
                instructions="Be brief. Answer in the user's language.",
                tools=[WEATHER_TOOL],
                completion_args={"temperature": 0.2, "max_tokens": 64},
                model="mistral-medium-latest",
                store=False,
            ),
        ),
        (
            "sdk conversations.start string",
            lambda: c.start(inputs="Bonjour ! Qui es-tu ?", model="mistral-small-latest"),
        ),
        ("sdk conversations.start agent", lambda: c.start(inputs="hello", agent_id="ag_1")),
        (
            "sdk conversations.start image",
            lambda: c.start(
                inputs=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "Describe this picture."},
                            {"type": "image_url", "image_url": img},
                        ],
                    }
                ],
                model="mistral-medium-latest",
            ),
        ),
        (
            "sdk conversations.start_stream",
            lambda: list(
                c.start_stream(
                    inputs="Écris un haïku sur la pluie.",
                    model="mistral-medium-latest",
                    completion_args={"max_tokens": 100},
                )
            ),
        ),
        (
            "sdk conversations.append result",
            lambda: c.append(
                conversation_id="conv_1",
                inputs=[
                    {
                        "tool_call_id": "tc1",
                        "result": '{"temp": 21, "sky": "clear"}',
                        "type": "function.result",
                    }
                ],
            ),
        ),
        (
            "sdk conversations.append text",
            lambda: c.append(conversation_id="conv_1", inputs="And tomorrow?"),
        ),
        (
            "sdk conversations.append_stream",
            lambda: list(
                c.append_stream(
                    conversation_id="conv_1",
                    inputs="明天呢？",
                    completion_args={"max_tokens": 50},
                )
            ),
        ),
        (
            "sdk conversations.restart",
            lambda: c.restart(conversation_id="conv_1", from_entry_id="msg_1", inputs="again"),
        ),
        (
            "sdk conversations.restart_stream",
            lambda: list(
                c.restart_stream(
                    conversation_id="conv_1",
                    from_entry_id="msg_1",
                    inputs="once more 🎉",
                )
            ),
        ),
        (
            "sdk chat.complete",
            lambda: client.chat.complete(
                model="mistral-large-latest",
                messages=[
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "What's the weather in Lyon?"},
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [
                            {
                                "id": "abc123def",
                                "type": "function",
                                "function": {
                                    "name": "get_weather",
                                    "arguments": '{"city": "Lyon"}',
                                },
                            }
                        ],
                    },
                    {
                        "role": "tool",
                        "tool_call_id": "abc123def",
                        "name": "get_weather",
                        "content": '{"temp": 18}',
                    },
                ],
                tools=[WEATHER_TOOL],
                max_tokens=200,
            ),
        ),
        (
            "sdk chat.complete simple",
            lambda: client.chat.complete(
                model="mistral-small-latest",
                messages=[{"role": "user", "content": "Hello!"}],
            ),
        ),
        (
            "sdk chat.stream",
            lambda: list(
                client.chat.stream(
                    model="mistral-small-latest",
                    messages=[{"role": "user", "content": "Count to five."}],
                    max_tokens=20,
                )
            ),
        ),
        (
            "sdk fim.complete",
            lambda: client.fim.complete(
                model="codestral-latest",
                prompt="def add(a, b):\n",
                suffix="\nprint(add(1, 2))\n",
                max_tokens=32,
            ),
        ),
        (
            "sdk agents.complete",
            lambda: client.agents.complete(
                agent_id="ag_1",
                messages=[{"role": "user", "content": "Plan my trip to Kyoto."}],
            ),
        ),
        (
            "sdk embeddings.create",
            lambda: client.embeddings.create(
                model="mistral-embed",
                inputs=["first sentence", "deuxième phrase", "第三句话"],
            ),
        ),
        (
            "sdk classifiers.moderate",
            lambda: client.classifiers.moderate(
                model="mistral-moderation-latest",
                inputs=["some text to moderate"],
            ),
        ),
        (
            "sdk ocr.process",
            lambda: client.ocr.process(
                model="mistral-ocr-latest",
                document={"type": "document_url", "document_url": "https://example.com/a.pdf"},
            ),
        ),
    ]
    out: list[dict[str, Any]] = []
    for name, call in calls:
        before = len(captured)
        # The canned response need not fit every endpoint: the request is what matters.
        with contextlib.suppress(Exception):
            call()
        for item in captured[before:]:
            out.append({"name": name, **item})
    return out


# -- handmade -------------------------------------------------------------------------------


def handmade() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for lang, texts in TEXTS.items():
        for i, text in enumerate(texts):
            cases.append(
                _case(
                    f"start {lang} {i}",
                    "/v1/conversations",
                    {"inputs": text, "model": "mistral-medium-latest"},
                )
            )
            cases.append(
                _case(
                    f"chat {lang} {i}",
                    "/v1/chat/completions",
                    {
                        "model": "mistral-small-latest",
                        "messages": [
                            {"role": "system", "content": "Réponds brièvement."},
                            {"role": "user", "content": text},
                        ],
                    },
                )
            )
    entries = [
        {
            "type": "message.input",
            "role": "user",
            "content": "What's the weather in Paris and Tokyo?",
        },
        {
            "type": "function.call",
            "tool_call_id": "call_a1",
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
        },
        {
            "type": "function.call",
            "tool_call_id": "call_b2",
            "name": "get_weather",
            "arguments": {"city": "Tokyo", "unit": "celsius"},
        },
        {
            "type": "function.result",
            "tool_call_id": "call_a1",
            "result": '{"temp": 21, "sky": "clear"}',
        },
        {"type": "function.result", "tool_call_id": "call_b2", "result": "sunny, 25°C"},
        {
            "type": "message.output",
            "role": "assistant",
            "content": "Paris: 21°C clear. Tokyo: 25°C sunny.",
        },
        {"type": "message.input", "role": "user", "content": "Merci ! Et demain ?"},
    ]
    cases.append(
        _case(
            "start all function entries",
            "/v1/conversations",
            {
                "inputs": entries,
                "instructions": "You are a weather bot.",
                "tools": [WEATHER_TOOL, SEARCH_TOOL],
                "completion_args": {"max_tokens": 300},
                "model": "mistral-medium-latest",
            },
        )
    )
    cases.append(
        _case(
            "start tool.execution",
            "/v1/conversations",
            {
                "inputs": [
                    {"type": "message.input", "role": "user", "content": "Latest news on Mistral?"},
                    {
                        "type": "tool.execution",
                        "id": "tool_exec_1",
                        "name": "web_search",
                        "arguments": '{"query": "Mistral AI news"}',
                        "info": {"results": 3},
                    },
                    {
                        "type": "message.output",
                        "content": [{"type": "text", "text": "Here is what I found."}],
                    },
                    {"type": "message.input", "role": "user", "content": "More details please."},
                ],
                "tools": [{"type": "web_search"}],
                "model": "mistral-medium-latest",
            },
        )
    )
    cases.append(
        _case(
            "start agent.handoff",
            "/v1/conversations",
            {
                "inputs": [
                    {"type": "message.input", "role": "user", "content": "Book a flight."},
                    {
                        "type": "agent.handoff",
                        "previous_agent_id": "ag_1",
                        "previous_agent_name": "router",
                        "next_agent_id": "ag_2",
                        "next_agent_name": "travel",
                    },
                    {"type": "message.input", "role": "user", "content": "To Lisbon, Friday."},
                ],
                "agent_id": "ag_1",
            },
        )
    )
    for fmt, size in [
        ("PNG", (640, 480)),
        ("JPEG", (1600, 900)),
        ("GIF", (64, 64)),
        ("WEBP", (300, 1200)),
        ("BMP", (33, 17)),
    ]:
        cases.append(
            _case(
                f"start image {fmt}",
                "/v1/conversations",
                {
                    "inputs": [
                        {
                            "type": "message.input",
                            "role": "user",
                            "content": [
                                {"type": "text", "text": "Que vois-tu sur cette image ?"},
                                {"type": "image_url", "image_url": {"url": _image(fmt, size)}},
                            ],
                        }
                    ],
                    "instructions": "Décris précisément.",
                    "model": "mistral-medium-latest",
                },
            )
        )
        cases.append(
            _case(
                f"chat image {fmt}",
                "/v1/chat/completions",
                {
                    "model": "pixtral-large-latest",
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "image_url", "image_url": _image(fmt, size)},
                                {"type": "text", "text": "What is in this image?"},
                            ],
                        }
                    ],
                },
            )
        )
    cases.append(
        _case(
            "start thinking",
            "/v1/conversations",
            {
                "inputs": [
                    {"type": "message.input", "role": "user", "content": "What is 17 * 23?"},
                    {
                        "type": "message.output",
                        "content": [
                            {
                                "type": "thinking",
                                "thinking": [
                                    {
                                        "type": "text",
                                        "text": "17*23 = 17*20 + 17*3 = 340 + 51 = 391.",
                                    }
                                ],
                            },
                            {"type": "text", "text": "391"},
                        ],
                    },
                    {"type": "message.input", "role": "user", "content": "And 17 * 24?"},
                ],
                "model": "magistral-medium-latest",
            },
        )
    )
    cases.append(
        _case(
            "start document",
            "/v1/conversations",
            {
                "inputs": [
                    {
                        "type": "message.input",
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "Summarise this PDF."},
                            {
                                "type": "document_url",
                                "document_url": "https://arxiv.org/pdf/1805.04770",
                                "document_name": "paper.pdf",
                            },
                        ],
                    }
                ],
                "model": "mistral-medium-latest",
            },
        )
    )
    cases.append(
        _case(
            "start response_format prediction",
            "/v1/conversations",
            {
                "inputs": "Give me a JSON user record for Ada Lovelace.",
                "completion_args": {
                    "max_tokens": 128,
                    "response_format": {
                        "type": "json_schema",
                        "json_schema": {
                            "name": "user",
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "name": {"type": "string"},
                                    "born": {"type": "integer"},
                                },
                            },
                        },
                    },
                    "prediction": {
                        "type": "content",
                        "content": '{"name": "Ada Lovelace", "born": 1815}',
                    },
                },
                "model": "mistral-medium-latest",
            },
        )
    )
    cases.append(
        _case(
            "append prefix",
            "/v1/conversations/conv_9",
            {
                "inputs": [
                    {"type": "message.input", "role": "user", "content": "Write a limerick."},
                    {
                        "type": "message.input",
                        "role": "assistant",
                        "content": "There once was ",
                        "prefix": True,
                    },
                ],
            },
        )
    )
    cases.append(
        _case(
            "restart json inputs",
            "/v1/conversations/conv_9/restart",
            {
                "from_entry_id": "msg_3",
                "inputs": [{"type": "message.input", "role": "user", "content": TEXTS["json"][0]}],
            },
        )
    )
    cases.append(
        _case(
            "chat multi-turn merge",
            "/v1/chat/completions",
            {
                "model": "mistral-large-latest",
                "messages": [
                    {"role": "system", "content": "Rule one."},
                    {"role": "user", "content": "First part."},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "Second part."},
                            {"type": "text", "text": "Third."},
                        ],
                    },
                    {"role": "assistant", "content": "Okay.   "},
                    {"role": "system", "content": "Rule two."},
                    {"role": "user", "content": TEXTS["code"][0]},
                ],
                "max_tokens": 50,
                "n": 2,
            },
        )
    )
    cases.append(
        _case(
            "chat assistant first",
            "/v1/chat/completions",
            {
                "model": "mistral-small-latest",
                "messages": [
                    {"role": "assistant", "content": "Hello, how can I help?"},
                    {"role": "user", "content": "Tell me a joke."},
                ],
            },
        )
    )
    cases.append(
        _case(
            "fim no suffix",
            "/v1/fim/completions",
            {"model": "codestral-latest", "prompt": TEXTS["code"][1]},
        )
    )
    cases.append(
        _case(
            "fim unicode suffix",
            "/v1/fim/completions",
            {"model": "codestral-latest", "prompt": "# 计算\nx = ", "suffix": "  # ✓ résultat\n"},
        )
    )
    return cases


# -- random ---------------------------------------------------------------------------------


def _rand_text(rng: random.Random) -> str:
    pool = [t for texts in TEXTS.values() for t in texts]
    parts = rng.sample(pool, rng.randint(1, 3))
    text = rng.choice([" ", "\n", "\n\n", " — "]).join(parts)
    if rng.random() < 0.2:
        text = text + " " * rng.randint(1, 3)
    return text


def _rand_args(rng: random.Random) -> Any:
    args = {"city": rng.choice(["Paris", "東京", "São Paulo"]), "days": rng.randint(1, 9)}
    return json.dumps(args, ensure_ascii=rng.random() < 0.5) if rng.random() < 0.7 else args


def random_cases(n: int = 300, seed: int = 20250611) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        tools = rng.sample([WEATHER_TOOL, SEARCH_TOOL], rng.randint(0, 2))
        if rng.random() < 0.5:
            entries: list[dict[str, Any]] = []
            for _ in range(rng.randint(1, 6)):
                r = rng.random()
                if r < 0.45 or not entries:
                    entries.append(
                        {
                            "type": "message.input",
                            "role": "user",
                            "content": _rand_text(rng),
                            "object": "entry",
                            "prefix": False,
                        }
                    )
                elif r < 0.65:
                    entries.append(
                        {
                            "type": "message.output",
                            "role": "assistant",
                            "content": _rand_text(rng),
                            "object": "entry",
                        }
                    )
                else:
                    if entries[-1]["type"] == "message.output":
                        # v3 cannot render text and calls in one assistant turn
                        entries.append(
                            {
                                "type": "message.input",
                                "role": "user",
                                "content": _rand_text(rng),
                                "object": "entry",
                                "prefix": False,
                            }
                        )
                    cid = f"call_{i}_{len(entries)}"
                    entries.append(
                        {
                            "type": "function.call",
                            "tool_call_id": cid,
                            "name": "get_weather",
                            "arguments": _rand_args(rng),
                            "object": "entry",
                        }
                    )
                    entries.append(
                        {
                            "type": "function.result",
                            "tool_call_id": cid,
                            "result": rng.choice(['{"t": 20}', "ok", _rand_text(rng)]),
                            "object": "entry",
                        }
                    )
            body: dict[str, Any] = {
                "inputs": entries,
                "stream": False,
                "model": "mistral-medium-latest",
            }
            if rng.random() < 0.5:
                body["instructions"] = _rand_text(rng)
            if tools:
                body["tools"] = tools
            if rng.random() < 0.5:
                body["completion_args"] = {"max_tokens": rng.randint(1, 2000)}
            path = rng.choice(
                ["/v1/conversations"] * 3
                + ["/v1/conversations/conv_r", "/v1/conversations/conv_r/restart"]
            )
            if path.endswith("restart"):
                body["from_entry_id"] = "msg_0"
            cases.append(_case(f"random conversation {i}", path, body))
        else:
            messages: list[dict[str, Any]] = []
            if rng.random() < 0.5:
                messages.append({"role": "system", "content": _rand_text(rng)})
            for _ in range(rng.randint(1, 6)):
                r = rng.random()
                if r < 0.5:
                    messages.append({"role": "user", "content": _rand_text(rng)})
                elif r < 0.75:
                    messages.append({"role": "assistant", "content": _rand_text(rng)})
                else:
                    if messages and messages[-1]["role"] == "assistant":
                        messages.append({"role": "user", "content": _rand_text(rng)})
                    cid = "".join(
                        rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(9)
                    )
                    messages.append(
                        {
                            "role": "assistant",
                            "content": None,
                            "tool_calls": [
                                {
                                    "id": cid,
                                    "type": "function",
                                    "function": {
                                        "name": "get_weather",
                                        "arguments": _rand_args(rng),
                                    },
                                }
                            ],
                        }
                    )
                    messages.append(
                        {
                            "role": "tool",
                            "tool_call_id": cid,
                            "name": "get_weather",
                            "content": rng.choice(['{"t": 20}', "ok", _rand_text(rng)]),
                        }
                    )
            chat: dict[str, Any] = {"model": "mistral-small-latest", "messages": messages}
            if tools:
                chat["tools"] = tools
            if rng.random() < 0.5:
                chat["max_tokens"] = rng.randint(1, 4000)
            cases.append(_case(f"random chat {i}", "/v1/chat/completions", chat))
    return cases


def main() -> None:
    outputs = {
        "sdk_bodies.json": capture_sdk(),
        "handmade.json": handmade(),
        "random.json": random_cases(),
    }
    for name, cases in outputs.items():
        (HERE / name).write_text(
            json.dumps(cases, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
        )
        print(f"{name}: {len(cases)} cases")


if __name__ == "__main__":
    main()
