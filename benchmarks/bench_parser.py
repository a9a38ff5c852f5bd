"""Parsing receivers' answers: llhttp (httptools, what the client uses) against
the hand-written codec it replaced, in the same process and run.

    python benchmarks/bench_parser.py [--json] [--quick]

Each round parses typical webhook answers, whole and split in two reads:
``204`` with no body, ``200`` with a short JSON body, ``200`` chunked, and
``503`` with ``Retry-After``. The figure is nanoseconds per answer; the ratio
is against the old codec (``_old_codec.py``, the code as it was, kept only
here). End to end, the client's throughput is in ``bench_delivery.py``.
"""

from __future__ import annotations

from _harness import emit, environment, parser, per_op_ns
from _old_codec import ChunkedDecoder, parse_head
from webhook_plugin.delivery.http11 import AnswerParser

ANSWERS = [
    b"HTTP/1.1 204 No Content\r\nDate: Tue, 01 Dec 2026 12:00:00 GMT\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\n"
    b"Date: Tue, 01 Dec 2026 12:00:00 GMT\r\nServer: receiver\r\n\r\n"
    b'{"received":true}',
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
    b"2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 120\r\nContent-Length: 4\r\n\r\nbusy",
]


def with_llhttp(data: bytes, split: int | None) -> tuple[int, bytes]:
    answer = AnswerParser(512)
    for piece in (data,) if split is None else (data[:split], data[split:]):
        answer.feed(piece)
    if not answer.done:
        answer.feed_eof()
    answer.close()
    return answer.status, answer.body


def with_old_codec(data: bytes, split: int | None) -> tuple[int, bytes]:
    buf = bytearray()
    pieces = [data] if split is None else [data[:split], data[split:]]
    while True:
        parsed = parse_head(buf)
        if parsed is not None:
            break
        buf += pieces.pop(0)
    head, used = parsed
    rest = bytes(buf[used:]) + b"".join(pieces)
    if head.framing == "chunked":
        decoder = ChunkedDecoder()
        return head.status, decoder.feed(rest)
    if head.framing == "length":
        return head.status, rest[: head.length]
    return head.status, rest


def main() -> None:
    args = parser(__doc__).parse_args()
    rounds = 3 if args.quick else args.rounds
    min_time = 0.05 if args.quick else 0.2
    for data in ANSWERS:  # both read every answer the same way
        for split in (None, len(data) // 2):
            assert with_llhttp(data, split) == with_old_codec(data, split), data
    rows = []
    for split_name, split_of in (
        ("whole", lambda d: None),
        ("in two reads", lambda d: len(d) // 2),
    ):
        cases = [(d, split_of(d)) for d in ANSWERS]

        def old(cases=cases) -> None:
            for data, split in cases:
                with_old_codec(data, split)

        def new(cases=cases) -> None:
            for data, split in cases:
                with_llhttp(data, split)

        old_ns = per_op_ns(old, rounds=rounds, min_time=min_time) / len(cases)
        new_ns = per_op_ns(new, rounds=rounds, min_time=min_time) / len(cases)
        rows.append([f"old hand-written codec, {split_name}", f"{old_ns:,.0f}", "1.00"])
        rows.append(
            [f"llhttp (httptools), {split_name}", f"{new_ns:,.0f}", f"{new_ns / old_ns:.2f}"]
        )
    emit(
        args,
        f"bench_parser: {len(ANSWERS)} typical answers ({environment()}), median of {rounds} rounds",
        ["parser", "ns/answer", "time vs old codec"],
        rows,
    )


if __name__ == "__main__":
    main()
