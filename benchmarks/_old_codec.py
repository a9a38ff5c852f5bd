"""The hand-written HTTP/1.1 codec the client used before llhttp (kept as a baseline
for benchmarks/bench_parser.py only; the package no longer uses it).

A small HTTP/1.1 codec for one client request and its answer. Pure: no I/O.

We only ever send ``POST`` with a ``Content-Length`` body and read the answer,
so the codec is small: serialise the request, parse the status line and
headers, then frame the body by ``Transfer-Encoding: chunked``,
``Content-Length``, or the end of the connection (RFC 9112, section 6.3).
Anything malformed raises :class:`~webhook_plugin.exceptions.ProtocolError`.
It measured 3 to 4 times faster than ``h11`` in a bare loop (see
``benchmarks/README.md``), which matters on the delivery path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple

from webhook_plugin.exceptions import ProtocolError

__all__ = ["MAX_HEAD", "ChunkedDecoder", "Head", "build_request", "parse_head"]

#: the largest status line and headers accepted
MAX_HEAD: Final = 64 * 1024

_CRLF: Final = b"\r\n"
_TOKEN: Final = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


class Head(NamedTuple):
    """A parsed status line and headers."""

    status: int
    headers: dict[str, str]
    #: ``chunked``, ``length``, ``none`` (no body) or ``close`` (read to the end)
    framing: str
    length: int
    keep_alive: bool


def build_request(
    target: bytes, host: bytes, headers: Sequence[tuple[str, str]], body: bytes
) -> bytes:
    """``POST target`` with ``headers`` and ``body``, ready for the wire.

    :raises ProtocolError: when a header would break the request (CR, LF or
        NUL in a name or value); settings are validated when saved, this is the
        last line of defence.
    """
    lines = [b"POST " + target + b" HTTP/1.1", b"host: " + host]
    for name, value in headers:
        raw_name, raw_value = name.encode("latin-1"), value.encode("latin-1")
        if (
            not raw_name
            or not _TOKEN.issuperset(raw_name)
            or any(c in raw_value for c in b"\r\n\x00")
        ):
            raise ProtocolError(f"header {name!r} cannot be sent")
        lines.append(raw_name + b": " + raw_value)
    lines.append(b"content-length: " + str(len(body)).encode())
    return _CRLF.join(lines) + _CRLF + _CRLF + body


def parse_head(buf: bytes | bytearray) -> tuple[Head, int] | None:
    """Parse a status line and headers from the start of ``buf``.

    :return: the head and the number of bytes it used, or ``None`` when more
        bytes are needed.
    :raises ProtocolError: on anything that is not a valid HTTP/1.x answer.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise ProtocolError(f"the answer's headers are larger than {MAX_HEAD} bytes")
        return None
    if end > MAX_HEAD:
        raise ProtocolError(f"the answer's headers are larger than {MAX_HEAD} bytes")
    lines = bytes(buf[:end]).split(_CRLF)
    status_line = lines[0]
    version, _, rest = status_line.partition(b" ")
    code = rest[:3]
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    if rest[3:4] not in (b"", b" "):
        raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    status = int(code)
    if status < 100:
        raise ProtocolError(f"invalid status code {status}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise ProtocolError("folded header lines are not accepted")
        name, sep, value = line.partition(b":")
        if not sep or not name or not _TOKEN.issuperset(name):
            raise ProtocolError(f"invalid header line {line[:80]!r}")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        if key in headers and key != "content-length":
            headers[key] = f"{headers[key]}, {text}"
        elif key == "content-length" and key in headers and headers[key] != text:
            raise ProtocolError("conflicting Content-Length headers")
        else:
            headers[key] = text
    connection = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep_alive = version == b"HTTP/1.1" and "close" not in connection
    if 100 <= status < 200 or status in (204, 304):
        return Head(status, headers, "none", 0, keep_alive), end + 4
    encoding = headers.get("transfer-encoding")
    if encoding is not None:
        codings = [t.strip().lower() for t in encoding.split(",")]
        if codings[-1] != "chunked":
            # no length we can trust: the body ends with the connection
            return Head(status, headers, "close", 0, False), end + 4
        return Head(status, headers, "chunked", 0, keep_alive), end + 4
    length_text = headers.get("content-length")
    if length_text is not None:
        if not length_text.isdigit():
            raise ProtocolError(f"invalid Content-Length {length_text[:20]!r}")
        return Head(status, headers, "length", int(length_text), keep_alive), end + 4
    return Head(status, headers, "close", 0, False), end + 4


class ChunkedDecoder:
    """Decodes a ``Transfer-Encoding: chunked`` body fed piece by piece."""

    __slots__ = ("_buf", "_left", "_state", "done")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._left = 0
        self._state = "size"  # size -> data -> data_end -> size ... -> trailers
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """Add received bytes; return the body bytes they complete."""
        self._buf += data
        out = bytearray()
        while not self.done:
            if self._state == "size":
                end = self._buf.find(_CRLF)
                if end < 0:
                    if len(self._buf) > 1024:
                        raise ProtocolError("chunk size line too long")
                    break
                size_text = bytes(self._buf[:end]).split(b";", 1)[0].strip()
                del self._buf[: end + 2]
                try:
                    self._left = int(size_text, 16)
                except ValueError:
                    raise ProtocolError(f"invalid chunk size {size_text[:20]!r}") from None
                if self._left < 0:
                    raise ProtocolError("invalid chunk size")
                self._state = "data" if self._left else "trailers"
            elif self._state == "data":
                if not self._buf:
                    break
                take = self._buf[: self._left]
                out += take
                del self._buf[: len(take)]
                self._left -= len(take)
                if not self._left:
                    self._state = "data_end"
            elif self._state == "data_end":
                if len(self._buf) < 2:
                    break
                if self._buf[:2] != _CRLF:
                    raise ProtocolError("chunk not followed by CRLF")
                del self._buf[:2]
                self._state = "size"
            else:  # trailers: lines until an empty one
                end = self._buf.find(_CRLF)
                if end < 0:
                    if len(self._buf) > MAX_HEAD:
                        raise ProtocolError("trailers too large")
                    break
                line = bytes(self._buf[:end])
                del self._buf[: end + 2]
                if not line:
                    self.done = True
        return bytes(out)

    @property
    def leftover(self) -> bytes:
        """Bytes received after the end of the body (a pipelining server's next answer)."""
        return bytes(self._buf)
