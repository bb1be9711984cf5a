"""nginx configurations generated into a temp dir: the canned JSON upstream and the reference proxy.

Both run the real nginx binary with their own prefix, pid file, error log and temp paths, so
nothing touches the system's nginx. One worker each: the machine has two cores and each side of
the benchmark gets one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# A chat.completion as OpenAI returns it, `usage` included (the gateway charges tokens from it).
CHAT_COMPLETION = (
    '{"id":"chatcmpl-bench0001","object":"chat.completion","created":1700000000,'
    '"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant",'
    '"content":"Hello! How can I help you today?","refusal":null},"logprobs":null,'
    '"finish_reason":"stop"}],"usage":{"prompt_tokens":24,"completion_tokens":9,'
    '"total_tokens":33,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},'
    '"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,'
    '"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},'
    '"service_tier":"default","system_fingerprint":"fp_bench"}'
)
MODELS = (
    '{"object":"list","data":['
    '{"id":"gpt-4o-mini","object":"model","created":1721172741,"owned_by":"system"},'
    '{"id":"gpt-4o","object":"model","created":1715367049,"owned_by":"system"},'
    '{"id":"text-embedding-3-small","object":"model","created":1705948997,"owned_by":"system"}]}'
)
NOT_FOUND = ('{"error":{"message":"not found","type":"invalid_request_error","param":null,'
             '"code":null}}')


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None)


def _common(prefix: Path) -> str:
    # `user root` only matters when started as root: the default `nobody` worker could not
    # reach the private temp dir. daemon off keeps the master as our child, so we stop it by pid.
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""
{user}
daemon off;
worker_processes 1;
worker_rlimit_nofile 19000;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 18000; multi_accept on; }}
"""


def _http_paths(prefix: Path) -> str:
    return "\n".join(f"  {kind}_temp_path {prefix}/{kind}_temp;"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))


def mock_upstream(prefix: Path, port: int, sse_port: int | None = None) -> str:
    """nginx answering like OpenAI: canned chat completion and model list, nothing else.

    With `sse_port`, a chat request that asks for `Accept: text/event-stream` is relayed
    (unbuffered) to the SSE mock on that port instead, so one upstream serves both kinds (the
    soak drives one gateway with both). The `if` only does `rewrite ... last`, its safe use."""
    sse_upstream = sse_location = sse_if = ""
    if sse_port:
        sse_upstream = f"""
  upstream sse {{
    server 127.0.0.1:{sse_port};
    keepalive 64;
  }}"""
        sse_if = 'if ($http_accept ~* "event-stream") { rewrite ^ /sse-chat last; } '
        sse_location = """
    location = /sse-chat {
      internal;
      proxy_pass http://sse/v1/chat/completions;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 600s;
    }"""
    return _common(prefix) + f"""
http {{
  access_log off;
{_http_paths(prefix)}
  keepalive_requests 100000000;  # the proxies' pools must never be forced to reconnect
  keepalive_timeout 300s;{sse_upstream}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    default_type application/json;
    location = /v1/chat/completions {{ {sse_if}return 200 '{CHAT_COMPLETION}'; }}{sse_location}
    location = /v1/models {{ return 200 '{MODELS}'; }}
    location = /healthz {{ return 200 'ok'; }}
    location / {{ return 404 '{NOT_FOUND}'; }}
  }}
}}
"""


def reverse_proxy(prefix: Path, port: int, upstream_port: int) -> str:
    """nginx as a plain reverse proxy: the C reference for what a proxy hop costs.

    Set up as in our sample site: HTTP/1.1 keep-alive pool to the upstream, the key injected,
    no buffering (so SSE chunks are relayed as they arrive).
    """
    return _common(prefix) + f"""
http {{
  access_log off;
{_http_paths(prefix)}
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  upstream mock {{
    server 127.0.0.1:{upstream_port};
    keepalive 512;
    keepalive_requests 100000000;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /healthz {{ return 200 'ok'; }}
    location / {{
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer sk-bench";
      proxy_buffering off;
      proxy_read_timeout 600s;
    }}
  }}
}}
"""


def write(prefix: Path, text: str) -> Path:
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    return conf


def command(binary: str, prefix: Path, conf: Path) -> list[str]:
    # -e: error log before the config is read (else nginx opens the system's /var/log path).
    return [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
