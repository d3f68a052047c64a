"""The fault proxy itself does what each mode promises (against a loopback echo server)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.tcpproxy import TcpProxy


class Echo:
    """A loopback TCP server that echoes each chunk and records what it received."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                self.received.append(data)
                conn.sendall(data)


@pytest.fixture
def proxy() -> Iterator[tuple[TcpProxy, Echo]]:
    echo = Echo()
    with TcpProxy("127.0.0.1", echo.port) as p:
        yield p, echo
    echo.sock.close()


def _connect(p: TcpProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", p.port), timeout=5)


def _roundtrip(s: socket.socket, data: bytes, timeout: float) -> bytes:
    s.settimeout(timeout)
    s.sendall(data)
    return s.recv(65536)


def test_pass_forwards_both_ways(proxy: tuple[TcpProxy, Echo]) -> None:
    p, _ = proxy
    with _connect(p) as s:
        assert _roundtrip(s, b"hello", 5) == b"hello"


def test_blackhole_answers_nothing_then_delivers_late(proxy: tuple[TcpProxy, Echo]) -> None:
    p, echo = proxy
    with _connect(p) as s:
        assert _roundtrip(s, b"one", 5) == b"one"
        p.blackhole()
        with pytest.raises(TimeoutError):
            _roundtrip(s, b"two", 0.5)
        assert b"two" not in echo.received  # nothing was forwarded
        # A new connection hangs too (no upstream connection is made).
        with _connect(p) as s2:
            with pytest.raises(TimeoutError):
                _roundtrip(s2, b"three", 0.5)
            p.pass_through()
            s2.settimeout(5)
            assert s2.recv(65536) == b"three"  # held, not dropped
        s.settimeout(5)
        assert s.recv(65536) == b"two"


def test_half_open_forwards_requests_but_no_answers(proxy: tuple[TcpProxy, Echo]) -> None:
    p, echo = proxy
    with _connect(p) as s:
        assert _roundtrip(s, b"one", 5) == b"one"
        p.half_open()
        with pytest.raises(TimeoutError):
            _roundtrip(s, b"two", 0.5)
        assert b"two" in echo.received  # the server got the request


def test_reset_fails_fast_and_refuses_new_connections(proxy: tuple[TcpProxy, Echo]) -> None:
    p, _ = proxy
    with _connect(p) as s:
        assert _roundtrip(s, b"one", 5) == b"one"
        p.reset()
        with pytest.raises(ConnectionError):  # fails fast, not a TimeoutError
            _roundtrip(s, b"two", 5)
            _roundtrip(s, b"two", 5)  # the first send may still be buffered
    with _connect(p) as s2:
        try:
            got = _roundtrip(s2, b"x", 5)
        except ConnectionError:  # reset: no answer either way, and no hang
            got = b""
        assert got == b""
    p.pass_through()
    with _connect(p) as s3:
        assert _roundtrip(s3, b"back", 5) == b"back"


def test_delay_adds_latency(proxy: tuple[TcpProxy, Echo]) -> None:
    p, _ = proxy
    p.delay(0.3)
    with _connect(p) as s:
        start = time.monotonic()
        assert _roundtrip(s, b"slow", 5) == b"slow"
        assert time.monotonic() - start >= 0.3 * 2  # each direction waits


def test_stall_silences_open_connections_for_good_but_not_new_ones(
    proxy: tuple[TcpProxy, Echo],
) -> None:
    p, echo = proxy
    with _connect(p) as old:
        assert _roundtrip(old, b"one", 5) == b"one"
        p.stall()
        with pytest.raises(TimeoutError):
            _roundtrip(old, b"two", 0.5)
        with _connect(p) as new:
            assert _roundtrip(new, b"fresh", 5) == b"fresh"
        p.pass_through()  # the stalled connection stays silent
        with pytest.raises(TimeoutError):
            old.settimeout(0.5)
            old.recv(65536)
        assert b"two" not in echo.received
