"""Reload latency as a lean client sees it: an event sent to a hibernated handler, timed to the
first new event on its SSE stream. One thread and raw sockets (no HTTP library, no reader
thread), so that the figure is the server's and the loopback's, not the client's: the httpx and
thread-per-stream client measured p99 16-17 ms where the wire showed 6-8 ms (bench/reload_wire.py).

Loopback use only; every wait is bounded.
"""

from __future__ import annotations

import json
import select
import socket
import time
from urllib.parse import urlsplit


def _connect(url: str) -> tuple[socket.socket, str]:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock, f"{parts.hostname}:{parts.port or 80}"


def _head_end(buffer: bytes) -> int:
    end = buffer.find(b"\r\n\r\n")
    return -1 if end < 0 else end + 4


class Sender:
    """One kept-alive connection for POSTs (no connect in the figure)."""

    def __init__(self, url: str):
        self.sock, self.host = _connect(url)
        self.buffer = b""

    def send(self, path: str, value: dict) -> None:
        body = json.dumps(value).encode()
        self.sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body)

    def feed(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the POST connection")
        self.buffer += data

    def response(self) -> int | None:
        """The status of a complete response in the buffer (consumed), or None if incomplete."""
        end = _head_end(self.buffer)
        if end < 0:
            return None
        head = self.buffer[:end].decode("latin-1")
        status = int(head.split(" ", 2)[1])
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
            if name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
                close = self.buffer.find(b"\r\n0\r\n\r\n", end - 2)
                if close < 0:
                    return None
                self.buffer = self.buffer[close + 7:]
                return status
        if len(self.buffer) < end + length:
            return None
        self.buffer = self.buffer[end + length:]
        return status

    def close(self) -> None:
        self.sock.close()


def event_to_first_stream_event(url: str, handler: str, event: dict, sender: Sender,
                                timeout: float = 30.0) -> dict:
    """Opens the handler's SSE stream after 'now', waits for its response head (the server has
    fixed the stream's cursor), sends the event, and answers the seconds from the send to the
    first `data:` frame (None if none came within `timeout`) and the POST's status."""
    stream, host = _connect(url)
    try:
        stream.sendall(f"GET /events/{handler}?after_sequence=now HTTP/1.1\r\nHost: {host}\r\n"
                       "Accept: text/event-stream\r\n\r\n".encode())
        deadline = time.monotonic() + timeout
        buffer = b""
        while _head_end(buffer) < 0:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([stream], [], [], left)[0]:
                raise TimeoutError(f"no response head for the stream of {handler}")
            data = stream.recv(65536)
            if not data:
                raise ConnectionError(f"the stream of {handler} closed before its head")
            buffer += data
        status = int(buffer.split(b" ", 2)[1])
        if status != 200:
            raise RuntimeError(f"the stream of {handler} answered {status}")
        body = buffer[_head_end(buffer):]
        sent = time.monotonic()
        sender.send(f"/events/{handler}", {"event": event})
        first = None
        post_status = None
        deadline = sent + timeout
        while first is None or post_status is None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            readable = select.select([stream, sender.sock], [], [], left)[0]
            if stream in readable and first is None:
                data = stream.recv(65536)
                now = time.monotonic()
                if not data:
                    break
                body += data
                if b"data:" in body:
                    first = now - sent
            if sender.sock in readable:
                sender.feed()
                post_status = sender.response() if post_status is None else post_status
        while post_status is None and time.monotonic() < deadline:  # leave the connection reusable
            if select.select([sender.sock], [], [], deadline - time.monotonic())[0]:
                sender.feed()
                post_status = sender.response()
        return {"seconds": first, "post_status": post_status}
    finally:
        stream.close()
