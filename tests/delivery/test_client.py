"""The HTTP client on its own: TLS, keep-alive, stale connections (real servers on 127.0.0.1)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import anyio
import pytest
import trustme

from receiver import Receiver, Reply
from webhook_plugin.delivery.client import Http11Client
from webhook_plugin.delivery.netguard import NetworkGuard
from webhook_plugin.exceptions import ConnectError

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_receiver(ca: trustme.CA) -> Iterator[Receiver]:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
    with Receiver(lambda r: Reply(201, body=b'{"ok":true}'), ssl_context=server_ctx) as rx:
        yield rx


def client(ctx: ssl.SSLContext | None = None) -> Http11Client:
    return Http11Client(NetworkGuard(["127.0.0.1", "localhost"]), user_agent="t", ssl_context=ctx)


async def test_https_with_a_trusted_certificate(ca: trustme.CA, tls_receiver: Receiver) -> None:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    c = client(ctx)
    try:
        for host in ("127.0.0.1", "localhost"):
            r = await c.post(f"https://{host}:{tls_receiver.port}/hook", [], b"{}", timeout=5)
            assert (r.status_code, r.body) == (201, b'{"ok":true}')
    finally:
        await c.aclose()
    assert [x.path for x in tls_receiver.requests] == ["/hook", "/hook"]


async def test_https_refuses_an_untrusted_certificate(tls_receiver: Receiver) -> None:
    c = client()  # the system trust store does not know our test CA
    with pytest.raises(ConnectError, match="TLS"):
        await c.post(tls_receiver.url + "/hook", [], b"{}", timeout=5)
    assert tls_receiver.requests == []


async def test_https_checks_the_host_name(ca: trustme.CA) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("hooks.example.org").configure_cert(server_ctx)
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with Receiver(ssl_context=server_ctx) as rx:
        with pytest.raises(ConnectError, match="TLS"):
            await client(ctx).post(rx.url, [], b"{}", timeout=5)
        assert rx.requests == []


async def test_connections_are_kept_alive(receiver: Receiver) -> None:
    c = client()
    try:
        for _ in range(5):
            assert (await c.post(receiver.url, [], b"{}", timeout=5)).status_code == 200
    finally:
        await c.aclose()
    assert receiver.connections == 1


async def test_a_connection_the_server_closed_is_replaced(receiver: Receiver) -> None:
    answers = iter([Reply(200, headers={"Connection": "close"}), Reply(200)])
    receiver.behaviour = lambda r: next(answers)
    c = client()
    try:
        assert (await c.post(receiver.url, [], b"{}", timeout=5)).status_code == 200
        assert (await c.post(receiver.url, [], b"{}", timeout=5)).status_code == 200
    finally:
        await c.aclose()
    assert len(receiver.requests) == 2 and receiver.connections == 2


async def test_idle_connections_expire_and_are_capped(receiver: Receiver) -> None:
    c = Http11Client(NetworkGuard(["127.0.0.1"]), user_agent="t", keepalive_expiry=0.1, max_idle=1)
    try:
        await c.post(receiver.url, [], b"{}", timeout=5)
        await anyio.sleep(0.3)
        await c.post(receiver.url, [], b"{}", timeout=5)  # the expired one is swept...
        await c.post(receiver.url, [], b"{}", timeout=5)  # ...and this one reuses the second
    finally:
        await c.aclose()
    assert receiver.connections == 2


async def test_concurrent_requests_while_idle_connections_expire(receiver: Receiver) -> None:
    """Sweeping expired connections while other tasks take and return them is safe:
    no error, no connection handed to two requests, the idle count stays true."""
    c = Http11Client(NetworkGuard(["127.0.0.1"]), user_agent="t", keepalive_expiry=0.02)
    statuses: list[int] = []

    async def post() -> None:
        statuses.append((await c.post(receiver.url, [], b"{}", timeout=5)).status_code)

    try:
        for _ in range(15):
            async with anyio.create_task_group() as tg:
                for _ in range(12):
                    tg.start_soon(post)
            await anyio.sleep(0.03)  # every idle connection is now expired
        idle = [conn for conns in c._idle.values() for conn in conns]
        assert c._idle_count == len(idle) == len({id(conn) for conn in idle})
    finally:
        await c.aclose()
    assert statuses == [200] * 15 * 12
    assert len(receiver.requests) == 15 * 12


def test_host_names_go_through_idna_2008_and_paths_are_percent_encoded() -> None:
    from webhook_plugin.delivery.client import _host_header, _parse
    from webhook_plugin.exceptions import TransportError

    origin, target, host = _parse("https://Bücher.example:8443/ä b/hook?q=ü&x=1")
    assert (origin.host, origin.port, target) == (
        "xn--bcher-kva.example",
        8443,
        b"/%C3%A4%20b/hook?q=%C3%BC&x=1",
    )
    assert host == _host_header(origin) == b"xn--bcher-kva.example:8443"
    for _ in range(2):  # a refused URL is refused each time (nothing cached for it)
        with pytest.raises(TransportError, match="IDNA"):
            _parse("https://a\u200db.example/")  # a joiner IDNA 2008 refuses here
    with pytest.raises(TransportError, match="not valid Unicode"):
        _parse("https://a.example/\udcff")  # a lone surrogate, from a row written by hand
