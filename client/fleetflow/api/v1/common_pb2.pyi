from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskRunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_RUN_STATE_UNSPECIFIED: _ClassVar[TaskRunState]
    TASK_RUN_STATE_PENDING: _ClassVar[TaskRunState]
    TASK_RUN_STATE_SCHEDULED: _ClassVar[TaskRunState]
    TASK_RUN_STATE_RUNNING: _ClassVar[TaskRunState]
    TASK_RUN_STATE_AWAITING_RETRY: _ClassVar[TaskRunState]
    TASK_RUN_STATE_COMPLETED: _ClassVar[TaskRunState]
    TASK_RUN_STATE_FAILED: _ClassVar[TaskRunState]
    TASK_RUN_STATE_UPSTREAM_FAILED: _ClassVar[TaskRunState]
    TASK_RUN_STATE_CANCELLED: _ClassVar[TaskRunState]
    TASK_RUN_STATE_TIMED_OUT: _ClassVar[TaskRunState]

class FlowRunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FLOW_RUN_STATE_UNSPECIFIED: _ClassVar[FlowRunState]
    FLOW_RUN_STATE_RUNNING: _ClassVar[FlowRunState]
    FLOW_RUN_STATE_COMPLETED: _ClassVar[FlowRunState]
    FLOW_RUN_STATE_FAILED: _ClassVar[FlowRunState]
    FLOW_RUN_STATE_CANCELLED: _ClassVar[FlowRunState]

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_FLOW_RUN_SUBMITTED: _ClassVar[EventKind]
    EVENT_KIND_FLOW_RUN_COMPLETED: _ClassVar[EventKind]
    EVENT_KIND_FLOW_RUN_FAILED: _ClassVar[EventKind]
    EVENT_KIND_FLOW_RUN_CANCELLED: _ClassVar[EventKind]
    EVENT_KIND_NODE_EXPANDED: _ClassVar[EventKind]
    EVENT_KIND_TASK_RUN_SCHEDULED: _ClassVar[EventKind]
    EVENT_KIND_TASK_RUN_STARTED: _ClassVar[EventKind]
    EVENT_KIND_TASK_RUN_COMPLETED: _ClassVar[EventKind]
    EVENT_KIND_TASK_RUN_FAILED: _ClassVar[EventKind]
    EVENT_KIND_TASK_RUN_RETRYING: _ClassVar[EventKind]
    EVENT_KIND_TASK_RUN_UPSTREAM_FAILED: _ClassVar[EventKind]
    EVENT_KIND_TASK_RUN_LEASE_EXPIRED: _ClassVar[EventKind]
    EVENT_KIND_LATE_RESULT_REJECTED: _ClassVar[EventKind]
    EVENT_KIND_TASK_RUN_UNSCHEDULABLE: _ClassVar[EventKind]
    EVENT_KIND_NODE_FAILED: _ClassVar[EventKind]
    EVENT_KIND_TASK_RUN_CANCELLED: _ClassVar[EventKind]
    EVENT_KIND_TASK_RUN_TIMED_OUT: _ClassVar[EventKind]
TASK_RUN_STATE_UNSPECIFIED: TaskRunState
TASK_RUN_STATE_PENDING: TaskRunState
TASK_RUN_STATE_SCHEDULED: TaskRunState
TASK_RUN_STATE_RUNNING: TaskRunState
TASK_RUN_STATE_AWAITING_RETRY: TaskRunState
TASK_RUN_STATE_COMPLETED: TaskRunState
TASK_RUN_STATE_FAILED: TaskRunState
TASK_RUN_STATE_UPSTREAM_FAILED: TaskRunState
TASK_RUN_STATE_CANCELLED: TaskRunState
TASK_RUN_STATE_TIMED_OUT: TaskRunState
FLOW_RUN_STATE_UNSPECIFIED: FlowRunState
FLOW_RUN_STATE_RUNNING: FlowRunState
FLOW_RUN_STATE_COMPLETED: FlowRunState
FLOW_RUN_STATE_FAILED: FlowRunState
FLOW_RUN_STATE_CANCELLED: FlowRunState
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_FLOW_RUN_SUBMITTED: EventKind
EVENT_KIND_FLOW_RUN_COMPLETED: EventKind
EVENT_KIND_FLOW_RUN_FAILED: EventKind
EVENT_KIND_FLOW_RUN_CANCELLED: EventKind
EVENT_KIND_NODE_EXPANDED: EventKind
EVENT_KIND_TASK_RUN_SCHEDULED: EventKind
EVENT_KIND_TASK_RUN_STARTED: EventKind
EVENT_KIND_TASK_RUN_COMPLETED: EventKind
EVENT_KIND_TASK_RUN_FAILED: EventKind
EVENT_KIND_TASK_RUN_RETRYING: EventKind
EVENT_KIND_TASK_RUN_UPSTREAM_FAILED: EventKind
EVENT_KIND_TASK_RUN_LEASE_EXPIRED: EventKind
EVENT_KIND_LATE_RESULT_REJECTED: EventKind
EVENT_KIND_TASK_RUN_UNSCHEDULABLE: EventKind
EVENT_KIND_NODE_FAILED: EventKind
EVENT_KIND_TASK_RUN_CANCELLED: EventKind
EVENT_KIND_TASK_RUN_TIMED_OUT: EventKind

