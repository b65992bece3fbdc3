from fleetflow.api.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetStoreInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StoreInfo(_message.Message):
    __slots__ = ("url", "options_json", "hosted", "store_id", "inline_max_bytes", "chunk_bytes", "transfer_chunk_bytes")
    URL_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    HOSTED_FIELD_NUMBER: _ClassVar[int]
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    INLINE_MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    url: str
    options_json: str
    hosted: bool
    store_id: str
    inline_max_bytes: int
    chunk_bytes: int
    transfer_chunk_bytes: int
    def __init__(self, url: _Optional[str] = ..., options_json: _Optional[str] = ..., hosted: _Optional[bool] = ..., store_id: _Optional[str] = ..., inline_max_bytes: _Optional[int] = ..., chunk_bytes: _Optional[int] = ..., transfer_chunk_bytes: _Optional[int] = ...) -> None: ...

class WriteObjectRequest(_message.Message):
    __slots__ = ("key", "data", "last", "size", "checksum")
    KEY_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    key: str
    data: bytes
    last: bool
    size: int
    checksum: bytes
    def __init__(self, key: _Optional[str] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ..., size: _Optional[int] = ..., checksum: _Optional[bytes] = ...) -> None: ...

class WriteObjectResponse(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: _common_pb2.StoredRef
    def __init__(self, ref: _Optional[_Union[_common_pb2.StoredRef, _Mapping]] = ...) -> None: ...

class ReadObjectRequest(_message.Message):
    __slots__ = ("key", "offset", "length")
    KEY_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    key: str
    offset: int
    length: int
    def __init__(self, key: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class ReadObjectResponse(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class ReadNodeValuesRequest(_message.Message):
    __slots__ = ("flow_run_id", "node", "start")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    node: int
    start: int
    def __init__(self, flow_run_id: _Optional[str] = ..., node: _Optional[int] = ..., start: _Optional[int] = ...) -> None: ...

class ReadNodeValuesResponse(_message.Message):
    __slots__ = ("start", "values")
    START_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    start: int
    values: _containers.RepeatedCompositeFieldContainer[_common_pb2.Value]
    def __init__(self, start: _Optional[int] = ..., values: _Optional[_Iterable[_Union[_common_pb2.Value, _Mapping]]] = ...) -> None: ...
