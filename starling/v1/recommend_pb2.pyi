import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from starling.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReasonKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REASON_KIND_UNSPECIFIED: _ClassVar[ReasonKind]
    REASON_KIND_BECAUSE_YOU_LIKED: _ClassVar[ReasonKind]
    REASON_KIND_POPULAR_IN_GENRE: _ClassVar[ReasonKind]
    REASON_KIND_NEW_RELEASE: _ClassVar[ReasonKind]
    REASON_KIND_POPULAR: _ClassVar[ReasonKind]
    REASON_KIND_SIMILAR_TO: _ClassVar[ReasonKind]
    REASON_KIND_SIMILAR_TEXT: _ClassVar[ReasonKind]

class FeedbackKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEEDBACK_KIND_UNSPECIFIED: _ClassVar[FeedbackKind]
    FEEDBACK_KIND_RATING: _ClassVar[FeedbackKind]
    FEEDBACK_KIND_CLICK: _ClassVar[FeedbackKind]
    FEEDBACK_KIND_WATCH: _ClassVar[FeedbackKind]
REASON_KIND_UNSPECIFIED: ReasonKind
REASON_KIND_BECAUSE_YOU_LIKED: ReasonKind
REASON_KIND_POPULAR_IN_GENRE: ReasonKind
REASON_KIND_NEW_RELEASE: ReasonKind
REASON_KIND_POPULAR: ReasonKind
REASON_KIND_SIMILAR_TO: ReasonKind
REASON_KIND_SIMILAR_TEXT: ReasonKind
FEEDBACK_KIND_UNSPECIFIED: FeedbackKind
FEEDBACK_KIND_RATING: FeedbackKind
FEEDBACK_KIND_CLICK: FeedbackKind
FEEDBACK_KIND_WATCH: FeedbackKind

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "k", "context")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    k: int
    context: _common_pb2.RecommendContext
    def __init__(self, user_id: _Optional[int] = ..., k: _Optional[int] = ..., context: _Optional[_Union[_common_pb2.RecommendContext, _Mapping]] = ...) -> None: ...

class RecommendedItem(_message.Message):
    __slots__ = ("movie_id", "title", "score", "channel", "genres", "release_year", "reason", "match", "arm")
    MOVIE_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    GENRES_FIELD_NUMBER: _ClassVar[int]
    RELEASE_YEAR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    movie_id: int
    title: str
    score: float
    channel: str
    genres: _containers.RepeatedScalarFieldContainer[str]
    release_year: int
    reason: Reason
    match: float
    arm: str
    def __init__(self, movie_id: _Optional[int] = ..., title: _Optional[str] = ..., score: _Optional[float] = ..., channel: _Optional[str] = ..., genres: _Optional[_Iterable[str]] = ..., release_year: _Optional[int] = ..., reason: _Optional[_Union[Reason, _Mapping]] = ..., match: _Optional[float] = ..., arm: _Optional[str] = ...) -> None: ...

class Reason(_message.Message):
    __slots__ = ("kind", "because_movie_id", "genre", "text")
    KIND_FIELD_NUMBER: _ClassVar[int]
    BECAUSE_MOVIE_ID_FIELD_NUMBER: _ClassVar[int]
    GENRE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    kind: ReasonKind
    because_movie_id: int
    genre: str
    text: str
    def __init__(self, kind: _Optional[_Union[ReasonKind, str]] = ..., because_movie_id: _Optional[int] = ..., genre: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "model_version", "request_id", "degraded", "experiments")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    model_version: str
    request_id: str
    degraded: _containers.RepeatedCompositeFieldContainer[_common_pb2.Degradation]
    experiments: _containers.RepeatedCompositeFieldContainer[_common_pb2.ExperimentArm]
    def __init__(self, items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., model_version: _Optional[str] = ..., request_id: _Optional[str] = ..., degraded: _Optional[_Iterable[_Union[_common_pb2.Degradation, _Mapping]]] = ..., experiments: _Optional[_Iterable[_Union[_common_pb2.ExperimentArm, _Mapping]]] = ...) -> None: ...

class SimilarItemsRequest(_message.Message):
    __slots__ = ("movie_id", "k")
    MOVIE_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    movie_id: int
    k: int
    def __init__(self, movie_id: _Optional[int] = ..., k: _Optional[int] = ...) -> None: ...

class SimilarItemsResponse(_message.Message):
    __slots__ = ("items", "request_id")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    request_id: str
    def __init__(self, items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class FeedbackEvent(_message.Message):
    __slots__ = ("user_id", "movie_id", "kind", "rating", "time", "request_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    MOVIE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    movie_id: int
    kind: FeedbackKind
    rating: float
    time: _timestamp_pb2.Timestamp
    request_id: str
    def __init__(self, user_id: _Optional[int] = ..., movie_id: _Optional[int] = ..., kind: _Optional[_Union[FeedbackKind, str]] = ..., rating: _Optional[float] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class RecordFeedbackRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[FeedbackEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[FeedbackEvent, _Mapping]]] = ...) -> None: ...

class FeedbackResult(_message.Message):
    __slots__ = ("accepted", "duplicate", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    duplicate: bool
    reason: str
    def __init__(self, accepted: _Optional[bool] = ..., duplicate: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class RecordFeedbackResponse(_message.Message):
    __slots__ = ("results", "accepted", "rejected")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[FeedbackResult]
    accepted: int
    rejected: int
    def __init__(self, results: _Optional[_Iterable[_Union[FeedbackResult, _Mapping]]] = ..., accepted: _Optional[int] = ..., rejected: _Optional[int] = ...) -> None: ...
