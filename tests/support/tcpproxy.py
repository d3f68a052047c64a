"""A loopback TCP proxy the tests control, to inject network faults the way production has them.

A test points one client (a kubeconfig, a store URL) at the proxy and switches its mode while the
client works:

``pass``
    forward both directions.
``blackhole``
    forward nothing and answer nothing, on open and new connections: requests hang, exactly what a
    dead node, a dropped route or a security-group change looks like. Nothing is lost: the bytes
    are held (as TCP would keep retransmitting them) and delivered late if the mode changes back
    before the client gives up, so a late answer to a request sent before the cut is part of the
    test too.
``half_open``
    forward client to server only; answers are held.
``delay``
    forward both directions, each chunk after a delay.
``reset``
    abort every open connection and refuse new ones (accepted, then aborted at once): requests fail
    fast.
``stall``
    the connections open now go silent for good (a NAT or conntrack entry dropped: the peer never
    hears of it), while new connections pass: a client that keeps using an old connection (a
    watch, a pooled keep-alive) hangs on it.

The proxy runs its own event loop on a daemon thread, so it keeps working while the test's own
loop (or thread) is blocked, and its methods are plain synchronous calls usable from sync and async
tests alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

Mode = Literal["pass", "blackhole", "half_open", "delay", "reset", "stall"]
T = TypeVar("T")


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port`` under a chosen fault mode."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        # What new connections may do (client -> server, server -> client), and the
        # same switches of each open connection, which the modes flip.
        self._upstream = self._downstream = True
        self._flows: set[tuple[asyncio.Event, asyncio.Event]] = set()
        self._delay = 0.0
        self.mode: Mode = "pass"
        self.port = 0
        self.connections = 0  # connections accepted while not resetting

    # -- life cycle -------------------------------------------------------------------

    @classmethod
    def to(cls, server: str) -> TcpProxy:
        """A started proxy to the API server at ``server`` (``https://host:port``)."""
        host, port = server.removeprefix("https://").rsplit(":", 1)
        return cls(host, int(port)).start()

    @property
    def server(self) -> str:
        """The URL to give a client (a kubeconfig's ``server``) instead of the real one."""
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        """Start forwarding (idempotent: ``with TcpProxy.to(server) as proxy`` works too)."""
        if self._thread.is_alive():
            return self
        self._thread.start()
        self._call(self._start())
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        """Stop the proxy and abort every connection. Idempotent."""
        if not self._thread.is_alive():
            return
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _close(self) -> None:
        self._abort_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- modes ------------------------------------------------------------------------

    def pass_through(self) -> None:
        """Forward everything again; bytes held by a blackhole are delivered now."""
        self._set_mode("pass", upstream=True, downstream=True)

    def blackhole(self) -> None:
        """Forward nothing and answer nothing (requests hang); bytes are held, not dropped."""
        self._set_mode("blackhole", upstream=False, downstream=False)

    def half_open(self) -> None:
        """Forward client -> server only: requests arrive, answers never come back."""
        self._set_mode("half_open", upstream=True, downstream=False)

    def delay(self, seconds: float) -> None:
        """Forward both directions, each chunk ``seconds`` late."""
        self._delay = seconds
        self._set_mode("delay", upstream=True, downstream=True)

    def reset(self) -> None:
        """Abort every open connection and refuse new ones (requests fail fast)."""
        self._set_mode("reset", upstream=True, downstream=True)
        self._call(self._abort())

    def stall(self) -> None:
        """Silence the open connections for good; new connections pass."""

        def apply() -> None:
            for up, down in self._flows:
                up.clear()
                down.clear()
            self._flows.clear()  # never switched on again

        self._call(self._run_soon(apply))
        self._set_mode("stall", upstream=True, downstream=True)

    def _set_mode(self, mode: Mode, *, upstream: bool, downstream: bool) -> None:
        if mode != "delay":
            self._delay = 0.0

        def apply() -> None:
            self.mode = mode
            self._upstream, self._downstream = upstream, downstream
            for flow in self._flows:
                for event, flowing in zip(flow, (upstream, downstream), strict=True):
                    if flowing:
                        event.set()
                    else:
                        event.clear()

        self._call(self._run_soon(apply))

    # -- plumbing -----------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    @staticmethod
    async def _run_soon(fn: Any) -> None:
        fn()

    async def _abort(self) -> None:
        self._abort_all()

    def _abort_all(self) -> None:
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        flowing: asyncio.Event,
    ) -> None:
        try:
            while True:
                await flowing.wait()
                data = await reader.read(65536)
                if not data:
                    break
                await flowing.wait()  # cut after the read: hold the bytes
                if self._delay:
                    await asyncio.sleep(self._delay)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "reset":
            writer.transport.abort()
            return
        self.connections += 1
        self._transports.add(writer.transport)
        up_open, down_open = asyncio.Event(), asyncio.Event()
        if self._upstream:
            up_open.set()
        if self._downstream:
            down_open.set()
        flow = (up_open, down_open)
        self._flows.add(flow)
        try:
            # A blackhole also swallows connection attempts: connect upstream only once the
            # client's bytes may flow.
            await up_open.wait()
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except (OSError, asyncio.CancelledError):
            writer.transport.abort()
            self._transports.discard(writer.transport)
            self._flows.discard(flow)
            return
        if writer.transport not in self._transports:  # reset while connecting
            up_writer.transport.abort()
            return
        self._transports.add(up_writer.transport)
        tasks = [
            asyncio.ensure_future(self._pipe(reader, up_writer, up_open)),
            asyncio.ensure_future(self._pipe(up_reader, writer, down_open)),
        ]
        for t in tasks:
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._transports.discard(writer.transport)
        self._transports.discard(up_writer.transport)
        self._flows.discard(flow)
