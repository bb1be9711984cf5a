"""The playground loads without a single console error, in demo mode and not: a front-end's
reference must not teach that a red line on every load is normal."""
from __future__ import annotations

import asyncio
import os

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from ..conftest import free_port
from ..demo.test_demo import demo_process  # noqa: F401  (a fixture)
from .test_browser import CHROME_ARGS, CHROMEDRIVER, CHROMIUM, Browser, watch_reply


@pytest.fixture
def logging_browser(tmp_path):
    """The tests' headless Chromium, keeping the page's console (the browser log)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: install Debian's chromium and "
                    "chromium-driver", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in CHROME_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    yield Browser(driver)
    driver.quit()


async def console_errors(browser: Browser) -> list[str]:
    entries = await asyncio.to_thread(browser.driver.get_log, "browser")
    return [e["message"] for e in entries if e["level"] in ("SEVERE", "ERROR")]


async def test_the_demo_playground_loads_and_chats_without_a_console_error(
        logging_browser, demo_process):  # noqa: F811
    gp = await demo_process()
    await logging_browser.open_playground(gp.url)
    # Demo mode: the sign-in box is offered, known from the answers' X-Demo, not from a probe.
    await logging_browser.wait("return !document.getElementById('signin').hidden")
    await logging_browser.send("hello")
    await watch_reply(logging_browser)
    assert await console_errors(logging_browser) == []


async def test_the_playground_loads_without_a_console_error_outside_demo_mode(
        logging_browser, gateway_process, fake):
    port = free_port()
    gp = await gateway_process({"server": {"port": port}, "playground": {"enabled": True},
                                "cors": {"allow_origins": [f"http://127.0.0.1:{port}"]}})
    await logging_browser.open_playground(gp.url)
    await logging_browser.send("hello")
    await watch_reply(logging_browser)
    assert await logging_browser.js("return document.getElementById('signin').hidden")
    assert await console_errors(logging_browser) == []
    assert not [s for s in fake.seen if "demo-token" in s.path]
