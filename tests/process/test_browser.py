"""The gateway seen from a real browser: Debian's chromium, headless, driven by Selenium
(tests/support/browser.py). Selenium's API blocks, so every call runs in a thread: the fake
upstream and the test page servers live in this test's event loop.
"""
from __future__ import annotations

import asyncio
import json
import os
import struct

from aiohttp import web
from selenium.webdriver.common.by import By

from openai_gateway.app import create_app
from openai_gateway.config.settings import parse

from ..conftest import KEY, ROOT, access_lines, base_config, free_port, merge
from ..support.browser import Browser, watch_reply

ARTIFACTS = ROOT / "tests" / "artifacts"
#: The README's screenshots (playground-STATE.png); rewritten only with UPDATE_SCREENSHOTS=1.
SCREENSHOTS = ROOT / "tests" / "screenshots"


async def page_server(aiohttp_server, html: str) -> str:
    """A tiny static site on another port (another origin); returns its origin."""
    app = web.Application()

    async def page(request):
        return web.Response(text=html, content_type="text/html")

    app.router.add_get("/", page)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}"


# --- the playground against `gateway.py --demo` ---------------------------------------------


async def test_playground_streams_a_reply_as_it_is_generated(browser, demo_process):
    gp = await demo_process()
    await browser.open_playground(gp.url)
    assert await browser.js("return !document.getElementById('demo-badge').hidden")
    # Before the first message the panel shows nothing (the model list is not an answer).
    assert await browser.text("status") == "–" and await browser.text("request-id") == "–"
    # Demo mode serves /gateway/demo-token: the sign-in box shows; no budget, no money rows.
    assert await browser.js("return !document.getElementById('signin').hidden")
    assert await browser.js("return document.getElementById('spend').hidden")
    await browser.send("Hello from a real browser")
    samples = await watch_reply(browser)
    final = samples[-1][1]
    assert samples[-1][0] == "done" and final.startswith("[demo] ")
    assert "Hello from a real browser" in final
    # Seen growing while the stream was open: several partial states, each a prefix of the end.
    partial = {text for state, text in samples
               if state == "streaming" and 0 < len(text) < len(final)}
    assert len(partial) >= 5, samples
    assert all(final.startswith(text) for text in partial)
    # The side panel shows what the gateway added.
    assert await browser.text("status") == "200"
    assert await browser.text("x-cache") == "MISS"
    assert (await browser.text("request-id")).startswith("req_")
    assert (await browser.text("ratelimit")).endswith(" of 20")
    assert (await browser.text("ttft")).endswith(" ms")
    assert float(await browser.text("tps")) > 5
    # The same message again comes from the cache.
    await browser.send("Hello from a real browser")
    await browser.wait("return document.querySelectorAll('.msg.assistant').length === 2 && "
                       "document.getElementById('x-cache').textContent === 'HIT'")


#: Where the composer, the side panel and the newest message are, and whether the page scrolled.
LAYOUT = """const box = (id) => document.getElementById(id).getBoundingClientRect();
const t = document.getElementById('transcript');
const last = [...t.querySelectorAll('.msg')].pop().getBoundingClientRect();
return {form: [box('form').top, box('form').bottom], aside: [box('model').top],
        height: window.innerHeight, pageScroll: window.scrollY,
        scrolled: t.scrollTop, overflow: t.scrollHeight > t.clientHeight,
        lastVisible: last.bottom <= t.getBoundingClientRect().bottom + 1};"""


async def test_the_composer_and_the_panel_stay_in_view_in_a_long_chat(browser, demo_process):
    gp = await demo_process({"rate_limit": {"requests": ["100/minute"]}})
    await browser.open_playground(gp.url)
    await browser.js("document.getElementById('stream').checked = false")
    for i in range(8):
        await browser.send("A long chat")  # answered from the cache after the first
        await browser.wait(f"return document.querySelectorAll('.msg.assistant').length === {i + 1}"
                           " && document.getElementById('send').textContent === 'Send'")
    layout = await browser.js(LAYOUT)
    assert layout["overflow"] and layout["scrolled"] > 0, layout  # the transcript scrolls...
    assert layout["pageScroll"] == 0                               # ...the page does not
    assert 0 < layout["form"][0] and layout["form"][1] <= layout["height"], layout
    assert 0 < layout["aside"][0] < layout["height"]
    assert layout["lastVisible"], layout  # the newest answer is the one on screen
    assert await browser.js("return document.getElementById('prompt').value") == ""


async def screenshot(browser: Browser, state: str, readme: bool = True) -> None:
    """tests/artifacts/playground-STATE.png; the README's copy only with UPDATE_SCREENSHOTS=1."""
    png = await asyncio.to_thread(browser.driver.get_screenshot_as_png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 800 and height >= 500
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"playground-{state}.png").write_bytes(png)
    if readme and os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(exist_ok=True)
        (SCREENSHOTS / f"playground-{state}.png").write_bytes(png)
        if state == "cache-hit":  # the overview at the README's top
            (SCREENSHOTS / "playground.png").write_bytes(png)


