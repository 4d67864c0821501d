import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from pb.mqc3_cloud.common.v1 import error_detail_pb2 as _error_detail_pb2
from pb.mqc3_cloud.scheduler.v1 import job_pb2 as _job_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tag(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("token", "statuses", "backend", "submitted_from", "submitted_to", "tag", "owner_name", "page_size", "page_token")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_FROM_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_TO_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    OWNER_NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    statuses: _containers.RepeatedScalarFieldContainer[_job_pb2.JobStatus]
    backend: str
    submitted_from: _timestamp_pb2.Timestamp
    submitted_to: _timestamp_pb2.Timestamp
    tag: str
    owner_name: str
    page_size: int
    page_token: str
    def __init__(self, token: _Optional[str] = ..., statuses: _Optional[_Iterable[_Union[_job_pb2.JobStatus, str]]] = ..., backend: _Optional[str] = ..., submitted_from: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., submitted_to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tag: _Optional[str] = ..., owner_name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class JobSummary(_message.Message):
    __slots__ = ("job_id", "status", "backend", "submitted_at", "queued_at", "dequeued_at", "finished_at", "n_shots", "tags", "owner_name", "status_detail", "node_identity")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    QUEUED_AT_FIELD_NUMBER: _ClassVar[int]
    DEQUEUED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    N_SHOTS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    OWNER_NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_DETAIL_FIELD_NUMBER: _ClassVar[int]
    NODE_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    status: _job_pb2.JobStatus
    backend: str
    submitted_at: _timestamp_pb2.Timestamp
    queued_at: _timestamp_pb2.Timestamp
    dequeued_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    n_shots: int
    tags: _containers.RepeatedCompositeFieldContainer[Tag]
    owner_name: str
    status_detail: str
    node_identity: str
    def __init__(self, job_id: _Optional[str] = ..., status: _Optional[_Union[_job_pb2.JobStatus, str]] = ..., backend: _Optional[str] = ..., submitted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., queued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., dequeued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., n_shots: _Optional[int] = ..., tags: _Optional[_Iterable[_Union[Tag, _Mapping]]] = ..., owner_name: _Optional[str] = ..., status_detail: _Optional[str] = ..., node_identity: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("error", "jobs", "next_page_token")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    error: _error_detail_pb2.ErrorDetail
    jobs: _containers.RepeatedCompositeFieldContainer[JobSummary]
    next_page_token: str
    def __init__(self, error: _Optional[_Union[_error_detail_pb2.ErrorDetail, _Mapping]] = ..., jobs: _Optional[_Iterable[_Union[JobSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SetJobTagsRequest(_message.Message):
    __slots__ = ("token", "job_id", "tags")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    token: str
    job_id: str
    tags: _containers.RepeatedCompositeFieldContainer[Tag]
    def __init__(self, token: _Optional[str] = ..., job_id: _Optional[str] = ..., tags: _Optional[_Iterable[_Union[Tag, _Mapping]]] = ...) -> None: ...

class SetJobTagsResponse(_message.Message):
    __slots__ = ("error", "tags")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    error: _error_detail_pb2.ErrorDetail
    tags: _containers.RepeatedCompositeFieldContainer[Tag]
    def __init__(self, error: _Optional[_Union[_error_detail_pb2.ErrorDetail, _Mapping]] = ..., tags: _Optional[_Iterable[_Union[Tag, _Mapping]]] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("token", "to", "owner_name", "all_users")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    OWNER_NAME_FIELD_NUMBER: _ClassVar[int]
    ALL_USERS_FIELD_NUMBER: _ClassVar[int]
    token: str
    to: _timestamp_pb2.Timestamp
    owner_name: str
    all_users: bool
    def __init__(self, token: _Optional[str] = ..., to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., owner_name: _Optional[str] = ..., all_users: bool = ..., **kwargs) -> None: ...

class StatusCount(_message.Message):
    __slots__ = ("status", "jobs")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    status: _job_pb2.JobStatus
    jobs: int
    def __init__(self, status: _Optional[_Union[_job_pb2.JobStatus, str]] = ..., jobs: _Optional[int] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("owner_name", "jobs_by_final_status", "total_shots", "queue_wait_seconds", "execution_seconds", "live_jobs", "max_live_jobs", "queued_bytes", "max_queued_bytes", "role", "budget")
    OWNER_NAME_FIELD_NUMBER: _ClassVar[int]
    JOBS_BY_FINAL_STATUS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SHOTS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LIVE_JOBS_FIELD_NUMBER: _ClassVar[int]
    MAX_LIVE_JOBS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUED_BYTES_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    owner_name: str
    jobs_by_final_status: _containers.RepeatedCompositeFieldContainer[StatusCount]
    total_shots: int
    queue_wait_seconds: float
    execution_seconds: float
    live_jobs: int
    max_live_jobs: int
    queued_bytes: int
    max_queued_bytes: int
    role: str
    budget: Budget
    def __init__(self, owner_name: _Optional[str] = ..., jobs_by_final_status: _Optional[_Iterable[_Union[StatusCount, _Mapping]]] = ..., total_shots: _Optional[int] = ..., queue_wait_seconds: _Optional[float] = ..., execution_seconds: _Optional[float] = ..., live_jobs: _Optional[int] = ..., max_live_jobs: _Optional[int] = ..., queued_bytes: _Optional[int] = ..., max_queued_bytes: _Optional[int] = ..., role: _Optional[str] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ...) -> None: ...

class Budget(_message.Message):
    __slots__ = ("period", "qpu_seconds", "shots", "qpu_seconds_used", "shots_used", "resets_at")
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    QPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SHOTS_FIELD_NUMBER: _ClassVar[int]
    QPU_SECONDS_USED_FIELD_NUMBER: _ClassVar[int]
    SHOTS_USED_FIELD_NUMBER: _ClassVar[int]
    RESETS_AT_FIELD_NUMBER: _ClassVar[int]
    period: str
    qpu_seconds: float
    shots: int
    qpu_seconds_used: float
    shots_used: int
    resets_at: _timestamp_pb2.Timestamp
    def __init__(self, period: _Optional[str] = ..., qpu_seconds: _Optional[float] = ..., shots: _Optional[int] = ..., qpu_seconds_used: _Optional[float] = ..., shots_used: _Optional[int] = ..., resets_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("error", "to", "usage")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    error: _error_detail_pb2.ErrorDetail
    to: _timestamp_pb2.Timestamp
    usage: _containers.RepeatedCompositeFieldContainer[Usage]
    def __init__(self, error: _Optional[_Union[_error_detail_pb2.ErrorDetail, _Mapping]] = ..., to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., usage: _Optional[_Iterable[_Union[Usage, _Mapping]]] = ..., **kwargs) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("token", "job_id")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    token: str
    job_id: str
    def __init__(self, token: _Optional[str] = ..., job_id: _Optional[str] = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("error", "status", "status_detail", "observed_at")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_DETAIL_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AT_FIELD_NUMBER: _ClassVar[int]
    error: _error_detail_pb2.ErrorDetail
    status: _job_pb2.JobStatus
    status_detail: str
    observed_at: _timestamp_pb2.Timestamp
    def __init__(self, error: _Optional[_Union[_error_detail_pb2.ErrorDetail, _Mapping]] = ..., status: _Optional[_Union[_job_pb2.JobStatus, str]] = ..., status_detail: _Optional[str] = ..., observed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
