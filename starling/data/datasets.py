"""Named MovieLens datasets: a local copy when there is one, else a checksum-verified download from GroupLens.

Local copies are looked for as ``DIR/NAME`` for each DIR in ``settings.dataset_search_path`` and then
``settings.datasets_dir``; a copy with a ``SHA256SUMS`` file is verified against it. Downloads fetch
``{grouplens_base_url}/{archive}`` and its published ``{archive}.md5``, verify the MD5 and unpack into
``settings.datasets_dir/NAME``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from starling.config import Settings, get_settings
from starling.data.movielens import LAYOUTS, REQUIRED_TABLES
from starling.errors import StarlingError

DOWNLOAD_TIMEOUT_S = 60.0
CHUNK_BYTES = 1 << 20
DATASET_NAME = re.compile(r"^ml-[A-Za-z0-9][A-Za-z0-9.-]*$")
MD5_HEX = re.compile(r"\b[0-9a-fA-F]{32}\b")
PROVENANCE_FILE = ".starling-download.json"


@dataclass(frozen=True)
class KnownDataset:
    """A GroupLens archive: its file name and the folder it unpacks to.

    ``md5`` stays None: the digests could not be verified from here, and inventing them would be worse than
    none. Downloads are verified against the ``.md5`` file GroupLens publishes beside each archive.
    """

    archive: str
    folder: str
    md5: str | None = None


KNOWN_DATASETS: dict[str, KnownDataset] = {
    "ml-latest-small": KnownDataset("ml-latest-small.zip", "ml-latest-small"),
    "ml-latest": KnownDataset("ml-latest.zip", "ml-latest"),
    "ml-100k": KnownDataset("ml-100k.zip", "ml-100k"),
    "ml-1m": KnownDataset("ml-1m.zip", "ml-1m"),
    "ml-10m": KnownDataset("ml-10m.zip", "ml-10M100K"),
    "ml-20m": KnownDataset("ml-20m.zip", "ml-20m"),
    "ml-25m": KnownDataset("ml-25m.zip", "ml-25m"),
    "ml-32m": KnownDataset("ml-32m.zip", "ml-32m"),
}


class DownloadError(StarlingError):
    """A download failed (network, HTTP status, checksum or archive problem)."""


def dataset_info(name: str) -> KnownDataset:
    if name in KNOWN_DATASETS:
        return KNOWN_DATASETS[name]
    if not DATASET_NAME.match(name):
        known = ", ".join(KNOWN_DATASETS)
        raise StarlingError(
            f"{name!r} is not a directory, a MovieLens dataset name ({known}) nor synthetic[:N]"
        )
    return KnownDataset(f"{name}.zip", name)


def resolve_dataset(name: str, settings: Settings | None = None) -> Path:
    """The directory of dataset ``name``: a local copy if found, else downloaded (see the module docstring)."""
    settings = settings or get_settings()
    info = dataset_info(name)
    candidates = local_candidates(name, settings)
    for candidate in candidates:
        if has_movielens_files(candidate):
            verify_sha256sums(candidate)
            return candidate
    url = f"{settings.grouplens_base_url.rstrip('/')}/{info.archive}"
    try:
        return download_dataset(name, url, Path(settings.datasets_dir), expected_md5=info.md5)
    except DownloadError as exc:
        looked = ", ".join(str(path) for path in candidates)
        hint = "" if name in KNOWN_DATASETS else f"; known datasets: {', '.join(KNOWN_DATASETS)}"
        raise StarlingError(
            f"dataset {name!r} could not be found locally (looked in {looked}) nor downloaded from {url}: "
            f"{exc}{hint}"
        ) from exc


def local_candidates(name: str, settings: Settings) -> list[Path]:
    """Where a local copy of ``name`` may be, in search order."""
    roots = [Path(part) for part in settings.dataset_search_path.split(os.pathsep) if part]
    roots.append(Path(settings.datasets_dir))
    folder = dataset_info(name).folder
    candidates: list[Path] = []
    for root in roots:
        for path in (root / name, root / name / folder, root / folder):
            if path not in candidates:
                candidates.append(path)
    return candidates


def has_movielens_files(directory: Path) -> bool:
    return directory.is_dir() and any(
        all((directory / layout.files[t].name).is_file() for t in REQUIRED_TABLES)
        for layout in LAYOUTS.values()
    )


def verify_sha256sums(directory: Path) -> None:
    """When ``directory`` has a ``SHA256SUMS`` file (``digest  name`` lines), check every file it lists."""
    sums_file = directory / "SHA256SUMS"
    if not sums_file.is_file():
        return
    for line_number, line in enumerate(sums_file.read_text().splitlines(), start=1):  # a few lines
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not re.fullmatch(r"[0-9a-fA-F]{64}", parts[0]):
            raise StarlingError(f"{sums_file} line {line_number}: expected '<sha256>  <file name>'")
        expected, file_name = parts[0].lower(), parts[1].strip().lstrip("*")
        actual = file_digest(directory / file_name, "sha256")
        if actual != expected:
            raise StarlingError(
                f"{directory / file_name}: SHA-256 {actual} does not match {expected} in {sums_file}; "
                "the local copy is corrupt or was modified"
            )


def file_digest(path: Path, algorithm: str) -> str:
    if not path.is_file():
        raise StarlingError(f"{path}: listed in a checksum file but missing")
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


def download_dataset(name: str, url: str, datasets_dir: Path, expected_md5: str | None = None) -> Path:
    """Download ``url``, verify it against ``url + '.md5'`` (and ``expected_md5``), unpack to datasets_dir/name."""
    published = parse_md5_file(_fetch_text(url + ".md5"), url + ".md5")
    if expected_md5 is not None and expected_md5.lower() != published:
        raise DownloadError(f"the published MD5 {published} differs from the known {expected_md5}")
    datasets_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=datasets_dir, prefix=f".{name}-download-") as scratch:
        archive = Path(scratch) / "archive.zip"
        md5, sha256 = _download(url, archive)
        if md5 != published:
            raise DownloadError(f"checksum mismatch: the archive's MD5 is {md5}, {url}.md5 says {published}")
        unpacked = _unpack(archive, Path(scratch) / "unpacked")
        (unpacked / PROVENANCE_FILE).write_text(
            json.dumps(
                {"url": url, "md5": md5, "sha256": sha256, "downloaded_at": datetime.now(UTC).isoformat()},
                indent=2,
            )
        )
        target = datasets_dir / name
        if target.exists():  # an incomplete or unrecognised earlier copy
            shutil.rmtree(target)
        os.replace(unpacked, target)
    return target


def parse_md5_file(text: str, where: str) -> str:
    """The digest in a ``.md5`` file (``<md5>``, ``<md5>  name`` or ``MD5 (name) = <md5>``)."""
    match = MD5_HEX.search(text)
    if match is None:
        raise DownloadError(f"{where} holds no MD5 digest")
    return match.group(0).lower()


def _fetch_text(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            return response.read(64 * 1024).decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"{url}: {reason}") from exc


def _download(url: str, destination: Path) -> tuple[str, str]:
    """Stream ``url`` to ``destination``; returns its (MD5, SHA-256)."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    print(f"downloading {url} ...", file=sys.stderr)
    try:
        with (
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
            destination.open("wb") as out,
        ):
            while chunk := response.read(CHUNK_BYTES):  # a loop over 1 MiB chunks
                md5.update(chunk)
                sha256.update(chunk)
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"{url}: {reason}") from exc
    return md5.hexdigest(), sha256.hexdigest()


def _unpack(archive: Path, destination: Path) -> Path:
    """Unpack ``archive`` (refusing paths that escape it); return the folder holding the MovieLens files."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            root = destination.resolve()
            for member in zipped.namelist():
                if not (root / member).resolve().is_relative_to(root):
                    raise DownloadError(f"the archive holds an unsafe path {member!r}")
            zipped.extractall(destination)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"the download is not a valid zip archive: {exc}") from exc
    for candidate in (destination, *sorted(p for p in destination.iterdir() if p.is_dir())):
        if has_movielens_files(candidate):
            return candidate
    raise DownloadError("the archive holds no MovieLens ratings and movies files")
