"""A small HTTP fault proxy on loopback for tests: forwards every request to an upstream server (e.g. the moto S3
server, Label Studio) and, while told to, misbehaves on matching requests instead:

- ``status``: answers itself with an error (default S3's ``503 SlowDown``; any status, body and headers such as
  ``Retry-After``), without forwarding;
- ``reset``: forwards, then sends the answer's status, headers and half its body and resets the connection (RST);
- ``stall``: forwards nothing and answers nothing for ``stall_s`` seconds (the client's read timeout fires), then
  closes;
- ``drop``: forwards (the server does the work, e.g. commits an import), then resets the connection without an
  answer: the response is lost after the server committed;
- ``hook``: calls ``action()`` (e.g. overwrite or delete the object on the real server), then forwards: a change
  that lands exactly between a listing and the download.

It sits between maskloop and a real server, so the code under test meets real failures on a real socket. Requests
are matched by method (``"*"``: any) and a substring of the path with its query (the S3 key, ``list-type=2`` for
listings, ``/import`` for Label Studio imports), so a listing still passes while one object's GET fails. A fault
lasts until healed, for ``times`` matching requests, or until a deadline (:meth:`Fault.for_seconds`). The upstream
may be changed while running (a server restarted on another port).
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
SLOW_DOWN = (
    503,
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>",
)
INTERNAL_ERROR = (
    500,
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message></Error>",
)

FaultKind = Literal["status", "reset", "stall", "drop", "hook"]


@dataclass
class Fault:
    """Misbehave (``kind``) on ``method`` requests whose path contains ``path_part``: ``times`` of them (None: until
    healed), only before ``until`` (``time.monotonic()``; None: no deadline) and only within ``lasts_s`` of the first
    request it hit (a burst that starts when the traffic does)."""

    method: str
    path_part: str
    status: int = SLOW_DOWN[0]
    body: bytes = SLOW_DOWN[1]
    hits: int = 0
    kind: FaultKind = "status"
    times: int | None = None
    until: float | None = None
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/xml"
    stall_s: float = 30.0
    action: Callable[[], None] | None = None
    lasts_s: float | None = None
    first_hit_at: float | None = None

    @classmethod
    def for_seconds(cls, seconds: float, method: str, path_part: str, **options: object) -> Fault:
        """A burst: the fault lasts ``seconds`` from the first request it hits."""
        return cls(method, path_part, lasts_s=seconds, **options)  # type: ignore[arg-type]

    def matches(self, method: str, path: str, now: float) -> bool:
        if self.method not in ("*", method) or self.path_part not in path:
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        if self.lasts_s is not None and self.first_hit_at is not None and now >= self.first_hit_at + self.lasts_s:
            return False
        return self.until is None or now < self.until


@dataclass
class FaultProxy:
    upstream: str
    faults: list[Fault] = field(default_factory=list)
    forwarded: int = 0
    faulted: int = 0
    last_fault_at: float | None = None  # time.monotonic() of the last faulted request
    first_ok_after_fault: float | None = None  # the first request forwarded and answered < 500 after a fault
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _healed: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        assert self._server is not None, "the proxy is not running"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def fault_for(self, method: str, path: str) -> Fault | None:
        now = time.monotonic()
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path, now):
                    fault.hits += 1
                    fault.first_hit_at = fault.first_hit_at or now
                    self.faulted += 1
                    self.last_fault_at = now
                    self.first_ok_after_fault = None
                    return fault
            self.forwarded += 1
            return None

    def answered(self, status: int) -> None:
        """Called after a forwarded request was answered: records when the server answered well after a fault."""
        with self._lock:
            if status < 500 and self.last_fault_at is not None and self.first_ok_after_fault is None:
                self.first_ok_after_fault = time.monotonic()

    @property
    def recovery_s(self) -> float | None:
        """Seconds from the last faulted request to the first good answer after it (None: none yet)."""
        if self.last_fault_at is None or self.first_ok_after_fault is None:
            return None
        return self.first_ok_after_fault - self.last_fault_at

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._healed.clear()
            self.faults.append(fault)
        return fault

    def heal(self) -> None:
        with self._lock:
            self.faults.clear()
            self._healed.set()


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        return  # resets and stalls are on purpose; their broken sockets are not news


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            fault = proxy.fault_for(self.command, self.path)
            if fault is not None and fault.kind == "status":
                self._reply(fault.status, [("Content-Type", fault.content_type), *fault.headers], fault.body)
                return
            if fault is not None and fault.kind == "stall":
                proxy._healed.wait(fault.stall_s)
                self._reset()
                return
            if fault is not None and fault.kind == "hook" and fault.action is not None:
                fault.action()
                fault = None  # then an ordinary request
            answer = self._forward(body)
            if answer is None:
                self._reset()
                return
            status, headers, data = answer
            if fault is None:
                proxy.answered(status)
                self._reply(status, headers, data)
            elif fault.kind == "drop":  # the server did the work; its answer never arrives
                self._reset()
            else:  # reset mid-body
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: max(1, len(data) // 2)])
                self.wfile.flush()
                self._reset()

        def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes] | None:
            target = urlsplit(proxy.upstream)
            conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port or 80, timeout=120)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                except OSError:  # the upstream is down (restarting): the client's connection is reset, as if direct
                    return None
                kept = [(k, v) for k, v in answer.getheaders() if k.lower() not in _HOP_BY_HOP | {"content-length"}]
                return answer.status, kept, data
            finally:
                conn.close()

        def _reset(self) -> None:
            """Close the client's connection with a TCP RST (SO_LINGER 0), mid-answer or before any."""
            self.close_connection = True
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.rfile.close()
                self.connection.close()
            except OSError:
                pass

        def _reply(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _serve

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            return

    return Handler


@contextmanager
def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    """A running :class:`FaultProxy` in front of ``upstream`` (``http://host:port``) on 127.0.0.1."""
    proxy = FaultProxy(upstream)
    server = _QuietServer(("127.0.0.1", 0), _handler(proxy))
    proxy._server = server
    thread = threading.Thread(target=server.serve_forever, name="fault-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy._healed.set()
        server.shutdown()
        server.server_close()
        thread.join(10)
