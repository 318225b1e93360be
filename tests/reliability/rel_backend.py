"""A backend process for the fault tests: run as a script so a test can SIGKILL or SIGSTOP it.

Modes: `ok` answers 200 with its name; `fast503` answers 503 to everything (health checks too)
at once, the fast-failure trap; `midbody` promises 1000 bytes and closes the connection after
10 (its health check passes, so only the request path can notice); `garbage` answers anything
with bytes that are not HTTP. Every mode but `garbage` counts the requests it received and
reports the count at `/_hits` (not counted), so a test can tell where the traffic went. The
port is printed as `PORT n` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from aiohttp import web

HITS_PATH = "/_hits"


class Counter:
    def __init__(self, name: str, mode: str) -> None:
        self.name = name
        self.mode = mode
        self.hits = 0

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path == HITS_PATH:
            return web.Response(text=json.dumps({"hits": self.hits}))
        if self.mode == "fast503":
            self.hits += request.path != "/health"
            return web.Response(status=503, text="fast failure")
        await request.read()
        if request.path == "/health":
            return web.Response(text="ok")
        self.hits += 1
        if self.mode == "midbody":
            response = web.StreamResponse(headers={"Content-Type": "text/plain"})
            response.content_length = 1000
            await response.prepare(request)
            await response.write(b"x" * 10)
            assert request.transport is not None
            request.transport.close()
            return response
        return web.Response(text=self.name, headers={"X-Backend": self.name})


class Garbage(asyncio.Protocol):
    """Answers whatever arrives with a few bytes that no HTTP parser accepts, then closes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert isinstance(self.transport, asyncio.Transport)
        self.transport.write(b"\x00\x01 this is not HTTP \xff\r\n\r\n")
        self.transport.close()


async def main(port: int, mode: str, name: str) -> None:
    loop = asyncio.get_running_loop()
    if mode == "garbage":
        server = await loop.create_server(Garbage, "127.0.0.1", port)
    else:
        handler = web.Server(Counter(name, mode).handle, access_log=None)
        server = await loop.create_server(handler, "127.0.0.1", port)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--mode", choices=("ok", "fast503", "midbody", "garbage"), default="ok")
    parser.add_argument("--name", default="b")
    args = parser.parse_args()
    asyncio.run(main(args.port, args.mode, args.name))
