import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecommendContext(_message.Message):
    __slots__ = ("time", "genres", "exclude_movie_ids", "force_arms")
    TIME_FIELD_NUMBER: _ClassVar[int]
    GENRES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_MOVIE_IDS_FIELD_NUMBER: _ClassVar[int]
    FORCE_ARMS_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    genres: _containers.RepeatedScalarFieldContainer[str]
    exclude_movie_ids: _containers.RepeatedScalarFieldContainer[int]
    force_arms: _containers.RepeatedCompositeFieldContainer[ExperimentArm]
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., genres: _Optional[_Iterable[str]] = ..., exclude_movie_ids: _Optional[_Iterable[int]] = ..., force_arms: _Optional[_Iterable[_Union[ExperimentArm, _Mapping]]] = ...) -> None: ...

class ExperimentArm(_message.Message):
    __slots__ = ("experiment", "arm")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    arm: str
    def __init__(self, experiment: _Optional[str] = ..., arm: _Optional[str] = ...) -> None: ...

class Degradation(_message.Message):
    __slots__ = ("stage", "reason")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    stage: str
    reason: str
    def __init__(self, stage: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
