"""The user simulator's pure parts: the response model, the world's truth and the CLI's argument checks.

The simulation against a running stack is tested end to end elsewhere (no fakes of components here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from starling.data.synthetic import (
    RATING_AFFINITY,
    RATING_BASE,
    generate_synthetic,
    make_world,
    world_size,
)
from starling.errors import StarlingError
from starling.simulate import (
    ResponseModel,
    SimulationResult,
    catalog_centre,
    check_ingested,
    check_user_ids,
    click_probability,
    examination_probability,
    offline_like_rates,
    pair_affinity,
    pick_users,
    rated_centre,
    read_rated,
    respond,
    simulate,
)

N_RATINGS = 20_000


@pytest.fixture(scope="module")
def synthetic_20k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("simulate_synthetic")
    generate_synthetic(N_RATINGS, out)
    return out


@pytest.fixture(scope="module")
def ratings_20k(synthetic_20k: Path) -> pl.DataFrame:
    return pl.read_parquet(synthetic_20k / "ratings.parquet")


def _respond_constant(affinity: float, n: int = 20_000, k: int = 10, seed: int = 0, **model):
    """Responses of ``n`` average users (no biases, centre 0) to lists whose items all have ``affinity``."""
    return respond(
        np.full((n, k), affinity),
        np.zeros(n),
        np.zeros((n, k)),
        np.zeros(n),
        np.random.default_rng(seed),
        ResponseModel(**model),
    )


# ------------------------------------------------------------------------------------------ response model
def test_position_bias_lowers_examination_with_position() -> None:
    p = examination_probability(np.arange(10))
    assert p[0] == 1.0 and np.all(np.diff(p) < 0)
    np.testing.assert_allclose(p, 1 / (1 + np.arange(10)))
    assert np.all(np.diff(examination_probability(np.arange(10), eta=2.0)) < 0)
    assert np.all(examination_probability(np.arange(10), eta=0.0) == 1.0)

    examined = _respond_constant(1.0).examined.mean(axis=0)  # empirical, by position
    np.testing.assert_allclose(examined, p, atol=0.015)
    assert np.all(np.diff(examined) < 0)
    # padding is never examined, and positions may be given per row
    shown = np.zeros((4, 5), dtype=bool)
    shown[:, :2] = True
    padded = respond(
        np.ones((4, 5)), np.zeros(4), np.zeros((4, 5)), np.zeros(4), np.random.default_rng(0), shown=shown
    )
    assert not padded.examined[:, 2:].any() and padded.examined[:, 0].all()
    late = respond(
        np.ones((200, 2)),
        np.zeros(200),
        np.zeros((200, 2)),
        np.zeros(200),
        np.random.default_rng(0),
        positions=np.array([[0, 1000]]),
    )
    assert late.examined[:, 0].all() and late.examined[:, 1].mean() < 0.02


def test_higher_affinity_gives_more_clicks_and_higher_ratings() -> None:
    model = ResponseModel()
    assert np.all(np.diff(click_probability(np.linspace(-1, 2, 31), model)) > 0)
    assert click_probability(np.array([model.threshold]), model)[0] == pytest.approx(0.5)

    by_affinity = [_respond_constant(a, eta=0.0) for a in (-0.5, 0.5, 1.0, 1.5, 2.0)]
    clicks = [r.clicked.mean() for r in by_affinity]
    ratings = [np.nanmean(r.rating) for r in by_affinity]
    assert np.all(np.diff(clicks) > 0) and np.all(np.diff(ratings) > 0)
    assert clicks[0] < 0.01 and clicks[-1] > 0.95
    # the world's rule: a rating is RATING_BASE + RATING_AFFINITY * (affinity - centre) + noise, in half stars
    assert ratings[1] == pytest.approx(RATING_BASE + RATING_AFFINITY * 0.5, abs=0.1)
    for r in by_affinity:
        assert np.isnan(r.rating[~r.clicked]).all() and not r.clicked[~r.examined].any()
        drawn = r.rating[r.clicked]
        assert np.all((drawn >= 0.5) & (drawn <= 5.0)) and np.all(drawn * 2 == np.round(drawn * 2))
        np.testing.assert_array_equal(r.liked, r.clicked & (r.rating >= 3.5))
    # biases and the centre shift ratings as in the world
    shifted = respond(
        np.full((20_000, 1), 1.0),
        np.full(20_000, 0.25),
        np.full((20_000, 1), -0.5),
        np.full(20_000, 0.5),
        np.random.default_rng(0),
    )
    assert np.nanmean(shifted.rating) == pytest.approx(RATING_BASE - 0.25 + RATING_AFFINITY * 0.5, abs=0.1)


def test_like_rate_responds_to_affinity_as_intended() -> None:
    """Per shown item (k = 10): ~29% of items are examined, so a list of items the user loves likes ~25%,
    items of typical affinity (~0, a random list) a few percent at most."""
    like = {a: _respond_constant(a).liked.mean() for a in (0.0, 0.5, 1.0, 1.5)}
    assert like[0.0] < 0.01 < like[0.5] < 0.05 < like[1.0] < like[1.5]
    assert 0.2 < like[1.5] < 0.29
    # flatter position bias: more examined, more liked
    assert _respond_constant(1.0, eta=0.5).liked.mean() > like[1.0]


def test_responses_are_deterministic_for_a_seed() -> None:
    first, again, other = (_respond_constant(1.0, n=500, seed=s) for s in (7, 7, 8))
    for name in ("examined", "clicked", "liked"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    np.testing.assert_array_equal(first.rating, again.rating)  # NaN where not clicked, equal positions
    assert not np.array_equal(first.clicked, other.clicked)


# ---------------------------------------------------------------------------------------------- the truth
def test_world_is_rebuilt_identically_from_n_and_seed() -> None:
    a, b, other = make_world(N_RATINGS, 0), make_world(N_RATINGS, 0), make_world(N_RATINGS, 1)
    for name in (
        "user_taste",
        "user_latent",
        "user_bias",
        "movie_genre_weights",
        "movie_latent",
        "movie_bias",
    ):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    users = np.arange(len(a.user_bias))
    np.testing.assert_array_equal(a.affinity(users), b.affinity(users))
    assert not np.array_equal(a.affinity(users), other.affinity(users))


def test_pair_affinity_and_catalog_centre_match_the_world() -> None:
    world = make_world(N_RATINGS, 0)
    users = np.array([0, 3, 7, 100])
    full = world.affinity(users)
    movies = np.array([[0, 5, 9], [1, 2, 3], [10, 11, 12], [99, 98, 0]])
    np.testing.assert_allclose(
        pair_affinity(world, users[:, None], movies),
        np.take_along_axis(full, movies, 1),
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_allclose(catalog_centre(world, users), full.mean(axis=1), rtol=1e-4, atol=1e-5)


def test_truth_matches_the_ingested_tastes(synthetic_20k: Path, ratings_20k: pl.DataFrame) -> None:
    """Users rate the movies they have high affinity for higher, and the rated-movie centre reproduces the
    world's rating rule: the residual of the ingested ratings is the rule's noise, centred on zero."""
    world = make_world(N_RATINGS, 0)
    users = ratings_20k["user_id"].to_numpy() - 1
    movies = ratings_20k["movie_id"].to_numpy() - 1
    rating = ratings_20k["rating"].to_numpy().astype(np.float64)
    affinity = pair_affinity(world, users, movies)
    assert np.corrcoef(rating, affinity)[0, 1] > 0.3

    all_users = np.arange(len(world.user_bias))
    rated = read_rated(synthetic_20k / "ratings.parquet", all_users + 1)
    assert rated.height == ratings_20k.height

    def residual(centre: np.ndarray) -> np.ndarray:
        expected = (
            RATING_BASE
            + world.user_bias[users]
            + world.movie_bias[movies]
            + RATING_AFFINITY * (affinity - centre[users])
        )
        return rating - expected

    by_rated = residual(rated_centre(world, all_users, rated))
    by_catalog = residual(catalog_centre(world, all_users))
    assert abs(by_rated.mean()) < 0.05 and by_rated.std() < 0.85  # noise 0.7, half-star rounding, clipping
    assert by_catalog.mean() < -0.25  # users rate what they like: their rated mean is above the catalog's


def test_offline_lists_rank_as_intended(synthetic_20k: Path, ratings_20k: pl.DataFrame) -> None:
    """With the default model, the users' true top 10 of unseen movies is liked far more than the 10 most
    rated unseen movies or 10 random ones."""
    world = make_world(N_RATINGS, 0)
    users = pick_users(world, 100, np.random.default_rng(0))
    rated = read_rated(synthetic_20k / "ratings.parquet", users + 1)
    counts = ratings_20k.group_by("movie_id").len()
    popularity = np.zeros(len(world.movie_bias))
    popularity[counts["movie_id"].to_numpy() - 1] = counts["len"].to_numpy()
    rates = offline_like_rates(
        world, users, rated, popularity, rated_centre(world, users, rated), 10, np.random.default_rng(0)
    )
    assert set(rates) == {"oracle", "popular", "random"}
    assert 0.15 < rates["oracle"]["like_rate"] < 0.29
    assert rates["popular"]["like_rate"] < 0.06 and rates["random"]["like_rate"] < 0.06
    assert rates["oracle"]["mean_affinity"] > 1.0 > rates["random"]["mean_affinity"]


def test_user_picks(synthetic_20k: Path) -> None:
    world = make_world(N_RATINGS, 0)
    picked = pick_users(world, 30, np.random.default_rng(3))
    np.testing.assert_array_equal(picked, pick_users(world, 30, np.random.default_rng(3)))
    assert len(np.unique(picked)) == 30 and np.all(np.diff(picked) > 0)
    assert np.all(world.user_counts[picked] > 0)
    assert len(pick_users(world, 10**6, np.random.default_rng(0))) == (world.user_counts > 0).sum()
    np.testing.assert_array_equal(check_user_ids(world, [5, 1, 5]), [0, 4])
    n_users, _ = world_size(N_RATINGS)
    with pytest.raises(StarlingError, match="not in this world"):
        check_user_ids(world, [1, n_users + 1])


def test_check_ingested(synthetic_20k: Path) -> None:
    check_ingested(synthetic_20k / "ratings.parquet", N_RATINGS)
    with pytest.raises(StarlingError, match="synthetic:30000"):
        check_ingested(synthetic_20k / "ratings.parquet", 30_000)


# ------------------------------------------------------------------------------------------------------ CLI
def test_cli_requires_the_synthetic_dataset_of_workdir(synthetic_20k: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    for dataset, message in (
        ("ml-latest-small", "true tastes"),
        ("synthetic:lots", "synthetic"),
        ("synthetic:30000", "holds 20,000 ratings"),
    ):
        result = runner.invoke(simulate, [str(synthetic_20k), "--dataset", dataset])
        assert result.exit_code == 2 and message in result.output, result.output
    missing = runner.invoke(
        simulate, [str(tmp_path), "--dataset", "synthetic:20000"], env={"STARLING_API_TOKEN": ""}
    )
    assert isinstance(missing.exception, StarlingError) and "no API token" in str(missing.exception)


def test_result_summary_and_json_shape() -> None:
    result = SimulationResult(target="t", n_ratings=1, seed=0, users=0, rounds=0, k=10, centre="catalog")
    assert "simulated 0 users" in result.summary() and " -" in result.summary()
    assert result.to_dict()["mean_affinity"] is None
