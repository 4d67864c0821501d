import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from pb.mqc3_cloud.common.v1 import error_detail_pb2 as _error_detail_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Session(_message.Message):
    __slots__ = ("session_id", "backend", "owner_name", "opened_at", "started_at", "ends_by", "max_length", "idle_timeout", "open", "ended_at", "end_reason")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    OWNER_NAME_FIELD_NUMBER: _ClassVar[int]
    OPENED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDS_BY_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    backend: str
    owner_name: str
    opened_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    ends_by: _timestamp_pb2.Timestamp
    max_length: _duration_pb2.Duration
    idle_timeout: _duration_pb2.Duration
    open: bool
    ended_at: _timestamp_pb2.Timestamp
    end_reason: str
    def __init__(self, session_id: _Optional[str] = ..., backend: _Optional[str] = ..., owner_name: _Optional[str] = ..., opened_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ends_by: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., max_length: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., idle_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., open: bool = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_reason: _Optional[str] = ...) -> None: ...

class OpenSessionRequest(_message.Message):
    __slots__ = ("token", "backend", "max_length", "idle_timeout")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    token: str
    backend: str
    max_length: _duration_pb2.Duration
    idle_timeout: _duration_pb2.Duration
    def __init__(self, token: _Optional[str] = ..., backend: _Optional[str] = ..., max_length: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., idle_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class OpenSessionResponse(_message.Message):
    __slots__ = ("error", "session")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    error: _error_detail_pb2.ErrorDetail
    session: Session
    def __init__(self, error: _Optional[_Union[_error_detail_pb2.ErrorDetail, _Mapping]] = ..., session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("token", "session_id")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    token: str
    session_id: str
    def __init__(self, token: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ("error", "session")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    error: _error_detail_pb2.ErrorDetail
    session: Session
    def __init__(self, error: _Optional[_Union[_error_detail_pb2.ErrorDetail, _Mapping]] = ..., session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ("token", "all_users")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ALL_USERS_FIELD_NUMBER: _ClassVar[int]
    token: str
    all_users: bool
    def __init__(self, token: _Optional[str] = ..., all_users: bool = ...) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("error", "sessions")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    error: _error_detail_pb2.ErrorDetail
    sessions: _containers.RepeatedCompositeFieldContainer[Session]
    def __init__(self, error: _Optional[_Union[_error_detail_pb2.ErrorDetail, _Mapping]] = ..., sessions: _Optional[_Iterable[_Union[Session, _Mapping]]] = ...) -> None: ...

class Booking(_message.Message):
    __slots__ = ("booking_id", "backend", "starts_at", "ends_at", "users", "maintenance", "for_you", "note", "booked_by")
    BOOKING_ID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    STARTS_AT_FIELD_NUMBER: _ClassVar[int]
    ENDS_AT_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    MAINTENANCE_FIELD_NUMBER: _ClassVar[int]
    FOR_YOU_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    BOOKED_BY_FIELD_NUMBER: _ClassVar[int]
    booking_id: str
    backend: str
    starts_at: _timestamp_pb2.Timestamp
    ends_at: _timestamp_pb2.Timestamp
    users: _containers.RepeatedScalarFieldContainer[str]
    maintenance: bool
    for_you: bool
    note: str
    booked_by: str
    def __init__(self, booking_id: _Optional[str] = ..., backend: _Optional[str] = ..., starts_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ends_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., users: _Optional[_Iterable[str]] = ..., maintenance: bool = ..., for_you: bool = ..., note: _Optional[str] = ..., booked_by: _Optional[str] = ...) -> None: ...

class BookBackendRequest(_message.Message):
    __slots__ = ("token", "backend", "starts_at", "ends_at", "users", "maintenance", "note")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    STARTS_AT_FIELD_NUMBER: _ClassVar[int]
    ENDS_AT_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    MAINTENANCE_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    token: str
    backend: str
    starts_at: _timestamp_pb2.Timestamp
    ends_at: _timestamp_pb2.Timestamp
    users: _containers.RepeatedScalarFieldContainer[str]
    maintenance: bool
    note: str
    def __init__(self, token: _Optional[str] = ..., backend: _Optional[str] = ..., starts_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ends_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., users: _Optional[_Iterable[str]] = ..., maintenance: bool = ..., note: _Optional[str] = ...) -> None: ...

class BookBackendResponse(_message.Message):
    __slots__ = ("error", "booking")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    BOOKING_FIELD_NUMBER: _ClassVar[int]
    error: _error_detail_pb2.ErrorDetail
    booking: Booking
    def __init__(self, error: _Optional[_Union[_error_detail_pb2.ErrorDetail, _Mapping]] = ..., booking: _Optional[_Union[Booking, _Mapping]] = ...) -> None: ...

class CancelBookingRequest(_message.Message):
    __slots__ = ("token", "booking_id")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    BOOKING_ID_FIELD_NUMBER: _ClassVar[int]
    token: str
    booking_id: str
    def __init__(self, token: _Optional[str] = ..., booking_id: _Optional[str] = ...) -> None: ...

class CancelBookingResponse(_message.Message):
    __slots__ = ("error", "booking")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    BOOKING_FIELD_NUMBER: _ClassVar[int]
    error: _error_detail_pb2.ErrorDetail
    booking: Booking
    def __init__(self, error: _Optional[_Union[_error_detail_pb2.ErrorDetail, _Mapping]] = ..., booking: _Optional[_Union[Booking, _Mapping]] = ...) -> None: ...

class ListBookingsRequest(_message.Message):
    __slots__ = ("token", "backend", "include_ended")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ENDED_FIELD_NUMBER: _ClassVar[int]
    token: str
    backend: str
    include_ended: bool
    def __init__(self, token: _Optional[str] = ..., backend: _Optional[str] = ..., include_ended: bool = ...) -> None: ...

class ListBookingsResponse(_message.Message):
    __slots__ = ("error", "bookings")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    BOOKINGS_FIELD_NUMBER: _ClassVar[int]
    error: _error_detail_pb2.ErrorDetail
    bookings: _containers.RepeatedCompositeFieldContainer[Booking]
    def __init__(self, error: _Optional[_Union[_error_detail_pb2.ErrorDetail, _Mapping]] = ..., bookings: _Optional[_Iterable[_Union[Booking, _Mapping]]] = ...) -> None: ...
