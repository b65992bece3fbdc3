"""Persistence behind one boundary: the core's changes in, rows out at start.

``MemoryStore`` (tests, ``--db :memory:``) and ``SqliteStore`` (the embedded
default) implement the same :class:`~fleetflow_coordinator.store.base.Store`
protocol and pass the same contract tests.
"""

from fleetflow_coordinator.store.base import RowBatch, RowSnapshot, Store, StoreError
from fleetflow_coordinator.store.memory import MemoryStore
from fleetflow_coordinator.store.sqlite import SqliteStore, open_store

__all__ = [
    "MemoryStore",
    "RowBatch",
    "RowSnapshot",
    "SqliteStore",
    "Store",
    "StoreError",
    "open_store",
]
