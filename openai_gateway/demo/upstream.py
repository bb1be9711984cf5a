"""The demo upstream: the fake OpenAI API saying "[demo] ..." at a model's pace, served on a
loopback port by the gateway's own event loop."""
from __future__ import annotations

import logging
import random
import socket
from collections.abc import AsyncIterator

from aiohttp import web

from .defaults import DEMO_MODELS
from .fake_media import FakeMedia
from .fake_openai import FakeOpenAI

log = logging.getLogger("gateway")

#: Seconds after each streamed word: some 20 words a second, a hosted model's pace.
WORD_DELAY = (0.03, 0.06)
DEMO_HEADERS = {"X-Demo": "true"}
#: Seconds between two pieces of speech (a tenth of a second of audio each: twice as fast as
#: it plays) and between two image events: media arrive over time, as a real upstream's do.
MEDIA_PACE = 0.05


def reply_text(prompt: str, stream: bool = False) -> str:
    """The canned answer: clearly a demo, true of how it was sent, and the same for the same
    prompt (so a repeat can be a cache hit)."""
    asked = " ".join(prompt.split())
    asked = asked if len(asked) <= 80 else asked[:77] + "..."
    if stream:
        how = ("It was streamed, one word per server-sent event at some 20 words a second, and "
               "the gateway passed each event on as it arrived.")
        repeat = "gets it from the cache (X-Cache: HIT), replayed at once"
    else:
        how = ("It came whole, as one JSON answer; ask with \"stream\": true (the playground's "
               "Stream box) to see it arrive word by word.")
        repeat = "gets it from the cache (X-Cache: HIT)"
    return (f"[demo] This answer comes from the gateway's built-in demo upstream, not from a "
            f"real model: you wrote \"{asked or 'nothing'}\". {how} With the cache on (the "
            f"default), sending the same message again {repeat}. Quick repeats meet the rate "
            "limit (429): 20 requests a minute in demo mode, unless the config file sets its "
            "own. Start the gateway without --demo, with OPENAI_API_KEY set, to talk to a real "
            "model.")


class DemoOpenAI(FakeOpenAI):
    """The fake OpenAI API with the demo's words, pace and labels."""

    def text(self, request: web.Request, prompt: str, stream: bool) -> str:
        return reply_text(prompt, stream)

    def pace(self, request: web.Request) -> float:
        return random.uniform(*WORD_DELAY)

    def error(self, status: int, message: str, param: str | None = None,
              code: str | None = None) -> web.Response:
        return super().error(status, "[demo] " + message, param, code)


class DemoUpstream:
    """The demo upstream; bound at once (so its URL is known before the gateway is built),
    served by `attach(app)` inside the gateway app's lifetime."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.fake = DemoOpenAI(models=DEMO_MODELS, headers=DEMO_HEADERS, owned_by="demo",
                               media=FakeMedia(pace=MEDIA_PACE))

    def app(self) -> web.Application:
        return self.fake.app()

    def attach(self, app: web.Application, playground_url: str | None = None) -> None:
        """Serve the demo upstream while `app` runs, and mark every answer `X-Demo: true`.
        `playground_url`, when given, is logged at start so the user knows where to go."""

        async def serving(app: web.Application) -> AsyncIterator[None]:
            runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True)
            await runner.setup()
            await web.SockSite(runner, self.sock).start()
            log.info("demo mode: answers come from the built-in demo upstream at %s, not from "
                     "a real model (no API key, no outside network; every answer is marked "
                     "X-Demo: true)%s", self.base_url,
                     f"; playground: {playground_url}" if playground_url else "")
            try:
                yield
            finally:
                await runner.cleanup()

        app.cleanup_ctx.insert(0, serving)  # first in, last out: after streams drained
        app.on_response_prepare.append(_mark_demo)


async def _mark_demo(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare of the gateway: every answer in demo mode says it is one."""
    response.headers.update(DEMO_HEADERS)
