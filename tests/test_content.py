"""The text encoder of movie content (starling/content.py) runs offline from the pinned package, and the text
it reads is built from the catalog and the tags."""

from __future__ import annotations

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
