"""Ways a program ends with a MistralRatelimitClient, each run by tests/test_client_closing.py
in its own interpreter with ResourceWarning as an error: ``python closing_scenarios.py NAME``.

Every scenario talks to a real emulator over real sockets, then drops the client and
collects garbage, so a socket left open surfaces as "ResourceWarning: unclosed ...".
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable

from garbage import collect_garbage
from mistral_ratelimit import MistralRatelimitClient
from mistral_ratelimit.emulator import Emulator
from mistral_ratelimit.loop_local import LoopLocalAsyncTransport
from mistral_ratelimit.sdk import detect_sdk_line

CALLS = 4  # at once: one connection each


def _client(emu: Emulator) -> MistralRatelimitClient:
    return MistralRatelimitClient(server_url=emu.url, requests_per_second=100)


async def _calls(client: MistralRatelimitClient) -> None:
    conv = client.beta.conversations
    await asyncio.gather(*(conv.start_async(inputs=f"hi {i}", model="m") for i in range(CALLS)))


def readme(emu: Emulator) -> None:
    """The README's pattern: asyncio.run(main()), then client.close()."""
    client = _client(emu)
    asyncio.run(_calls(client))
    client.close()


def two_runs(emu: Emulator) -> None:
    client = _client(emu)
    asyncio.run(_calls(client))
    asyncio.run(_calls(client))
    client.close()


def sync_close_inside_the_loop(emu: Emulator) -> None:
    """A sync ``with`` that ends inside async code, the loop ending right after."""

    async def main() -> None:
        with _client(emu) as client:
            await _calls(client)

    asyncio.run(main())


def async_with(emu: Emulator) -> None:
    async def main() -> None:
        async with _client(emu) as client:
            await _calls(client)

    asyncio.run(main())


def loop_in_another_thread(emu: Emulator) -> None:
    """Used from a loop that runs in another thread; closed from this one."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    client = _client(emu)
    asyncio.run_coroutine_threadsafe(_calls(client), loop).result(30)
    client.close()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def loop_run_by_hand(emu: Emulator) -> None:
    """A loop driven with run_until_complete, the client closed before the loop is."""
    loop = asyncio.new_event_loop()
    client = _client(emu)
    loop.run_until_complete(_calls(client))
    client.close()
    loop.close()


def trio_run_then_close(emu: Emulator) -> None:
    """The loop-local transport under trio: the run ends, then the client is closed."""
    import trio

    http = detect_sdk_line().http
    client = http.AsyncClient(
        transport=LoopLocalAsyncTransport(http.AsyncHTTPTransport), base_url=emu.url
    )

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(CALLS):
                nursery.start_soon(client.get, "/v1/models")

    trio.run(main)
    asyncio.run(client.aclose())


SCENARIOS: dict[str, Callable[[Emulator], None]] = {
    f.__name__: f
    for f in (
        readme,
        two_runs,
        sync_close_inside_the_loop,
        async_with,
        loop_in_another_thread,
        loop_run_by_hand,
        trio_run_then_close,
    )
}


def main(name: str) -> None:
    with Emulator(requests_per_second=100) as emu:
        SCENARIOS[name](emu)
        collect_garbage()  # every transport nothing refers to any more: unclosed ones warn here
        print(f"requests {len(emu.log)}")


if __name__ == "__main__":
    main(sys.argv[1])