class Resources(_message.Message):
    __slots__ = ("amounts",)
    class AmountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    AMOUNTS_FIELD_NUMBER: _ClassVar[int]
    amounts: _containers.ScalarMap[str, float]
    def __init__(self, amounts: _Optional[_Mapping[str, float]] = ...) -> None: ...

class RetryPolicy(_message.Message):
    __slots__ = ("retries", "retry_delay_seconds", "retry_delays_seconds", "backoff", "max_delay_seconds", "jitter")
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    RETRY_DELAY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RETRY_DELAYS_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_FIELD_NUMBER: _ClassVar[int]
    MAX_DELAY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    JITTER_FIELD_NUMBER: _ClassVar[int]
    retries: int
    retry_delay_seconds: float
    retry_delays_seconds: _containers.RepeatedScalarFieldContainer[float]
    backoff: float
    max_delay_seconds: float
    jitter: float
    def __init__(self, retries: _Optional[int] = ..., retry_delay_seconds: _Optional[float] = ..., retry_delays_seconds: _Optional[_Iterable[float]] = ..., backoff: _Optional[float] = ..., max_delay_seconds: _Optional[float] = ..., jitter: _Optional[float] = ...) -> None: ...

class ValueList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, items: _Optional[_Iterable[bytes]] = ...) -> None: ...

class StoredRef(_message.Message):
    __slots__ = ("key", "size", "checksum", "offset")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    key: str
    size: int
    checksum: bytes
    offset: int
    def __init__(self, key: _Optional[str] = ..., size: _Optional[int] = ..., checksum: _Optional[bytes] = ..., offset: _Optional[int] = ...) -> None: ...

class StoredItems(_message.Message):
    __slots__ = ("count", "chunks")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    count: int
    chunks: _containers.RepeatedCompositeFieldContainer[StoredChunk]
    def __init__(self, count: _Optional[int] = ..., chunks: _Optional[_Iterable[_Union[StoredChunk, _Mapping]]] = ...) -> None: ...

class StoredChunk(_message.Message):
    __slots__ = ("ref", "count")
    REF_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ref: StoredRef
    count: int
    def __init__(self, ref: _Optional[_Union[StoredRef, _Mapping]] = ..., count: _Optional[int] = ...) -> None: ...

class StoredItem(_message.Message):
    __slots__ = ("chunk", "position")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    chunk: StoredRef
    position: int
    def __init__(self, chunk: _Optional[_Union[StoredRef, _Mapping]] = ..., position: _Optional[int] = ...) -> None: ...

