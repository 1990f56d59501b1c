"""The fault proxy itself (tests/fixtures/tcp_proxy.py): what it forwards when no fault is set."""

from __future__ import annotations

import socket

from tests.fixtures.tcp_proxy import FaultProxy


def test_a_connection_redis_closes_is_closed_to_the_client(redis_url: str) -> None:
    # Given: a client connected to Redis through the proxy
    proxy = FaultProxy(redis_url).start()
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            # When: Redis closes the connection (QUIT: it answers, then closes; a Redis that stops
            # or dies closes its connections too)
            sock.sendall(b"*1\r\n$4\r\nQUIT\r\n")
            received = b""
            while chunk := sock.recv(1024):  # a socket.timeout here: the close never came through
                received += chunk
            # Then: the client gets the reply, then the close, as it would with no proxy between
            assert received == b"+OK\r\n"
    finally:
        proxy.stop()
