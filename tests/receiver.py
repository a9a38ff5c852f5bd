"""A real HTTP receiver on 127.0.0.1 for tests: a stdlib threaded server.

It runs in its own threads, so it serves tests on asyncio and trio alike.
Each request is recorded; ``behaviour`` decides the answer (status, headers,
body, a delay, or a connection reset).
"""

from __future__ import annotations

import http.server
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    #: what the receiver answered (0: no answer, the connection was reset)
    status: int = 0


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0
    reset: bool = False


class Receiver:
    """Start with ``with Receiver() as rx:``; ``rx.url`` is its base URL."""

    def __init__(
        self,
        behaviour: Callable[[Recorded], Reply] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.behaviour = behaviour or (lambda r: Reply())
        self.requests: list[Recorded] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def setup(self) -> None:
                with receiver._lock:
                    receiver.connections += 1
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length)
                rec = Recorded(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time()
                )
                reply = receiver.behaviour(rec)
                rec.status = 0 if reply.reset else reply.status
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.reset:
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.connection.close()
                    self.close_connection = True
                    with receiver._arrived:
                        receiver.requests.append(rec)
                        receiver._arrived.notify_all()
                    return
                # recorded before answering: once a client has its answer, the
                # test sees the request
                with receiver._arrived:
                    receiver.requests.append(rec)
                    receiver._arrived.notify_all()
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client that vanished (the crash test kills one) is not news

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{self.port}"
        if ssl_context is not None:
            # the handshake happens in the handler's thread, not in accept(),
            # so a client that gives up mid-handshake cannot block the server
            self._server.socket = ssl_context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for_ids(self, count: int, timeout: float = 10.0) -> list[Recorded]:
        """Block (in a thread) until ``count`` webhook-ids were answered 2xx."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                done = {r.headers.get("webhook-id") for r in self.requests if 200 <= r.status < 300}
                if len(done) >= count:
                    return list(self.requests)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {count} webhooks delivered, got {len(done)}")
                self._arrived.wait(left)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Recorded]:
        """Block (in a thread) until ``count`` requests arrived."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {count} requests, got {len(self.requests)}")
                self._arrived.wait(left)
            return list(self.requests)
