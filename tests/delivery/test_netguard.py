"""The network guard refuses internal destinations without sending a packet to them.

Two proofs for every hostile URL: the client raises ``BlockedAddress``, and
``anyio.connect_tcp`` (the only way the client opens a socket) is never called.
A counting listener on 127.0.0.1 shows that the loopback forms never reach it.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from webhook_plugin.delivery import client as client_module
from webhook_plugin.delivery.client import Http11Client
from webhook_plugin.delivery.netguard import NetworkGuard, blocked_reason
from webhook_plugin.exceptions import BlockedAddress, ConfigError, TransportError

pytestmark = pytest.mark.anyio


class CountingListener:
    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()


@pytest.fixture(scope="module")
def listener() -> Iterator[CountingListener]:
    lst = CountingListener()
    yield lst
    lst.close()


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    calls: list[tuple] = []
    real = anyio.connect_tcp

    async def spy(host, port, **kw):  # type: ignore[no-untyped-def]
        calls.append((host, port))
        return await real(host, port, **kw)

    monkeypatch.setattr(client_module.anyio, "connect_tcp", spy)
    return calls


# {P} is the counting listener's port: these would reach it if the guard let them.
LOOPBACK_FORMS = [
    "http://127.0.0.1:{P}/",
    "http://127.0.0.1.:{P}/",
    "http://localhost:{P}/",
    "http://LOCALHOST:{P}/",
    "http://localhost.:{P}/",
    "http://2130706433:{P}/",  # decimal
    "http://017700000001:{P}/",  # octal
    "http://0x7f000001:{P}/",  # hex
    "http://0x7f.0.0.1:{P}/",
    "http://0177.0.0.1:{P}/",
    "http://127.1:{P}/",  # short forms
    "http://127.0.1:{P}/",
    "http://[::1]:{P}/",
    "http://[0:0:0:0:0:0:0:1]:{P}/",
    "http://[::ffff:127.0.0.1]:{P}/",  # IPv4-mapped
    "http://[::ffff:7f00:1]:{P}/",
    "http://[::127.0.0.1]:{P}/",  # IPv4-compatible
    "http://good.example@127.0.0.1:{P}/",  # user-info trick
    "http://good.example:pw@localhost:{P}/",
    "http://127.0.0.1:{P}#@good.example/",
    "http://0.0.0.0:{P}/",  # unspecified reaches loopback on Linux
    "http://0:{P}/",
    "http://[::]:{P}/",
]
INTERNAL = [
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://0251.0376.0251.0376/latest/meta-data/",  # the same, octal
    "http://2852039166/",  # the same, decimal
    "http://[::ffff:169.254.169.254]/",
    "http://[fd00:ec2::254]/",  # AWS metadata over IPv6 (unique-local)
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",  # CGNAT
    "http://224.0.0.1/",  # multicast
    "http://240.0.0.1/",  # reserved
    "http://192.0.2.1/",  # documentation
    "http://[fe80::1]/",  # link-local
    "http://[fc00::1]/",  # unique-local
    "http://[fec0::1]/",  # site-local
    "http://[ff02::1]/",  # multicast
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
    "http://[64:ff9b::7f00:1]/",  # NAT64 of 127.0.0.1
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "http://[2002:a00:1::]/",  # 6to4 of 10.0.0.1
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",  # Teredo
]


@pytest.mark.parametrize("template", LOOPBACK_FORMS + INTERNAL)
async def test_hostile_url_is_refused_without_connecting(
    template: str, listener: CountingListener, connects: list[tuple]
) -> None:
    url = template.replace("{P}", str(listener.port))
    client = Http11Client(NetworkGuard(), user_agent="test")
    before = listener.accepted
    with pytest.raises(BlockedAddress) as info:
        await client.post(url, [], b"{}", timeout=2)
    assert connects == []
    assert listener.accepted == before
    assert "allow_private_hosts" in str(info.value)


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/", "file:///etc/passwd", "gopher://127.0.0.1:70/"]
)
async def test_other_schemes_are_refused(url: str, connects: list[tuple]) -> None:
    with pytest.raises(TransportError, match="http"):
        await Http11Client(NetworkGuard(), user_agent="t").post(url, [], b"", timeout=1)
    assert connects == []


@pytest.mark.parametrize("allow", ["127.0.0.1", "127.0.0.0/8", "localhost"])
async def test_allow_list_opens_chosen_hosts_and_connects_to_the_checked_address(
    allow: str, connects: list[tuple]
) -> None:
    from receiver import Receiver

    with Receiver() as rx:
        client = Http11Client(NetworkGuard([allow]), user_agent="t")
        host = "localhost" if allow == "localhost" else "127.0.0.1"
        url = f"http://{host}:{rx.port}/"
        try:
            response = await client.post(url, [], b"{}", timeout=5)
        finally:
            await client.aclose()
    assert response.status_code == 200
    # the client connected to the address it checked, never to the name
    assert all(h in ("127.0.0.1", "::1") for h, _ in connects)


async def test_allow_list_is_not_a_wildcard(connects: list[tuple]) -> None:
    guard = NetworkGuard(["127.0.0.1"])
    with pytest.raises(BlockedAddress):
        await Http11Client(guard, user_agent="t").post("http://10.0.0.1/", [], b"", timeout=1)
    assert connects == []


def test_bad_allow_list_entry_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="allow_private_hosts"):
        NetworkGuard([""])


async def test_public_addresses_pass_the_check() -> None:
    guard = NetworkGuard()
    import ipaddress

    for ip in ("93.184.216.34", "2606:4700:4700::1111", "8.8.8.8"):
        guard.check("example.com", ipaddress.ip_address(ip))  # does not raise


# -- properties over every address ---------------------------------------------------------

ipv4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
ipv6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)


@given(ipv4)
def test_an_ipv4_address_passes_only_when_globally_routable(ip: ipaddress.IPv4Address) -> None:
    assert (blocked_reason(ip) is None) == (ip.is_global and not ip.is_multicast)


@given(ipv4)
def test_no_ipv6_wrapper_of_an_ipv4_address_passes(ip: ipaddress.IPv4Address) -> None:
    n = int(ip)
    for wrapped in (
        (0xFFFF << 32) | n,  # ::ffff:a.b.c.d, IPv4-mapped
        (0x64FF9B << 96) | n,  # 64:ff9b::a.b.c.d, NAT64
        (0x2002 << 112) | (n << 80),  # 2002:aabb:ccdd::, 6to4
    ):
        assert blocked_reason(ipaddress.IPv6Address(wrapped)) is not None


@given(ipv6)
def test_an_ipv6_address_passes_only_when_globally_routable(ip: ipaddress.IPv6Address) -> None:
    if blocked_reason(ip) is None:
        assert ip.is_global and not ip.is_multicast
        assert ip.ipv4_mapped is None and ip.sixtofour is None and ip.teredo is None
