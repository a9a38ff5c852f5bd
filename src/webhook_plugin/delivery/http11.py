"""One HTTP/1.1 request out, one answer in. Pure: no I/O.

The request is ours and small (always ``POST`` with a ``Content-Length``
body), so :func:`build_request` writes it. The answer is a stranger's, so it
is parsed by llhttp (the parser of Node.js and uvicorn, through
``httptools``): :class:`AnswerParser` is fed the bytes as they arrive, keeps
the status, the headers and the first ``max_body`` bytes of the body, and
turns every malformed answer into one :class:`~webhook_plugin.exceptions.ProtocolError`.
Bounds that llhttp leaves to its caller are kept here: the size of the heads
(1xx answers included) and the number of informational answers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final
from urllib.parse import quote

import httptools

from ..exceptions import ProtocolError, TransportError

__all__ = ["MAX_HEAD", "MAX_INFORMATIONAL", "AnswerParser", "build_request", "request_target"]

#: the most bytes of status lines and headers accepted, 1xx answers included
MAX_HEAD: Final = 64 * 1024
#: the most ``1xx`` answers accepted before the final one
MAX_INFORMATIONAL: Final = 32

_CRLF: Final = b"\r\n"
#: control characters a lenient read may leave in a header value, made spaces
_CONTROLS: Final = {c: " " for c in [*range(0x20), 0x7F] if c != 0x09}
#: a header name that is a token (RFC 9110), and a value with no control
#: character but tab: checked in C, once per header of every request
_HEADER_NAME: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-zA-Z]+")
_VALUE_CONTROL: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# what may stay as it is in a path or a query (RFC 3986 pchar, with '%' kept
# so that an escape already made is not escaped twice)
_PATH_SAFE: Final = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE: Final = _PATH_SAFE + "?"


def request_target(path: str, query: str) -> bytes:
    """The request target of a URL's path and query, percent-encoded where needed."""
    target = quote(path or "/", safe=_PATH_SAFE)
    if query:
        target += "?" + quote(query, safe=_QUERY_SAFE)
    return target.encode("ascii")


def build_request(
    target: bytes, host: bytes, headers: Sequence[tuple[str, str]], body: bytes
) -> bytes:
    """``POST target`` with ``headers`` and ``body``, ready for the wire.

    :raises TransportError: when a header cannot be sent (not a token name, or
        a value that is not visible ASCII). Settings are validated when saved;
        this is the last line of defence, and it never quotes the header.
    """
    lines = [b"POST " + target + b" HTTP/1.1", b"host: " + host]
    for index, (name, value) in enumerate(headers):
        try:
            raw_name, raw_value = name.encode("ascii"), value.encode("ascii")
        except UnicodeEncodeError:
            raw_name = raw_value = b"\x00"
        if _HEADER_NAME.fullmatch(raw_name) is None or _VALUE_CONTROL.search(raw_value):
            raise TransportError(
                f"request header #{index + 1} cannot be sent: its name must be a token and"
                " its value visible ASCII; save the agent's settings again"
            )
        lines.append(raw_name + b": " + raw_value)
    lines.append(b"content-length: " + str(len(body)).encode())
    return _CRLF.join(lines) + _CRLF + _CRLF + body


class _AfterAnswer(Exception):
    """More bytes followed the final answer (stops the parser)."""


