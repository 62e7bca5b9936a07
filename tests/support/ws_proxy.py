"""A loopback TCP proxy in front of a REAL ComfyUI that can cut its websocket connections on demand.

Used to test the engine's fallback to /history polling when the socket drops mid-job: everything
(HTTP and websocket bytes) is forwarded unchanged to the real server; `cut_websockets()` closes
every proxied connection that carried a websocket upgrade request (both directions, like a reset by a
load balancer), while plain HTTP keeps working.
"""

from __future__ import annotations

import asyncio
import contextlib


class WebsocketCuttingProxy:
    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port: int | None = None
        self.cuts = 0
        self._server: asyncio.base_events.Server | None = None
        self._ws_conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> "WebsocketCuttingProxy":
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        pair = (writer, up_writer)
        t1 = asyncio.create_task(self._pipe(reader, up_writer, pair))
        t2 = asyncio.create_task(self._pipe(up_reader, writer))
        self._tasks |= {t1, t2}
        await asyncio.gather(t1, t2, return_exceptions=True)
        self._tasks -= {t1, t2}
        self._ws_conns.discard(pair)
        for w in pair:
            with contextlib.suppress(Exception):
                w.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, pair=None) -> None:
        """`pair` is set for the client->server direction: a websocket upgrade request on this
        connection (possibly a reused keep-alive connection) marks it as a websocket."""
        try:
            while data := await src.read(65536):
                if pair is not None and pair not in self._ws_conns and b"upgrade: websocket" in data.lower():
                    self._ws_conns.add(pair)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                dst.close()

    def cut_websockets(self) -> int:
        """Abort every proxied websocket connection now; returns how many were cut."""
        cut = 0
        for pair in list(self._ws_conns):
            for w in pair:
                with contextlib.suppress(Exception):
                    w.transport.abort()
            self._ws_conns.discard(pair)
            cut += 1
        self.cuts += cut
        return cut

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pair in list(self._ws_conns):
            for w in pair:
                with contextlib.suppress(Exception):
                    w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
