"""The playground's voice and pictures extras in a real headless Chromium against
`gateway.py --demo`: "Read aloud" plays a demo answer as its speech streams in (Web Audio,
the context running and its clock advancing past the audio scheduled), and the image tab
shows the partial images, then the final one, of a demo image stream."""
from __future__ import annotations

import asyncio
import base64

from ..conftest import access_lines
from ..support.browser import watch_reply

#: The state of the page's audio: the context, and the read-aloud button's counters.
AUDIO = """const b = document.querySelector('.read-aloud');
           return {context: audioContext ? audioContext.state : null,
                   time: audioContext ? audioContext.currentTime : 0,
                   state: b.dataset.state, bytes: Number(b.dataset.bytes || 0)};"""


async def test_read_aloud_plays_a_demo_answer_as_it_streams(browser, demo_process):
    gp = await demo_process()
    await browser.open_playground(gp.url)
    await browser.send("Read me")
    assert (await watch_reply(browser))[-1][0] == "done"
    await browser.wait("return document.querySelector('.read-aloud')")
    await asyncio.to_thread(browser.driver.find_element("css selector", ".read-aloud").click)
    first = await browser.wait(f"const a = (() => {{{AUDIO}}})(); "
                               "return a.state === 'playing' && a.bytes > 0 && a")
    # Playing while the rest still arrives: more bytes come, the clock runs on.
    await asyncio.sleep(1.5)
    later = await browser.js(AUDIO)
    assert later["context"] == "running" and later["state"] == "playing", later
    assert later["bytes"] > first["bytes"] + 48_000  # over a second of PCM more
    assert later["time"] - first["time"] > 1.0  # the audio clock advanced: it is playing
    # A second click stops it, and the gateway's request ends with it.
    await asyncio.to_thread(browser.driver.find_element("css selector", ".read-aloud").click)
    await browser.wait("return document.querySelector('.read-aloud').dataset.state "
                       "=== 'stopped'")
    for _ in range(100):
        lines = [line for line in access_lines(gp) if line["path"] == "/v1/audio/speech"]
        if lines:
            break
        await asyncio.sleep(0.05)
    # 499: its client left; audio it did not hear may have been made, so the reservation
    # is charged.
    assert [(line["status"], line["charged"]) for line in lines] == [(499, "reservation")]
    assert lines[0]["model"] == "gpt-4o-mini-tts"


async def test_the_image_tab_shows_partial_images_then_the_image(browser, demo_process):
    gp = await demo_process()
    await browser.open_playground(gp.url)
    await browser.wait("return !document.getElementById('tabs').hidden")
    await browser.js("document.querySelector('[data-tab=images]').click()")
    assert await browser.js("return document.getElementById('transcript').hidden")
    await browser.js("document.getElementById('image-prompt').value = 'a red fox'")
    await browser.js("document.getElementById('image-send').click()")
    states = set()
    for _ in range(300):
        state = await browser.js("return document.getElementById('image-view').dataset.state")
        states.add(state)
        if state in ("done", "failed"):
            break
        await asyncio.sleep(0.02)
    assert state == "done" and "partial" in states, states
    src = await browser.js("return document.getElementById('image').src")
    assert src.startswith("data:image/png;base64,")
    assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    size = await browser.js("const i = document.getElementById('image'); "
                            "return [i.naturalWidth, i.naturalHeight]")
    assert size == [64, 64]  # the demo's PNG, decoded by the browser
    assert await browser.text("status") == "200"
