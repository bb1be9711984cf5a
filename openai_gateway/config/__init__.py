"""The configuration: sections, the loader, limit grammar, storage URLs, secrets; parsed once.

The names callers need are here (`from ..config import Settings, load`): what settings.py
offers, one list (its `__all__`); the value parsers stay in their modules (limits.py,
storage.py).
"""
from .settings import *  # noqa: F403
from .settings import __all__  # noqa: F401
