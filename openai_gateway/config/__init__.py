"""The configuration: sections, the loader, limit grammar, storage URLs, secrets; parsed once.

The names callers need are here (`from ..config import Settings, load`); the value parsers
stay in their modules (limits.py, storage.py).
"""
from .settings import (
    DEFAULT_ROUTES,
    AuthSettings,
    BudgetSettings,
    CacheSettings,
    ClientSettings,
    ConfigError,
    CorsSettings,
    FallbackSettings,
    IssuerSettings,
    LogSettings,
    MetricsSettings,
    PlaygroundSettings,
    PriceSettings,
    RateLimitSettings,
    RuleSettings,
    ServerSettings,
    SessionSettings,
    Settings,
    StorageSettings,
    TierSettings,
    TokenSettings,
    UpstreamSettings,
    ValidationSettings,
    load,
    parse,
    resolve_workers,
)

__all__ = [
    "DEFAULT_ROUTES", "AuthSettings", "BudgetSettings", "CacheSettings", "ClientSettings",
    "ConfigError", "CorsSettings", "FallbackSettings", "IssuerSettings", "LogSettings",
    "MetricsSettings", "PlaygroundSettings", "PriceSettings", "RateLimitSettings",
    "RuleSettings", "ServerSettings", "SessionSettings", "Settings", "StorageSettings",
    "TierSettings", "TokenSettings", "UpstreamSettings", "ValidationSettings", "load", "parse",
    "resolve_workers",
]