async def test_screenshots_of_the_playground(browser, demo_process):
    """One per state the README shows: streaming, a cache hit, rate-limited."""
    # The page's model list counts too: two chats, then the third is refused.
    gp = await demo_process({"rate_limit": {"requests": ["3/minute"]}})
    await browser.open_playground(gp.url)
    question = "Why put a gateway between a web page and the OpenAI API?"
    await browser.send(question)
    await browser.wait("const r = [...document.querySelectorAll('.msg.assistant')].pop();"
                       "return r && r.dataset.state === 'streaming' && r.textContent.length > 160")
    await screenshot(browser, "streaming")
    await watch_reply(browser)
    await browser.send(question)
    await browser.wait("return document.querySelectorAll('.msg.assistant').length === 2 && "
                       "document.getElementById('x-cache').textContent === 'HIT' && "
                       "document.getElementById('send').textContent === 'Send'")
    await screenshot(browser, "cache-hit")
    await browser.send(question)
    await browser.wait("return !document.getElementById('error').hidden")
    assert await browser.text("status") == "429"
    await screenshot(browser, "rate-limited")


# --- sign in as (demo) ------------------------------------------------------------------------


async def test_sign_in_as_uses_the_token_for_later_calls(browser, aiohttp_server, upstream_url):
    """The page against a gateway with stand-ins for the demo-token route and spend headers."""
    port = free_port()
    settings = parse(merge(base_config(upstream_url), {
        "playground": {"enabled": True},
        "cors": {"allow_origins": [f"http://127.0.0.1:{port}"]}}),
        environ={"OPENAI_API_KEY": KEY})
    app = create_app(settings)
    users, bearers = [], []

    async def demo_token(request: web.Request) -> web.Response:
        users.append((await request.json())["user"])
        return web.json_response({"token": f"tok-{users[-1]}", "expires_at": 0})

    @web.middleware
    async def record(request: web.Request, handler):
        if request.path == "/v1/chat/completions":
            bearers.append(request.headers.get("Authorization"))
        return await handler(request)

    async def mark_demo(request, response):
        response.headers["X-Demo"] = "true"
        if request.path == "/v1/chat/completions" and bearers[-1]:  # a signed-in user's budget
            response.headers.update({"x-ratelimit-limit-spend": "0.50",
                                     "x-ratelimit-remaining-spend": "0.4213",
                                     "x-gateway-cost-usd": "0.0000366"})

    app.router.add_post("/gateway/demo-token", demo_token)
    app.middlewares.append(record)
    app.on_response_prepare.append(mark_demo)
    await aiohttp_server(app, port=port)
    await browser.open_playground(f"http://127.0.0.1:{port}")
    await browser.wait("return !document.getElementById('signin').hidden")
    await browser.send("before")
    await watch_reply(browser)
    # No dollar budget, no money rows.
    assert await browser.js("return document.getElementById('spend').hidden && "
                            "document.getElementById('cost').hidden")

    def sign_in():
        browser.driver.find_element(By.ID, "signin-user").send_keys("alice")
        browser.driver.find_element(By.ID, "signin-button").click()
    await asyncio.to_thread(sign_in)
    await browser.wait("return document.getElementById('signin').dataset.user === 'alice'")
    assert "Signed in as alice" in await browser.text("signin-state")
    await browser.send("after")
    await watch_reply(browser)
    await screenshot(browser, "signed-in", readme=False)
    assert await browser.text("spend") == "$0.42 of $0.50"
    assert await browser.text("cost") == "$0.000037"
    assert users == ["alice"]
    assert bearers == [None, "Bearer tok-alice"]


# --- pages on other origins ----------------------------------------------------------------

#: A front-end on another origin: streams a chat through the gateway given as ?gw=URL.
STREAMING_PAGE = """<!doctype html><meta charset="utf-8"><pre id="out" data-state="idle"></pre>
<script>
const gw = new URLSearchParams(location.search).get("gw");
const out = document.getElementById("out");
(async () => {
  try {
    const resp = await fetch(gw + "/v1/chat/completions", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({model: "gpt-4o-mini", stream: true,
                            messages: [{role: "user", content: "hi"}]})});
    out.dataset.status = resp.status;
    out.dataset.requestId = resp.headers.get("X-Request-ID");
    out.dataset.remaining = resp.headers.get("x-ratelimit-remaining-requests");
    out.dataset.state = "streaming";
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += value;
      const events = buffer.split("\\n\\n");
      buffer = events.pop();
      for (const e of events) {
        const data = e.slice(6);
        if (data !== "[DONE]") out.textContent += JSON.parse(data).choices[0].delta.content ?? "";
      }
    }
    out.dataset.state = "done";
  } catch (e) {
    out.dataset.state = "rejected: " + e.name;
  }
})();
</script>"""

