"""The playground loads without a single console error, in demo mode and not: a front-end's
reference must not teach that a red line on every load is normal."""
from __future__ import annotations

from ..conftest import free_port
from ..support.browser import watch_reply


async def test_the_demo_playground_loads_and_chats_without_a_console_error(browser,
                                                                           demo_process):
    gp = await demo_process()
    await browser.open_playground(gp.url)
    # Demo mode: the sign-in box is offered, known from the answers' X-Demo, not from a probe.
    await browser.wait("return !document.getElementById('signin').hidden")
    await browser.send("hello")
    await watch_reply(browser)
    assert await browser.console_errors() == []


async def test_the_playground_loads_without_a_console_error_outside_demo_mode(
        browser, gateway_process, fake):
    port = free_port()
    gp = await gateway_process({"server": {"port": port}, "playground": {"enabled": True},
                                "cors": {"allow_origins": [f"http://127.0.0.1:{port}"]}})
    await browser.open_playground(gp.url)
    await browser.send("hello")
    await watch_reply(browser)
    assert await browser.js("return document.getElementById('signin').hidden")
    assert await browser.console_errors() == []
    assert not [s for s in fake.seen if "demo-token" in s.path]
