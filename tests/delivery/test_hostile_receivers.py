"""Hostile receivers: answers that are almost HTTP/1.1, played by a scripted server.

Every answer here comes from :mod:`hostile_server` on 127.0.0.1: mutations of a
valid answer (unicode digits, overflowing and negative sizes, bad chunk grammar,
bare LF, NUL and control bytes, giant heads, trickled bytes, early close, 1xx
floods, both framing headers). Whatever the receiver does:

- an attempt ends within the timeout plus a small margin, with a recorded
  outcome (a status, ``protocol_error``, ``timeout``, ``connect_error``), never
  an exception other than a :class:`~webhook_plugin.exceptions.TransportError`
  out of the client, and never a dead engine;
- another agent's deliveries keep flowing meanwhile, and afterwards;
- the process's memory stays bounded.

Fuzzed at two levels: the client alone (fast, more examples) and the engine (a
hostile and a healthy agent on one engine, fewer examples). The named cases
below are regression tests, each on its own. Run this module alone with
``-m fuzz``.
"""

from __future__ import annotations

import gc
import itertools
import os
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from helpers import config
from hostile_server import Close, Hold, HostileServer, Reset, Sleep, Step, trickle
from receiver import Receiver
from webhook_plugin import DeliveryEngine, WebhookEventType, WebhookSettings
from webhook_plugin.delivery.client import Http11Client, Response
from webhook_plugin.delivery.netguard import NetworkGuard
from webhook_plugin.exceptions import TransportError
from webhook_plugin.storage.base import AttemptRecord, DeliveryRecord, Store

pytestmark = [pytest.mark.fuzz, pytest.mark.anyio]

StoreFactory = Callable[[], Store]

#: the attempt timeout of every test here
TIMEOUT = 1.0
#: how much later than its timeout an attempt may end
MARGIN = 0.5
#: "well before the timeout": answers a client can judge from their bytes
QUICK = 0.5

BODY = b'{"eventType":"AGENT_USER_MESSAGE"}'
EVENT = WebhookEventType.AGENT_USER_MESSAGE
HOSTILE, HEALTHY = "hostile", "healthy"

#: what the scripted server answers to every request after the first (the
#: desync check: a later request on the same server must get exactly this)
FINE = b"HTTP/1.1 299 Fine\r\nContent-Length: 4\r\n\r\nnext"

OK200 = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

# -- outcomes ---------------------------------------------------------------------------------


def outcome_of_response(r: Response) -> str:
    return "succeeded" if 200 <= r.status_code < 300 else f"http_{r.status_code}"


def outcome_of_attempt(a: AttemptRecord) -> str:
    if a.error is None:
        return "succeeded"
    return a.error.split(":", 1)[0]


@dataclass
class ClientRun:
    outcome: str
    seconds: float
    response: Response | None = None
    error: TransportError | None = None


def new_client() -> Http11Client:
    return Http11Client(NetworkGuard(("127.0.0.1",)), user_agent="t")


async def post(
    client: Http11Client, url: str, *, timeout: float = TIMEOUT, max_body: int = 1024
) -> ClientRun:
    """One POST: its outcome and how long it took. Anything but a Response or a
    TransportError fails the test (with the original traceback chained)."""
    started = time.monotonic()
    result: ClientRun | None = None
    with anyio.move_on_after(timeout + MARGIN + 5):
        try:
            r = await client.post(
                url,
                [("content-type", "application/json")],
                BODY,
                timeout=timeout,
                max_body=max_body,
            )
        except TransportError as exc:
            # without its traceback: a traceback holds this frame, which holds
            # the result, which would hold the exception (a cycle only the
            # cyclic GC frees, which the memory test would count)
            result = ClientRun(exc.code, time.monotonic() - started, error=exc.with_traceback(None))
        except Exception as exc:
            raise AssertionError(
                f"post raised {type(exc).__name__}: {exc!r}, not a TransportError"
            ) from exc
        else:
            result = ClientRun(outcome_of_response(r), time.monotonic() - started, response=r)
    if result is None:
        raise AssertionError(
            f"post did not end within {timeout + MARGIN + 5:g} s (timeout {timeout:g} s)"
        )
    return result


# -- the named cases --------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    steps: tuple[Step, ...]
    #: the outcomes allowed
    allowed: frozenset[str]
    #: the attempt must end within this many seconds
    within: float = TIMEOUT + MARGIN
    #: and not before this many (a timeout must not come early)
    at_least: float = 0.0
    #: the body a success must carry
    body: bytes | None = None
    read_request: bool = True


def case(
    id: str,
    steps: Sequence[Step] | bytes,
    allowed: str | set[str],
    **kw: object,
) -> Case:
    steps = (steps,) if isinstance(steps, bytes) else tuple(steps)
    allowed = {allowed} if isinstance(allowed, str) else allowed
    return Case(id, steps, frozenset(allowed), **kw)  # type: ignore[arg-type]


def chunked(size_line: bytes, rest: bytes = b"ok\r\n0\r\n\r\n") -> bytes:
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size_line + b"\r\n" + rest


