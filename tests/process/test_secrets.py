"""Secret hygiene: the key never appears in a response, a log line (any level), metrics or
--check."""
from __future__ import annotations

import os
import subprocess
import sys

import aiohttp

from openai_gateway.identity.keys import hash_key

from ..conftest import KEY, ROOT, free_port

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
FALLBACK_KEY = "sk-fallback-SECRET-77aa1e-do-not-leak"
CLIENT_KEY = "gw-client-SECRET-c0ffee"


async def test_fault_matrix_leaks_no_secret_anywhere(gateway_process, fake, upstream_url):
    gp = await gateway_process(
        {"log": {"level": "debug", "format": "json"},
         "upstream": {"base_url": f"http://127.0.0.1:{free_port()}/v1", "retries": 0,
                      "fallbacks": [{"base_url": upstream_url, "api_key_env": "FALLBACK_KEY"}]},
         "rate_limit": {"requests": ["40/minute"], "tokens": ["100000/minute"]},
         "clients": [{"name": "srv", "key_sha256": hash_key(CLIENT_KEY)}]},
        env={"FALLBACK_KEY": FALLBACK_KEY, "PYTHONASYNCIODEBUG": "1"})
    seen: list[str] = []
    steps = [
        ({}, CHAT), ({"status": 500}, CHAT), ({"status": 401}, CHAT), ({"status": 429}, CHAT),
        ({"drop_after": 1}, dict(CHAT, stream=True)), ({"no_done": True}, dict(CHAT, stream=True)),
        ({"raw": b"not json", "ctype": "application/json"}, CHAT),
        ({}, {"model": "nope", "messages": []}), ({}, b"{broken"),
    ]
    async with aiohttp.ClientSession() as s:
        for step, body in steps:
            fake.script = [step]
            kw = {"data": body} if isinstance(body, bytes) else {"json": body}
            async with s.post(gp.url + "/v1/chat/completions", headers={
                    "Authorization": f"Bearer {CLIENT_KEY}", "Origin": "https://evil.example"
                    if step == {} and body is CHAT and not seen else "http://localhost:5173"},
                    **kw) as r:
                seen.append(repr(dict(r.headers)) + (await r.read()).decode("utf-8", "replace"))
        for path in ("/v1/models", "/metrics", "/readyz", "/healthz", "/v1/files", "/../etc"):
            async with s.get(gp.url + path) as r:
                seen.append(repr(dict(r.headers)) + (await r.read()).decode("utf-8", "replace"))
        for _ in range(45):  # into the 429s
            async with s.post(gp.url + "/v1/embeddings", json={"model": "gpt-4o-mini",
                                                                "input": "x"}) as r:
                seen.append(await r.text())
    assert any("upstream_auth_error" in t for t in seen)
    assert any("rate_limit_exceeded" in t for t in seen)
    gp.stop()
    log = gp.log()
    assert '"level": "debug"' in log or '"level":"debug"' in log  # debug output was on
    for secret in (KEY, FALLBACK_KEY, CLIENT_KEY):
        assert secret not in log, f"{secret[:12]}... leaked into the log"
        assert not any(secret in t for t in seen), f"{secret[:12]}... leaked into a response"
    assert FALLBACK_KEY not in "".join(seen)


def test_check_output_and_crash_report_have_no_key(tmp_path):
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    ok = subprocess.run([sys.executable, "gateway.py", "--check"], cwd=ROOT, env=env,
                        capture_output=True, text=True)
    assert ok.returncode == 0 and KEY not in ok.stdout + ok.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[upstream]\nbase_url = "ftp://x"\napi_key_env = "OPENAI_API_KEY"\n')
    p = subprocess.run([sys.executable, "gateway.py", "--config", str(bad), "--check"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    assert p.returncode == 2 and KEY not in p.stdout + p.stderr
    # A crash at start-up (port taken) prints no key either.
    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        cfg = tmp_path / "taken.toml"
        cfg.write_text(f"[server]\nport = {port}\n")
        p = subprocess.run([sys.executable, "gateway.py", "--config", str(cfg)], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=20)
    assert p.returncode == 1 and KEY not in p.stdout + p.stderr
    assert "cannot listen" in p.stderr and "Traceback" not in p.stderr