#: A page on a foreign origin trying three ways to get a chat out of the gateway.
FOREIGN_PAGE = """<!doctype html><meta charset="utf-8"><body data-state="running"><script>
const gw = new URLSearchParams(location.search).get("gw");
const body = JSON.stringify({model: "gpt-4o-mini", messages: [{role: "user", content: "hi"}]});
const results = {};
async function attempt(name, init) {
  try {
    const r = await fetch(gw + "/v1/chat/completions", {method: "POST", body, ...init});
    results[name] = `status ${r.status} ${r.type}`;
  } catch (e) {
    results[name] = "rejected: " + e.name;
  }
}
(async () => {
  // JSON: the browser asks first (preflight) and the gateway refuses.
  await attempt("json", {headers: {"Content-Type": "application/json"}});
  // A "simple" request is sent without asking: CORS would only hide the answer.
  await attempt("simple", {headers: {"Content-Type": "text/plain"}});
  // no-cors: the page cannot read the answer, but the request is sent all the same.
  await attempt("no-cors", {mode: "no-cors", headers: {"Content-Type": "text/plain"}});
  document.body.dataset.results = JSON.stringify(results);
  document.body.dataset.state = "done";
})();
</script></body>"""


async def test_a_page_on_an_allowed_origin_streams_through_the_gateway(
        browser, aiohttp_server, gateway_process, fake):
    origin = await page_server(aiohttp_server, STREAMING_PAGE)
    gp = await gateway_process({"cors": {"allow_origins": [origin]}})
    fake.chunks, fake.chunk_delay = 20, 0.05
    await browser.get(f"{origin}/?gw={gp.url}")
    texts = []
    while True:
        state, text = await browser.js("const o = document.getElementById('out'); "
                                       "return [o.dataset.state, o.textContent]")
        texts.append(text)
        if state != "streaming" and state != "idle":
            break
        await asyncio.sleep(0.02)
    assert state == "done"
    assert text == "".join(f"w{i} " for i in range(20))
    assert len({t for t in texts if 0 < len(t) < len(text)}) >= 5  # it streamed
    out = await browser.js("return {...document.getElementById('out').dataset}")
    # Headers exposed through CORS are readable by the page.
    assert out["status"] == "200" and out["requestId"].startswith("req_")
    assert out["remaining"].isdigit()
    assert fake.posts[0].headers.get("Origin") is None  # the Origin stays at the gateway


async def test_a_page_on_a_foreign_origin_is_refused_and_nothing_reaches_the_upstream(
        browser, aiohttp_server, gateway_process, fake):
    origin = await page_server(aiohttp_server, FOREIGN_PAGE)
    gp = await gateway_process()  # allows only http://localhost:5173
    await browser.get(f"{origin}/?gw={gp.url}")
    results = json.loads(await browser.wait(
        "return document.body.dataset.state === 'done' && document.body.dataset.results"))
    assert results == {"json": "rejected: TypeError", "simple": "rejected: TypeError",
                       "no-cors": "status 0 opaque"}
    assert fake.posts == []
    # The gateway answered each attempt (the preflight, then the two sent requests) with 403.
    await asyncio.sleep(0.2)
    chats = [(line["method"], line["status"]) for line in access_lines(gp)
             if line["path"] == "/v1/chat/completions"]
    assert chats == [("OPTIONS", 403), ("POST", 403), ("POST", 403)]


# --- errors as a real app shows them ---------------------------------------------------------


async def test_playground_shows_refusals_as_user_facing_messages(
        browser, gateway_process, fake):
    port = free_port()
    gp = await gateway_process({
        "server": {"port": port}, "playground": {"enabled": True},
        "cors": {"allow_origins": [f"http://127.0.0.1:{port}"]},
        "rate_limit": {"requests": ["4/minute"]}, "validation": {"max_input_chars": 40}})
    await browser.open_playground(gp.url)
    error = ("return document.getElementById('error').hidden ? '' : "
             "document.getElementById('error').textContent")

    await browser.send("x" * 60)  # over validation.max_input_chars: 400
    assert (await browser.wait(error)).startswith("The request was refused: ")
    for i in range(2):  # every request counts: the model list, the refused one, two chats
        await browser.send(f"message {i}")
        samples = await watch_reply(browser)
        assert samples[-1] == ("done", "".join(f"w{j} " for j in range(5)))
        assert await browser.js(error) == ""
    await browser.send("one too many")
    message = await browser.wait(error)
    assert message.startswith("You're sending messages too fast. Please wait ")
    assert await browser.text("status") == "429"
    assert await browser.text("ratelimit") == "0 of 4"
    assert len(fake.posts) == 2


async def test_playground_on_an_origin_the_gateway_does_not_allow(browser, gateway_process, fake):
    gp = await gateway_process({"playground": {"enabled": True}})
    await browser.open_playground(gp.url)  # GET /v1/models carries no Origin: it works
    await browser.send("hello")
    message = await browser.wait("return document.getElementById('error').textContent")
    assert "not allowed to use the gateway" in message
    assert fake.posts == []
