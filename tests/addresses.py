"""The address guard asked directly, as a fetch asks it before connecting."""

from __future__ import annotations

import socket

from pipeline.lookups import Resolver
from pipeline.netguard import AddressGuard, validate_url


def check_url(url: str, *, allow_private: bool, resolve: Resolver = socket.getaddrinfo) -> None:
    """Raise FetchError unless `url` is http(s) to a host whose every address is allowed."""
    _scheme, host, port = validate_url(url)
    if not allow_private:
        AddressGuard(allow_private=False, resolve=resolve).resolve(host, port)
