from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RepresentationFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPRESENTATION_FORMAT_UNSPECIFIED: _ClassVar[RepresentationFormat]
    REPRESENTATION_FORMAT_CIRCUIT: _ClassVar[RepresentationFormat]
    REPRESENTATION_FORMAT_GRAPH: _ClassVar[RepresentationFormat]
    REPRESENTATION_FORMAT_MACHINERY: _ClassVar[RepresentationFormat]
REPRESENTATION_FORMAT_UNSPECIFIED: RepresentationFormat
REPRESENTATION_FORMAT_CIRCUIT: RepresentationFormat
REPRESENTATION_FORMAT_GRAPH: RepresentationFormat
REPRESENTATION_FORMAT_MACHINERY: RepresentationFormat

class QuantumProgram(_message.Message):
    __slots__ = ("format", "circuit", "graph", "machinery")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CIRCUIT_FIELD_NUMBER: _ClassVar[int]
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    MACHINERY_FIELD_NUMBER: _ClassVar[int]
    format: RepresentationFormat
    circuit: bytes
    graph: bytes
    machinery: bytes
    def __init__(self, format: _Optional[_Union[RepresentationFormat, str]] = ..., circuit: _Optional[bytes] = ..., graph: _Optional[bytes] = ..., machinery: _Optional[bytes] = ...) -> None: ...