def with_header(line: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\n" + line + b"\r\nContent-Length: 2\r\n\r\nok"


def status_line(line: bytes) -> bytes:
    return line + b"\r\nContent-Length: 2\r\n\r\nok"


FAILED_OR_SUCCEEDED = {"succeeded", "protocol_error"}
BROKEN = {"protocol_error", "connect_error"}
FLOOD = b"HTTP/1.1 100 Continue\r\n\r\n" * 5000
TRICKLED = b"HTTP/1.1 200 OK\r\nContent-Length: 60\r\n\r\n" + b"x" * 60  # 98 bytes: ~5 s

HEADLINE = b"HTTP/1.1 503 X\r\nRetry-After: \xb2\r\nContent-Length: 0\r\n\r\n"

CASES = [
    # answers (then kept alive: the server waits for the next request, so only
    # the bytes can tell the client the answer is over or broken)
    case("retry-after-superscript-two", HEADLINE, "http_503", within=QUICK),
    case(
        "content-length-superscript-two",
        b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\nok",
        "protocol_error",
        within=QUICK,
    ),
    case(
        "content-length-fullwidth-digit",
        b"HTTP/1.1 200 OK\r\nContent-Length: \xef\xbc\x92\r\n\r\nok",
        "protocol_error",
        within=QUICK,
    ),
    case(
        "content-length-negative",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok",
        "protocol_error",
        within=QUICK,
    ),
    case(
        "content-length-overflowing",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nok",
        "protocol_error",
    ),
    case(
        "bare-lf-line-endings",
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
        FAILED_OR_SUCCEEDED,
        within=QUICK,
        body=b"ok",
    ),
    case(
        "obs-fold-header",
        with_header(b"X-A: 1\r\n  continued"),
        "succeeded",
        within=QUICK,
        body=b"ok",
    ),
    case("chunk-size-0x2", chunked(b"0x2"), "protocol_error"),
    case("chunk-size-plus-2", chunked(b"+2"), "protocol_error"),
    case("chunk-size-0_2", chunked(b"0_2"), "protocol_error"),
    case("chunk-size-minus-0", chunked(b"2", b"ok\r\n-0\r\n\r\n"), "protocol_error"),
    case("chunk-size-overflowing", chunked(b"FFFFFFFFFFFFFFFFFFFF"), "protocol_error"),
    case("chunk-size-superscript-two", chunked(b"\xb2"), "protocol_error"),
    case(
        "both-framing-headers",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",
        FAILED_OR_SUCCEEDED,
        within=QUICK,
        body=b"ok",
    ),
    case(
        "both-framing-headers-length-first",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",
        FAILED_OR_SUCCEEDED,
        within=QUICK,
        body=b"ok",
    ),
    case("1xx-flood-then-nothing", [FLOOD, Hold()], {"timeout", "protocol_error"}),
    case("1xx-flood-then-200", FLOOD + OK200, FAILED_OR_SUCCEEDED, within=QUICK, body=b"ok"),
    case("1xx-flood-then-close", [FLOOD, Close()], BROKEN, within=QUICK),
    case(
        "giant-head-one-header",
        with_header(b"X-Big: " + b"a" * 150_000),
        FAILED_OR_SUCCEEDED,
        within=QUICK,
        body=b"ok",
    ),
    case(
        "giant-head-many-headers",
        with_header(b"\r\n".join(b"X-H%d: v" % i for i in range(12_000))),
        FAILED_OR_SUCCEEDED,
        within=QUICK,
        body=b"ok",
    ),
    case(
        "endless-head",
        [b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (8 << 20), Hold()],
        "protocol_error",
        within=QUICK,
    ),
    case(
        "nul-in-header-value",
        with_header(b"X-A: a\x00b"),
        FAILED_OR_SUCCEEDED,
        within=QUICK,
        body=b"ok",
    ),
    case(
        "control-bytes-in-header-value",
        with_header(b"X-A: \x01\x08\x0b\x0c\x1b\x7f"),
        FAILED_OR_SUCCEEDED,
        within=QUICK,
        body=b"ok",
    ),
    case(
        "bare-cr-in-header-value",
        with_header(b"X-A: a\rb"),
        FAILED_OR_SUCCEEDED,
        within=QUICK,
        body=b"ok",
    ),
    case("nul-in-header-name", with_header(b"X\x00A: 1"), "protocol_error", within=QUICK),
    case(
        "nul-in-status-line",
        status_line(b"HTTP/1.1 200 O\x00K"),
        FAILED_OR_SUCCEEDED,
        within=QUICK,
        body=b"ok",
    ),
    case(
        "status-fullwidth-digits",
        status_line("HTTP/1.1 ２００ OK".encode()),
        "protocol_error",
        within=QUICK,
    ),
    case(
        "status-arabic-indic-digits",
        status_line("HTTP/1.1 ٢٠٠ OK".encode()),
        "protocol_error",
        within=QUICK,
    ),
    case(
        "status-superscript-digit",
        status_line(b"HTTP/1.1 2\xb20 OK"),
        "protocol_error",
        within=QUICK,
    ),
    # timing
    case("trickled-bytes", trickle(TRICKLED, 0.05), "timeout", at_least=TIMEOUT - 0.05),
    case("never-answers", [Hold()], "timeout", at_least=TIMEOUT - 0.05),
    case("never-reads", [Hold()], "timeout", at_least=TIMEOUT - 0.05, read_request=False),
    # early close
    case("early-close-mid-head", [b"HTTP/1.1 200 OK\r\nContent-Le", Close()], BROKEN, within=QUICK),
    case(
        "early-close-mid-body",
        [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", Close()],
        BROKEN,
        within=QUICK,
    ),
    case("early-close-mid-chunk", [chunked(b"5", b"sh"), Close()], BROKEN, within=QUICK),
    case(
        "reset-mid-body",
        [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", Sleep(0.02), Reset()],
        BROKEN,
        within=QUICK,
    ),
    case("closes-without-answering", [Close()], BROKEN, within=QUICK),
]
CASE_IDS = [c.id for c in CASES]
assert len(set(CASE_IDS)) == len(CASE_IDS)
NAMED = {c.id: c for c in CASES}


def check_case(c: Case, outcome: str, seconds: float, body: bytes | None) -> None:
    assert outcome in c.allowed, (
        f"{c.id}: outcome {outcome!r}, expected one of {sorted(c.allowed)} ({seconds:.2f} s)"
    )
    assert seconds <= c.within, (
        f"{c.id}: took {seconds:.2f} s, more than {c.within:g} s ({outcome})"
    )
    assert seconds >= c.at_least, (
        f"{c.id}: ended after {seconds:.2f} s, before {c.at_least:g} s ({outcome})"
    )
    if outcome == "succeeded" and c.body is not None and body is not None:
        assert body == c.body, f"{c.id}: succeeded with body {body[:40]!r}"


def then_fine(steps: Sequence[Step]) -> Callable[[int, bytes], Sequence[Step]]:
    """The first request gets ``steps``, every later one the FINE answer."""
    return lambda n, raw: steps if n == 0 else (FINE,)


async def check_no_desync(client: Http11Client, url: str) -> None:
    """A later request to the same server gets exactly the FINE answer, or fails;
    never leftovers of the hostile answer read as its answer."""
    later = await post(client, url)
    assert later.seconds <= TIMEOUT + MARGIN, f"the next request took {later.seconds:.2f} s"
    if later.response is not None:
        r = later.response
        assert (r.status_code, r.body) == (299, b"next"), (
            f"desync: the next request got {r.status_code} {r.body[:60]!r}"
        )


# -- named cases, client level ----------------------------------------------------------------


@pytest.mark.parametrize("c", CASES, ids=CASE_IDS)
async def test_named_case_client(c: Case) -> None:
    client = new_client()
    try:
        with HostileServer(then_fine(c.steps), read_request=c.read_request) as server:
            run = await post(client, server.url)
            check_case(c, run.outcome, run.seconds, run.response and run.response.body)
            if c.read_request:
                await check_no_desync(client, server.url)
    finally:
        await client.aclose()


async def test_both_framing_headers_never_smuggle_an_answer() -> None:
    """Chunked says the answer ends at ``0``; Content-Length says it goes on. A
    second answer the server slips in after it must never be taken for the
    answer to the next request on that connection (RFC 9112 6.3: such a message
    "ought to be handled as an error")."""
    smuggled = b"HTTP/1.1 222 Smuggled\r\nContent-Length: 8\r\n\r\nsmuggled"
    first = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: %d\r\n\r\n0\r\n\r\n"
        % (5 + len(smuggled))
    )
    client = new_client()
    try:
        with HostileServer(then_fine([first, Sleep(0.05), smuggled])) as server:
            run = await post(client, server.url)
            assert run.outcome in FAILED_OR_SUCCEEDED and run.seconds <= QUICK
            await anyio.sleep(0.2)  # the smuggled answer is there before the next request
            await check_no_desync(client, server.url)
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "line",
    [b"X-A: a\x00b", b"Retry-After: 1\x002", b"X-A: a\rb", b"X-A: 1\r\n  continued\rx"],
    ids=["nul", "nul-in-retry-after", "bare-cr", "cr-in-a-fold"],
)
async def test_header_values_never_keep_cr_lf_or_nul(line: bytes) -> None:
    """RFC 9110 5.5: a recipient of CR, LF or NUL in a field value MUST either
    reject the message or replace each of them with SP before going on."""
    client = new_client()
    try:
        with HostileServer([with_header(line)]) as server:
            run = await post(client, server.url)
    finally:
        await client.aclose()
    assert run.outcome in FAILED_OR_SUCCEEDED and run.seconds <= QUICK, run
    if run.response is not None:
        for name, value in run.response.headers.items():
            assert not set(value) & set("\r\n\x00"), f"{name}: {value!r} kept CR, LF or NUL"


# -- named cases, engine level ----------------------------------------------------------------


@dataclass
class EngineRun:
    outcome: str
    delivery: DeliveryRecord
    attempt: AttemptRecord
    #: seconds from enqueueing to the attempt being recorded
    recorded_after: float
    healthy: list[AttemptRecord] = field(default_factory=list)


async def _delivery(
    engine: DeliveryEngine, agent_id: str, webhook_id: str
) -> DeliveryRecord | None:
    for d in await engine.list_deliveries(agent_id=agent_id, limit=1000):
        if d.webhook_id == webhook_id:
            return d
    return None


async def _wait_attempted(engine: DeliveryEngine, agent_id: str, webhook_id: str) -> DeliveryRecord:
    while True:
        d = await _delivery(engine, agent_id, webhook_id)
        if d is not None and d.attempts >= 1:
            return d
        await anyio.sleep(0.02)


async def _wait_succeeded(engine: DeliveryEngine, webhook_ids: set[str]) -> list[DeliveryRecord]:
    while True:
        rows = [
            d
            for d in await engine.list_deliveries(agent_id=HEALTHY, status="succeeded", limit=1000)
            if d.webhook_id in webhook_ids
        ]
        if len(rows) == len(webhook_ids):
            return rows
        await anyio.sleep(0.02)


async def engine_attempt(
    make_store: StoreFactory,
    receiver: Receiver,
    steps: Sequence[Step],
    *,
    read_request: bool = True,
    timeout: float = TIMEOUT,
) -> EngineRun:
    """A hostile and a healthy agent on one engine: the hostile delivery's one
    attempt, and the healthy deliveries queued with it (and after it)."""
    cfg = config(timeout=timeout, retry_schedule=(0, 3600), shutdown_grace=0.5)
    with HostileServer(steps, read_request=read_request) as server:
        async with DeliveryEngine(make_store(), cfg) as engine:
            await engine.save_settings(HOSTILE, WebhookSettings.validated(url=server.url))
            await engine.save_settings(HEALTHY, WebhookSettings.validated(url=receiver.url))
            hostile = engine.enqueue(HOSTILE, EVENT, BODY)
            healthy = [engine.enqueue(HEALTHY, EVENT, BODY) for _ in range(3)]
            for ticket in (hostile, *healthy):
                await ticket
            queued = time.monotonic()
            with anyio.fail_after(timeout + 10):
                record = await _wait_attempted(engine, HOSTILE, hostile.webhook_id)
            recorded_after = time.monotonic() - queued
            # the healthy agent's deliveries went out meanwhile ...
            with anyio.fail_after(10):
                done = await _wait_succeeded(engine, {t.webhook_id for t in healthy})
            # ... and go on going out afterwards: the engine is alive
            later = engine.enqueue(HEALTHY, EVENT, BODY)
            await later
            with anyio.fail_after(10):
                await _wait_succeeded(engine, {later.webhook_id})
            attempts = await engine.list_attempts(record.id)
            healthy_attempts = [(await engine.list_attempts(d.id))[-1] for d in done]
    assert record.attempts == 1 and len(attempts) == 1, f"{record}, {attempts}"
    [attempt] = attempts
    if record.status != "succeeded":
        # a 410 disables the endpoint: its delivery is held
        assert record.status in ("pending", "failed", "held")
        assert record.last_error == attempt.error
    assert outcome_of_attempt(attempt) != "internal_error", f"a bug escaped the client: {attempt}"
    assert recorded_after <= timeout + MARGIN + 3.0, f"recorded only after {recorded_after:.2f} s"
    hostile_end = attempt.started_at + attempt.duration_ms / 1000
    if attempt.duration_ms >= 500:
        # a hostile attempt that took long did not hold the healthy agent up
        for h in healthy_attempts:
            assert h.started_at + h.duration_ms / 1000 <= hostile_end, (
                f"the healthy agent waited for the hostile one: {h} vs {attempt}"
            )
    return EngineRun(outcome_of_attempt(attempt), record, attempt, recorded_after, healthy_attempts)


@pytest.mark.parametrize("make_store", ["sqlite"], indirect=True)
@pytest.mark.parametrize("c", CASES, ids=CASE_IDS)
async def test_named_case_engine(c: Case, make_store: StoreFactory, receiver: Receiver) -> None:
    run = await engine_attempt(make_store, receiver, c.steps, read_request=c.read_request)
    body = run.attempt.response_excerpt.encode() if run.attempt.response_excerpt else b""
    check_case(c, run.outcome, run.attempt.duration_ms / 1000, body)


async def test_retry_after_superscript_two_costs_one_attempt_and_nothing_else(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    """The headline case: ``Retry-After: \\xb2`` on a 503 (``"²".isdigit()`` is
    True, ``float("²")`` raises) is one failed attempt, retried on the schedule;
    the engine goes on, and another agent's delivery succeeds afterwards."""
    run = await engine_attempt(make_store, receiver, [HEADLINE])
    assert run.outcome == "http_503"
    assert run.attempt.status_code == 503 and run.attempt.error == "http_503"
    assert run.delivery.status == "pending" and run.delivery.attempts == 1
    assert run.delivery.next_attempt_at is not None  # the schedule's next slot: an hour away
    assert run.delivery.next_attempt_at - run.attempt.started_at > 3000


async def test_an_answer_body_with_nul_is_recorded_on_both_stores(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    """Found by the fuzz suite on PostgreSQL: text columns refuse NUL, so one
    receiver answering a NUL byte failed the write of its result and of every
    result recorded in the same batch. The excerpt keeps U+FFFD in its place."""
    run = await engine_attempt(
        make_store, receiver, [b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\na\x00b"]
    )
    assert run.outcome == "succeeded" and run.delivery.status == "succeeded"
    assert run.attempt.response_excerpt == "a\ufffdb"
    assert run.healthy and all(h.status_code == 200 for h in run.healthy)


# -- fuzz: generated hostile answers ----------------------------------------------------------

UNICODE_DIGITS = [
    "²".encode("latin-1"),  # b"\xb2": str.isdigit() says yes, int() says no
    "³".encode("latin-1"),
    "¹".encode("latin-1"),
    "²".encode(),
    "٣".encode(),  # Arabic-Indic three
    "５".encode(),  # fullwidth five
    "߃".encode(),  # NKo three
    "𝟗".encode(),  # mathematical bold nine
    "৪".encode(),  # Bengali four
]
CONTROL_BYTES = [
    b"\x00",
    b"\x01",
    b"\x08",
    b"\x0b",
    b"\x0c",
    b"\r",
    b"\n",
    b"\x1b",
    b"\x7f",
    b"\x80",
    b"\xff",
]
BAD_SIZES = [
    b"-1",
    b"-0",
    b"+2",
    b"0x2",
    b"0_2",
    b" 2",
    b"2 ",
    b"2,2",
    b"2, 3",
    b"1e3",
    b"",
    b"g",
    b"FFFFFFFFFFFFFFFFFFFF",
    b"99999999999999999999999",
    b"18446744073709551616",
    b"9223372036854775808",
    b"1" * 200,
    b"\xb2",
    b"2\x00",
]
BAD_CODES = [
    b"2000",
    b"20",
    b"099",
    b"000",
    b"600",
    b"999",
    b"-20",
    b"2 0",
    b"0x1",
    b"abc",
    b"",
    b"20\xb2",
]
BAD_VERSIONS = [
    b"HTTP/1.2",
    b"HTTP/2",
    b"http/1.1",
    b"HTTP/1.1 ",
    b"ICY",
    b"HTTP/01.1",
    b"HTTP/1",
    b"HTTP/1.1\x00",
]
BAD_ENCODINGS = [
    b"chunked, chunked",
    b"gzip, chunked",
    b"chunked, gzip",
    b"identity",
    b"Chunked",
    b" chunked ",
    b"chunked\x00",
    b"xchunked",
    b"chunked;q=1",
    b"",
    b",chunked",
    b"chunked,",
]
BAD_RETRY_AFTER = [
    b"\xb2",
    b"\xb9\xb3",
    b"-1",
    b"1e9",
    b"99999999999999999999999999999",
    b"1" * 5000,
    b"Wed, 99 Foo 2026 99:99:99 GMT",
    b"",
    b"\xd9\xa3",
    b"1.5",
    b"\x00",
    b"Thu, 01 Jan 1970 00:00:00 GMT",
    b"Fri, 31 Dec 9999 23:59:59 GMT",
]
INFORMATIONAL = [
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 102 Processing\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\nhello",  # a 1xx has no body
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
]


@dataclass
class Parts:
    """A valid answer, in pieces that mutations change."""

    version: bytes
    code: bytes
    reason: bytes | None
    headers: list[list[bytes]]  # [name, separator, value]
    framing: str  # length | chunked | close | none
    body: bytes
    chunks: list[list[bytes]]  # [size, extension, data, terminator]
    last_chunk: bytes | None = b"0"
    trailers: list[bytes] = field(default_factory=list)
    prefix: bytes = b""
    eol: bytes = b"\r\n"

    def header(self, name: bytes) -> list[bytes] | None:
        for h in self.headers:
            if h[0].lower() == name.lower():
                return h
        return None

    def wire(self) -> bytes:
        eol = self.eol
        line = (
            self.version + b" " + self.code + (b"" if self.reason is None else b" " + self.reason)
        )
        head = line + eol + b"".join(n + s + v + eol for n, s, v in self.headers) + eol
        if self.framing == "chunked":
            body = b"".join(size + ext + eol + data + term for size, ext, data, term in self.chunks)
            if self.last_chunk is not None:
                body += self.last_chunk + eol + b"".join(t + eol for t in self.trailers) + eol
        elif self.framing in ("length", "close"):
            body = self.body
        else:
            body = b""
        return self.prefix + head + body


@dataclass(frozen=True)
class Hostile:
    """A generated answer: the script, and what a correct client makes of it when
    nothing was mutated (``expect``)."""

    steps: tuple[Step, ...]
    mutations: tuple[str, ...]
    ending: str
    expect: tuple[int, bytes] | None

    def __repr__(self) -> str:
        sent = b"".join(s for s in self.steps if isinstance(s, bytes))
        preview = (
            sent if len(sent) <= 300 else sent[:200] + b"...(%d bytes)..." % len(sent) + sent[-60:]
        )
        pieces = sum(isinstance(s, bytes) for s in self.steps)
        return (
            f"Hostile(mutations={self.mutations}, ending={self.ending!r}, pieces={pieces}, "
            f"expect={self.expect!r}, wire={preview!r})"
        )


def hostile_from(c: Case) -> Hostile:
    return Hostile(c.steps, (c.id,), "named", None)


def _unicode_digit(draw: st.DrawFn, text: bytes) -> bytes:
    positions = [i for i, b in enumerate(text) if 0x30 <= b <= 0x39]
    if not positions:
        return text + draw(st.sampled_from(UNICODE_DIGITS))
    i = draw(st.sampled_from(positions))
    return text[:i] + draw(st.sampled_from(UNICODE_DIGITS)) + text[i + 1 :]


def _insert(draw: st.DrawFn, text: bytes, what: bytes) -> bytes:
    i = draw(st.integers(0, len(text)))
    return text[:i] + what + text[i:]


def _mutate(draw: st.DrawFn, p: Parts, name: str) -> None:
    length = p.header(b"Content-Length")
    if name == "unicode-digit-status":
        p.code = _unicode_digit(draw, p.code)
    elif name == "bad-status-code":
        p.code = draw(st.sampled_from(BAD_CODES))
    elif name == "bad-version":
        p.version = draw(st.sampled_from(BAD_VERSIONS))
    elif name == "odd-reason":
        p.reason = draw(
            st.sampled_from([None, b"", "Ünïcödé ✓".encode(), b"\xe9t\xe9", b"O\x00K", b"a" * 5000])
        )
    elif name == "unicode-digit-length":
        if length is None:
            p.headers.append(length := [b"Content-Length", b": ", b"2"])
        length[2] = _unicode_digit(draw, length[2])
    elif name == "bad-length":
        if length is None:
            p.headers.append(length := [b"Content-Length", b": ", b"2"])
        length[2] = draw(
            st.sampled_from(BAD_SIZES)
            | st.integers(0, 10_000).map(lambda n: str(n).encode())
            | st.integers(2**63 - 2, 2**70).map(lambda n: str(n).encode())
        )
    elif name == "duplicate-length":
        value = draw(st.sampled_from([length[2] if length else b"2", b"0", b"3", b"-1"]))
        p.headers.insert(draw(st.integers(0, len(p.headers))), [b"Content-Length", b": ", value])
    elif name in ("unicode-digit-chunk", "bad-chunk-size"):
        if p.framing != "chunked" or not p.chunks:
            p.last_chunk = draw(st.sampled_from([*BAD_SIZES, b"-0", b"00", b"0x0"]))
        else:
            chunk = draw(st.sampled_from(p.chunks))
            if name == "unicode-digit-chunk":
                chunk[0] = _unicode_digit(draw, chunk[0])
            else:
                chunk[0] = draw(
                    st.sampled_from([*BAD_SIZES, b"%x" % len(chunk[2]) + b";" + b"x" * 3000])
                )
    elif name == "chunk-data-mismatch":
        if p.chunks:
            chunk = draw(st.sampled_from(p.chunks))
            chunk[2] = draw(st.sampled_from([chunk[2] + b"extra", chunk[2][:-1], b""]))
    elif name == "chunk-ext-bws":
        if p.chunks:
            chunk = draw(st.sampled_from(p.chunks))
            chunk[1] = draw(st.sampled_from([b" ;x=1", b"; x=1", b";x = 1", b"\t;x", b';x="a b"']))
    elif name == "chunk-terminator":
        if p.chunks:
            chunk = draw(st.sampled_from(p.chunks))
            chunk[3] = draw(st.sampled_from([b"", b"\n", b"\r", b"XX", b"\r\n\r\n"]))
    elif name == "no-last-chunk":
        p.last_chunk = None  # the chunked body never ends
    elif name == "bad-trailers":
        p.trailers = draw(
            st.sampled_from(
                [[b"X-T: 1"], [b"no colon"], [b"X-T: \x00"], [b"a" * 100_000], [b" folded"]]
            )
        )
    elif name == "both-framing":
        if p.framing == "chunked":
            value = draw(st.sampled_from([b"0", b"2", b"%d" % len(p.body), b"100000"]))
            p.headers.insert(
                draw(st.integers(0, len(p.headers))), [b"Content-Length", b": ", value]
            )
        else:
            p.headers.insert(
                draw(st.integers(0, len(p.headers))), [b"Transfer-Encoding", b": ", b"chunked"]
            )
    elif name == "bad-transfer-encoding":
        te = p.header(b"Transfer-Encoding")
        if te is None:
            p.headers.append(te := [b"Transfer-Encoding", b": ", b"chunked"])
        te[2] = draw(st.sampled_from(BAD_ENCODINGS))
    elif name == "control-in-value":
        h = draw(st.sampled_from(p.headers)) if p.headers else None
        if h is None:
            p.headers.append(h := [b"X-A", b": ", b"v"])
        h[2] = _insert(draw, h[2], draw(st.sampled_from(CONTROL_BYTES)))
    elif name == "control-in-name":
        h = draw(st.sampled_from(p.headers)) if p.headers else None
        if h is None:
            p.headers.append(h := [b"X-A", b": ", b"v"])
        h[0] = _insert(
            draw, h[0], draw(st.sampled_from([*CONTROL_BYTES, b" ", b"\t", b"(", b"\xb2"]))
        )
    elif name == "odd-header-line":
        p.headers.insert(
            draw(st.integers(0, len(p.headers))),
            draw(
                st.sampled_from(
                    [
                        [b"X-A", b" : ", b"1"],  # space before the colon
                        [b"X-A", b" ", b"1"],  # no colon
                        [b"", b": ", b"1"],  # no name
                        [b"X-A", b":", b""],  # no value
                        [b"X-A", b": ", b"1\r\n  folded"],  # obs-fold
                        [b"X-A", b": ", b"1\r\n\tfolded"],
                        [b" X-A", b": ", b"1"],  # leading space: a fold of the line before
                    ]
                )
            ),
        )
    elif name == "retry-after":
        p.headers.append([b"Retry-After", b": ", draw(st.sampled_from(BAD_RETRY_AFTER))])
        p.code = draw(st.sampled_from([p.code, b"429", b"503"]))
    elif name == "giant-head":
        if draw(st.booleans()):
            p.headers.append([b"X-Big", b": ", b"a" * draw(st.integers(60_000, 200_000))])
        else:
            p.headers += [
                [b"X-H%d" % i, b": ", b"v"] for i in range(draw(st.integers(5_000, 15_000)))
            ]
    elif name == "informational":
        p.prefix = b"".join(draw(st.lists(st.sampled_from(INFORMATIONAL), min_size=1, max_size=5)))
    elif name == "informational-flood":
        p.prefix = INFORMATIONAL[0] * draw(st.integers(1_000, 6_000))
    elif name == "bare-lf":
        p.eol = b"\n"
    elif name == "bare-cr":
        p.eol = b"\r"
    else:  # pragma: no cover
        raise AssertionError(name)


STRUCTURAL = [
    "unicode-digit-status",
    "bad-status-code",
    "bad-version",
    "odd-reason",
    "unicode-digit-length",
    "bad-length",
    "duplicate-length",
    "unicode-digit-chunk",
    "bad-chunk-size",
    "chunk-data-mismatch",
    "chunk-terminator",
    "no-last-chunk",
    "bad-trailers",
    "both-framing",
    "bad-transfer-encoding",
    "control-in-value",
    "control-in-name",
    "odd-header-line",
    "retry-after",
    "giant-head",
    "informational",
    "informational-flood",
    "bare-lf",
    "bare-cr",
]
BYTEWISE = ["mixed-lf", "inject-byte", "truncate", "duplicate-answer"]

STATUSES = [200, 201, 202, 204, 299, 301, 302, 400, 404, 408, 410, 429, 500, 502, 503]
HEADERS = [
    [b"Content-Type", b": ", b"application/json"],
    [b"Server", b": ", b"hostile/1.0"],
    [b"Connection", b": ", b"keep-alive"],
    [b"Connection", b": ", b"close"],
    [b"Retry-After", b": ", b"1"],
    [b"X-Request-Id", b": ", b"4bf92f3577b34da6"],
    [b"Date", b": ", b"Tue, 01 Dec 2026 12:00:00 GMT"],
]


@st.composite
def hostile_answers(draw: st.DrawFn, *, max_delay: float = 0.04) -> Hostile:
    status = draw(st.sampled_from(STATUSES))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    body = draw(st.binary(max_size=64))
    framing = "none" if status == 204 else draw(st.sampled_from(["length", "chunked", "close"]))
    headers = [list(h) for h in draw(st.lists(st.sampled_from(HEADERS), max_size=3))]
    chunks: list[list[bytes]] = []
    if framing == "length":
        headers.append([b"Content-Length", b": ", str(len(body)).encode()])
    elif framing == "chunked":
        headers.append([b"Transfer-Encoding", b": ", b"chunked"])
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
        edges = [0, *cuts, len(body)]
        for a, b in itertools.pairwise(edges):
            if b > a:
                # what a sender may send: no whitespace around ";" and "=" (BWS is
                # for recipients to tolerate, see the "chunk-ext-bws" mutation)
                ext = draw(st.sampled_from([b"", b"", b";x=1", b';name="v"', b";x"]))
                size = b"%x" % (b - a)
                size = size.upper() if draw(st.booleans()) else size
                chunks.append([size, ext, body[a:b], b"\r\n"])
    if framing == "none":
        body = b""
    reason = draw(st.sampled_from([b"OK", b"Whatever", b"", None]))
    p = Parts(version, str(status).encode(), reason, headers, framing, body, chunks)
    mutations = tuple(
        draw(st.lists(st.sampled_from(STRUCTURAL + BYTEWISE), max_size=3, unique=True))
    )
    for name in mutations:
        if name in STRUCTURAL:
            _mutate(draw, p, name)
    wire = p.wire()
    for name in mutations:
        if name == "mixed-lf":
            count = wire.count(b"\r\n")
            if count:
                k = draw(st.integers(1, count))
                wire = wire.replace(b"\r\n", b"\n", k)
        elif name == "inject-byte":
            wire = _insert(draw, wire, draw(st.sampled_from([*CONTROL_BYTES, b" ", b"\t", b":"])))
        elif name == "truncate":
            wire = wire[: draw(st.integers(0, max(0, len(wire) - 1)))]
        elif name == "duplicate-answer":
            wire = wire + wire  # a second answer nobody asked for
    # how it is sent: in pieces, with small delays, then how the connection ends
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(wire) - 1)), max_size=5))))
    pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=False) if b > a]
    delay = draw(st.sampled_from([0.0, 0.0, 0.005, 0.02, max_delay]))
    steps: list[Step] = []
    for i, piece in enumerate(pieces):
        if i and delay:
            steps.append(Sleep(delay))
        steps.append(piece)
    ending = draw(st.sampled_from(["keep-alive", "close", "reset"]))
    if ending == "close":
        steps.append(Close())
    elif ending == "reset":
        steps.append(Reset())
    expect = None
    if not mutations and ending != "reset" and (framing != "close" or ending == "close"):
        expect = (status, body)
    return Hostile(tuple(steps), mutations, ending, expect)


