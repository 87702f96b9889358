"""The emulator over real sockets: headers, billing, 401/429 shapes, faults, streams, log."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from emulator_helpers import MONTH_HEADERS, RATE_HEADERS, parse_sse, start, start_body
from mistral_ratelimit.emulator import Emulator, Fault, FaultRule
from mistral_ratelimit.emulator.tokens import prompt_tokens

pytestmark = pytest.mark.realclock

RATE_LIMITED = {
    "object": "error",
    "message": "Rate limit exceeded",
    "type": "rate_limited",
    "param": None,
    "code": "1300",
    "raw_status_code": 429,
}


@pytest.fixture
def emu() -> Iterator[Emulator]:
    # tokens_per_month is left at its default: the free tier's 1 billion.
    with Emulator(requests_per_second=1000, tokens_per_minute=5_000_000) as e:
        yield e


@pytest.fixture
def client(emu: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.url, timeout=10) as c:
        yield c


def test_every_response_carries_the_rate_headers(emu: Emulator, client: httpx.Client) -> None:
    responses = [
        start(client),
        client.get("/v1/models"),
        client.get("/v1/conversations"),
        client.get("/v1/conversations/conv_missing"),
        client.post("/v1/conversations", json={"stream": False}),  # 422
        client.get("/v1/unknown"),
    ]
    with client.stream("POST", "/v1/conversations", json=start_body(stream=True)) as r:
        r.read()
        responses.append(r)
    assert [r.status_code for r in responses] == [200, 200, 200, 404, 422, 404, 200]
    for r in responses:
        for name in RATE_HEADERS + MONTH_HEADERS:
            assert name in r.headers, (r.request.url, name)
    assert responses[0].headers["x-ratelimit-tokens-query-cost"] == str(
        responses[0].json()["usage"]["total_tokens"]
    )
    assert responses[1].headers["x-ratelimit-tokens-query-cost"] == "0"
    # A stream's headers leave before generation: they price the prompt only.
    done = parse_sse(responses[-1].text.splitlines())[-1][1]
    assert responses[-1].headers["x-ratelimit-tokens-query-cost"] == str(
        done["usage"]["prompt_tokens"]
    )
    assert responses[-1].headers["content-type"].startswith("text/event-stream")


def test_the_month_pair_defaults_to_the_free_tier_budget(client: httpx.Client) -> None:
    before = client.get("/v1/models")
    reply = start(client)
    for r in (before, reply):
        assert r.headers["x-ratelimit-limit-tokens-month"] == "1000000000"
    used = reply.json()["usage"]["total_tokens"]
    assert int(before.headers["x-ratelimit-remaining-tokens-month"]) == 1_000_000_000
    assert int(reply.headers["x-ratelimit-remaining-tokens-month"]) == 1_000_000_000 - used


def test_remaining_headers_count_down(client: httpx.Client) -> None:
    a = start(client)
    b = start(client)
    used = b.json()["usage"]["total_tokens"]
    ra = int(a.headers["x-ratelimit-remaining-tokens-minute"])
    rb = int(b.headers["x-ratelimit-remaining-tokens-minute"])
    assert ra - rb == used
    assert int(a.headers["x-ratelimit-remaining-req-minute"]) - 1 == int(
        b.headers["x-ratelimit-remaining-req-minute"]
    )
    assert int(a.headers["x-ratelimit-remaining-tokens-month"]) - used == int(
        b.headers["x-ratelimit-remaining-tokens-month"]
    )
    assert a.headers["x-ratelimit-limit-req-minute"] == str(1000 * 60)


def test_append_and_restart_bill_the_stored_history(client: httpx.Client) -> None:
    first = start(client, "The first question is about windows.").json()
    cid = first["conversation_id"]
    appended = client.post(f"/v1/conversations/{cid}", json={"inputs": "and tokens?"}).json()
    history = client.get(f"/v1/conversations/{cid}/history").json()["entries"]
    assert len(history) == 4
    assert appended["usage"]["prompt_tokens"] == prompt_tokens(history[:3])
    restarted = client.post(
        f"/v1/conversations/{cid}/restart",
        json={"from_entry_id": history[1]["id"], "inputs": "again"},
    ).json()
    new_history = client.get(f"/v1/conversations/{restarted['conversation_id']}/history").json()[
        "entries"
    ]
    assert [e["id"] for e in new_history[:2]] == [e["id"] for e in history[:2]]
    assert restarted["usage"]["prompt_tokens"] == prompt_tokens(new_history[:3])


def test_store_false_is_not_kept_and_unknown_ids_404(client: httpx.Client) -> None:
    cid = start(client, store=False).json()["conversation_id"]
    r = client.post(f"/v1/conversations/{cid}", json={"inputs": "x"})
    assert r.status_code == 404
    assert r.json()["object"] == "error"
    r = client.post("/v1/conversations/conv_x/restart", json={"inputs": "x", "from_entry_id": "m"})
    assert r.status_code == 404
    # FastAPI validates the body before the handler looks anything up.
    r = client.post("/v1/conversations/conv_x/restart", json={"inputs": "x"})
    assert r.status_code == 422


def test_429_body_and_retry_after_modes() -> None:
    for mode in (None, "seconds", "http-date"):
        with (
            Emulator(requests_per_second=1, retry_after=mode) as emu,  # type: ignore[arg-type]
            httpx.Client(base_url=emu.url) as c,
        ):
            assert start(c).status_code == 200
            r = start(c)
            assert r.status_code == 429
            assert r.json() == RATE_LIMITED
            assert r.headers["content-type"] == "application/json"
            assert r.headers["x-ratelimit-tokens-query-cost"] == "0"
            log = emu.log.snapshot()
            assert [x.admitted for x in log] == [True, False]
            assert log[1].reason == "requests_per_second"
            assert log[1].tokens == 0
        if mode is None:
            assert "retry-after" not in r.headers
        elif mode == "seconds":
            assert r.headers["retry-after"] == "1"
        else:
            when = email.utils.parsedate_to_datetime(r.headers["retry-after"])
            assert abs(when.timestamp() - time.time()) < 5


def test_token_refusal_gives_the_request_back() -> None:
    with (
        Emulator(requests_per_second=None, tokens_per_minute=200, requests_per_minute=3) as emu,
        httpx.Client(base_url=emu.url) as c,
    ):
        r = start(c, "word " * 400)
        assert r.status_code == 429 and r.json()["code"] == "1300"
        assert emu.log[0].reason == "tokens_per_minute"
        assert r.headers["x-ratelimit-remaining-req-minute"] == "3"  # not consumed
        ok = start(c, "small")
        assert ok.status_code == 200
        assert ok.headers["x-ratelimit-remaining-req-minute"] == "2"


def test_auth_401_shape_and_no_headers() -> None:
    key = "sk-emulator-test-123"
    with Emulator(requests_per_second=100, api_key=key) as emu:
        with httpx.Client(base_url=emu.url) as c:
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": key}):
                r = c.get("/v1/models", headers=headers)
                assert r.status_code == 401
                assert r.json() == {"detail": "Unauthorized"}
                assert key not in r.text
                assert "x-ratelimit-limit-req-minute" not in r.headers
            ok = c.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200
        assert key not in repr(emu) and key not in repr(emu.config)
        assert [x.reason for x in emu.log.rejected()] == ["auth"] * 3


def test_faults_capacity_5xx_520_and_refunds(emu: Emulator, client: httpx.Client) -> None:
    emu.inject("capacity")
    r = start(client)
    assert r.status_code == 429
    assert r.json()["code"] == "3505"
    assert r.json()["type"] == "service_tier_capacity_exceeded"
    emu.inject(Fault("server_error", status=502))
    r = start(client)
    assert r.status_code == 502 and r.json()["type"] == "server_error"
    emu.inject("html_520")
    r = start(client)
    assert r.status_code == 520
    assert r.headers["content-type"].startswith("text/html")
    assert "520" in r.text
    assert start(client).status_code == 200  # queue drained
    log = emu.log.snapshot()
    assert [x.fault for x in log] == ["capacity", "server_error", "html_520", None]
    assert all(x.tokens == 0 for x in log[:3])  # no usage, nothing billed
    assert all(x.admitted for x in log)  # but each counted as a request


def test_fault_rule_every_nth(emu: Emulator) -> None:
    with (
        Emulator(
            requests_per_second=1000,
            faults=[FaultRule(Fault("server_error", status=503), every=2)],
        ) as e2,
        httpx.Client(base_url=e2.url) as c,
    ):
        codes = [start(c).status_code for _ in range(6)]
        assert codes == [200, 503] * 3
        assert c.get("/v1/models").status_code == 200  # reads are not generation


def test_zero_limit(emu: Emulator, client: httpx.Client) -> None:
    emu.inject("zero_limit")
    r = client.get("/v1/models")
    assert r.status_code == 429 and r.json() == RATE_LIMITED
    assert r.headers["x-ratelimit-limit-req-minute"] == "0"
    assert start(client).status_code == 200
    with Emulator(requests_per_minute=0) as z, httpx.Client(base_url=z.url) as c:
        for _ in range(3):
            r = start(c)
            assert r.status_code == 429
            assert r.headers["x-ratelimit-limit-req-minute"] == "0"
        assert not any(x.admitted for x in z.log)


def _stream_events(client: httpx.Client, **extra: object) -> list[tuple[str, dict[str, object]]]:
    with client.stream("POST", "/v1/conversations", json=start_body(stream=True, **extra)) as r:
        return parse_sse(r.iter_lines())


def test_stream_cut_and_stream_error(
    emu: Emulator, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    emu.inject(Fault("stream_cut", after_chunks=2))
    events = _stream_events(client, text="write a long answer please " * 5)
    assert [n for n, _ in events] == [
        "conversation.response.started",
        "message.output.delta",
        "message.output.delta",
    ]
    cut = emu.log[-1]
    assert cut.fault == "stream_cut" and cut.completion_tokens > 0
    emu.inject(Fault("stream_cut", after_chunks=1, abrupt=True))
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", "/v1/conversations", json=start_body(stream=True)) as r,
    ):
        for _ in r.iter_lines():
            pass
    # An emulated cut is not a server error: no traceback in the logs.
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    emu.inject(Fault("stream_error", after_chunks=1))
    events = _stream_events(client)
    assert events[-1][0] == "conversation.response.error"
    assert isinstance(events[-1][1]["code"], int)
    assert _stream_events(client)[-1][0] == "conversation.response.done"


def test_slow_first_byte_delays_the_response(emu: Emulator, client: httpx.Client) -> None:
    emu.inject(Fault("slow_first_byte", delay=0.3))
    t = time.monotonic()
    r = start(client)
    assert r.status_code == 200
    assert time.monotonic() - t >= 0.3  # a lower bound: noise only makes it longer


def test_stream_is_incremental_and_charges_as_it_goes() -> None:
    with (
        Emulator(requests_per_second=100, stream_tokens_per_second=40) as emu,
        httpx.Client(base_url=emu.url, timeout=10) as c,
        c.stream("POST", "/v1/conversations", json=start_body("x " * 30, stream=True)) as r,
    ):
        seen: list[int] = []
        events = []
        lines = []
        for line in r.iter_lines():
            lines.append(line)
            if line.startswith("event: message.output.delta") and not seen:
                # The first delta is on the socket while the server is still generating.
                record = emu.log[-1]
                assert record.finished is None
                seen.append(record.completion_tokens)
        events = parse_sse(lines)
    usage = events[-1][1]["usage"]
    assert isinstance(usage, dict)
    assert seen[0] < usage["completion_tokens"]
    assert emu.log[-1].completion_tokens == usage["completion_tokens"]
    assert emu.log[-1].finished is not None


def test_concurrency_cap() -> None:
    with (
        Emulator(requests_per_second=100, max_concurrency=1, stream_tokens_per_second=30) as emu,
        httpx.Client(base_url=emu.url, timeout=10) as c,
    ):
        with c.stream("POST", "/v1/conversations", json=start_body("x " * 20, stream=True)) as r:
            lines = r.iter_lines()  # one iterator: dropping it would close the connection
            next(lines)
            second = c.get("/v1/models")
            assert second.status_code == 429
            for _ in lines:
                pass
        assert c.get("/v1/models").status_code == 200
        assert [x.reason for x in emu.log] == [None, "concurrency", None]


def test_reset_clears_log_windows_and_store() -> None:
    with Emulator(requests_per_second=1) as emu, httpx.Client(base_url=emu.url) as c:
        cid = start(c).json()["conversation_id"]
        assert start(c).status_code == 429
        emu.reset()
        assert len(emu.log) == 0
        assert c.get(f"/v1/conversations/{cid}").status_code == 404  # window reset too
        assert len(emu.log) == 1 and emu.log[0].admitted


def test_log_records_arrival_clocks(emu: Emulator, client: httpx.Client) -> None:
    before_mono, before_wall = time.monotonic(), time.time()
    start(client)
    after_mono, after_wall = time.monotonic(), time.time()
    (rec,) = emu.log.snapshot()
    assert before_mono <= rec.arrival <= rec.finished <= after_mono  # type: ignore[operator]
    assert before_wall <= rec.wall <= after_wall
    assert (rec.method, rec.path, rec.status, rec.stream) == (
        "POST",
        "/v1/conversations",
        200,
        False,
    )
    assert rec.prompt_tokens > 0 and rec.completion_tokens > 0


def test_validation_errors_are_422_in_fastapi_shape(client: httpx.Client) -> None:
    r = client.post("/v1/conversations", content=b"{not json")
    assert r.status_code == 422 and "detail" in r.json()
    r = client.post("/v1/conversations", json={"inputs": [1, 2]})
    assert r.status_code == 422
    assert [d["loc"] for d in r.json()["detail"]] == [["body", "inputs", 0], ["body", "inputs", 1]]


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


JSON_INVALID = {
    "detail": [{"type": "json_invalid", "loc": ["body"], "msg": "JSON decode error", "input": None}]
}
MALFORMED = [
    # (raw body, the 422's detail)
    (
        b'{"inputs": 12345, "model": "m"}',
        [
            {
                "type": "union_type",
                "loc": ["body", "inputs"],
                "msg": "Input should be a valid string or list of entries",
                "input": 12345,
            }
        ],
    ),
    (('{"model":"m","inputs":' + _nested(50_000) + "}").encode(), JSON_INVALID["detail"]),
    (_nested(100_000).encode(), JSON_INVALID["detail"]),
    (('{"inputs":"hi","metadata":{"a":' + _nested(200) + "}}").encode(), JSON_INVALID["detail"]),
    (b'{"inputs":"hi","completion_args":{"max_tokens":NaN}}', JSON_INVALID["detail"]),
    (b'{"inputs":"hi","completion_args":{"temperature":1e400}}', JSON_INVALID["detail"]),
    (b'{"inputs":"hi","metadata":{"k":"\\ud800"}}', JSON_INVALID["detail"]),
    (
        b'{"inputs":"hi","completion_args":{"max_tokens":"1000"}}',
        [
            {
                "type": "int_type",
                "loc": ["body", "completion_args", "max_tokens"],
                "msg": "Input should be a valid integer",
                "input": "1000",
            }
        ],
    ),
    (
        b'{"inputs":[{"type":["message.input"],"content":"x"}]}',
        [
            {
                "type": "string_type",
                "loc": ["body", "inputs", 0, "type"],
                "msg": "Input should be a valid string",
                "input": ["message.input"],
            }
        ],
    ),
    (
        b'{"inputs":"hi","tools":[5]}',
        [
            {
                "type": "dict_type",
                "loc": ["body", "tools", 0],
                "msg": "Input should be a valid dictionary",
                "input": 5,
            }
        ],
    ),
    (
        b'{"inputs":null,"model":"m"}',
        [
            {
                "type": "missing",
                "loc": ["body", "inputs"],
                "msg": "Field required",
                "input": {"inputs": None, "model": "m"},
            }
        ],
    ),
]


def _max_tokens_error(kind: str, value: object) -> dict[str, object]:
    loc = ["body", "completion_args", "max_tokens"]
    if kind == "ge":
        return {
            "type": "greater_than_equal",
            "loc": loc,
            "msg": "Input should be greater than or equal to 0",
            "input": value,
            "ctx": {"ge": 0},
        }
    return {
        "type": "int_type",
        "loc": loc,
        "msg": "Input should be a valid integer",
        "input": value,
    }


# max_tokens must be an integer >= 0, as at the API: a negative one, a float (1e30, or even
# 3.0, which the emulator would otherwise have to round) and a bool are 422s.
MALFORMED += [
    (b'{"inputs":"hi","completion_args":{"max_tokens":-1}}', [_max_tokens_error("ge", -1)]),
    (b'{"inputs":"hi","completion_args":{"max_tokens":1e30}}', [_max_tokens_error("int", 1e30)]),
    (b'{"inputs":"hi","completion_args":{"max_tokens":3.0}}', [_max_tokens_error("int", 3.0)]),
    (b'{"inputs":"hi","completion_args":{"max_tokens":true}}', [_max_tokens_error("int", True)]),
]


@pytest.mark.parametrize(("raw", "detail"), MALFORMED, ids=range(len(MALFORMED)))
def test_a_malformed_start_is_a_422_that_bills_no_tokens(
    emu: Emulator,
    client: httpx.Client,
    caplog: pytest.LogCaptureFixture,
    raw: bytes,
    detail: list[dict[str, object]],
) -> None:
    caplog.set_level(logging.ERROR)
    r = client.post("/v1/conversations", content=raw, headers={"content-type": "application/json"})
    assert (r.status_code, r.json()) == (422, {"detail": detail})
    (record,) = list(emu.log)
    # Counted as a request (the gateway meters before the body is validated), never billed.
    assert (record.status, record.admitted, record.tokens) == (422, True, 0)
    assert r.headers["x-ratelimit-tokens-query-cost"] == "0"
    assert [rec for rec in caplog.records if rec.levelno >= logging.ERROR] == []


def test_the_deepest_accepted_body_is_served(client: httpx.Client) -> None:
    r = start(client, metadata={"a": json.loads(_nested(198))})  # 200 levels with the body's
    assert r.status_code == 200


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_schema_without_properties_is_called_without_arguments(
    client: httpx.Client, stream: bool
) -> None:
    tools = [{"type": "function", "function": {"name": "ping", "parameters": {"properties": 5}}}]
    r = start(client, "ping the server", tools=tools, stream=stream)
    assert r.status_code == 200
    if stream:
        deltas = [d for name, d in parse_sse(r.text.splitlines()) if name == "function.call.delta"]
        assert "".join(d["arguments"] for d in deltas) == "{}"
    else:
        (call,) = r.json()["outputs"]
        assert (call["type"], call["name"], call["arguments"]) == ("function.call", "ping", "{}")


@pytest.mark.parametrize("max_tokens", [0, 1, 64])
def test_a_max_tokens_of_zero_or_more_is_served(client: httpx.Client, max_tokens: int) -> None:
    assert start(client, completion_args={"max_tokens": max_tokens}).status_code == 200


def test_append_restart_and_agents_refuse_a_negative_max_tokens(client: httpx.Client) -> None:
    cid = start(client).json()["conversation_id"]
    args = {"completion_args": {"max_tokens": -5}}
    replies = [
        client.post(f"/v1/conversations/{cid}", json={"inputs": "more", **args}),
        client.post(f"/v1/conversations/{cid}/restart", json={"from_entry_id": "x", **args}),
        client.post("/v1/agents", json={"model": "m", "name": "a", **args}),
    ]
    for r in replies:
        assert (r.status_code, r.json()) == (422, {"detail": [_max_tokens_error("ge", -5)]})


def test_restart_and_agents_validate_their_bodies(client: httpx.Client) -> None:
    cid = start(client).json()["conversation_id"]
    r = client.post(f"/v1/conversations/{cid}/restart", json={"inputs": "again"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "from_entry_id"]
    r = client.post("/v1/agents", json={"model": "m", "name": "a", "completion_args": []})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "completion_args"]
    r = client.post(f"/v1/conversations/{cid}", json={"inputs": 7})
    assert (r.status_code, r.json()["detail"][0]["loc"]) == (422, ["body", "inputs"])


def test_start_stop_without_with_and_inside_an_event_loop() -> None:
    emu = Emulator(requests_per_second=10)
    emu.start()
    url = emu.url
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    emu.stop()
    assert not emu.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health")

    async def main() -> int:
        # The demo starts the emulator from inside its own event loop.
        with Emulator(requests_per_second=10) as inner:
            async with httpx.AsyncClient(base_url=inner.url) as c:
                r = await c.post("/v1/conversations", json=start_body())
                return r.status_code

    assert asyncio.run(main()) == 200


def test_sse_wire_format_is_named_events_without_done_sentinel(client: httpx.Client) -> None:
    with client.stream("POST", "/v1/conversations", json=start_body(stream=True)) as r:
        raw = r.read().decode()
    assert "[DONE]" not in raw
    blocks = [b for b in raw.split("\n\n") if b]
    for block in blocks:
        event_line, data_line = block.split("\n")
        name = event_line.removeprefix("event: ")
        assert json.loads(data_line.removeprefix("data: "))["type"] == name


def test_sequential_client_never_meets_its_own_finished_request() -> None:
    # Regression: the in-flight slot and `finished` were released after the last byte was
    # sent, so a client firing its next request at once could get a spurious 429.
    with (
        Emulator(requests_per_second=None, max_concurrency=1) as emu,
        httpx.Client(base_url=emu.url) as c,
    ):
        codes = [start(c).status_code for _ in range(30)]
        assert codes == [200] * 30
        assert all(r.finished is not None for r in emu.log)


def test_cli_serve_binds_loopback_and_enforces_its_flags() -> None:
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mistral_ratelimit.cli",
            "serve",
            "--port",
            "0",
            "--rps",
            "5",
            "--tpm",
            "1000",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.rsplit(" ", 1)[-1].strip()
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        r = httpx.get(f"{url}/v1/models", timeout=10)
        assert r.status_code == 200
        assert r.headers["x-ratelimit-limit-req-minute"] == "300"
        assert r.headers["x-ratelimit-limit-tokens-minute"] == "1000"
        assert r.headers["x-ratelimit-limit-tokens-month"] == "1000000000"
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop
        assert proc.wait(timeout=10) == 0


def test_importing_the_library_does_not_import_the_server_stack() -> None:
    import subprocess
    import sys

    code = (
        "import sys, mistral_ratelimit, mistral_ratelimit.cli, mistral_ratelimit.emulator;"
        "assert 'starlette' not in sys.modules and 'uvicorn' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_client_gone_before_its_body_arrived_is_logged_quietly(
    emu: Emulator, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """A cancelled client closes mid-body: the emulator answers nobody, logs 499 (nginx's
    "client closed request") and prints no traceback, and the next request is served."""
    url = httpx.URL(emu.url)
    head = (
        b"POST /v1/conversations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"inputs": "hi'
    )
    with caplog.at_level(logging.ERROR), socket.create_connection((url.host, url.port)) as sock:
        sock.sendall(head)
        deadline = time.monotonic() + 5
        while not emu.log.snapshot() and time.monotonic() < deadline:
            time.sleep(0.01)  # until the emulator has the request
    deadline = time.monotonic() + 5
    while emu.log.count(499) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [r.status for r in emu.log.snapshot()] == [499]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert client.post("/v1/conversations", json=start_body()).status_code == 200


@pytest.mark.parametrize("mode", ["seconds", "http-date"])
def test_a_client_that_waits_as_long_as_retry_after_says_is_admitted(mode: str) -> None:
    """A date is written to the second: the time it names is rounded up, so that it is
    never before the window has room (it used to be cut down, up to a second early)."""
    with (
        Emulator(requests_per_second=1, retry_after=mode) as emu,  # type: ignore[arg-type]
        httpx.Client(base_url=emu.url) as c,
    ):
        assert start(c).status_code == 200
        refused = start(c)
        assert refused.status_code == 429
        value = refused.headers["retry-after"]
        if mode == "seconds":
            wait = float(value)
        else:
            wait = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        time.sleep(max(0.0, wait))
        assert start(c).status_code == 200
