"""The playground page (in-process app): off unless enabled, self-contained, and a warning when
its own origin is not allowed."""
from __future__ import annotations

import re


async def test_playground_is_404_unless_enabled(make_gateway):
    gw = await make_gateway()
    assert (await gw.get("/")).status == 404


async def test_playground_page_is_self_contained(make_gateway):
    gw = await make_gateway({"playground": {"enabled": True}})
    r = await gw.get("/")
    assert r.status == 200 and r.content_type == "text/html" and r.charset == "utf-8"
    page = await r.text()
    # Nothing is loaded from elsewhere: no absolute or protocol-relative URL at all...
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""(src|href|action)\s*=\s*["']?//""", page)
    assert "<script src" not in page and "<link" not in page
    # ...and the browser is told to refuse anything but this page and the gateway.
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert (await gw.post("/", json={})).status == 405


async def test_playground_warns_when_its_own_origin_is_not_allowed(make_gateway, leak_scan):
    await make_gateway({"playground": {"enabled": True}})
    assert any("playground enabled" in t and "cors.allow_origins" in t for t in leak_scan.texts)
    leak_scan.texts.clear()
    await make_gateway({"playground": {"enabled": True},
                        "cors": {"allow_origins": ["http://localhost:8080"]}})
    assert not any("playground enabled" in t for t in leak_scan.texts)
