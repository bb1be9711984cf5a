"""OpenAI's realtime endpoints with the real key: its WebSocket (a session, or a call's
sideband) and its POST routes (calls, hangup), library errors mapped here.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from ..errors import GatewayError, UpstreamTimeout, UpstreamUnavailable, upstream_error

log = logging.getLogger("gateway.realtime")

#: Seconds between pings on realtime sockets: a peer that vanished without a FIN is found.
HEARTBEAT = 30.0
#: Seconds our close of an upstream socket waits for the upstream's reply before the
#: connection is dropped (aiohttp's default is 10): an ending session holds its slot among
#: realtime.max_sessions and its reservation until the close is done.
CLOSE_TIMEOUT = 2.0


class UpstreamRefused(GatewayError):
    """The upstream answered a realtime request with an error: its status and error type are
    kept, its words are not (errors.upstream_error)."""

    def __init__(self, status: int, content_type: str = "", body: bytes = b""):
        self.status, _, self.body = upstream_error(status, content_type, body)
        super().__init__("The upstream refused the realtime request.")

    def response(self) -> web.Response:
        return web.Response(status=self.status, body=self.body, content_type="application/json")


@dataclass(frozen=True)
class RealtimeUpstream:
    """OpenAI's realtime endpoints with the real key. One socket is one session, so there is
    no failover: the primary upstream (`upstream.base_url`) only."""

    session: aiohttp.ClientSession
    base_url: str
    api_key: str = field(repr=False)
    connect_timeout: float = 10.0
    max_frame_bytes: int = 16 * 1024 * 1024

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": "Bearer " + self.api_key}

    def url(self, path: str, query: Mapping[str, str] | None = None) -> str:
        """base_url (".../v1") + path ("/realtime/calls"), with `query`."""
        url = self.base_url.rstrip("/") + path
        return url + ("?" + urlencode(query) if query else "")

    async def connect(self, **query: str) -> aiohttp.ClientWebSocketResponse:
        """OpenAI's socket for `?model=` (a new session) or `?call_id=` (a call's sideband).
        UpstreamRefused for an error status, UpstreamUnavailable/Timeout when unreachable."""
        url = self.url("/realtime", query)
        try:
            async with asyncio.timeout(self.connect_timeout):
                return await self.session.ws_connect(
                    url, headers=self.auth, compress=0, heartbeat=HEARTBEAT,
                    max_msg_size=self.max_frame_bytes, autoclose=True,
                    timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT))
        except aiohttp.WSServerHandshakeError as exc:
            raise UpstreamRefused(exc.status) from None
        except TimeoutError:
            raise UpstreamTimeout("The upstream did not answer in time.") from None
        except aiohttp.ClientError as exc:
            log.warning("realtime upstream unreachable: %s", type(exc).__name__)
            raise UpstreamUnavailable("The upstream could not be reached.") from None
