"""Shared state for several gateway processes: a memcached ring and Redis, behind one batched
interface (`BatchStore`), with typed errors (`StoreError`, `ServerDown`).

The bottom layer: it imports nothing from the rest of the gateway.
"""
from __future__ import annotations

from .batch import Batch, BatchStore
from .errors import ServerDown, StoreError
from .limits_storage import RingStorage  # registers async+memcached+ring with limits
from .memcached import MemcachedCluster
from .ring import Ring
from .windows import Stats, Window

__all__ = ["Batch", "BatchStore", "MemcachedCluster", "Ring", "RingStorage", "ServerDown", "Stats",
           "StoreError", "Window"]
