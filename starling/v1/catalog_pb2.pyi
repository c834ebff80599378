from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Movie(_message.Message):
    __slots__ = ("movie_id", "title", "release_year", "genres", "rating_count", "avg_rating")
    MOVIE_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_YEAR_FIELD_NUMBER: _ClassVar[int]
    GENRES_FIELD_NUMBER: _ClassVar[int]
    RATING_COUNT_FIELD_NUMBER: _ClassVar[int]
    AVG_RATING_FIELD_NUMBER: _ClassVar[int]
    movie_id: int
    title: str
    release_year: int
    genres: _containers.RepeatedScalarFieldContainer[str]
    rating_count: int
    avg_rating: float
    def __init__(self, movie_id: _Optional[int] = ..., title: _Optional[str] = ..., release_year: _Optional[int] = ..., genres: _Optional[_Iterable[str]] = ..., rating_count: _Optional[int] = ..., avg_rating: _Optional[float] = ...) -> None: ...

class UpsertMovieRequest(_message.Message):
    __slots__ = ("movie",)
    MOVIE_FIELD_NUMBER: _ClassVar[int]
    movie: Movie
    def __init__(self, movie: _Optional[_Union[Movie, _Mapping]] = ...) -> None: ...

class UpsertMovieResponse(_message.Message):
    __slots__ = ("movie", "created")
    MOVIE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    movie: Movie
    created: bool
    def __init__(self, movie: _Optional[_Union[Movie, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetMovieRequest(_message.Message):
    __slots__ = ("movie_id",)
    MOVIE_ID_FIELD_NUMBER: _ClassVar[int]
    movie_id: int
    def __init__(self, movie_id: _Optional[int] = ...) -> None: ...

class ListUserRatingsRequest(_message.Message):
    __slots__ = ("user_id", "limit", "offset", "movie_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    MOVIE_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    limit: int
    offset: int
    movie_id: int
    def __init__(self, user_id: _Optional[int] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ..., movie_id: _Optional[int] = ...) -> None: ...

class UserRating(_message.Message):
    __slots__ = ("movie", "rating", "time_unix_ms")
    MOVIE_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    movie: Movie
    rating: float
    time_unix_ms: int
    def __init__(self, movie: _Optional[_Union[Movie, _Mapping]] = ..., rating: _Optional[float] = ..., time_unix_ms: _Optional[int] = ...) -> None: ...

class ListUserRatingsResponse(_message.Message):
    __slots__ = ("ratings", "total")
    RATINGS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    ratings: _containers.RepeatedCompositeFieldContainer[UserRating]
    total: int
    def __init__(self, ratings: _Optional[_Iterable[_Union[UserRating, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...

class ListPopularMoviesRequest(_message.Message):
    __slots__ = ("genre", "limit", "offset")
    GENRE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    genre: str
    limit: int
    offset: int
    def __init__(self, genre: _Optional[str] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class ListPopularMoviesResponse(_message.Message):
    __slots__ = ("movies", "total", "genres")
    MOVIES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    GENRES_FIELD_NUMBER: _ClassVar[int]
    movies: _containers.RepeatedCompositeFieldContainer[Movie]
    total: int
    genres: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, movies: _Optional[_Iterable[_Union[Movie, _Mapping]]] = ..., total: _Optional[int] = ..., genres: _Optional[_Iterable[str]] = ...) -> None: ...

class SearchMoviesRequest(_message.Message):
    __slots__ = ("query", "limit", "offset")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    query: str
    limit: int
    offset: int
    def __init__(self, query: _Optional[str] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class SearchMoviesResponse(_message.Message):
    __slots__ = ("movies", "total")
    MOVIES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    movies: _containers.RepeatedCompositeFieldContainer[Movie]
    total: int
    def __init__(self, movies: _Optional[_Iterable[_Union[Movie, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...
