"""Which addresses this service may connect to, enforced on the socket itself.

The service fetches URLs that strangers put in a CSV (and calls webhook URLs
they give), so by default it refuses any address that is not globally
routable: loopback, private, shared (100.64/10), link-local (the cloud
metadata address), multicast, reserved, unspecified, documentation ranges,
IPv4 and IPv6, including IPv6 forms that embed an IPv4 address (mapped,
translated, compatible, 6to4, NAT64) and the `localhost` names. ALLOW_PRIVATE_NETWORKS=1
turns the address rules off for trusted networks and local trials.

Checking a URL and then letting the HTTP library resolve the host again is
not enough: a hostile DNS server can answer with a public address for the
check and 127.0.0.1 for the connection (DNS rebinding), and the resolver
reads `2130706433`, `0177.0.0.1` or `127.1` as IPv4. So `guarded_pool` builds
a urllib3 PoolManager whose connections resolve the host once, validate every
address, connect to a validated address themselves and check the peer of
the connected socket. The hostname is kept for the Host header, TLS SNI and
certificate verification, which urllib3 does on top of our socket. The same
connections hand every socket they open or reuse to the current
`pipeline.exchange.Exchange`, which shuts it down at the exchange's deadline.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
from collections.abc import Callable, Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    LocationParseError,
    NameResolutionError,
    NewConnectionError,
)

from pipeline import exchange
from pipeline.errors import AddressRefused as AddressRefused  # also importable from here
from pipeline.errors import FetchError
from pipeline.lookups import Lookups, Resolver

AddressPolicy = Callable[[str], bool]
ALLOWED_SCHEMES = frozenset({"http", "https"})

# ipaddress.is_global varies between Python patch releases and calls some of
# these global (192.0.0.0/24, fec0::/10, 64:ff9b::/96, ::/96 on 3.11.7), so
# the special-purpose ranges are listed here as well.
_BLOCKED = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
        "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        "::/96", "::ffff:0:0/96", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32",
        "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
    )
)  # fmt: skip
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# IPv4-translated (RFC 2765 SIIT): ::ffff:0:a.b.c.d reaches a.b.c.d through a translator.
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and (ip in _NAT64 or ip in _TRANSLATED):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            # The packet ends up at the IPv4 address, so that is what must be public.
            return _is_public(embedded)
    return _is_public(ip)


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip.is_global and not ip.is_multicast and not any(ip in net for net in _BLOCKED)


def is_local_name(host: str) -> bool:
    """RFC 6761: `localhost` and every name under it mean this machine, whatever DNS says."""
    name = host.rstrip(".").lower()
    return name == "localhost" or name.endswith(".localhost")


def validate_url(url: str) -> tuple[str, str, int]:
    """Return (scheme, host, port) of an acceptable http(s) URL, else raise FetchError.

    Checks only the URL's shape; the addresses are checked where the socket
    is made (`AddressGuard.connect`), so nothing here needs DNS.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
        theirs = urllib3.util.parse_url(url).host
    except (ValueError, LocationParseError) as exc:
        raise FetchError(f"malformed URL: {exc}") from exc
    if parts.scheme not in ALLOWED_SCHEMES:
        raise FetchError(f"scheme {parts.scheme!r} is not allowed; use http or https")
    host = parts.hostname
    if not host:
        raise FetchError("URL has no host")
    if "@" in parts.netloc or "\\" in parts.netloc:
        # user:pass@host is a classic way to make a URL look like another host.
        raise AddressRefused("refused: URLs with credentials (user@host) are not fetched")
    if (theirs or "").strip("[]").lower() not in _spellings(host):
        # Our parser and urllib3's must agree on the host, or the check and the
        # connection would be about different machines.
        raise AddressRefused(f"refused: ambiguous host in URL ({host!r} vs {theirs!r})")
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80)


def _spellings(host: str) -> set[str]:
    """The forms urllib3 may give the same host: IDNA-encoded, IPv6 zone unescaped."""
    forms = {host, host.replace("%25", "%")}
    with contextlib.suppress(UnicodeError):  # not encodable: only an exact match will do
        forms.add(host.encode("idna").decode("ascii"))
    return forms


