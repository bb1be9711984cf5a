"""Who is calling and in what tier: a client key, a verified bearer token, or an address.

`Callers.identify(request)` is the per-request path, in this order:
1. a gateway-issued client key (`[[clients]]`, compared by SHA-256);
2. a bearer that is a JWT: a login provider's (`[[auth.issuers]]`) or one the gateway minted
   (`/gateway/tokens`, `/gateway/session`). It must verify, or the request is a 401
   `invalid_token`: a bad token never silently becomes anonymous;
3. anything else is anonymous, keyed by address, unless `auth.require_client_key` or
   `auth.anonymous = false` make an identity mandatory (401).

The caller's tier chooses its limits, budgets and models (`[tiers.NAME]`); a client key's own
values win over its tier's, and anything unset falls back to `[rate_limit]` and
`validation.allowed_models`. An unknown tier name falls back the same way, with one warning.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from ..config import ClientSettings, TierSettings
from ..errors import InvalidClientKey, InvalidToken, Unauthenticated
from ..metering.rules import Limits
from .addresses import Addresses
from .bearer import BearerResolver
from .keys import ClientKeys

log = logging.getLogger("gateway.callers")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling, as policy sees it (found by `Callers.identify`).

    id: keys limits, budgets, the cache scope and logs ("ip:...", "key:NAME", "user:<hash>",
        "session:<hash>"); ip: its address, for logs; settings: its client key's (None
        otherwise); tier: its tier's name, if any; limits and models: what its client key or
        tier chose (None: the gateway's defaults).
    """

    id: str
    ip: str
    settings: ClientSettings | None = None
    tier: str | None = None
    limits: Limits | None = None
    models: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """What one kind of caller may do. None anywhere: the gateway's defaults."""

    limits: Limits | None = None
    models: frozenset[str] | None = None


def _plan(tier: TierSettings | None, key: ClientSettings | None = None) -> Plan:
    def pick(name: str):
        own = getattr(key, name, None) if key is not None else None
        return own if own is not None else getattr(tier, name, None)

    requests, tokens, spend, models = (pick(n) for n in ("requests", "tokens", "spend",
                                                         "models"))
    limits = None if requests is None and tokens is None and spend is None \
        else Limits(requests, tokens, spend)
    return Plan(limits, frozenset(models) if models is not None else None)


class Callers:
    """Built once per settings; `identify(request)` per request. `addresses` and `keys`
    (found from `clients`) are there for the routes that need one of them alone."""

    def __init__(self, *, addresses: Addresses, bearer: BearerResolver | None,
                 tiers: Mapping[str, TierSettings], clients: tuple[ClientSettings, ...],
                 anonymous: bool, require_client_key: bool):
        self.addresses = addresses
        self.keys = ClientKeys(clients)
        self.bearer = bearer
        self.anonymous = anonymous
        self.require_client_key = require_client_key
        self.tiers = {name: _plan(tier) for name, tier in tiers.items()}
        self._tier_names = dict(tiers)
        self._key_plans = {c.name: _plan(self._tier_names.get(c.tier or ""), c)
                           for c in clients}
        self._warned: set[str] = set()
        for c in clients:
            if c.tier:
                self.plan_for_tier(c.tier)  # warn about an unknown tier at start, once

    def plan_for_tier(self, tier: str | None) -> Plan:
        if tier is None:
            return DEFAULT
        plan = self.tiers.get(tier)
        if plan is None:
            if tier not in self._warned and len(self._warned) < 100:
                self._warned.add(tier)
                log.warning("tier %r is not configured ([tiers.%s]); its callers get the "
                            "[rate_limit] defaults", tier[:64], tier[:64])
            return DEFAULT
        return plan

    def key_client(self, key: ClientSettings, ip: str) -> Caller:
        """The caller a client key is: "key:NAME", with its own values over its tier's."""
        plan = self._key_plans[key.name]
        return Caller("key:" + key.name, ip, key, key.tier, plan.limits, plan.models)

    async def identify(self, request: web.Request, token: str | None = None) -> Caller:
        """The caller of a request. `token`: the credential it presents, when it is not in
        `Authorization` (a browser's WebSocket carries it in a subprotocol); it is then read
        exactly as a Bearer would be."""
        ip = self.addresses.of(request)
        authorization = request.headers.get("Authorization") if token is None \
            else "Bearer " + token
        key = self.keys.find(authorization)
        if key is not None:
            return self.key_client(key, ip)
        if self.bearer is not None and authorization:
            caller = await self.bearer.resolve(authorization)  # a bad JWT raises 401
            if caller is not None:
                plan = self.plan_for_tier(caller.tier)
                return Caller(caller.id, ip, None, caller.tier, plan.limits, plan.models)
        if self.require_client_key:
            raise InvalidClientKey(
                "Missing or unknown client key. Send a gateway-issued key as "
                "'Authorization: Bearer <key>'.")
        if not self.anonymous:
            raise Unauthenticated(
                "This gateway serves signed-in users only: send your login token or a "
                "gateway-issued key as 'Authorization: Bearer <token>'.")
        return Caller("ip:" + self.addresses.key(ip), ip)

    def granted(self, caller_id: str, tier: str | None, ip: str) -> Caller:
        """The caller a realtime client secret was issued to, with the limits and models its
        client key or tier has now (a reload applies to secrets already issued). A secret of
        a client key since removed is refused (401)."""
        if caller_id.startswith("key:"):
            key = self.keys.named(caller_id[4:])
            if key is None:
                raise InvalidToken("The client key this realtime client secret was issued to "
                                   "is no longer configured.")
            return self.key_client(key, ip)
        plan = self.plan_for_tier(tier)
        return Caller(caller_id, ip, None, tier, plan.limits, plan.models)


DEFAULT = Plan()
