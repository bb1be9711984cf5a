"""A fake OpenAI Realtime API: client secrets, WebRTC calls, their hangup and the WebSocket.

Routes (`add_to(app)` mounts them; `FakeOpenAI(realtime=...)` does it for the fake API):
- `POST /v1/realtime/client_secrets`: an `ek_...` secret it remembers, bound to the session
  configuration given (the real key only);
- `POST /v1/realtime/calls`: an SDP offer, as `application/sdp` (the session comes from the
  `ek_` secret or `?model=`) or multipart `sdp` + `session`; answers 201 with the answerer's SDP
  and `Location: /v1/realtime/calls/rtc_...`;
- `POST /v1/realtime/calls/{call_id}/hangup`: ends the call (recorded, its sockets closed);
- `GET /v1/realtime?model=...` (a new session) or `?call_id=...` (the sideband of a call, the
  real key only, as OpenAI's guide has it): a WebSocket speaking OpenAI's GA events.

Auth: `Authorization: Bearer <key>` or, on the WebSocket, the browser subprotocol
`openai-insecure-api-key.<key>`; the key is `api_key` (any non-`ek_` token when None) or an
unexpired `ek_` secret the fake issued. The handshake selects the `realtime` subprotocol.

A call's session is the same object for every transport attached to it: the sideband
WebSocket and whatever the SDP answerer attaches (tests/webrtc_peer.py attaches its data
channel), so a response asked for on one is seen, with its usage, on all.

`ledger` keeps everything the fake did and was told (realtime_ledger). `words`, `pace`, `delay`
and `close_after` make it talk longer, slower, answer late or die mid-response. The session and
its events and responses are in realtime_session, token counting in realtime_formats.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
from aiohttp import BodyPartReader, WSMsgType, web

from .formats import new_id
from .realtime_formats import (
    audio_tokens,
    default_session,
    http_error,
    merge_session,
    session_problem,
)
from .realtime_ledger import Ledger, Opened
from .realtime_session import Call, Session

#: answerer(offer_sdp, call) -> answer_sdp; it may attach a transport to `call.session`.
SdpAnswerer = Callable[[str, Call], Awaitable[str]]
KEY_PROTOCOL = "openai-insecure-api-key."
#: OpenAI's own example answer (its API reference, "Create call").
CANNED_ANSWER = (
    "v=0\r\no=- 4227147428 1719357865 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
    "a=group:BUNDLE 0 1\r\na=msid-semantic:WMS *\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8\r\na=mid:0\r\na=ice-ufrag:kZ2qkHXX/u11\r\n"
    "a=ice-pwd:uoD16Di5OGx3VbqgA3ymjEQV2kwiOjw6\r\na=setup:active\r\na=rtcp-mux\r\n"
    "a=rtpmap:111 opus/48000/2\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
    "a=mid:1\r\na=sctp-port:5000\r\n")


async def canned_answerer(offer: str, call: Call) -> str:
    return CANNED_ANSWER


@dataclass
class FakeRealtime:
    """The fake Realtime API; `add_to(app)` mounts its routes on an aiohttp app."""

    #: The real key; None accepts any token that is not an `ek_` secret as the key.
    api_key: str | None = None
    #: Models a session may name; empty: any.
    models: tuple[str, ...] = ()
    #: Words in every answer, and seconds after each streamed one.
    words: int = 5
    pace: float = 0.0
    #: Seconds before answering each HTTP request and WebSocket handshake.
    delay: float = 0.0
    #: When set, a response that has generated this many words drops its session (the
    #: sockets close with 1011, no response.done; billed the words generated).
    close_after: int | None = None
    answerer: SdpAnswerer = canned_answerer
    ledger: Ledger = field(default_factory=Ledger)
    sessions: dict[str, Session] = field(default_factory=dict)

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/realtime/client_secrets", self.client_secrets),
                web.post("/v1/realtime/calls", self.create_call),
                web.post("/v1/realtime/calls/{call_id}/hangup", self.hangup),
                web.get("/v1/realtime", self.websocket)]

    def add_to(self, app: web.Application) -> None:
        app.add_routes(self.routes())

    def app(self) -> web.Application:
        app = web.Application()
        self.add_to(app)
        return app

    # --- what a test may change ----------------------------------------------------------

    def text(self, session: Session, params: dict) -> str:
        """The words of every answer."""
        return " ".join(f"w{i}" for i in range(self.words))

    def transcript(self, pcm: bytes) -> str:
        """What the fake hears in committed audio."""
        return f"heard {audio_tokens(pcm)} audio tokens"

    # --- auth ----------------------------------------------------------------------------

    def credential(self, request: web.Request) -> str | None:
        bearer = request.headers.get("Authorization", "")
        if bearer.lower().startswith("bearer ") and bearer[7:].strip():
            return bearer[7:].strip()
        for protocol in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
            if protocol.strip().startswith(KEY_PROTOCOL):
                return protocol.strip()[len(KEY_PROTOCOL):]
        return None

    def authorize(self, token: str | None, secret_ok: bool = True) -> dict | str | None:
        """"key" for the real key, the secret's record for a live `ek_` secret, else None."""
        if token is None:
            return None
        if token.startswith("ek_"):
            secret = self.ledger.secrets.get(token)
            ok = secret_ok and secret is not None and secret["expires_at"] > time.time()
            return secret if ok else None
        return "key" if self.api_key is None or token == self.api_key else None

    def refuse(self, status: int, message: str, code: str | None = None,
               param: str | None = None) -> web.Response:
        return web.json_response(http_error(message, code, param), status=status)

    def unauthorized(self) -> web.Response:
        return self.refuse(401, "Incorrect API key provided.", "invalid_api_key")

    def new_session(self, model: str, update: dict, call_id: str | None = None) -> Session:
        config = merge_session(default_session(model), update)
        session = self.sessions[config["id"]] = Session(self, config, call_id)
        return session

    def model_problem(self, model: object) -> web.Response | None:
        if not isinstance(model, str) or not model:
            return self.refuse(400, "Missing required parameter: 'model'.",
                               "missing_required_parameter", "model")
        if self.models and model not in self.models:
            return self.refuse(400, f"The model '{model}' does not exist or you do not have "
                               "access to it.", "model_not_found", "model")
        return None

    # --- the routes ------------------------------------------------------------------------

    async def client_secrets(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.delay)
        if self.authorize(self.credential(request), secret_ok=False) != "key":
            return self.unauthorized()
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return self.refuse(400, "The body of your request must be a JSON object.")
        expires = body.get("expires_after") or {}
        seconds = expires.get("seconds", 600) if isinstance(expires, dict) else None
        if not (isinstance(seconds, int) and 10 <= seconds <= 7200) or (
                expires.get("anchor", "created_at") != "created_at"):
            return self.refuse(400, "Invalid 'expires_after': seconds must be between 10 and "
                               "7200, anchor 'created_at'.", "invalid_value",
                               "expires_after.seconds")
        update = body.get("session") or {"type": "realtime"}
        problem = session_problem(update)
        if problem:
            return self.refuse(400, problem[0], "invalid_value", problem[1])
        model = update.get("model", "gpt-realtime")
        if refused := self.model_problem(model):
            return refused
        session = merge_session(default_session(model), update)
        value, expires_at = new_id("ek_"), int(time.time()) + seconds
        self.ledger.secrets[value] = {"expires_at": expires_at, "session": session,
                                      "request": update}
        return web.json_response({"value": value, "expires_at": expires_at,
                                  "session": {**session, "expires_at": 0}})

    async def create_call(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.delay)
        token = self.credential(request)
        who = self.authorize(token)
        if who is None:
            return self.unauthorized()
        update: object = dict(who["request"]) if isinstance(who, dict) else {}
        ctype = request.content_type
        if ctype == "application/sdp":
            offer = await request.text()
        elif ctype == "multipart/form-data":
            parts: dict[str, str] = {}
            async for part in await request.multipart():
                if isinstance(part, BodyPartReader) and part.name in ("sdp", "session"):
                    parts[part.name] = await part.text()
            offer = parts.get("sdp", "")
            if "session" in parts:
                try:
                    update = orjson.loads(parts["session"])
                except orjson.JSONDecodeError:
                    update = None
        else:
            return self.refuse(400, "Send the SDP offer as application/sdp or as multipart "
                               "'sdp' and 'session' parts.")
        if not offer.startswith("v=0"):
            return self.refuse(400, "Invalid 'sdp': expected an SDP offer.", "invalid_offer",
                               "sdp")
        problem = session_problem(update)
        if problem:
            return self.refuse(400, problem[0], "invalid_value", problem[1])
        assert isinstance(update, dict)
        model = update.get("model") or request.query.get("model")
        if refused := self.model_problem(model):
            return refused
        call_id = new_id("rtc_")
        session = self.new_session(str(model), update, call_id)
        call = self.ledger.calls[call_id] = Call(call_id, offer, session, token or "", ctype)
        answer = await self.answerer(offer, call)
        return web.Response(status=201, text=answer, content_type="application/sdp",
                            headers={"Location": f"/v1/realtime/calls/{call_id}"})

    async def hangup(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.delay)
        if self.authorize(self.credential(request)) is None:
            return self.unauthorized()
        call = self.ledger.calls.get(request.match_info["call_id"])
        if call is None:
            return self.refuse(404, "No call found with that id.", "call_id_not_found",
                               "call_id")
        self.ledger.hangups.append(call.id)
        await call.session.end()
        return web.Response(status=200)

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(self.delay)
        token = self.credential(request)
        who = self.authorize(token)
        call_id = request.query.get("call_id")
        if who is None or (call_id and who != "key"):
            return self.unauthorized()
        if call_id:
            call = self.ledger.calls.get(call_id)
            if call is None or call.session.ended:
                return self.refuse(404, "No session found for the provided call_id",
                                   "call_id_not_found", "")
            session, via = call.session, "sideband"
        else:
            secret = who["request"] if isinstance(who, dict) else {}
            model = request.query.get("model") or secret.get("model")
            if refused := self.model_problem(model):
                return refused
            session, via = self.new_session(str(model), secret), "websocket"
        ws = web.WebSocketResponse(protocols=("realtime",), max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        opened = Opened(session.id, via, session.config["model"], session.call_id, token or "",
                        dict(request.headers))
        self.ledger.sockets.append(opened)

        async def close(code: int) -> None:
            await ws.close(code=code)

        attachment = await session.attach(via, ws.send_str, close)
        try:
            async for message in ws:
                if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    await session.receive(message.data, via)
        finally:
            opened.closed = time.monotonic()
            session.detach(attachment)
            if via == "websocket":
                await session.end()
        return ws