class AnswerParser:
    """Parses one answer fed piece by piece (llhttp callbacks).

    After :meth:`feed` or :meth:`feed_eof`: :attr:`done` once the final
    (non-1xx) answer is complete; :attr:`status`, :attr:`headers` (lower-cased
    names, repeated ones joined with ``", "``) once its head is;
    :attr:`body` holds its first ``max_body`` bytes and :attr:`size` counts
    them all; :attr:`reusable` says whether the connection may carry another
    request.

    :param max_body: body bytes kept; the rest is counted, not kept.
    """

    __slots__ = (
        "_body",
        "_fields",
        "_head_bytes",
        "_in_head",
        "_informational",
        "_max_body",
        "_parser",
        "_status",
        "done",
        "extra",
        "headers",
        "keep_alive",
        "size",
        "status",
    )

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        # Framing stays strict (Content-Length digits, chunk grammar, both
        # framing headers at once): a body we cannot delimit is not an answer.
        # Header *values* and line endings are read leniently: a receiver that
        # answered "200" with a folded header (RFC 9112 5.2: a user agent
        # replaces obs-fold with SP), a stray control byte or bare LFs did get
        # the event, and refusing its answer would only deliver it twice. We
        # never forward these headers anywhere.
        self._parser.set_dangerous_leniencies(
            lenient_headers=True, lenient_optional_cr_before_lf=True
        )
        self._body = bytearray()
        self._fields: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._in_head = True
        self._informational = 0
        self._status = 0
        self.status = 0
        self.headers: dict[str, str] = {}
        self.size = 0
        self.done = False
        self.extra = False
        self.keep_alive = False

    @property
    def body(self) -> bytes:
        return bytes(self._body)

    @property
    def head_done(self) -> bool:
        """Whether the final answer's status and headers are in."""
        return self.status != 0

    @property
    def truncated(self) -> bool:
        return self.size > self._max_body

    @property
    def reusable(self) -> bool:
        return self.done and self.keep_alive and not self.extra

    def feed(self, data: bytes) -> None:
        """Parse received bytes.

        :raises ProtocolError: when the answer is not valid HTTP/1.x, or its
            heads are larger than :data:`MAX_HEAD`.
        """
        if self.done:
            self.extra = True
            return
        if self._in_head:
            self._head_bytes += len(data)
        parser = self._parser
        assert parser is not None, "fed after close()"
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _AfterAnswer):
                self.extra = True
                return
            if isinstance(exc.__context__, ProtocolError):
                raise exc.__context__ from None
            raise ProtocolError(f"invalid answer: {_reason(exc)}") from None
        except httptools.HttpParserUpgrade:
            raise ProtocolError("the answer switched protocols") from None
        except httptools.HttpParserError as exc:
            raise ProtocolError(f"invalid answer: {_reason(exc)}") from None
        if self._in_head and self._head_bytes > MAX_HEAD:
            raise ProtocolError(f"the answer's headers are larger than {MAX_HEAD} bytes")

    def close(self) -> None:
        """Let go of llhttp's parser: it holds our callbacks and we hold it, a
        cycle only the garbage collector would otherwise free (with every
        header of a hostile 64 KiB head in it)."""
        self._parser = None
        self._fields = []

    def feed_eof(self) -> None:
        """The connection ended: complete an answer whose body ends with it.

        :raises ProtocolError: when the answer is not complete.
        """
        if self.done:
            return
        if self.head_done and self._until_close():
            self.done = True
            self.keep_alive = False
            return
        where = "mid-body" if self.head_done else "mid-answer"
        raise ProtocolError(f"the server closed the connection {where}")

    def _until_close(self) -> bool:
        # no Content-Length and no chunked coding: the body ends with the connection
        return (
            "content-length" not in self.headers
            and "chunked" not in self.headers.get("transfer-encoding", "").lower()
        )

    # llhttp callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.done:
            raise _AfterAnswer
        self._fields = []
        self._in_head = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if status < 200:
            self._informational += 1
            if self._informational > MAX_INFORMATIONAL:
                raise ProtocolError(f"more than {MAX_INFORMATIONAL} informational answers")
            return
        headers: dict[str, str] = {}
        for raw_name, raw_value in self._fields:
            name = raw_name.decode("latin-1").lower()
            # RFC 9110 5.5: a recipient may replace CR, LF and NUL with SP
            value = raw_value.decode("latin-1").translate(_CONTROLS).strip(" \t")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self.headers = headers
        self.status = status
        self._in_head = False

    def on_body(self, body: bytes) -> None:
        if self.status:  # a 1xx answer has no body; llhttp never calls this for one
            self.size += len(body)
            room = self._max_body - len(self._body)
            if room > 0:
                self._body += body[:room]

    def on_message_complete(self) -> None:
        if self.status:
            assert self._parser is not None
            self.done = True
            self.keep_alive = self._parser.should_keep_alive()


def _reason(exc: Exception) -> str:
    """llhttp's reason, bounded (it never holds more than a short description)."""
    text = str(exc) or type(exc).__name__
    return text[:120]
