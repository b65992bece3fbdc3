"""The result store: payloads above the inline limit, kept outside the coordinator.

Producers (workers, and clients for large arguments) write payloads here and
pass on a reference (:class:`~fleetflow.store.refs.StoredRef`); consumers
read what they need when they need it. See docs/architecture.md, "Where bytes
live", and the README's "Large data" section.

Importing this package does not import gRPC (task processes use it);
:class:`StoreClient` and ``TransferClient``, which do, load on first use.
"""

from typing import Any

from fleetflow.store.codec import (
    chunk_frames,
    encode_frame,
    encode_items_frame,
    frame_size,
    item_chunks,
)
from fleetflow.store.objects import ObjectInfo, ObjectStore, StoreMarker, StoreSpec, open_spec
from fleetflow.store.refs import (
    StoredItem,
    StoredItems,
    StoredRef,
    flow_prefix,
    result_key,
    valid_key,
)

__all__ = [
    "StoreClient",
    "StoreSpec",
    "open_spec",
    "encode_items_frame",
    "frame_size",
    "item_chunks",
    "ObjectInfo",
    "ObjectStore",
    "StoreMarker",
    "StoredItem",
    "StoredItems",
    "StoredRef",
    "chunk_frames",
    "encode_frame",
    "flow_prefix",
    "result_key",
    "valid_key",
]


def __getattr__(name: str) -> Any:
    if name == "StoreClient":
        from fleetflow.store.access import StoreClient

        return StoreClient
    raise AttributeError(f"module 'fleetflow.store' has no attribute {name!r}")
