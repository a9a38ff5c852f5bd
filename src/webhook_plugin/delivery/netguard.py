"""The network guard: outbound requests never reach internal networks.

Agent owners type the URLs our servers call. The guard resolves the host name
itself, checks *every* address it resolves to, and hands the client only
checked addresses to connect to, so a DNS answer cannot change between the
check and the connection (DNS rebinding). Whatever form an address is written
in (``2130706433``, ``0x7f.1``, ``017700000001``, ``[::ffff:127.0.0.1]``), the
resolver turns it into the address the kernel would connect to, and that is
what is checked.

Refused unless allow-listed: loopback, private (RFC 1918), link-local
(169.254/16, including the cloud metadata service), shared address space
(CGNAT 100.64/10), multicast, reserved, unspecified, documentation and
benchmarking ranges, IPv4-mapped and IPv4-compatible IPv6, IPv6 unique-local,
site-local and link-local, NAT64, 6to4 and Teredo wrappers. In short: any
address that is not globally routable.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

import anyio

from ..exceptions import BlockedAddress, ConfigError, ConnectError

__all__ = ["NetworkGuard", "blocked_reason"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_CGNAT: Final = ipaddress.ip_network("100.64.0.0/10")
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL: Final = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPAT: Final = ipaddress.ip_network("::/96")
_SITE_LOCAL: Final = ipaddress.ip_network("fec0::/10")
_UNIQUE_LOCAL: Final = ipaddress.ip_network("fc00::/7")


def blocked_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be contacted, or ``None`` when it is globally routable."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return "IPv4-mapped IPv6 address"
        if ip in _NAT64 or ip in _NAT64_LOCAL:
            return "NAT64 address"
        if ip.sixtofour is not None:
            return "6to4 address"
        if ip.teredo is not None:
            return "Teredo address"
        if ip in _SITE_LOCAL:
            return "site-local address"
        if ip in _UNIQUE_LOCAL:
            return "unique-local address"
        if ip in _IPV4_COMPAT and not (ip.is_loopback or ip.is_unspecified):
            return "IPv4-compatible IPv6 address"
    elif ip in _CGNAT:
        return "shared address space (CGNAT)"
    for attr, reason in (
        ("is_unspecified", "unspecified address"),
        ("is_loopback", "loopback address"),
        ("is_link_local", "link-local address (metadata service range)"),
        ("is_multicast", "multicast address"),
        ("is_private", "private address"),
        ("is_reserved", "reserved address"),
    ):
        if getattr(ip, attr):
            return reason
    if not ip.is_global:
        return "address that is not globally routable"
    return None


class NetworkGuard:
    """Resolves and vets destinations before any connection is made.

    :param allow: host names (``"localhost"``), addresses (``"127.0.0.1"``) or
        networks (``"10.0.0.0/8"``) that may be reached although they are not
        public, for development and tests. Empty by default.
    """

    def __init__(self, allow: Iterable[str] = ()) -> None:
        self._hosts: set[str] = set()
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in allow:
            if not isinstance(entry, str) or not entry.strip():
                raise ConfigError(f"allow_private_hosts: {entry!r} is not a host or network")
            entry = entry.strip()
            try:
                self._networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                self._hosts.add(_normal_host(entry))

    def __repr__(self) -> str:
        allowed = sorted(self._hosts) + [str(n) for n in self._networks]
        return f"NetworkGuard(allow={allowed!r})"

    def allows_loopback(self) -> bool:
        """Whether a receiver on this machine (127.0.0.1) may be reached."""
        return any(ipaddress.ip_address("127.0.0.1") in n for n in self._networks) or (
            "127.0.0.1" in self._hosts or "localhost" in self._hosts
        )

    def check(self, host: str, ip: IPAddress) -> None:
        """Raise :class:`BlockedAddress` unless ``ip`` may be contacted for ``host``."""
        reason = blocked_reason(ip)
        if reason is None:
            return
        if _normal_host(host) in self._hosts or any(ip in n for n in self._networks):
            return
        # A name's addresses are not told: whoever may save settings would
        # otherwise learn what internal names resolve to (an internal DNS lookup)
        literal = _normal_host(host) == _normal_host(str(ip))
        what = (
            f"a private or loopback address ({reason})"
            if literal
            else ("it resolves to a private or loopback address")
        )
        raise BlockedAddress(
            f"refusing to connect to {host!r}: {what}; to permit it, list it in"
            " allow_private_hosts under [webhook] in the config file that the server runs"
            " with (webhook-plugin serve --config FILE; make run ARGS='--config FILE')"
        )

    def refuses(self, url: str) -> str | None:
        """Why ``url`` would be refused, when its host is an address literal.

        Host names are only judged at connect time (they need a DNS lookup);
        this lets settings be refused at save time when the answer is certain.
        """
        host = urlsplit(url).hostname or ""
        try:
            ip = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return None
        try:
            self.check(host, ip)
        except BlockedAddress as exc:
            return str(exc)
        return None

    async def resolve(self, host: str, port: int) -> list[str]:
        """Every address ``host`` resolves to, each checked; the ones to connect to.

        :raises BlockedAddress: when *any* resolved address is refused (a name
            that resolves to one public and one private address is refused
            whole, since the attacker chooses which one we would use).
        :raises ConnectError: when the name does not resolve.
        """
        # "name." is the same absolute name as "name"; resolve it in one form only
        lookup = host.rstrip(".") or host
        try:
            infos = await anyio.getaddrinfo(lookup, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise ConnectError(f"cannot resolve {host!r}: {exc}") from exc
        addresses: list[str] = []
        for family, _, _, _, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
            self.check(host, ip)
            if str(ip) not in addresses:
                addresses.append(str(ip))
        if not addresses:
            raise ConnectError(f"{host!r} has no IPv4 or IPv6 address")
        return addresses


def _normal_host(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()
