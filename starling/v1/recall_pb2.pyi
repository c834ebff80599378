from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class RecallRequest(_message.Message):
    __slots__ = ("user_id", "n", "excluded_movie_ids", "genres", "quotas")
    class QuotasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_MOVIE_IDS_FIELD_NUMBER: _ClassVar[int]
    GENRES_FIELD_NUMBER: _ClassVar[int]
    QUOTAS_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    n: int
    excluded_movie_ids: _containers.RepeatedScalarFieldContainer[int]
    genres: _containers.RepeatedScalarFieldContainer[str]
    quotas: _containers.ScalarMap[str, int]
    def __init__(self, user_id: _Optional[int] = ..., n: _Optional[int] = ..., excluded_movie_ids: _Optional[_Iterable[int]] = ..., genres: _Optional[_Iterable[str]] = ..., quotas: _Optional[_Mapping[str, int]] = ...) -> None: ...

class RecallResponse(_message.Message):
    __slots__ = ("movie_ids", "scores", "channels", "user_has_embedding", "user_top_genres", "features", "feature_names", "model_version", "because_movie_ids", "because_by_text", "known_user")
    MOVIE_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    USER_HAS_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    USER_TOP_GENRES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    BECAUSE_MOVIE_IDS_FIELD_NUMBER: _ClassVar[int]
    BECAUSE_BY_TEXT_FIELD_NUMBER: _ClassVar[int]
    KNOWN_USER_FIELD_NUMBER: _ClassVar[int]
    movie_ids: _containers.RepeatedScalarFieldContainer[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    channels: _containers.RepeatedScalarFieldContainer[str]
    user_has_embedding: bool
    user_top_genres: _containers.RepeatedScalarFieldContainer[str]
    features: bytes
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    model_version: str
    because_movie_ids: _containers.RepeatedScalarFieldContainer[int]
    because_by_text: _containers.RepeatedScalarFieldContainer[bool]
    known_user: bool
    def __init__(self, movie_ids: _Optional[_Iterable[int]] = ..., scores: _Optional[_Iterable[float]] = ..., channels: _Optional[_Iterable[str]] = ..., user_has_embedding: _Optional[bool] = ..., user_top_genres: _Optional[_Iterable[str]] = ..., features: _Optional[bytes] = ..., feature_names: _Optional[_Iterable[str]] = ..., model_version: _Optional[str] = ..., because_movie_ids: _Optional[_Iterable[int]] = ..., because_by_text: _Optional[_Iterable[bool]] = ..., known_user: _Optional[bool] = ...) -> None: ...

class SimilarMoviesRequest(_message.Message):
    __slots__ = ("movie_id", "k")
    MOVIE_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    movie_id: int
    k: int
    def __init__(self, movie_id: _Optional[int] = ..., k: _Optional[int] = ...) -> None: ...

class SimilarMoviesResponse(_message.Message):
    __slots__ = ("movie_ids", "scores", "found")
    MOVIE_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    movie_ids: _containers.RepeatedScalarFieldContainer[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    found: bool
    def __init__(self, movie_ids: _Optional[_Iterable[int]] = ..., scores: _Optional[_Iterable[float]] = ..., found: _Optional[bool] = ...) -> None: ...
