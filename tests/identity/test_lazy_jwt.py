"""PyJWT and OpenSSL's bindings (about 9 MB of every process) load only when a token is
signed or read: a gateway with no login provider that never sees a token does without them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import sys
from openai_gateway.app import COMPONENTS, create_app
from openai_gateway.config.settings import parse

def loaded():
    return sorted(m for m in ("jwt", "cryptography.hazmat.bindings._rust") if m in sys.modules)

settings = parse({}, environ={"OPENAI_API_KEY": "sk-x"})
app = create_app(settings, demo=True)
print(loaded())
app[COMPONENTS].auth.minter.mint("42", minted_by="cli")
print(loaded())
"""


def test_jwt_loads_at_the_first_token_only():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    before, after = out.stdout.splitlines()
    assert before == "[]"
    assert "'jwt'" in after
