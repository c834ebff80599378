"""Tiny hand-written MovieLens directories in each official layout, for tests and examples.

Each holds the awkward cases of the real files: quoted titles with commas and quotes, non-ASCII titles (UTF-8
in CSV, latin-1 in ``.dat`` and ml-100k), titles without a year, year ranges, alternative titles, trailing
spaces and ``(no genres listed)``. Ratings are deliberately out of time order.
"""

from __future__ import annotations

from pathlib import Path

MOVIES_CSV = """movieId,title,genres
1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy
2,"Misérables, Les (1995)",Drama|War
3,Babylon 5,Sci-Fi
4,(500) Days of Summer (2009) ,Comedy|Drama|Romance
5,Seven (a.k.a. Se7en) (1995),Mystery|Thriller
6,Death Note: Desu nôto (2006–2007),(no genres listed)
7,"Quote ""Unquote"" (2007-)",Drama
8,Never Rated (1999),Horror
"""
RATINGS_CSV = """userId,movieId,rating,timestamp
1,1,4.0,964982703
1,2,3.5,964981247
2,1,5.0,964980000
2,5,0.5,964982703
3,6,2.0,1445714994
3,7,4.5,1445714000
"""
LINKS_CSV = """movieId,imdbId,tmdbId
1,0114709,862
2,0113497,
"""
TAGS_CSV = """userId,movieId,tag,timestamp
2,1,"funny, clever",1445714994
3,6,anime,1445714996
"""
# What the CSV fixture must become (movie_id -> (title, release_year, genres)).
EXPECTED_MOVIES = {
    1: ("Toy Story", 1995, ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]),
    2: ("Misérables, Les", 1995, ["Drama", "War"]),
    3: ("Babylon 5", None, ["Sci-Fi"]),
    4: ("(500) Days of Summer", 2009, ["Comedy", "Drama", "Romance"]),
    5: ("Seven (a.k.a. Se7en)", 1995, ["Mystery", "Thriller"]),
    6: ("Death Note: Desu nôto", 2006, []),
    7: ('Quote "Unquote"', 2007, ["Drama"]),
    8: ("Never Rated", 1999, ["Horror"]),
}

MOVIES_DAT = """1::Toy Story (1995)::Animation|Children's|Comedy
2::Misérables, Les (1995)::Drama|War
3::Babylon 5::Sci-Fi
"""
RATINGS_DAT = """1::1::5::978300760
1::2::3::978302109
2::3::4::978301968
"""
TAGS_DAT = """1::1::pixar::1188263867
"""

U_DATA = "196\t1\t3\t881250949\n186\t2\t3\t891717742\n22\t267\t1\t878887116\n"


def _flags(*names: str) -> str:
    order = [
        "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
        "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
    ]  # fmt: skip
    return "|".join("1" if genre in names else "0" for genre in order)


U_ITEM = (
    "1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|"
    + _flags("Animation", "Children's", "Comedy")
    + "\n"
    + f"2|Misérables, Les (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Miserables|{_flags('Drama')}\n"
    + f"267|unknown||||{_flags('unknown')}\n"
    + f"300|Air Force One|01-Jan-1997||http://us.imdb.com/M/title-exact?Air+Force+One+(1997)|{_flags('Action')}\n"
)


def write_csv_layout(directory: Path, *, links: bool = True, tags: bool = True) -> Path:
    """ml-latest style: UTF-8 CSV with headers."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "movies.csv").write_text(MOVIES_CSV, encoding="utf-8")
    (directory / "ratings.csv").write_text(RATINGS_CSV, encoding="utf-8")
    if links:
        (directory / "links.csv").write_text(LINKS_CSV, encoding="utf-8")
    if tags:
        (directory / "tags.csv").write_text(TAGS_CSV, encoding="utf-8")
    return directory


def write_dat_layout(directory: Path) -> Path:
    """ml-1m / ml-10m style: ``::``-separated, movies in latin-1."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "movies.dat").write_bytes(MOVIES_DAT.encode("latin-1"))
    (directory / "ratings.dat").write_text(RATINGS_DAT)
    (directory / "tags.dat").write_text(TAGS_DAT)
    return directory


def write_100k_layout(directory: Path) -> Path:
    """ml-100k style: tab-separated u.data, pipe-separated latin-1 u.item with 19 genre flags."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "u.data").write_text(U_DATA)
    (directory / "u.item").write_bytes(U_ITEM.encode("latin-1"))
    return directory
