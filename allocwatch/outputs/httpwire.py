# SPDX-License-Identifier: Apache-2.0
"""What the metrics endpoint reads and writes: a request read line by line as
its bytes come (nothing kept of a header line once it has ended), checked
against the limits, and the whole answer to it. No sockets, no clock:
outputs/endpoint.py does the I/O and the deadline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from allocwatch.outputs.exposition import CONTENT_TYPE

MAX_REQUEST_LINE = 8192  # bytes, of the request line and of each header line
MAX_HEADERS = 100

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 5\r\n"
        b"Connection: close\r\nRetry-After: 1\r\n\r\nbusy\n")


class Renders(Protocol):
    def render(self) -> bytes: ...


def answer(request: Sequence[str], registry: Renders) -> bytes:
    """The whole response to a request line already checked (method, target, version)."""
    method, target = request[0], request[1]
    head = method == "HEAD"
    if method not in ("GET", "HEAD"):
        return response(405, b"GET only\n", allow=True)
    path = target.split("?", 1)[0]
    if path == "/metrics":
        return response(200, registry.render(), CONTENT_TYPE, head=head)
    if path == "/":
        return response(200, b"allocwatch: metrics at /metrics\n", head=head)
    return response(404, b"not found\n", head=head)


def response(code: int, body: bytes, ctype: str = "text/plain; charset=utf-8", head: bool = False,
             allow: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {code} {_REASONS[code]}", f"Content-Type: {ctype}", f"Content-Length: {len(body)}",
             "Connection: close", *(["Allow: GET, HEAD"] if allow else [])]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head else body)


class Request:
    """One request as its bytes come: the request line, then header lines up to the empty one."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.line: list[str] | None = None  # method, target, version, once in
        self.headers = 0

    def feed(self, data: bytes, registry: Renders) -> bytes | None:
        """The answer, once the request is whole (or bad); None while it is not."""
        self.buf += data
        while True:
            end = self.buf.find(b"\n", 0, MAX_REQUEST_LINE)
            if end < 0:
                if len(self.buf) < MAX_REQUEST_LINE:
                    return None  # the line is not in yet
                return response(400, b"bad request line\n") if self.line is None \
                    else response(431, b"header line too long\n")
            line = bytes(self.buf[: end + 1])
            del self.buf[: end + 1]
            if self.line is None:
                parts = line.decode("latin-1").split()
                if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                    return response(400, b"bad request line\n")
                self.line = parts
            elif line in (b"\r\n", b"\n"):
                return answer(self.line, registry)
            else:
                self.headers += 1
                if self.headers >= MAX_HEADERS:
                    return response(431, b"too many header lines\n")