FUZZ = settings(
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
    derandomize=False,
    database=None,
    print_blob=True,
)


@settings(FUZZ, max_examples=60)
@given(answer=hostile_answers())
@example(answer=hostile_from(NAMED["retry-after-superscript-two"]))
@example(answer=hostile_from(NAMED["content-length-superscript-two"]))
@example(answer=hostile_from(NAMED["chunk-size-overflowing"]))
@example(answer=hostile_from(NAMED["both-framing-headers"]))
@example(answer=hostile_from(NAMED["bare-lf-line-endings"]))
@example(answer=hostile_from(NAMED["1xx-flood-then-200"]))
@example(answer=hostile_from(NAMED["giant-head-one-header"]))
async def test_fuzz_client_answers_or_raises_transport_error_in_time(answer: Hostile) -> None:
    client = new_client()
    try:
        with HostileServer(then_fine(answer.steps)) as server:
            run = await post(client, server.url)
            assert run.seconds <= TIMEOUT + MARGIN, f"took {run.seconds:.2f} s: {run.outcome}"
            if run.response is not None:
                assert 200 <= run.response.status_code <= 999, run.response
            if answer.expect is not None:
                assert run.response is not None, f"a valid answer failed: {run.error!r}"
                assert (run.response.status_code, run.response.body) == answer.expect
            await check_no_desync(client, server.url)
    finally:
        await client.aclose()


