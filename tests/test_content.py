"""The text encoder of movie content (starling/content.py) runs offline from the pinned package, and the text
it reads is built from the catalog and the tags."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from starling.content import DIMENSIONS, PACKAGE, TextEncoder, movie_texts


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> TextEncoder:
    return TextEncoder(device="cpu", cache=tmp_path_factory.mktemp("models"))


def test_movie_texts_have_title_year_genres_and_the_most_frequent_tags() -> None:
    movies = pl.DataFrame(
        {
            "movie_id": [1, 2, 3],
            "title": ["Toy Story", "Heat", "Untitled"],
            "release_year": [1995, 1995, None],
            "genres": [["Animation", "Comedy"], ["Crime"], []],
        },
        schema_overrides={"release_year": pl.Int32},
    )
    tags = pl.DataFrame({"movie_id": [1, 1, 1, 2, 2], "tag": ["pixar", " Pixar", "toys", "heist", ""]})
    texts = dict(movie_texts(movies, tags).iter_rows())
    assert texts[1] == "Toy Story (1995). Genres: Animation, Comedy. Tags: pixar, toys."
    assert texts[2] == "Heat (1995). Genres: Crime. Tags: heist."
    assert texts[3] == "Untitled."
    assert dict(movie_texts(movies).iter_rows())[1] == "Toy Story (1995). Genres: Animation, Comedy."


def test_the_encoder_runs_without_network_and_places_related_movies_close(
    encoder: TextEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args, **kwargs):
        raise OSError("network access in a test of the offline encoder")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    texts = [
        "Toy Story (1995). Genres: Adventure, Animation, Children, Comedy, Fantasy. Tags: pixar, toys.",
        "Toy Story 2 (1999). Genres: Adventure, Animation, Children, Comedy, Fantasy. Tags: pixar, sequel.",
        "Schindler's List (1993). Genres: Drama, War. Tags: holocaust, world war ii.",
        "The Pianist (2002). Genres: Drama, War. Tags: holocaust, world war ii.",
    ]
    vectors = encoder.encode(texts, batch_size=3)
    assert vectors.shape == (4, DIMENSIONS) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] and similarity[2, 3] > similarity[2, 1]
    assert np.allclose(encoder.encode(texts, batch_size=1), vectors, atol=1e-5), "batching changes nothing"
    info = encoder.info.to_dict()
    assert (
        info["package"] == PACKAGE
        and info["package_version"] == "0.1.2"
        and len(info["weights_sha256"]) == 64
    )
    assert (Path(encoder.tokenizer.name_or_path) / "model.safetensors").is_file()


@pytest.mark.slow
def test_train_writes_content_vectors_of_the_catalog_into_the_artifact(ml_small_trained: Path) -> None:
    from starling.content import load_content
    from training.artifacts import load_artifact, resolve_artifact

    artifact = load_artifact(resolve_artifact(ml_small_trained))  # every file checked against the manifest
    entry = artifact.manifest["content"]
    assert entry["encoder"]["package"] == PACKAGE and entry["encoder"]["package_version"] == "0.1.2"
    assert {entry["movie_ids"], entry["vectors"]} <= set(artifact.manifest["files"])
    movie_ids, vectors = load_content(artifact.path, entry)
    catalog = pl.read_parquet(ml_small_trained / "movies.parquet")
    assert movie_ids.tolist() == sorted(catalog["movie_id"].to_list()) and vectors.shape == (
        len(movie_ids),
        DIMENSIONS,
    )
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    titles = dict(zip(catalog["movie_id"].to_list(), catalog["title"].to_list(), strict=True))
    toy_story = int(np.searchsorted(movie_ids, 1))
    nearest = np.argsort(-(vectors @ vectors[toy_story]))[1:4]
    assert "Toy Story 2" in [titles[int(movie_ids[i])] for i in nearest]


# ------------------------------------------------------------------------------------ cold-start placement
def _unit_rows(rows: list[list[float]]) -> np.ndarray:
    array = np.asarray(rows, dtype=np.float32)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def test_a_new_movie_is_placed_by_its_text_neighbours_and_genres_at_a_typical_length() -> None:
    from services.recall.state import ContentTable, new_movie_vectors

    # rows 0-1: genre A, collaborative direction x; rows 2-3: genre B, direction y; row 4 genre A with text like
    # rows 2-3 (B's); row 5 genre A, no text; row 6 in the snapshot without a vector (few likes): untouched
    vectors = np.array([[2, 0], [4, 0], [0, 1], [0, 3], [0, 0], [0, 0], [0, 0]], dtype=np.float32)
    in_snapshot = np.array([True, True, True, True, False, False, True])
    genres = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 0], [1, 0], [1, 0]], dtype=bool)
    text = np.zeros((7, 3), dtype=np.float32)
    text[:4] = _unit_rows([[1, 0, 0], [1, 0.1, 0], [0, 1, 0], [0, 1, 0.1]])
    text[4] = _unit_rows([[0, 1, 0.05]])[0]
    placed = new_movie_vectors(vectors, in_snapshot, genres, text, neighbours=2)
    typical = np.linalg.norm(vectors[:4], axis=1).mean()
    assert np.allclose(placed[:4], vectors[:4]) and not placed[6].any(), "known rows are not touched"
    assert np.allclose(np.linalg.norm(placed[4:6], axis=1), typical)
    assert np.allclose(placed[5] / typical, [1, 0]), "no text: the direction of its genre's movies"
    assert np.allclose(placed[4] / typical, _unit_rows([[1, 1]])[0]), "text neighbours (y) plus genre (x)"
    assert np.allclose(new_movie_vectors(vectors, in_snapshot, genres)[4] / typical, [1, 0]), "no text at all"

    table = ContentTable.empty().upserted(np.array([9, 3]), text[:2]).upserted(np.array([3]), text[2:3])
    assert table.movie_ids.tolist() == [3, 9] and np.allclose(table.vectors, text[[2, 0]]), (
        "the last row wins"
    )
    aligned = table.aligned(np.array([1, 3, 9]))
    assert not aligned[0].any() and np.allclose(aligned[1:], text[[2, 0]])
    assert ContentTable.empty().aligned(np.array([1])) is None


def test_content_of_upserts_reads_the_movies_streams_vectors() -> None:
    from starling.content import content_of_upserts

    vector = np.linspace(0, 1, DIMENSIONS, dtype=np.float32)
    frame = pl.DataFrame(
        {"movie_id": [5, 6, 7], "content": [vector.tolist(), None, [1.0, 2.0]]},
        schema_overrides={"content": pl.List(pl.Float32)},
    )
    ids, vectors = content_of_upserts(frame)
    assert ids.tolist() == [5] and np.allclose(vectors, vector[None, :]), "null or another width: none"
    assert content_of_upserts(frame.drop("content"))[0].size == 0


@pytest.mark.slow
def test_text_places_held_out_movies_better_than_genres(ml_small_trained: Path, encoder: TextEncoder) -> None:
    """Issue 13's held-out-movies check: movies hidden from training come back with their text only."""
    from training.cold_movies import format_held_out, held_out_movies

    result = held_out_movies(ml_small_trained, encoder=encoder, resamples=1000)
    print(format_held_out(result))
    assert result["hidden_movies"] >= 100 and result["users"] >= 300
    assert result["recall_at_50"]["content"] > result["recall_at_50"]["genres"]
    assert result["content_minus_genres_interval"][0] > 0, result
    assert result["recall_at_10_among_hidden"]["content"] > result["recall_at_10_among_hidden"]["genres"]


@pytest.mark.slow
def test_bench_upsert_measures_the_write_path_with_the_encoder_on_a_copy(ml_small_trained: Path) -> None:
    from click.testing import CliRunner

    from starling.cli import cli
    from starling.events import MOVIE_STREAM, read_all

    before = read_all(ml_small_trained, MOVIE_STREAM).height
    result = CliRunner().invoke(
        cli, ["bench", "upsert", "--workdir", str(ml_small_trained), "--n", "8", "--visible-sample", "2"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["benchmark"] == "upsert" and report["upserts"] == 8 and report["text_encoder"] is True
    assert report["events_with_text_vector"] == "14/14", "every upsert carried its text vector"
    assert 0 < report["latency"]["p50_ms"] <= report["latency"]["p99_ms"]
    assert report["recall_placed_ms"]["p50_ms"] > 0, "recall placed the new movies"
    assert read_all(ml_small_trained, MOVIE_STREAM).height == before, "the benchmark wrote to a copy"
