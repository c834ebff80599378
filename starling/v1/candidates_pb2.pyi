from starling.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetCandidatesRequest(_message.Message):
    __slots__ = ("user_id", "context")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    context: _common_pb2.RecommendContext
    def __init__(self, user_id: _Optional[int] = ..., context: _Optional[_Union[_common_pb2.RecommendContext, _Mapping]] = ...) -> None: ...

class GetCandidatesResponse(_message.Message):
    __slots__ = ("excluded_movie_ids", "genres", "pool_size", "known_user")
    EXCLUDED_MOVIE_IDS_FIELD_NUMBER: _ClassVar[int]
    GENRES_FIELD_NUMBER: _ClassVar[int]
    POOL_SIZE_FIELD_NUMBER: _ClassVar[int]
    KNOWN_USER_FIELD_NUMBER: _ClassVar[int]
    excluded_movie_ids: _containers.RepeatedScalarFieldContainer[int]
    genres: _containers.RepeatedScalarFieldContainer[str]
    pool_size: int
    known_user: bool
    def __init__(self, excluded_movie_ids: _Optional[_Iterable[int]] = ..., genres: _Optional[_Iterable[str]] = ..., pool_size: _Optional[int] = ..., known_user: _Optional[bool] = ...) -> None: ...
