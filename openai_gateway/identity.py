"""Who is calling: the client address (trusted proxies only) and gateway-issued client keys."""
from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from functools import lru_cache

from aiohttp import web

from .errors import InvalidClientKey
from .settings import ClientSettings


@dataclass(frozen=True, slots=True)
class Client:
    """The caller as policy sees it. `id` keys limits and logs; `key` is a client key's config."""

    id: str
    ip: str
    key: ClientSettings | None = None

    @property
    def name(self) -> str:
        return self.key.name if self.key else "anonymous"


class TrustedProxies:
    """Membership test for `server.trusted_proxies` (IPs and CIDRs), cached per address."""

    def __init__(self, entries: tuple[str, ...]):
        self._networks = tuple(ipaddress.ip_network(e, strict=False) for e in entries)
        self.contains = lru_cache(maxsize=4096)(self._contains)

    def _contains(self, address: str) -> bool:
        if not self._networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped:  # ::ffff:127.0.0.1 on dual-stack sockets
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._networks)


def client_address(peer: str, forwarded_for: str | None, trusted: TrustedProxies) -> str:
    """The right-most X-Forwarded-For hop that is not a trusted proxy.

    Only a trusted peer may speak for someone else; hops left of an untrusted one could have
    been written by anybody, so they are never believed. A malformed hop is where belief stops.
    """
    if not forwarded_for or not trusted.contains(peer):
        return peer
    believed = peer
    for hop in reversed(forwarded_for.split(",")):
        hop = hop.strip()
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return believed
        if not trusted.contains(hop):
            return hop
        believed = hop
    return believed


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class IdentityResolver:
    """Built once from settings; `resolve(request)` is the per-request path."""

    def __init__(self, *, trusted_proxies: tuple[str, ...], clients: tuple[ClientSettings, ...],
                 require_client_key: bool):
        self.trusted = TrustedProxies(trusted_proxies)
        self._keys = {c.key_sha256.lower(): c for c in clients}
        self._require = require_client_key

    def resolve(self, request: web.Request) -> Client:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        peer_ip = peer[0] if peer else "unknown"
        ip = client_address(peer_ip, request.headers.get("X-Forwarded-For"), self.trusted)
        if self._keys or self._require:
            key = self._client_key(request.headers.get("Authorization"))
            if key is not None:
                return Client(id="key:" + key.name, ip=ip, key=key)
            if self._require:
                raise InvalidClientKey(
                    "Missing or unknown client key. Send a gateway-issued key as "
                    "'Authorization: Bearer <key>'.")
        return Client(id="ip:" + ip, ip=ip)

    def _client_key(self, authorization: str | None) -> ClientSettings | None:
        # The scheme is case-insensitive (RFC 9110 section 11.1): "bearer KEY" is the same.
        if not authorization or authorization[:7].lower() != "bearer ":
            return None
        return self._keys.get(hash_key(authorization[7:].strip()))
