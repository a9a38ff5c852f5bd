"""One request out, one answer in: the request writer and the llhttp-based answer
parser, pure; then scripted servers on 127.0.0.1 that answer with byte-exact
responses (chunked, close-delimited, 1xx, malformed, split)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from webhook_plugin.delivery.client import Http11Client
from webhook_plugin.delivery.http11 import AnswerParser, build_request, request_target
from webhook_plugin.delivery.netguard import NetworkGuard
from webhook_plugin.exceptions import ProtocolError, TransportError

# -- pure --------------------------------------------------------------------------------------


def test_request_bytes() -> None:
    raw = build_request(b"/hook?x=1", b"example.com", [("webhook-id", "msg_1")], b'{"a":1}')
    assert raw == (
        b"POST /hook?x=1 HTTP/1.1\r\nhost: example.com\r\nwebhook-id: msg_1\r\n"
        b'content-length: 7\r\n\r\n{"a":1}'
    )


@pytest.mark.parametrize(
    "header",
    [
        ("X-A", "b\r\nX-Injected: 1"),
        ("X-A", "b\nc"),
        ("X A", "b"),
        ("", "b"),
        ("X-A", "\x00"),
        ("X-Api-Key", "ключ"),
        ("X-Api-Key", "секрет-ключ"),
        ("Ключ", "v"),
    ],
)
def test_request_refuses_headers_that_would_break_it(header: tuple[str, str]) -> None:
    with pytest.raises(TransportError, match="cannot be sent") as caught:
        build_request(b"/", b"h", [header], b"")
    assert repr(header[1]) not in str(caught.value)  # never quoted
    assert "ключ" not in str(caught.value)


_TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


@given(
    name=st.text(st.characters(max_codepoint=0x17F), max_size=12)
    | st.text(st.sampled_from(_TCHAR), min_size=1, max_size=12),
    value=st.text(st.characters(max_codepoint=0x17F), max_size=40)
    | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
)
def test_a_header_is_sent_exactly_when_its_name_is_a_token_and_its_value_visible_ascii(
    name: str, value: str
) -> None:
    sendable = (
        name != ""
        and all(c in _TCHAR for c in name)
        and all(c == "\t" or 0x20 <= ord(c) < 0x7F for c in value)
    )
    try:
        raw = build_request(b"/", b"h", [(name, value)], b"")
    except TransportError:
        assert not sendable
    else:
        assert sendable
        assert f"\r\n{name}: {value}\r\n".encode() in raw


def test_request_target_is_percent_encoded() -> None:
    assert request_target("", "") == b"/"
    assert request_target("/a b/ç", "q=1 2&r=é") == b"/a%20b/%C3%A7?q=1%202&r=%C3%A9"
    assert request_target("/already%20done", "a=%2F") == b"/already%20done?a=%2F"


def parse(raw: bytes, *, max_body: int = 1024, bytewise: bool = False) -> AnswerParser:
    answer = AnswerParser(max_body)
    pieces = [raw[i : i + 1] for i in range(len(raw))] if bytewise else [raw]
    for piece in pieces:
        answer.feed(piece)
    if not answer.done:
        answer.feed_eof()
    return answer


@pytest.mark.parametrize("bytewise", [False, True])
def test_answers_and_their_framing(bytewise: bool) -> None:
    a = parse(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello",
        bytewise=bytewise,
    )
    assert (a.status, a.body, a.headers["x-a"], a.reusable) == (200, b"hello", "1, 2", True)
    chunked = parse(
        b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: x\r\n\r\n",
        bytewise=bytewise,
    )
    assert (chunked.status, chunked.body, chunked.reusable) == (500, b"Wikipedia", True)
    closing = parse(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert closing.done and not closing.reusable
    old = parse(b"HTTP/1.0 200 OK\r\n\r\nuntil the end", bytewise=bytewise)
    assert (old.body, old.reusable) == (b"until the end", False)
    assert parse(b"HTTP/1.1 204 No Content\r\n\r\n").status == 204
    assert parse(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n").status == 200  # no reason


def test_body_beyond_the_cap_is_counted_not_kept() -> None:
    a = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789", max_body=4)
    assert (a.body, a.size, a.truncated) == (b"0123", 10, True)


def test_bytes_after_the_answer_make_the_connection_unusable() -> None:
    a = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n")
    assert (a.status, a.body, a.extra, a.reusable) == (200, b"ok", True, False)


@pytest.mark.parametrize(
    "raw",
    [
        # a receiver that said 200 got the event: lenient where RFC 9112 allows it
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  folded\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
        b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["obs-fold", "bare-LF", "NUL-in-value"],
)
def test_lenient_heads_of_a_success_still_count(raw: bytes) -> None:
    assert (parse(raw).status, parse(raw).body) == (200, b"ok")


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/2 200 OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        "HTTP/1.1 ２００ OK\r\n\r\n".encode(),
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nContent-",
    ]
    + [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nok\r\n0\r\n\r\n"
        for size in (b"0x2", b"+2", b"0_2", b"-0", b"zz", b"FFFFFFFFFFFFFFFFFFFF", "²".encode())
    ],
)
def test_malformed_answers_are_protocol_errors(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse(raw)


def test_oversized_heads_and_1xx_floods_are_refused() -> None:
    with pytest.raises(ProtocolError, match="larger than"):
        parse(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000)
    with pytest.raises(ProtocolError, match="informational"):
        parse(b"HTTP/1.1 100 Continue\r\n\r\n" * 40)
    with pytest.raises(ProtocolError, match="larger than"):
        parse((b"HTTP/1.1 103 Early Hints\r\nLink: " + b"a" * 4000 + b"\r\n\r\n") * 20)


# -- against scripted servers ---------------------------------------------------------------


class Scripted:
    """Answers each connection's requests with the next scripted replies (lists of
    byte pieces, sent separately); closes the connection after ``close_after``."""

    def __init__(self, replies: list[list[bytes]], close: bool = False) -> None:
        self.replies = list(replies)
        self.close = close
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.replies:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            try:
                self._answer(conn)
            except OSError:
                pass  # the client hung up first, as it should on a broken answer
            finally:
                conn.close()

    def _answer(self, conn: socket.socket) -> None:
        while self.replies:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            if not data:
                break
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(body) < length:
                body += conn.recv(65536)
            for piece in self.replies.pop(0):
                conn.sendall(piece)
            if self.close:
                break

    def stop(self) -> None:
        self.sock.close()


@pytest.fixture
def scripted() -> Iterator[type[Scripted]]:
    servers: list[Scripted] = []

    class Tracked(Scripted):
        def __init__(self, *a, **kw) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*a, **kw)
            servers.append(self)

    yield Tracked
    for s in servers:
        s.stop()


def client() -> Http11Client:
    return Http11Client(NetworkGuard(["127.0.0.1"]), user_agent="t")


@pytest.mark.anyio
async def test_chunked_answer_split_across_packets_keeps_the_connection(
    scripted: type[Scripted],
) -> None:
    server = scripted(
        [
            [
                b"HTTP/1.1 200 OK\r\nTransfer-",
                b"Encoding: chunked\r\n\r\n3\r\nab",
                b"c\r\n0\r\n\r\n",
            ],
            [b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"],
        ]
    )
    c = client()
    try:
        first = await c.post(server.url, [], b"{}", timeout=5)
        second = await c.post(server.url, [], b"{}", timeout=5)
    finally:
        await c.aclose()
    assert (first.status_code, first.body) == (200, b"abc")
    assert (second.status_code, second.body) == (201, b"ok")
    assert server.connections == 1


@pytest.mark.anyio
async def test_informational_answers_are_skipped(scripted: type[Scripted]) -> None:
    server = scripted(
        [
            [
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n",
                b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",
            ]
        ]
    )
    c = client()
    try:
        r = await c.post(server.url, [], b"{}", timeout=5)
    finally:
        await c.aclose()
    assert r.status_code == 202


@pytest.mark.anyio
async def test_close_delimited_body_and_connection_close(scripted: type[Scripted]) -> None:
    server = scripted([[b"HTTP/1.0 500 Oops\r\n\r\nsomething broke"]], close=True)
    c = client()
    try:
        r = await c.post(server.url, [], b"{}", timeout=5)
    finally:
        await c.aclose()
    assert (r.status_code, r.body, r.truncated) == (500, b"something broke", False)


@pytest.mark.anyio
async def test_body_is_capped_and_the_connection_dropped(scripted: type[Scripted]) -> None:
    server = scripted(
        [
            [b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", b"x" * 100000],
            [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"],
        ]
    )
    c = client()
    try:
        r = await c.post(server.url, [], b"{}", timeout=5, max_body=10)
        assert (r.body, r.truncated) == (b"x" * 10, True)
        # the rest of that body was never read: the next request needs a new connection
        second = await c.post(server.url, [], b"{}", timeout=5)
    finally:
        await c.aclose()
    # the server serves one connection at a time: it accepted a second only once the
    # client had closed the first (recv answered b"" or the connection was reset)
    assert second.status_code == 200 and server.connections == 2


@pytest.mark.anyio
@pytest.mark.parametrize(
    "answer",
    [
        [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"],  # then closed
        [b"garbage\r\n\r\n"],
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
    ],
)
async def test_broken_answers_are_transport_errors(
    scripted: type[Scripted], answer: list[bytes]
) -> None:
    server = scripted([answer], close=True)
    c = client()
    try:
        with pytest.raises(TransportError):
            await c.post(server.url, [], b"{}", timeout=5)
    finally:
        await c.aclose()
