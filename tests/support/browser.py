"""A real browser for the tests: Debian's chromium, headless, driven by Selenium.

The driver is Debian's /usr/bin/chromedriver, passed explicitly so Selenium never tries to
download one (`make test` installs both packages). A missing browser fails the test with a
clear message rather than skipping it. Selenium's API blocks, so every call runs in a thread:
the servers a test starts live in its event loop.
"""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--window-size=1280,860")

#: The last assistant message in the playground: [state, text].
REPLY = """const r = [...document.querySelectorAll('.msg.assistant')].pop();
           return r ? [r.dataset.state, r.textContent] : [null, ''];"""


def start_chromium(profile: Path, args: tuple[str, ...] = ()) -> Browser:
    """A headless Chromium with its own profile directory and `args` besides CHROME_ARGS; the
    caller quits it (`browser.driver.quit()`). Fails the test, naming the packages to install,
    when the browser or its driver is missing."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: install Debian's chromium and "
                    "chromium-driver (make test does: apt-get install chromium chromium-driver)",
                    pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in CHROME_ARGS + args:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={profile}")
    # Keep the page's console (the "browser" log): a test can assert it has no errors.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    return Browser(driver)


class Browser:
    """The blocking WebDriver calls, awaited from a thread."""

    def __init__(self, driver):
        self.driver = driver

    async def get(self, url: str) -> None:
        await asyncio.to_thread(self.driver.get, url)

    async def js(self, script: str, *args):
        return await asyncio.to_thread(self.driver.execute_script, script, *args)

    async def wait(self, script: str, timeout: float = 15):
        """Until `script` returns something truthy; returns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.js(script)
            if value:
                return value
            await asyncio.sleep(0.03)
        page = await self.js("return document.body.innerText")
        raise AssertionError(f"timed out waiting for: {script}\n{page}")

    async def send(self, text: str) -> None:
        """Type a message into the playground and press Send."""
        def act():
            box = self.driver.find_element(By.ID, "prompt")
            box.clear()
            box.send_keys(text)
            self.driver.find_element(By.ID, "send").click()
        await asyncio.to_thread(act)

    async def text(self, element_id: str) -> str:
        return await self.js(f"return document.getElementById('{element_id}').textContent")

    async def console_errors(self) -> list[str]:
        """The page's console errors so far (failed loads included), each once."""
        entries = await asyncio.to_thread(self.driver.get_log, "browser")
        return [e["message"] for e in entries if e["level"] in ("SEVERE", "ERROR")]

    async def open_playground(self, url: str) -> None:
        await self.get(url + "/")
        await self.wait("return document.getElementById('model').dataset.loaded")


async def watch_reply(browser: Browser, timeout: float = 20) -> list[tuple[str, str]]:
    """Samples of the reply's (state, text) from now until it is done or failed."""
    samples = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state, text = await browser.js(REPLY)
        samples.append((state, text))
        if samples[-1][0] == "done" or (len(samples) > 1 and state is None):
            return samples
        await asyncio.sleep(0.02)
    raise AssertionError(f"the reply did not finish: {samples[-3:]}")
