"""Named datasets: local copies on the search path, and real downloads from a local HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from starling.config import Settings, get_settings
from starling.data.datasets import PROVENANCE_FILE, resolve_dataset
from starling.data.fixtures import write_100k_layout, write_csv_layout
from starling.data.ingest import ingest
from starling.errors import StarlingError
from starling.local import free_port


def settings_for(
    tmp_path: Path, base_url: str = "http://127.0.0.1:9", search: list[Path] | None = None
) -> Settings:
    return Settings(
        datasets_dir=tmp_path / "cache",
        dataset_search_path=":".join(str(p) for p in (search or [tmp_path / "search"])),
        grouplens_base_url=base_url,
    )


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """No access log in test output."""


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 serving the files of a fresh directory: (base URL, directory)."""
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/datasets/movielens", served
    finally:
        server.shutdown()
        server.server_close()


def publish_zip(served: Path, name: str, md5: str | None = None) -> str:
    """Zip a tiny CSV dataset as GroupLens does (a top folder named like the dataset) plus its .md5 file."""
    source = write_csv_layout(served.parent / "zip-src" / name)
    folder = served / "datasets" / "movielens"
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / f"{name}.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(source.iterdir()):
            zipped.write(path, f"{name}/{path.name}")
    digest = hashlib.md5(archive.read_bytes(), usedforsecurity=False).hexdigest()
    (folder / f"{name}.zip.md5").write_text(f"MD5 ({name}.zip) = {md5 or digest}\n")
    return digest


def test_local_copy_on_the_search_path(tmp_path: Path) -> None:
    write_100k_layout(tmp_path / "second" / "ml-100k")
    settings = settings_for(tmp_path, search=[tmp_path / "first", tmp_path / "second"])
    assert resolve_dataset("ml-100k", settings) == tmp_path / "second" / "ml-100k"


def test_local_copy_with_a_wrong_sha256sums_is_refused(tmp_path: Path) -> None:
    copy = write_csv_layout(tmp_path / "search" / "ml-latest-small")
    digest = hashlib.sha256((copy / "movies.csv").read_bytes()).hexdigest()
    (copy / "SHA256SUMS").write_text(f"{digest}  movies.csv\n{'0' * 64}  ratings.csv\n")
    with pytest.raises(StarlingError, match=r"ratings\.csv: SHA-256 [0-9a-f]{64} does not match 0{64}"):
        resolve_dataset("ml-latest-small", settings_for(tmp_path))
    (copy / "SHA256SUMS").write_text(f"{digest}  movies.csv\n")
    assert resolve_dataset("ml-latest-small", settings_for(tmp_path)) == copy


def test_download_verifies_md5_unpacks_and_is_reused(tmp_path: Path, file_server: tuple[str, Path]) -> None:
    base_url, served = file_server
    digest = publish_zip(served, "ml-latest-small")
    settings = settings_for(tmp_path, base_url)

    directory = resolve_dataset("ml-latest-small", settings)
    assert directory == tmp_path / "cache" / "ml-latest-small"
    assert (directory / "ratings.csv").is_file()
    assert json.loads((directory / PROVENANCE_FILE).read_text())["md5"] == digest
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["ml-latest-small"]  # no scratch left

    (served / "datasets" / "movielens" / "ml-latest-small.zip").unlink()  # now only the local copy can serve
    assert resolve_dataset("ml-latest-small", settings) == directory


def test_download_with_a_checksum_mismatch_fails_and_keeps_nothing(
    tmp_path: Path, file_server: tuple[str, Path]
) -> None:
    base_url, served = file_server
    publish_zip(served, "ml-latest-small", md5="0" * 32)
    with pytest.raises(
        StarlingError, match=r"checksum mismatch: the archive's MD5 is [0-9a-f]{32}, .*says 0{32}"
    ):
        resolve_dataset("ml-latest-small", settings_for(tmp_path, base_url))
    assert list((tmp_path / "cache").iterdir()) == []


def test_download_of_a_missing_archive_names_the_http_error(
    tmp_path: Path, file_server: tuple[str, Path]
) -> None:
    base_url, _ = file_server
    with pytest.raises(StarlingError, match=r"ml-25m\.zip\.md5: HTTP 404"):
        resolve_dataset("ml-25m", settings_for(tmp_path, base_url))


def test_no_network_says_where_it_looked_and_why(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, f"http://127.0.0.1:{free_port()}/movielens")
    with pytest.raises(StarlingError) as raised:
        resolve_dataset("ml-1m", settings)
    message = str(raised.value)
    assert message.startswith("dataset 'ml-1m' could not be found locally (looked in ")
    assert str(tmp_path / "search" / "ml-1m") in message and str(tmp_path / "cache" / "ml-1m") in message
    assert f"nor downloaded from {settings.grouplens_base_url}/ml-1m.zip" in message
    assert "refused" in message.lower()


def test_unknown_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StarlingError, match="'movies' is not a directory, a MovieLens dataset name"):
        resolve_dataset("movies", settings_for(tmp_path))
    settings = settings_for(tmp_path, f"http://127.0.0.1:{free_port()}/movielens")
    with pytest.raises(StarlingError, match="known datasets: ml-latest-small, ml-latest, ml-100k"):
        resolve_dataset("ml-nope", settings)  # shaped like a MovieLens name, but nobody has it


def test_ingest_by_name_uses_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file_server: tuple[str, Path]
) -> None:
    base_url, served = file_server
    publish_zip(served, "ml-latest-small")
    monkeypatch.setenv("STARLING_DATASETS_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("STARLING_DATASET_SEARCH_PATH", str(tmp_path / "search"))
    monkeypatch.setenv("STARLING_GROUPLENS_BASE_URL", base_url)
    get_settings.cache_clear()
    try:
        report = ingest("ml-latest-small", tmp_path / "out")
    finally:
        get_settings.cache_clear()
    assert report.source_dir == tmp_path / "cache" / "ml-latest-small"
    assert (report.n_ratings, report.n_movies) == (6, 8)
