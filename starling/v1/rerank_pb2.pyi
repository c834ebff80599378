import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RerankRequest(_message.Message):
    __slots__ = ("user_id", "k", "movie_ids", "scores", "channels", "time", "user_genres")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    MOVIE_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    USER_GENRES_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    k: int
    movie_ids: _containers.RepeatedScalarFieldContainer[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    channels: _containers.RepeatedScalarFieldContainer[str]
    time: _timestamp_pb2.Timestamp
    user_genres: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_id: _Optional[int] = ..., k: _Optional[int] = ..., movie_ids: _Optional[_Iterable[int]] = ..., scores: _Optional[_Iterable[float]] = ..., channels: _Optional[_Iterable[str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., user_genres: _Optional[_Iterable[str]] = ...) -> None: ...

class RerankResponse(_message.Message):
    __slots__ = ("movie_ids", "scores", "channels")
    MOVIE_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    movie_ids: _containers.RepeatedScalarFieldContainer[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    channels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, movie_ids: _Optional[_Iterable[int]] = ..., scores: _Optional[_Iterable[float]] = ..., channels: _Optional[_Iterable[str]] = ...) -> None: ...