@settings(FUZZ, max_examples=8)
@given(answer=hostile_answers(max_delay=0.02))
@example(answer=hostile_from(NAMED["retry-after-superscript-two"]))
async def test_fuzz_engine_records_every_hostile_attempt_and_keeps_delivering(
    answer: Hostile, make_store: StoreFactory, receiver: Receiver
) -> None:
    run = await engine_attempt(make_store, receiver, answer.steps)
    assert run.attempt.duration_ms <= (TIMEOUT + MARGIN) * 1000, run.attempt
    if answer.expect is not None:
        status, _ = answer.expect
        assert run.attempt.status_code == status, run.attempt
        assert (run.outcome == "succeeded") == (200 <= status < 300), run.attempt


# -- memory ----------------------------------------------------------------------------------


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


MEMORY_ANSWERS: list[tuple[Step, ...]] = [
    (with_header(b"X-Big: " + b"a" * 150_000), Close()),
    (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (4 << 20), Close()),  # a head that never ends
    (FLOOD + OK200,),
    (FLOOD, Close()),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1_000_000,),
    (chunked(b"FFFFFFF", b"x" * 500_000), Close()),
    (with_header(b"\r\n".join(b"X-H%d: v" % i for i in range(12_000))),),
]


async def test_memory_and_sockets_stay_bounded_under_hostile_answers() -> None:
    """200 hostile answers in a row (giant and endless heads, 1xx floods, bodies
    far larger than kept): the Python heap never holds more than a few MB at
    once, nothing is left behind, and no socket leaks.

    tracemalloc, not RSS: the allocator keeps what the process used before this
    test, so RSS depends on the tests that ran first. The peak counts garbage
    that only the cyclic GC frees: until a collection runs, it is memory held.
    """
    client = new_client()
    outcomes: dict[str, int] = {}
    try:
        with HostileServer(lambda n, raw: MEMORY_ANSWERS[n % len(MEMORY_ANSWERS)]) as server:
            for _ in range(2 * len(MEMORY_ANSWERS)):  # warm up: buffers, pools, caches
                await post(client, server.url)
            gc.collect()
            fds = _fds()
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                for _ in range(200):
                    run = await post(client, server.url)
                    assert run.seconds <= TIMEOUT + MARGIN, run
                    outcomes[run.outcome] = outcomes.get(run.outcome, 0) + 1
                peak = tracemalloc.get_traced_memory()[1] - before
                gc.collect()
                kept = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            opened = _fds() - fds
    finally:
        await client.aclose()
    assert peak < 10 << 20, (
        f"the Python heap grew by up to {peak / 2**20:.1f} MB over 200 hostile answers"
        f" ({outcomes}); {kept / 2**20:.2f} MB of it survived a full collection"
    )
    assert kept < 1 << 20, f"{kept / 2**20:.2f} MB kept after 200 hostile answers"
    assert opened <= 4, f"{opened} file descriptors more after 200 hostile answers"
