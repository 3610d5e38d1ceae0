"""Optional API keys: who is calling, and which requests they may see.

With `API_KEYS` unset the API is open, as before: a request id (128 random
bits) is the capability to read a request. With keys set, every route but
/health needs one, and a request is visible only to the key that created it;
to any other caller it does not exist (404, not 403, so a valid key cannot
even learn that an id is in use).

Raw keys are never stored or compared directly: a presented key is hashed
with SHA-256 once, its digest compared in constant time with every configured
digest, and requests record only the owner id, a short hex of that digest.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable

import falcon

from api.errors import ApiKeyRequired
from api.forwarded import peer_address
from pipeline.models import RequestRecord

OWNER_HEX_CHARS = 16  # 64 bits: collisions between a handful of keys are not a concern
_BEARER = "bearer "


def owner_id(key: str) -> str:
    """What a request records about the key that made it."""
    return hashlib.sha256(key.encode()).hexdigest()[:OWNER_HEX_CHARS]


class ApiKeys:
    def __init__(
        self,
        keys: Iterable[str] = (),
        *,
        address: Callable[[falcon.Request], str] = peer_address,
    ):
        """`address`: the caller's address (api/forwarded.py's, behind proxies)."""
        self._digests = tuple(hashlib.sha256(key.encode()).digest() for key in keys)
        self._address = address

    @property
    def required(self) -> bool:
        return bool(self._digests)

    def owner(self, req: falcon.Request) -> str | None:
        """The caller's owner id when it sent a configured key, else None (memoized)."""
        if not hasattr(req.context, "api_owner"):  # the caller's key is not looked at yet
            req.context.api_owner = self._check(presented_key(req))
        owner: str | None = req.context.api_owner
        return owner

    def client_id(self, req: falcon.Request) -> str:
        """Whom a rate limit applies to: a valid key, else the client's address.

        An unchecked key would let anyone mint a fresh bucket per request by sending
        random keys, so only a configured one counts.
        """
        owner = self.owner(req) if self.required else None
        return f"key:{owner}" if owner else f"addr:{self._address(req)}"

    def may_read(self, req: falcon.Request, record: RequestRecord) -> bool:
        # Without keys the API is open (the id is the capability); with keys, a request
        # made before they were turned on (owner None) belongs to no key.
        return not self.required or (record.owner is not None and record.owner == self.owner(req))

    def _check(self, key: str | None) -> str | None:
        if not key or not self._digests:
            return None
        digest = hashlib.sha256(key.encode()).digest()
        # Compare with every digest, without stopping at a match, so timing says nothing
        # about which key (or how much of one) matched.
        matched = False
        for candidate in self._digests:
            matched |= hmac.compare_digest(digest, candidate)
        return digest.hex()[:OWNER_HEX_CHARS] if matched else None


def presented_key(req: falcon.Request) -> str | None:
    """The key from `Authorization: Bearer <key>`, else from `X-API-Key`."""
    authorization = req.get_header("Authorization")
    if authorization and authorization[: len(_BEARER)].lower() == _BEARER:
        return authorization[len(_BEARER) :].strip() or None
    return (req.get_header("X-API-Key") or "").strip() or None


class RequireApiKey:
    """Middleware: refuse calls without a configured key, except to the open paths."""

    def __init__(self, keys: ApiKeys, *, open_paths: frozenset[str]):
        self.keys = keys
        self.open_paths = open_paths

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if not self.keys.required or req.path in self.open_paths:
            return
        if self.keys.owner(req) is None:
            raise ApiKeyRequired(presented=presented_key(req) is not None)