class AddressGuard:
    """Resolve once, refuse forbidden addresses, connect only to what was checked."""

    def __init__(
        self,
        *,
        allow_private: bool,
        resolve: Resolver = socket.getaddrinfo,
        is_allowed: AddressPolicy = is_public_address,
    ):
        self.allow_private = allow_private
        # Asked within the current exchange's deadline, however long the resolver takes.
        self._lookups = Lookups(resolve)
        # Injectable so a test can play "the internet" with one loopback address.
        self._is_allowed = is_allowed

    def allowed(self, address: str) -> bool:
        return self.allow_private or self._is_allowed(address)

    def resolve(self, host: str, port: int) -> list[tuple[Any, ...]]:
        host = host.strip("[]")
        if not self.allow_private and is_local_name(host):
            raise AddressRefused(f"refused: {host} is this machine {_HINT}")
        current = exchange.current()
        allowed = current.remaining() if current else None
        try:
            infos = self._lookups.lookup(host, port, allowed)
        except TimeoutError as exc:
            # The name server's silence, not the host's: no connection was tried.
            reason = f"cannot resolve host {host!r}: no answer {_within(allowed, current)}"
            raise FetchError(reason, transient=True) from exc  # as a resolver's own timeout
        except UnicodeError as exc:
            raise FetchError(f"cannot resolve host {host!r}: {exc}") from exc
        except socket.gaierror as exc:
            raise FetchError(f"cannot resolve host {host!r}: {exc}", transient=True) from exc
        if not infos:
            raise FetchError(f"host {host!r} has no addresses")
        for info in infos:
            # All or nothing: a host with one private address is refused, so
            # trying the addresses in turn can never end on the private one.
            if not self.allowed(info[4][0]):
                raise AddressRefused(
                    f"refused: {host} resolves to non-public address {info[4][0]} {_HINT}"
                )
        return infos

    def connect(
        self,
        host: str,
        port: int,
        timeout: float | None,
        source_address: tuple[str, int] | None = None,
        socket_options: Sequence[tuple[int, int, int | bytes]] | None = None,
        on_socket: Callable[[socket.socket], None] | None = None,
    ) -> socket.socket:
        """`on_socket` sees each socket before it connects (to bound the connect in time)."""
        error: OSError | None = None
        for family, kind, proto, _name, sockaddr in self.resolve(host, port):
            sock = None
            try:
                sock = socket.socket(family, kind, proto)
                if on_socket is not None:
                    on_socket(sock)
                for option in socket_options or ():
                    sock.setsockopt(*option)
                sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)  # the validated address itself: no second lookup
                peer = sock.getpeername()[0]
                if peer != sockaddr[0] or not self.allowed(peer):
                    raise AddressRefused(f"refused: {host} connected to {peer} {_HINT}")
                return sock
            except OSError as exc:
                error = exc
                if sock is not None:
                    sock.close()
            except BaseException:
                if sock is not None:
                    sock.close()
                raise
        raise error or OSError(f"no usable address for {host}")


_HINT = "(set ALLOW_PRIVATE_NETWORKS=1 only on trusted networks)"


def _within(allowed: float | None, current: exchange.Exchange | None) -> str:
    """The time a lookup had: the whole deadline, or what earlier attempts left of it."""
    total = current.progress.timeout if current else None
    if total is None or allowed is None:
        return "in time"
    if allowed >= total - 0.5:
        return f"within {total:g}s"
    return f"in the {max(allowed, 0.0):.1f}s left of {total:g}s"


class _PinnedConnection:
    """Replaces urllib3's socket setup; TLS, SNI and Host headers still use the hostname."""

    guard: ClassVar[AddressGuard]
    # Reads the answer through the current exchange's byte budgets. Typed as in
    # http.client.HTTPConnection, which the classes below also inherit it from.
    response_class: type[http.client.HTTPResponse] = exchange.MeteredResponse

    def _new_conn(self) -> socket.socket:
        conn: Any = self  # the urllib3 HTTPConnection this is mixed into
        timeout = conn.timeout if isinstance(conn.timeout, int | float) else None
        current = exchange.current()
        if current is not None:
            current.connecting(conn.port, timeout)
        try:
            sock = self.guard.connect(
                conn._dns_host,
                conn.port,
                timeout,
                conn.source_address,
                conn.socket_options,
                on_socket=current.watch if current is not None else None,
            )
        except socket.gaierror as exc:
            raise NameResolutionError(conn.host, conn, exc) from exc
        except TimeoutError as exc:
            raise ConnectTimeoutError(
                conn, f"Connection to {conn.host} timed out. (connect timeout={timeout})"
            ) from exc
        except OSError as exc:
            raise NewConnectionError(conn, f"Failed to establish a new connection: {exc}") from exc
        if current is not None:
            current.connected(tls=isinstance(self, HTTPSConnection))
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        current = exchange.current()
        if current is not None:
            # A kept-alive connection brings its socket: it gets this exchange's deadline too.
            current.sending(getattr(self, "sock", None))
        # A mixin: the next class in the MRO (urllib3's HTTPConnection) has request().
        super().request(*args, **kwargs)  # type: ignore[misc]


class PinnedHTTPConnection(_PinnedConnection, HTTPConnection):
    pass


class PinnedHTTPSConnection(_PinnedConnection, HTTPSConnection):
    pass


class GuardedPoolManager(urllib3.PoolManager):
    """A PoolManager whose every connection goes through one AddressGuard."""

    def __init__(self, guard: AddressGuard, **pool_kw: Any):
        super().__init__(**pool_kw)
        self.guard = guard
        # Classes bound to this guard: urllib3 builds connections from class
        # attributes and its pool keys reject unknown keyword arguments.
        bound = {"guard": guard}
        http_conn = type("PinnedHTTPConnection", (PinnedHTTPConnection,), bound)
        https_conn = type("PinnedHTTPSConnection", (PinnedHTTPSConnection,), bound)
        self.pool_classes_by_scheme = {
            "http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
            "https": type(
                "GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}
            ),
        }


def guarded_pool(
    allow_private: bool,
    resolve: Resolver = socket.getaddrinfo,
    *,
    is_allowed: AddressPolicy = is_public_address,
    **pool_kw: Any,
) -> GuardedPoolManager:
    """A urllib3 PoolManager that only ever connects to allowed addresses."""
    guard = AddressGuard(allow_private=allow_private, resolve=resolve, is_allowed=is_allowed)
    return GuardedPoolManager(guard, **pool_kw)
