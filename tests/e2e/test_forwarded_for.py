"""X-Forwarded-For from a trusted proxy: every header line counts, in order (raw HTTP)."""

from __future__ import annotations

import socket
from collections.abc import Callable

from tests.support.servers import AppServer

BODY = b'{"message": "[[fake tokens=2]] hi"}'


def post_with_forwarded_lines(server: AppServer, *lines: str) -> int:
    """POST /api/chat with one `X-Forwarded-For` header line per item; the status code.

    Raw bytes, because HTTP clients fold repeated headers into one line, and a
    proxy that appends its own line is exactly what must be read right.
    """
    head = [
        "POST /api/chat HTTP/1.1",
        f"Host: 127.0.0.1:{server.port}",
        "Content-Type: application/json",
        f"Content-Length: {len(BODY)}",
        "Connection: close",
        *(f"X-Forwarded-For: {line}" for line in lines),
    ]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + BODY
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def test_a_client_line_cannot_hide_the_line_its_proxy_appended(
    make_server: Callable[..., AppServer],
) -> None:
    server = make_server(rate_limit="2/minute", trusted_proxies=["127.0.0.0/8"])
    # The client sends its own line with a made-up address each time; the
    # trusted proxy appends a separate line with the real one (203.0.113.7).
    codes = [post_with_forwarded_lines(server, f"198.51.100.{n}", "203.0.113.7") for n in range(3)]
    assert codes == [200, 200, 429]


def test_the_lines_are_one_chain_read_from_the_nearest_hop(
    make_server: Callable[..., AppServer],
) -> None:
    server = make_server(rate_limit="1/minute", trusted_proxies=["127.0.0.0/8", "10.0.0.0/8"])
    # client 203.0.113.8 → proxy 10.0.0.5 (trusted) → peer 127.0.0.1 (trusted), one line per hop.
    assert post_with_forwarded_lines(server, "203.0.113.8", "10.0.0.5") == 200
    # The same client through the same proxies, its hops split differently: the same bucket.
    assert post_with_forwarded_lines(server, "203.0.113.8, 10.0.0.5") == 429
    # Another client is another bucket.
    assert post_with_forwarded_lines(server, "203.0.113.9", "10.0.0.5") == 200
