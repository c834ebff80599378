"""Simulated users of a synthetic world: they ask RecommendService for lists and rate what they like.

``synthetic:N`` data comes from a world with planted tastes (:mod:`starling.data.synthetic`) that is rebuilt
exactly from (N, seed), so the simulator knows every user's true affinity for every movie. Each round, every
simulated user asks for ``k`` movies and answers with a vectorized response model (:func:`respond`):

* examination: the item at 0-based position ``p`` is looked at with probability ``1 / (1 + p) ** eta``;
* click: a looked-at item is clicked with probability ``sigmoid(slope * (affinity - threshold))``;
* rating: a click becomes a rating by the world's rule, ``RATING_BASE + user bias + movie bias +
  RATING_AFFINITY * (affinity - centre) + noise`` in half stars within 0.5..5. The world centres a user's
  affinities on the mean over the movies they rated; the simulator does the same from the ingested
  ``ratings.parquet`` when it has it, else centres on the mean over the catalog (ratings then run about 0.4
  stars higher).

The ratings go back through ``RecordFeedback`` in one call per user and round; the stack applies feedback
within about a second, so later rounds see updated lists. A rating >= 3.5 is a like. The result counts
requests, shown items, clicks, likes, the mean true affinity of what was shown, per round and per experiment
arm (when responses carry ``experiments``; interleaved items are also credited to the arm that contributed
them), and, for the same users and model, the like rates of three offline lists: their true top k, the k most
rated movies and k random ones (all among movies they have not rated).
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import click
import grpc
import numpy as np
import polars as pl
from google.protobuf.timestamp_pb2 import Timestamp

from starling.data.synthetic import (
    DEFAULT_SEED,
    RATING_AFFINITY,
    RATING_BASE,
    RATING_NOISE,
    World,
    make_world,
    parse_synthetic_source,
    world_size,
)
from starling.errors import StarlingError

LIKE_THRESHOLD = 3.5
BASELINE_USERS = 500  # the offline lists are scored for at most this many of the simulated users


# ------------------------------------------------------------------------------------------ response model
@dataclass(frozen=True)
class ResponseModel:
    """How a simulated user reacts to a shown list (see the module's docstring)."""

    eta: float = 1.0  # position bias: examination 1 / (1 + position) ** eta
    slope: float = 4.0  # click: sigmoid(slope * (affinity - threshold)) once examined
    threshold: float = 1.0  # the affinity clicked half the time (a user's true top 10 average ~1.5)
    rating_affinity: float = RATING_AFFINITY  # the world's rating rule
    rating_noise: float = RATING_NOISE
    like_threshold: float = LIKE_THRESHOLD  # a rating >= this is a like
    # Engagement differs between people: each user examines lists in proportion to how active they are in the
    # world (their number of ratings over the mean, to this power; 0: everyone alike). Heavy users look at
    # most of a list, occasional ones at its top item now and then, as in real traffic.
    engagement_power: float = 1.0


@dataclass(frozen=True)
class Responses:
    """Responses to a batch of shown lists, each [users, k]."""

    examined: np.ndarray  # bool
    clicked: np.ndarray  # bool, only where examined
    rating: np.ndarray  # float32 half stars where clicked, NaN elsewhere
    liked: np.ndarray  # bool, rating >= the like threshold


def examination_probability(positions: np.ndarray, eta: float = 1.0) -> np.ndarray:
    """``1 / (1 + position) ** eta`` for 0-based positions."""
    return 1.0 / (1.0 + np.asarray(positions, dtype=np.float64)) ** eta


def click_probability(affinity: np.ndarray, model: ResponseModel) -> np.ndarray:
    """P(click | examined) = sigmoid(slope * (affinity - threshold))."""
    return 1.0 / (1.0 + np.exp(-model.slope * (np.asarray(affinity, dtype=np.float64) - model.threshold)))


def respond(
    affinity: np.ndarray,
    user_bias: np.ndarray,
    movie_bias: np.ndarray,
    centre: np.ndarray,
    rng: np.random.Generator,
    model: ResponseModel = ResponseModel(),
    positions: np.ndarray | None = None,
    shown: np.ndarray | None = None,
    engagement: np.ndarray | None = None,
) -> Responses:
    """Draw examinations, clicks and ratings for ``affinity`` [users, k] (true affinities of the shown items).

    ``user_bias`` and ``centre`` are [users], ``movie_bias`` [users, k]; ``positions`` default to 0..k-1 in each
    row; ``shown`` (bool [users, k]) masks padding, which is never examined; ``engagement`` [users] scales
    each user's examination probability (capped at 1; default 1). The same draws are made whatever the mask,
    so results are deterministic for a generator's state and the batch's shape.
    """
    affinity = np.asarray(affinity, dtype=np.float64)
    k = affinity.shape[1]
    positions = np.broadcast_to(np.arange(k) if positions is None else positions, affinity.shape)
    shown = np.ones(affinity.shape, dtype=bool) if shown is None else np.asarray(shown, dtype=bool)
    examine_draw = rng.random(affinity.shape)
    click_draw = rng.random(affinity.shape)
    noise = rng.normal(0.0, model.rating_noise, affinity.shape)

    scale = np.ones(affinity.shape[0]) if engagement is None else np.asarray(engagement, dtype=np.float64)
    examined = shown & (
        examine_draw < np.minimum(examination_probability(positions, model.eta) * scale[:, None], 1.0)
    )
    clicked = examined & (click_draw < click_probability(np.where(shown, affinity, -np.inf), model))
    raw = (
        RATING_BASE
        + np.asarray(user_bias, dtype=np.float64)[:, None]
        + np.asarray(movie_bias, dtype=np.float64)
        + model.rating_affinity * (affinity - np.asarray(centre, dtype=np.float64)[:, None])
        + noise
    )
    rating = np.where(clicked, np.clip(np.round(raw * 2) / 2, 0.5, 5.0), np.nan).astype(np.float32)
    liked = clicked & (rating >= model.like_threshold)
    return Responses(examined=examined, clicked=clicked, rating=rating, liked=liked)


def user_engagement(world: World, users: np.ndarray, model: ResponseModel) -> np.ndarray:
    """Each 0-based user's engagement: their ratings in the world over the mean, to ``engagement_power``."""
    counts = world.user_counts.astype(np.float64)
    return (counts[np.asarray(users)] / counts[counts > 0].mean()) ** model.engagement_power


# ---------------------------------------------------------------------------------------------- the truth
def pair_affinity(world: World, users: np.ndarray, movies: np.ndarray) -> np.ndarray:
    """float32 affinity of 0-based ``users`` for 0-based ``movies`` (broadcast together), as
    :meth:`World.affinity` computes it, without the [users, movies] matrix."""
    users, movies = np.broadcast_arrays(np.asarray(users), np.asarray(movies))
    return (
        np.einsum("...g,...g->...", world.user_taste[users], world.movie_genre_weights[movies])
        + np.einsum("...d,...d->...", world.user_latent[users], world.movie_latent[movies])
    ).astype(np.float32)


def catalog_centre(world: World, users: np.ndarray) -> np.ndarray:
    """Each user's mean affinity over the whole catalog (affinity is linear in the movie's vectors)."""
    return (
        world.user_taste[users] @ world.movie_genre_weights.mean(axis=0)
        + world.user_latent[users] @ world.movie_latent.mean(axis=0)
    ).astype(np.float32)


def _rated_rows(world: World, users: np.ndarray, rated: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(row in ``users``, 0-based movie) of the ratings in ``rated`` (user_id, movie_id) by ``users``."""
    position = np.full(len(world.user_bias), -1, dtype=np.int64)
    position[np.asarray(users)] = np.arange(len(users))
    user_index = rated["user_id"].to_numpy() - 1
    movie_index = rated["movie_id"].to_numpy() - 1
    inside = (user_index >= 0) & (user_index < len(position)) & (movie_index >= 0)
    inside &= movie_index < len(world.movie_bias)
    row = position[user_index[inside]]
    return row[row >= 0], movie_index[inside][row >= 0]


def rated_centre(world: World, users: np.ndarray, rated: pl.DataFrame) -> np.ndarray:
    """Each user's mean affinity over the movies they rated in ``rated`` (user_id, movie_id): the centre of
    the world's rating rule; the catalog mean for a user without ratings there."""
    users = np.asarray(users)
    row, movie_index = _rated_rows(world, users, rated)
    totals = np.bincount(row, weights=pair_affinity(world, users[row], movie_index), minlength=len(users))
    counts = np.bincount(row, minlength=len(users))
    return np.where(counts > 0, totals / np.maximum(counts, 1), catalog_centre(world, users)).astype(
        np.float32
    )


def read_rated(ratings_path: Path, user_ids: np.ndarray) -> pl.DataFrame:
    """(user_id, movie_id) of ``user_ids``' ratings in an ingested ``ratings.parquet``."""
    return (
        pl.scan_parquet(ratings_path)
        .select("user_id", "movie_id")
        .filter(pl.col("user_id").is_in(pl.Series(user_ids, dtype=pl.Int64).implode()))
        .collect()
    )


def pick_users(world: World, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct 0-based users who have ratings, drawn with ``rng``, in increasing order."""
    candidates = np.flatnonzero(world.user_counts > 0)
    if n >= len(candidates):
        return candidates
    return np.sort(rng.choice(candidates, size=n, replace=False))


def check_user_ids(world: World, user_ids: list[int] | np.ndarray) -> np.ndarray:
    """0-based indices of 1-based ``user_ids``; a StarlingError for ids outside the world."""
    ids = np.unique(np.asarray(user_ids, dtype=np.int64))
    n_users = len(world.user_bias)
    bad = ids[(ids < 1) | (ids > n_users)]
    if bad.size:
        raise StarlingError(f"user ids {bad[:5].tolist()} are not in this world (users 1..{n_users})")
    return ids - 1


def check_ingested(ratings_path: Path, n_ratings: int) -> None:
    """A StarlingError unless ``ratings_path`` plausibly holds ``synthetic:n_ratings`` (count and id ranges)."""
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(ratings_path).metadata.num_rows
    bounds = pl.scan_parquet(ratings_path).select(pl.max("user_id"), pl.max("movie_id")).collect().row(0)
    n_users, n_movies = world_size(n_ratings)
    if rows != n_ratings or (bounds[0] or 0) > n_users or (bounds[1] or 0) > n_movies:
        raise StarlingError(
            f"{ratings_path} holds {rows:,} ratings (max user id {bounds[0]}, movie id {bounds[1]}), not "
            f"synthetic:{n_ratings} ({n_ratings:,} ratings, {n_users:,} users, {n_movies:,} movies): pass the "
            "--dataset it was ingested from"
        )


# -------------------------------------------------------------------------------------- offline baselines
def offline_like_rates(
    world: World,
    users: np.ndarray,
    rated: pl.DataFrame,
    popularity: np.ndarray,
    centre: np.ndarray,
    k: int,
    rng: np.random.Generator,
    model: ResponseModel = ResponseModel(),
) -> dict[str, dict[str, float]]:
    """Like rate, click rate and mean true affinity per shown item when each of ``users`` is shown, among the
    movies they have not rated: their true top ``k`` (``oracle``), the ``k`` with the highest ``popularity``
    (``popular``), ``k`` uniformly random ones (``random``). Builds a [users, movies] matrix: bound users."""
    users = np.asarray(users)
    n_movies = len(world.movie_bias)
    k = min(k, n_movies)
    affinity = world.affinity(users)
    seen = np.zeros(affinity.shape, dtype=bool)
    seen[_rated_rows(world, users, rated)] = True

    def top(keys: np.ndarray) -> np.ndarray:
        keys = np.where(seen, -np.inf, keys)
        best = np.argpartition(-keys, k - 1, axis=1)[:, :k]
        return np.take_along_axis(best, np.argsort(-np.take_along_axis(keys, best, 1), axis=1), 1)

    lists = {
        "oracle": top(affinity),
        "popular": top(np.broadcast_to(popularity.astype(np.float64), affinity.shape)),
        "random": top(rng.random((len(users), n_movies))),
    }
    rates = {}
    for name, movies in lists.items():  # three lists
        shown_affinity = np.take_along_axis(affinity, movies, 1)
        responses = respond(
            shown_affinity,
            world.user_bias[users],
            world.movie_bias[movies],
            centre,
            rng,
            model,
            engagement=user_engagement(world, users, model),
        )
        rates[name] = {
            "like_rate": float(responses.liked.mean()),
            "click_rate": float(responses.clicked.mean()),
            "mean_affinity": float(shown_affinity.mean()),
        }
    return rates


# ---------------------------------------------------------------------------------------------- simulation
@dataclass
class SimulationResult:
    """What a simulation did and saw. Rates are per shown item; affinities are the world's truth."""

    target: str
    n_ratings: int
    seed: int
    users: int
    rounds: int  # rounds started
    k: int
    centre: str  # "rated" (the world's rule, from ratings.parquet) or "catalog"
    requests: int = 0  # Recommend calls answered
    shown: int = 0
    unknown_items: int = 0  # shown movie ids outside the world (e.g. added to the catalog later)
    examined: int = 0
    clicks: int = 0  # each click is a rating
    likes: int = 0
    ratings_accepted: int = 0
    ratings_rejected: int = 0
    feedback_calls: int = 0
    like_rate: float = 0.0
    click_rate: float = 0.0
    mean_rating: float | None = None  # of the ratings drawn; None without clicks
    mean_affinity: float | None = None  # of the shown items the world knows
    per_round: list[dict[str, Any]] = field(default_factory=list)
    arms: list[dict[str, Any]] = field(default_factory=list)  # one per (experiment, arm) seen
    item_arms: list[dict[str, Any]] = field(default_factory=list)  # interleaving: items per contributing arm
    models: dict[str, int] = field(default_factory=dict)  # requests per model_version
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # "Recommend: UNAVAILABLE" -> count
    first_error: str = ""
    stopped_early: bool = False  # max_seconds ran out
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """A few lines for a person: per round, all, per arm, the offline lists, errors."""
        columns = f"{'shown':>7} {'clicks':>6} {'likes':>6} {'like rate':>9} {'affinity':>8}"

        def cells(row: dict[str, Any]) -> str:
            return (
                f"{row['shown']:>7,} {row['clicks']:>6,} {row['likes']:>6,} "
                f"{row['like_rate']:>9.2%} {_fixed(row['mean_affinity'], 3):>8}"
            )

        lines = [
            f"simulated {self.users} users x {self.rounds} rounds (k {self.k}) of synthetic:{self.n_ratings} "
            f"against {self.target} in {self.wall_s:.1f} s"
            + (" (stopped at --max-seconds)" * self.stopped_early),
            f"{'round':>5} {'requests':>8} {columns}",
            *(f"{row['round']:>5} {row['requests']:>8,} {cells(row)}" for row in self.per_round),
            f"{'all':>5} {self.requests:>8,} {cells(asdict(self))}",
            f"ratings sent {self.clicks:,} (accepted {self.ratings_accepted:,}, rejected "
            f"{self.ratings_rejected:,}), mean {_fixed(self.mean_rating, 2)} (centre: {self.centre})",
        ]
        if self.arms:
            lines.append(f"{'experiment':<16} {'arm':<12} {'requests':>8} {columns}")
            lines += [
                f"{arm['experiment']:<16} {arm['arm']:<12} {arm['requests']:>8,} {cells(arm)}"
                for arm in self.arms
            ]
        if self.item_arms:
            lines.append(f"{'interleaved items by arm':<38} {columns}")
            lines += [f"{arm['arm']:<38} {cells(arm)}" for arm in self.item_arms]
        if self.models:
            lines.append("models: " + ", ".join(f"{name or '-'} {n:,}" for name, n in self.models.items()))
        if self.baselines:
            lines.append(
                "offline lists for the same users (like rate, affinity): "
                + ", ".join(
                    f"{name} {b['like_rate']:.2%} {b['mean_affinity']:.3f}"
                    for name, b in self.baselines.items()
                )
            )
        if self.errors:
            counts = ", ".join(f"{name} {n}" for name, n in self.errors.items())
            lines.append(f"errors: {counts} (first: {self.first_error})")
        return "\n".join(lines)


def _fixed(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@dataclass(frozen=True)
class _Served:
    movie_ids: list[int]
    experiments: list[dict[str, str]]
    model_version: str
    item_arms: list[str] = field(default_factory=list)  # interleaving: the arm that contributed each item
    request_id: str = ""  # the answer's request_id, which the feedback on it names
    error: str = ""  # "Recommend: CODE" when the call failed
    detail: str = ""
    skipped: bool = False  # past the deadline: not asked


def _recommend(stub, user_id: int, k: int, deadline: float, timeout_s: float) -> _Served:
    """One Recommend call (inherently per request); ``experiments`` read tolerantly (newer protos only)."""
    from starling.v1 import recommend_pb2

    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return _Served([], [], "", skipped=True)
    try:
        response = stub.Recommend(
            recommend_pb2.RecommendRequest(user_id=user_id, k=k), timeout=min(timeout_s, remaining)
        )
    except grpc.RpcError as exc:
        return _Served([], [], "", error=f"Recommend: {exc.code().name}", detail=str(exc.details()))
    experiments = [
        {"experiment": str(getattr(e, "experiment", "")), "arm": str(getattr(e, "arm", ""))}
        for e in getattr(response, "experiments", ())
    ]
    items = response.items[:k]
    return _Served(
        [item.movie_id for item in items],
        experiments,
        response.model_version,
        item_arms=[str(getattr(item, "arm", "")) for item in items],
        request_id=response.request_id,
    )


def _record(stub, events: list, timeout_s: float) -> tuple[int, int, str, str]:
    """One RecordFeedback call: (accepted, rejected, error, detail)."""
    from starling.v1 import recommend_pb2

    try:
        reply = stub.RecordFeedback(recommend_pb2.RecordFeedbackRequest(events=events), timeout=timeout_s)
    except grpc.RpcError as exc:
        return 0, len(events), f"RecordFeedback: {exc.code().name}", str(exc.details())
    rejected = [r.reason for r in reply.results if not r.accepted]
    return (
        reply.accepted,
        reply.rejected,
        ("RecordFeedback: rejected" if rejected else ""),
        ";".join(rejected[:1]),
    )


def _stats(frame: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    """Counts and rates of per-request rows, grouped by ``by`` (empty: all)."""
    aggregations = [
        pl.len().alias("requests"),
        pl.sum("shown", "known", "examined", "clicks", "likes", "affinity_sum", "rating_sum"),
    ]
    grouped = frame.group_by(by, maintain_order=True).agg(aggregations) if by else frame.select(aggregations)
    return grouped.select(
        *by,
        "requests",
        "shown",
        "examined",
        "clicks",
        "likes",
        like_rate=pl.col("likes") / pl.col("shown").clip(1),
        click_rate=pl.col("clicks") / pl.col("shown").clip(1),
        mean_affinity=pl.when(pl.col("known") > 0).then(pl.col("affinity_sum") / pl.col("known")),
        mean_rating=pl.when(pl.col("clicks") > 0).then(pl.col("rating_sum") / pl.col("clicks")),
        known=pl.col("known"),
    )


def run_simulation(
    target: str,
    token: str | None,
    n_ratings: int,
    seed: int = 0,
    users: int = 200,
    rounds: int = 3,
    k: int = 10,
    concurrency: int = 8,
    max_seconds: float = 300.0,
    user_ids: list[int] | None = None,
    model: ResponseModel = ResponseModel(),
    ratings_path: Path | None = None,
    world_seed: int = DEFAULT_SEED,
    round_gap_s: float = 1.0,
    timeout_s: float = 10.0,
) -> SimulationResult:
    """Simulate ``users`` users of ``synthetic:n_ratings`` (or ``user_ids``) for ``rounds`` rounds against the
    RecommendService at ``target``, sending ratings with ``token``.

    Each round: every user's Recommend(k) (``concurrency`` at a time), one vectorized :func:`respond` over the
    round's lists, every user's ratings in one RecordFeedback call; the next round starts at least
    ``round_gap_s`` after the last feedback (the stack applies feedback within about a second). No call
    starts after ``max_seconds``; a round without one answer ends the run. ``ratings_path`` (the ingested
    ratings.parquet) gives the world's rating centre and the offline baselines. Raises StarlingError when no
    Recommend call succeeds.
    """
    from starling.auth import authorized_channel
    from starling.v1 import recommend_pb2, recommend_pb2_grpc

    started = time.monotonic()
    deadline = started + max_seconds
    pick_rng, response_rng, baseline_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    world = make_world(n_ratings, world_seed)
    chosen = check_user_ids(world, user_ids) if user_ids else pick_users(world, users, pick_rng)
    ids = chosen + 1
    rated = read_rated(ratings_path, ids) if ratings_path is not None else None
    centre = rated_centre(world, chosen, rated) if rated is not None else catalog_centre(world, chosen)
    result = SimulationResult(
        target=target,
        n_ratings=n_ratings,
        seed=seed,
        users=len(chosen),
        rounds=0,
        k=k,
        centre="rated" if rated is not None else "catalog",
    )
    if rated is not None:
        counts = pl.scan_parquet(ratings_path).group_by("movie_id").len().collect()
        popularity = np.zeros(len(world.movie_bias))
        inside = counts["movie_id"].to_numpy() <= len(popularity)
        popularity[counts["movie_id"].to_numpy()[inside] - 1] = counts["len"].to_numpy()[inside]
        some = slice(0, BASELINE_USERS)  # bounds the [users, movies] matrices
        result.baselines = offline_like_rates(
            world, chosen[some], rated, popularity, centre[some], k, baseline_rng, model
        )

    n_movies = len(world.movie_bias)
    rows: list[pl.DataFrame] = []
    cells: list[pl.DataFrame] = []  # interleaved items, credited to the arm that contributed them
    errors: dict[str, int] = {}
    first_error = ""
    channel = authorized_channel(target, token)
    stub = recommend_pb2_grpc.RecommendServiceStub(channel)
    last_feedback = -math.inf
    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            for round_index in range(rounds):  # a loop over rounds
                time.sleep(max(0.0, min(last_feedback + round_gap_s, deadline) - time.monotonic()))
                if time.monotonic() >= deadline:
                    result.stopped_early = True
                    break
                result.rounds += 1
                ask = partial(_recommend, stub, k=k, deadline=deadline, timeout_s=timeout_s)
                served = list(pool.map(ask, ids.tolist()))
                shown_ids = np.zeros((len(ids), k), dtype=np.int64)
                item_arms = np.full((len(ids), k), "", dtype=object)
                for row, each in enumerate(served):  # per request: its list into the batch
                    shown_ids[row, : len(each.movie_ids)] = each.movie_ids
                    item_arms[row, : len(each.item_arms)] = each.item_arms
                known = (shown_ids >= 1) & (shown_ids <= n_movies)
                movies = np.clip(shown_ids - 1, 0, n_movies - 1)
                affinity = pair_affinity(world, chosen[:, None], movies)
                responses = respond(
                    affinity,
                    world.user_bias[chosen],
                    world.movie_bias[movies],
                    centre,
                    response_rng,
                    model,
                    shown=known,
                    engagement=user_engagement(world, chosen, model),
                )

                now = Timestamp()
                now.FromNanoseconds(time.time_ns())
                calls = [
                    [
                        recommend_pb2.FeedbackEvent(
                            user_id=int(ids[row]),
                            movie_id=int(shown_ids[row, col]),
                            kind=recommend_pb2.FEEDBACK_KIND_RATING,
                            rating=float(responses.rating[row, col]),
                            time=now,
                            request_id=served[row].request_id,
                        )
                        for col in np.flatnonzero(responses.clicked[row])
                    ]
                    for row in np.flatnonzero(responses.clicked.any(axis=1))  # per request with clicks
                ]
                if calls and time.monotonic() < deadline:
                    replies = list(pool.map(partial(_record, stub, timeout_s=timeout_s), calls))
                    result.feedback_calls += len(replies)
                    result.ratings_accepted += sum(r[0] for r in replies)
                    result.ratings_rejected += sum(r[1] for r in replies)
                    for _, _, error, detail in replies:
                        if error:
                            errors[error] = errors.get(error, 0) + 1
                            first_error = first_error or f"{error}: {detail}"
                    last_feedback = time.monotonic()
                for each in served:
                    if each.error:
                        errors[each.error] = errors.get(each.error, 0) + 1
                        first_error = first_error or f"{each.error}: {each.detail}"

                answered = np.array([not (s.error or s.skipped) for s in served])
                rows.append(
                    pl.DataFrame(
                        {
                            "round": np.full(len(ids), round_index + 1),
                            "answered": answered,
                            "model_version": [s.model_version for s in served],
                            "experiments": [s.experiments for s in served],
                            "shown": (shown_ids > 0).sum(axis=1),
                            "known": known.sum(axis=1),
                            "examined": responses.examined.sum(axis=1),
                            "clicks": responses.clicked.sum(axis=1),
                            "likes": responses.liked.sum(axis=1),
                            "affinity_sum": np.where(known, affinity, 0.0).sum(axis=1),
                            "rating_sum": np.nansum(responses.rating, axis=1),
                        },
                        schema_overrides={
                            "experiments": pl.List(pl.Struct({"experiment": pl.String, "arm": pl.String}))
                        },
                    ).filter("answered")
                )
                credited = (item_arms != "") & (shown_ids > 0)
                if credited.any():
                    cells.append(
                        pl.DataFrame(
                            {
                                "arm": item_arms[credited].astype(str),
                                "known": known[credited],
                                "clicks": responses.clicked[credited],
                                "likes": responses.liked[credited],
                                "affinity": np.where(known, affinity, 0.0)[credited],
                            }
                        )
                    )
                if any(s.skipped for s in served):
                    result.stopped_early = True
                    break
                if not answered.any():  # the stack is down or refuses everyone: more rounds would too
                    break
    finally:
        channel.close()

    result.errors, result.first_error = errors, first_error
    frame = pl.concat(rows) if rows else pl.DataFrame()
    if frame.is_empty():
        if first_error:
            hint = " (is the stack up? `starling up WORKDIR`)" if "UNAVAILABLE" in first_error else ""
            raise StarlingError(f"no Recommend call to {target} succeeded: {first_error}{hint}")
        result.wall_s = time.monotonic() - started
        return result
    total = _stats(frame, []).row(0, named=True)
    for name in ("requests", "shown", "examined", "clicks", "likes", "like_rate", "click_rate"):
        setattr(result, name, total[name])
    result.unknown_items = total["shown"] - total["known"]
    result.mean_affinity, result.mean_rating = total["mean_affinity"], total["mean_rating"]
    result.per_round = _stats(frame, ["round"]).drop("known").to_dicts()
    arms = frame.explode("experiments").drop_nulls("experiments").unnest("experiments")
    result.arms = _stats(arms, ["experiment", "arm"]).drop("known").sort("experiment", "arm").to_dicts()
    if cells:
        result.item_arms = (
            pl.concat(cells)
            .group_by("arm")
            .agg(
                shown=pl.len(),
                clicks=pl.sum("clicks"),
                likes=pl.sum("likes"),
                mean_affinity=pl.col("affinity").filter("known").mean(),
            )
            .with_columns(like_rate=pl.col("likes") / pl.col("shown"))
            .sort("arm")
            .to_dicts()
        )
    result.models = dict(frame.group_by("model_version").len().sort("model_version").iter_rows())
    result.wall_s = time.monotonic() - started
    return result


# ------------------------------------------------------------------------------------------------------ CLI
@click.command("simulate")
@click.argument("workdir", type=click.Path(path_type=Path))
@click.option(
    "--dataset", required=True, help="synthetic:N, the source WORKDIR was ingested from (the users' truth)."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of user picks and responses.")
@click.option("--users", type=click.IntRange(1), default=200, show_default=True, help="Simulated users.")
@click.option(
    "--user", "user_ids", type=int, multiple=True, help="Simulate these user ids instead (repeatable)."
)
@click.option("--rounds", type=click.IntRange(1), default=3, show_default=True)
@click.option("--k", type=click.IntRange(1, 500), default=10, show_default=True)
@click.option("--target", default=None, help="RecommendService address (default 127.0.0.1:50051).")
@click.option("--concurrency", type=click.IntRange(1, 256), default=8, show_default=True)
@click.option(
    "--max-seconds",
    type=click.FloatRange(0, min_open=True),
    default=300.0,
    show_default=True,
    help="Start no call after this long.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def simulate(
    workdir: Path,
    dataset: str,
    seed: int,
    users: int,
    user_ids: tuple[int, ...],
    rounds: int,
    k: int,
    target: str | None,
    concurrency: int,
    max_seconds: float,
    as_json: bool,
) -> None:
    """Simulated users of a synthetic world ask the running stack for K movies each round and rate what
    they like (true tastes of `--dataset synthetic:N`); prints requests, clicks, likes and per-arm counts."""
    import json

    from starling.auth import client_token
    from starling.config import get_settings

    try:
        n_ratings = parse_synthetic_source(dataset)
    except StarlingError as exc:
        raise click.UsageError(str(exc)) from exc
    if n_ratings is None:
        raise click.UsageError(
            f"--dataset {dataset!r}: the simulator needs a synthetic world's true tastes; pass synthetic:N, "
            "the source WORKDIR was ingested from"
        )
    ratings_path = workdir / "ratings.parquet"
    if ratings_path.is_file():
        try:
            check_ingested(ratings_path, n_ratings)
        except StarlingError as exc:
            raise click.UsageError(str(exc)) from exc
    settings = get_settings().model_copy(update={"workdir": workdir})
    token = client_token(settings)
    if token is None:
        raise StarlingError(
            f"no API token for writes: {workdir}/secrets/api-token is missing and STARLING_API_TOKEN is unset "
            "(`starling up WORKDIR` writes one; `starling auth create-key` makes another)"
        )
    result = run_simulation(
        target or f"127.0.0.1:{settings.recommend_port}",
        token,
        n_ratings,
        seed=seed,
        users=users,
        rounds=rounds,
        k=k,
        concurrency=concurrency,
        max_seconds=max_seconds,
        user_ids=list(user_ids) or None,
        ratings_path=ratings_path if ratings_path.is_file() else None,
    )
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.summary())
