"""The store sits right above the config: it imports nothing else of the gateway."""
from __future__ import annotations

import ast
from pathlib import Path

STORE = Path(__file__).resolve().parent.parent / "openai_gateway" / "store"


def test_store_imports_nothing_above_it():
    offenders = []
    for path in sorted(STORE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            below = node.level == 2 and (node.module or "").startswith("config") \
                if isinstance(node, ast.ImportFrom) else False
            if isinstance(node, ast.ImportFrom) and not below and (node.level > 1 or (
                    node.level == 0 and (node.module or "").startswith("openai_gateway"))):
                offenders.append(f"{path.name}: from {'.' * node.level}{node.module or ''}")
            if isinstance(node, ast.Import):
                offenders += [f"{path.name}: import {a.name}" for a in node.names
                              if a.name.startswith("openai_gateway")]
    assert len(list(STORE.glob("*.py"))) >= 8 and offenders == []
