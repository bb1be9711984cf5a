"""Demo mode (`python gateway.py --demo`): a built-in upstream that needs no key and no network.

The demo upstream is the package's fake OpenAI API (`fake_openai.FakeOpenAI`, the same one the
tests' fake upstream is built on) answering every forwarded route in OpenAI's formats, with
canned text, streams paced like a model, `usage` included. It listens on an ephemeral loopback
port in the gateway's own event loop, and the gateway is pointed at it, so everything in front
of it (streaming, cache, limits, CORS, the playground) is the real thing.

Every demo answer says so: its text starts with "[demo]" and every gateway response carries
`X-Demo: true`. Demo mode is on only when `--demo` is given; it is one process, and SIGHUP does
not reload it.

What `--demo` changes (`demo_settings`): the upstream URL and key always, the gateway's own
origin is always added to `cors.allow_origins` (the playground's POSTs carry it), and the
`DEMO_DEFAULTS` replace settings that still have their built-in value (a value the config file
changed wins).
"""
from .defaults import DEMO_DEFAULTS, DEMO_KEY, DEMO_MODELS, demo_settings
from .fake_openai import FakeOpenAI
from .upstream import DEMO_HEADERS, DemoOpenAI, DemoUpstream, reply_text

__all__ = ["DEMO_DEFAULTS", "DEMO_HEADERS", "DEMO_KEY", "DEMO_MODELS", "DemoOpenAI",
           "DemoUpstream", "FakeOpenAI", "demo_settings", "reply_text"]