class NodeValues(_message.Message):
    __slots__ = ("flow_run_id", "node", "count")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    node: int
    count: int
    def __init__(self, flow_run_id: _Optional[str] = ..., node: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class Values(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[Value]
    def __init__(self, values: _Optional[_Iterable[_Union[Value, _Mapping]]] = ...) -> None: ...

class Value(_message.Message):
    __slots__ = ("pickled", "list", "ref", "item", "items", "values", "node_values")
    PICKLED_FIELD_NUMBER: _ClassVar[int]
    LIST_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    NODE_VALUES_FIELD_NUMBER: _ClassVar[int]
    pickled: bytes
    list: ValueList
    ref: StoredRef
    item: StoredItem
    items: StoredItems
    values: Values
    node_values: NodeValues
    def __init__(self, pickled: _Optional[bytes] = ..., list: _Optional[_Union[ValueList, _Mapping]] = ..., ref: _Optional[_Union[StoredRef, _Mapping]] = ..., item: _Optional[_Union[StoredItem, _Mapping]] = ..., items: _Optional[_Union[StoredItems, _Mapping]] = ..., values: _Optional[_Union[Values, _Mapping]] = ..., node_values: _Optional[_Union[NodeValues, _Mapping]] = ...) -> None: ...

class ArgSpec(_message.Message):
    __slots__ = ("name", "literal", "literal_items", "node", "nodes", "ref", "stored_items", "mapped")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LITERAL_FIELD_NUMBER: _ClassVar[int]
    LITERAL_ITEMS_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    STORED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    MAPPED_FIELD_NUMBER: _ClassVar[int]
    name: str
    literal: bytes
    literal_items: ValueList
    node: int
    nodes: NodeList
    ref: StoredRef
    stored_items: StoredItems
    mapped: bool
    def __init__(self, name: _Optional[str] = ..., literal: _Optional[bytes] = ..., literal_items: _Optional[_Union[ValueList, _Mapping]] = ..., node: _Optional[int] = ..., nodes: _Optional[_Union[NodeList, _Mapping]] = ..., ref: _Optional[_Union[StoredRef, _Mapping]] = ..., stored_items: _Optional[_Union[StoredItems, _Mapping]] = ..., mapped: _Optional[bool] = ...) -> None: ...

class NodeList(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, nodes: _Optional[_Iterable[int]] = ...) -> None: ...

class TaskNode(_message.Message):
    __slots__ = ("task_name", "args", "map", "resources", "retry", "timeout_seconds", "tags", "concurrency_limit", "pool", "fingerprint")
    TASK_NAME_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    task_name: str
    args: _containers.RepeatedCompositeFieldContainer[ArgSpec]
    map: bool
    resources: Resources
    retry: RetryPolicy
    timeout_seconds: float
    tags: _containers.RepeatedScalarFieldContainer[str]
    concurrency_limit: int
    pool: str
    fingerprint: str
    def __init__(self, task_name: _Optional[str] = ..., args: _Optional[_Iterable[_Union[ArgSpec, _Mapping]]] = ..., map: _Optional[bool] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., retry: _Optional[_Union[RetryPolicy, _Mapping]] = ..., timeout_seconds: _Optional[float] = ..., tags: _Optional[_Iterable[str]] = ..., concurrency_limit: _Optional[int] = ..., pool: _Optional[str] = ..., fingerprint: _Optional[str] = ...) -> None: ...

class FlowSpec(_message.Message):
    __slots__ = ("name", "nodes", "output_node", "output_literal", "output_ref", "parameters", "priority", "timeout_seconds", "stored_parameters")
    class StoredParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: StoredRef
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[StoredRef, _Mapping]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_NODE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_LITERAL_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_REF_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STORED_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    nodes: _containers.RepeatedCompositeFieldContainer[TaskNode]
    output_node: int
    output_literal: bytes
    output_ref: StoredRef
    parameters: bytes
    priority: int
    timeout_seconds: float
    stored_parameters: _containers.MessageMap[str, StoredRef]
    def __init__(self, name: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[TaskNode, _Mapping]]] = ..., output_node: _Optional[int] = ..., output_literal: _Optional[bytes] = ..., output_ref: _Optional[_Union[StoredRef, _Mapping]] = ..., parameters: _Optional[bytes] = ..., priority: _Optional[int] = ..., timeout_seconds: _Optional[float] = ..., stored_parameters: _Optional[_Mapping[str, StoredRef]] = ...) -> None: ...

class TaskError(_message.Message):
    __slots__ = ("type", "message", "traceback", "pickled", "log_tail")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    PICKLED_FIELD_NUMBER: _ClassVar[int]
    LOG_TAIL_FIELD_NUMBER: _ClassVar[int]
    type: str
    message: str
    traceback: str
    pickled: bytes
    log_tail: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, type: _Optional[str] = ..., message: _Optional[str] = ..., traceback: _Optional[str] = ..., pickled: _Optional[bytes] = ..., log_tail: _Optional[_Iterable[str]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("seq", "kind", "flow_run_id", "time", "node", "task_name", "task_run_id", "index", "attempt", "worker_id", "count", "message", "error", "retry_at")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    TASK_NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RETRY_AT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    kind: EventKind
    flow_run_id: str
    time: float
    node: int
    task_name: str
    task_run_id: int
    index: int
    attempt: int
    worker_id: str
    count: int
    message: str
    error: TaskError
    retry_at: float
    def __init__(self, seq: _Optional[int] = ..., kind: _Optional[_Union[EventKind, str]] = ..., flow_run_id: _Optional[str] = ..., time: _Optional[float] = ..., node: _Optional[int] = ..., task_name: _Optional[str] = ..., task_run_id: _Optional[int] = ..., index: _Optional[int] = ..., attempt: _Optional[int] = ..., worker_id: _Optional[str] = ..., count: _Optional[int] = ..., message: _Optional[str] = ..., error: _Optional[_Union[TaskError, _Mapping]] = ..., retry_at: _Optional[float] = ...) -> None: ...
