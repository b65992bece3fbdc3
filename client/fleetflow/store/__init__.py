"""The result store: payloads above the inline limit, kept outside the coordinator.

Producers (workers, and clients for large arguments) write payloads here and
pass on a reference (:class:`~fleetflow.store.refs.StoredRef`); consumers
read what they need when they need it. See docs/architecture.md, "Where bytes
live", and the README's "Large data" section.
"""

from fleetflow.store.codec import chunk_frames, encode_frame
from fleetflow.store.objects import ObjectInfo, ObjectStore, StoreMarker
from fleetflow.store.refs import (
    StoredItem,
    StoredItems,
    StoredRef,
    flow_prefix,
    result_key,
    valid_key,
)

__all__ = [
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
