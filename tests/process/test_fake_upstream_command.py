"""`gateway.py fake-upstream`: the fake OpenAI API as a command, for trying configurations and
for a front-end's own tests without a key or a network."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import openai

from ..conftest import ORIGIN, ROOT, GatewayProcess, free_port, wait_for_log


class Fake:
    def __init__(self, tmp_path, *args: str):
        self.port = free_port()
        self.log_path = tmp_path / f"fake-{self.port}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "gateway.py"), "fake-upstream", "--port",
                 str(self.port), "--log-format", "text", *args], cwd=tmp_path,
                env={k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"},
                stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(20)


async def test_a_gateway_in_front_of_the_fake_upstream(tmp_path):
    fake = Fake(tmp_path, "--model", "gpt-4o-mini", "--model", "tts-1")
    gp = None
    try:
        await wait_for_log(fake, "fake OpenAI API at ", timeout=15)
        base = f"http://127.0.0.1:{fake.port}/v1"
        assert f"{base} (not a real model" in fake.log()
        gp = GatewayProcess({"upstream": {"base_url": base},
                             "cors": {"allow_origins": [ORIGIN]},
                             "validation": {"allowed_models": ["gpt-4o-mini", "tts-1"]}},
                            tmp_path, env={"OPENAI_API_KEY": "anything"}).start()
        await gp.wait_ready()
        async with openai.AsyncOpenAI(base_url=gp.url + "/v1", api_key="unused",
                                      max_retries=0,
                                      default_headers={"Origin": ORIGIN}) as client:
            models = await client.models.list()
            assert [m.id for m in models.data] == ["gpt-4o-mini", "tts-1"]
            chat = await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            assert chat.choices[0].message.content == "This is a fake answer to: hi"
            stream = await client.chat.completions.create(
                model="gpt-4o-mini", stream=True,
                messages=[{"role": "user", "content": "again"}])
            words = [c.choices[0].delta.content async for c in stream
                     if c.choices and c.choices[0].delta.content]
            assert "".join(words) == "This is a fake answer to: again"
    finally:
        if gp is not None:
            gp.stop()
        assert fake.stop() == 0, fake.log()
    assert "stopped" in fake.log() and "Traceback" not in fake.log()


async def test_a_port_in_use_is_said_once(tmp_path):
    first = Fake(tmp_path)
    try:
        await wait_for_log(first, "fake OpenAI API at ", timeout=15)
        second = Fake(tmp_path, "--port", str(first.port))  # the last --port wins
        assert await asyncio.to_thread(second.proc.wait, 20) == 1
        assert f"cannot listen on 127.0.0.1:{first.port}: address already in use" \
            in second.log()
        assert "Traceback" not in second.log()
    finally:
        first.stop()
