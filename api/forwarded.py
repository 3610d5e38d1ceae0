"""Who the client is when the API sits behind proxies (TRUSTED_PROXIES).

Behind a load balancer every connection comes from the balancer: the rate
limit would put all users in one bucket and the access log would name the
balancer. Each proxy appends the address it got the request from to
`X-Forwarded-For`, so, walking that list from the right, the first address
that is not one of our own proxies is the client. Anything to its left was
sent by the client itself and proves nothing (a client cannot escape its
bucket by inventing entries). Without TRUSTED_PROXIES, or from a peer that
is not one of them, the header is ignored: the peer is the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

import falcon

from pipeline.settings import IPNetwork as Network

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_CONTEXT = "client_address"


def client_address(peer: str, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    """The client's address: the rightmost X-Forwarded-For entry that is not a trusted
    proxy, when the peer is one; else the peer. Pure."""
    if not trusted or not forwarded_for or not _trusted(peer, trusted):
        return peer
    hop = peer
    for entry in reversed([e.strip() for e in forwarded_for.split(",")]):
        address = _address(entry)
        if address is None:
            # Our proxies write addresses: a malformed hop was not written by one, so
            # the last good hop (a trusted proxy) is the most we know.
            return hop
        hop = address
        if not _trusted(address, trusted):
            return address
    return hop  # every hop is one of ours (a health check from inside, say)


def peer_address(req: falcon.Request) -> str:
    """The connecting peer's address (the client, where no proxy is trusted)."""
    return req.remote_addr or "-"


class ClientAddresses:
    """`client_address` for a Falcon request, with the configured proxies; memoized."""

    def __init__(self, trusted: Iterable[Network] = ()):
        self.trusted = tuple(trusted)

    def __call__(self, req: falcon.Request) -> str:
        known: str | None = req.context.get(_CONTEXT)
        if known is None:
            known = client_address(
                peer_address(req), req.get_header("X-Forwarded-For"), self.trusted
            )
            req.context[_CONTEXT] = known
        return known


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = _unmapped(ipaddress.ip_address(address))
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def _unmapped(ip: IPAddress) -> IPAddress:
    """`::ffff:10.0.0.2` is 10.0.0.2 (a dual-stack socket's IPv4 peer)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _address(entry: str) -> str | None:
    """The address in one hop (`192.0.2.7`, `[2001:db8::1]:443`, `192.0.2.7:51000`), normalised."""
    host = entry
    if host.startswith("["):  # [IPv6]:port
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:  # IPv4:port
        host = host.partition(":")[0]
    try:
        return str(_unmapped(ipaddress.ip_address(host)))
    except ValueError:
        return None
