"""Which URLs this service may connect to.

The service fetches URLs that strangers put in a CSV, so by default it
refuses any address that is not globally routable: loopback, private,
link-local (the cloud metadata address), multicast, reserved, unspecified,
IPv4 and IPv6, including IPv4-mapped IPv6. ALLOW_PRIVATE_NETWORKS=1 turns
this off for trusted networks and local trials.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

from pipeline.errors import FetchError

Resolver = Callable[..., list]
ALLOWED_SCHEMES = frozenset({"http", "https"})


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_url(url: str, *, allow_private: bool, resolve: Resolver = socket.getaddrinfo) -> None:
    """Raise FetchError unless `url` is http(s) to a host whose every address is public."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FetchError(f"malformed URL: {exc}") from exc
    if parts.scheme not in ALLOWED_SCHEMES:
        raise FetchError(f"scheme {parts.scheme!r} is not allowed; use http or https")
    host = parts.hostname
    if not host:
        raise FetchError("URL has no host")
    if allow_private:
        return
    try:
        infos = resolve(
            host, port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError(f"cannot resolve host {host!r}: {exc}", transient=True) from exc
    addresses = {info[4][0] for info in infos}
    if not addresses:
        raise FetchError(f"host {host!r} has no addresses")
    for address in sorted(addresses):
        if not is_public_address(address):
            raise FetchError(
                f"refused: {host} resolves to non-public address {address} "
                "(set ALLOW_PRIVATE_NETWORKS=1 only on trusted networks)"
            )
