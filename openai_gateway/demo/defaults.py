"""What `--demo` changes in the settings (see the package docstring)."""
from __future__ import annotations

from dataclasses import replace

from ..config.settings import Settings
from ..http.playground import own_origins

#: The text models, and one model for each voice and pictures route (the playground reads
#: answers aloud and draws in its image tab).
DEMO_MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "omni-moderation-latest",
               "gpt-4o-mini-tts", "gpt-4o-mini-transcribe", "gpt-image-1-mini")
#: Sent upstream instead of a real key: the demo upstream ignores it, and it is not a secret.
DEMO_KEY = "demo-upstream-needs-no-key"
#: (section, field) -> the demo's value, applied only while the setting has its default.
DEMO_DEFAULTS = {
    ("playground", "enabled"): True,               # the page at / is what the demo is for
    ("cache", "sampled"): True,                    # the page sends no temperature: repeats HIT
    ("rate_limit", "requests"): ("20/minute",),    # a 429 is a few quick clicks away
    ("validation", "allowed_models"): DEMO_MODELS,  # the model picker offers more than one
}


def demo_settings(s: Settings, base_url: str) -> Settings:
    """The settings `--demo` serves with: the demo upstream at `base_url` with the demo key,
    one worker, the gateway's own origins allowed, and `DEMO_DEFAULTS` where the file kept
    the default."""
    for (section, name), value in DEMO_DEFAULTS.items():
        current = getattr(s, section)
        if getattr(current, name) == getattr(type(current)(), name):
            s = replace(s, **{section: replace(current, **{name: value})})
    allow = s.cors.allow_origins
    allow += tuple(o for o in own_origins(s.server) if o not in allow)
    return replace(s, cors=replace(s.cors, allow_origins=allow),
                   upstream=replace(s.upstream, base_url=base_url, fallbacks=()),
                   server=replace(s.server, workers=1), api_key=DEMO_KEY, fallback_keys=())
