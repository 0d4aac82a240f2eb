from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA: _ClassVar[Kind]
    BYE: _ClassVar[Kind]
    ABORT: _ClassVar[Kind]
DATA: Kind
BYE: Kind
ABORT: Kind

class Frame(_message.Message):
    __slots__ = ("session", "sender", "seq", "kind", "tag", "dtype", "shape", "stamp", "offline", "chunk", "n_chunks", "total_bytes", "reason", "payload")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    STAMP_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    N_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    session: str
    sender: int
    seq: int
    kind: Kind
    tag: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    stamp: int
    offline: bool
    chunk: int
    n_chunks: int
    total_bytes: int
    reason: str
    payload: bytes
    def __init__(self, session: _Optional[str] = ..., sender: _Optional[int] = ..., seq: _Optional[int] = ..., kind: _Optional[_Union[Kind, str]] = ..., tag: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., stamp: _Optional[int] = ..., offline: _Optional[bool] = ..., chunk: _Optional[int] = ..., n_chunks: _Optional[int] = ..., total_bytes: _Optional[int] = ..., reason: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("protocol", "ring_bits", "frac_bits", "version", "session", "party", "to")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    RING_BITS_FIELD_NUMBER: _ClassVar[int]
    FRAC_BITS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    PARTY_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    protocol: str
    ring_bits: int
    frac_bits: int
    version: str
    session: str
    party: int
    to: int
    def __init__(self, protocol: _Optional[str] = ..., ring_bits: _Optional[int] = ..., frac_bits: _Optional[int] = ..., version: _Optional[str] = ..., session: _Optional[str] = ..., party: _Optional[int] = ..., to: _Optional[int] = ...) -> None: ...

class HelloReply(_message.Message):
    __slots__ = ("ok", "error", "hello")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    error: str
    hello: Hello
    def __init__(self, ok: _Optional[bool] = ..., error: _Optional[str] = ..., hello: _Optional[_Union[Hello, _Mapping]] = ...) -> None: ...

class LinkEnd(_message.Message):
    __slots__ = ("frames",)
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames: int
    def __init__(self, frames: _Optional[int] = ...) -> None: ...
