"""Online experiment reports from the exposure log and the feedback stream (``starling experiment report``).

Attribution (:func:`attribute`, a pure function over frames): a feedback event (user u, movie m, time t) goes
to the most recent exposure of u that contained m at or before t, when that exposure is at most ``window``
old; events with no such exposure are not attributed. Each (exposure, movie) counts at most once per kind:

- a *like*: a rating >= ``like_threshold`` (3.5) or a "watch";
- a *rating*: any explicit rating; a *click*: a "click".

A/B experiments (:func:`ab_analysis`): per arm, exposures, users and the three counts; each rate per exposure
is a ratio of sums with a delta-method 95% interval over users (the unit of randomization), and per user the
mean of the user's count / the user's exposures with a normal interval. Each arm is compared with the control
(the first arm of the config, else the first alphabetically): difference, 95% interval and a two-sided z-test.
:func:`sample_ratio_mismatch` tests users per arm against the configured shares (chi-square, flagged when
p < 0.001).

Interleaving experiments (:func:`interleaving_analysis`): per user, each arm's credits are the attributed likes
on items it contributed. The decision is a paired t-test on the per-user difference of credits (treatment minus
control; users without credits count as 0), which uses how much more each user liked of one arm; the wins,
losses and ties (a user is a win for the arm with more credits) and their binomial sign test are reported
beside it. The t-test holds its level on this data: with each user's difference given a random sign, it was
significant in 4.2-5.2% of 4,000 samples of 20-160 users at p < 0.05.

:func:`experiment_report` also draws the like-rate per exposure per arm over time (daily, hourly under two days)
to WORKDIR/reports/experiment-NAME.png; :func:`format_report` prints the report.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy import stats

from services.common.experiments import INTERLEAVED
from starling.errors import StarlingError

KINDS = ("likes", "ratings", "clicks")
SRM_THRESHOLD = 0.001
ALPHA = 0.05
Z95 = float(stats.norm.ppf(0.975))
DELTA_METHOD = "delta method over users"
PER_USER_METHOD = "normal approximation over users"


# ------------------------------------------------------------------------------------------------ attribution
def with_arm(exposures: pl.DataFrame, name: str) -> pl.DataFrame:
    """``exposures`` with ``arm``: the user's arm in experiment ``name`` (null when the list was not in it)."""
    arm = (
        pl.col("experiments")
        .list.eval(pl.element().filter(pl.element().struct.field("experiment") == name).struct.field("arm"))
        .list.first()
    )
    return exposures.with_columns(arm=arm)


def attribute(
    exposures: pl.DataFrame,
    feedback: pl.DataFrame,
    window: timedelta = timedelta(days=7),
    like_threshold: float = 3.5,
) -> pl.DataFrame:
    """One row per (exposure, movie) that got feedback: request_id, user_id, movie_id, position, item_arm and
    the booleans like, rating, click. An event that names the request_id of a list that showed the user the
    movie goes to that list; any other goes to the user's latest exposure holding the movie at or before it,
    within ``window``."""
    shown = (
        exposures.select(
            "request_id",
            "user_id",
            "time_us",
            pl.col("items").alias("movie_id"),
            pl.int_ranges(pl.col("items").list.len(), dtype=pl.Int32).alias("position"),
            pl.when(pl.col("item_arms").list.len() == pl.col("items").list.len())
            .then(pl.col("item_arms"))
            .otherwise(pl.col("items").list.eval(pl.lit("")))
            .alias("item_arm"),
        )
        .explode(["movie_id", "position", "item_arm"])
        .drop_nulls("movie_id")
        .unique(["request_id", "movie_id"], keep="first")  # a movie twice in one list counts once
        .sort("time_us", "request_id")
    )
    if "request_id" not in feedback.columns:
        feedback = feedback.with_columns(request_id=pl.lit(None, pl.String))
    rated = (pl.col("kind") == "rating") & pl.col("rating").is_not_nan() & pl.col("rating").is_not_null()
    events = feedback.select(
        "user_id",
        "movie_id",
        pl.col("request_id").alias("named_request_id"),
        pl.col("event_timestamp").dt.epoch("us").alias("time_us"),
        like=(rated & (pl.col("rating") >= like_threshold)) | (pl.col("kind") == "watch"),
        rating=pl.col("kind") == "rating",
        click=pl.col("kind") == "click",
    ).with_row_index("event")
    named = events.join(
        shown.drop("time_us"),
        left_on=["named_request_id", "user_id", "movie_id"],
        right_on=["request_id", "user_id", "movie_id"],
        how="inner",
    ).with_columns(request_id=pl.col("named_request_id"))
    window_us = int(window / timedelta(microseconds=1))
    by_time = (
        events.filter(~pl.col("event").is_in(named["event"].implode()))
        .sort("time_us")
        .join_asof(
            shown.rename({"time_us": "exposure_time_us"}),
            left_on="time_us",
            right_on="exposure_time_us",
            by=["user_id", "movie_id"],
            strategy="backward",
            tolerance=window_us,
            check_sortedness=False,  # both sorted by time above; the check cannot run with `by`
        )
    )
    columns = ["request_id", "user_id", "movie_id", "position", "item_arm", "like", "rating", "click"]
    joined = pl.concat([named.select(columns), by_time.select(columns)])
    return (
        joined.filter(pl.col("request_id").is_not_null())
        .group_by("request_id", "movie_id")
        .agg(
            pl.col("user_id", "position", "item_arm").first(),
            pl.col("like").any(),
            pl.col("rating").any(),
            pl.col("click").any(),
        )
        .sort("request_id", "position")
    )


def per_exposure(exposures: pl.DataFrame, attributed: pl.DataFrame) -> pl.DataFrame:
    """Each exposure (request_id, user_id, arm, time) with its attributed likes, ratings and clicks."""
    counts = attributed.group_by("request_id").agg(
        pl.col("like").sum().alias("likes"),
        pl.col("rating").sum().alias("ratings"),
        pl.col("click").sum().alias("clicks"),
    )
    frame = exposures.select("request_id", "user_id", "arm", "time").join(counts, on="request_id", how="left")
    return frame.with_columns(pl.col(list(KINDS)).fill_null(0).cast(pl.Int64))


SIGNALS = ("like", "rating", "click")  # what may credit an arm: a like, any rating, a click


def item_arm_credits(exposures: pl.DataFrame, attributed: pl.DataFrame, signal: str = "like") -> pl.DataFrame:
    """Attributed ``signal`` events (likes by default) per (exposure, contributing arm): request_id, user_id,
    time, item_arm, credits."""
    return (
        attributed.filter(pl.col(signal) & (pl.col("item_arm") != ""))
        .group_by("request_id", "item_arm")
        .agg(pl.len().cast(pl.Int64).alias("credits"))
        .join(exposures.select("request_id", "user_id", "time"), on="request_id", how="inner")
    )


# --------------------------------------------------------------------------------------------------- A/B
def ratio_of_sums(numerator: np.ndarray, denominator: np.ndarray) -> tuple[float, float]:
    """sum(numerator) / sum(denominator) over units and its delta-method standard error (units independent)."""
    y, x = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    n = y.size
    if n == 0 or x.sum() == 0:
        return math.nan, math.nan
    mean_x, mean_y = x.mean(), y.mean()
    ratio = mean_y / mean_x
    if n < 2:
        return float(ratio), math.nan
    cov = np.cov(np.vstack([y, x]), ddof=1)
    variance = (cov[0, 0] - 2 * ratio * cov[0, 1] + ratio**2 * cov[1, 1]) / (n * mean_x**2)
    return float(ratio), float(math.sqrt(max(variance, 0.0)))


def mean_of_ratios(numerator: np.ndarray, denominator: np.ndarray) -> tuple[float, float]:
    """Mean over units of numerator / denominator and its standard error."""
    values = np.asarray(numerator, dtype=np.float64) / np.asarray(denominator, dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan
    se = values.std(ddof=1) / math.sqrt(values.size) if values.size > 1 else math.nan
    return float(values.mean()), float(se)


def _estimate(value: float, se: float) -> dict[str, float]:
    return {"value": value, "se": se, "low": value - Z95 * se, "high": value + Z95 * se}


def _difference(value: float, se: float, base: float, base_se: float) -> dict[str, float]:
    diff, diff_se = value - base, math.sqrt(se**2 + base_se**2)
    z = diff / diff_se if diff_se > 0 else math.nan
    p = float(2 * stats.norm.sf(abs(z))) if not math.isnan(z) else math.nan
    relative = diff / base if base else math.nan
    return {
        "value": diff,
        "se": diff_se,
        "low": diff - Z95 * diff_se,
        "high": diff + Z95 * diff_se,
        "relative": relative,
        "z": z,
        "p": p,
        "significant": bool(p < ALPHA),  # False when p is NaN
    }


def per_user(exposure_counts: pl.DataFrame) -> pl.DataFrame:
    """Per (arm, user): exposures and the sums of likes, ratings and clicks."""
    return exposure_counts.group_by("arm", "user_id").agg(
        pl.len().cast(pl.Int64).alias("exposures"), *[pl.col(kind).sum() for kind in KINDS]
    )


def ab_analysis(users: pl.DataFrame, arms: list[str]) -> dict[str, Any]:
    """Per arm counts and rates with 95% intervals, and each arm against ``arms[0]`` (the control).

    ``users``: one row per (arm, user_id) with exposures, likes, ratings and clicks (see :func:`per_user`)."""
    result: dict[str, Any] = {}
    for arm in arms:
        rows = users.filter(pl.col("arm") == arm)
        exposures = rows["exposures"].to_numpy()
        entry: dict[str, Any] = {"users": rows.height, "exposures": int(exposures.sum())}
        for kind in KINDS:
            counts = rows[kind].to_numpy()
            entry[kind] = int(counts.sum())
            rate = kind.removesuffix("s")
            entry[f"{rate}_rate"] = _estimate(*ratio_of_sums(counts, exposures))
            entry[f"{rate}_rate_per_user"] = _estimate(*mean_of_ratios(counts, exposures))
        result[arm] = entry
    control = arms[0]
    for arm in arms[1:]:
        result[arm]["vs_control"] = {
            metric: _difference(
                result[arm][metric]["value"],
                result[arm][metric]["se"],
                result[control][metric]["value"],
                result[control][metric]["se"],
            )
            for metric in _rate_metrics()
        }
    return result


def _rate_metrics() -> list[str]:
    return [f"{kind.removesuffix('s')}_rate{suffix}" for kind in KINDS for suffix in ("", "_per_user")]


def sample_ratio_mismatch(
    users: dict[str, int], expected_shares: dict[str, float] | None, threshold: float = SRM_THRESHOLD
) -> dict[str, Any]:
    """Chi-square test of users per arm against the expected shares (equal shares when None); ``flagged``
    when p < ``threshold`` or users are in arms the config does not have."""
    notes: list[str] = []
    if expected_shares is None:
        expected_shares = dict.fromkeys(users, 1.0)
        notes.append("no configured shares: equal shares assumed")
    unexpected = sorted(arm for arm, n in users.items() if n and arm not in expected_shares)
    if unexpected:
        notes.append(f"users in arms the config does not have: {', '.join(unexpected)}")
    arms = list(expected_shares)
    observed = np.array([users.get(arm, 0) for arm in arms], dtype=np.float64)
    shares = np.array([expected_shares[arm] for arm in arms], dtype=np.float64)
    result: dict[str, Any] = {
        "test": "chi-square of users per arm against the expected shares",
        "threshold": threshold,
        "users": {arm: int(n) for arm, n in zip(arms, observed, strict=True)},
        "expected_share": {arm: float(s / shares.sum()) for arm, s in zip(arms, shares, strict=True)},
        "observed_share": {
            arm: float(n / observed.sum()) if observed.sum() else math.nan
            for arm, n in zip(arms, observed, strict=True)
        },
    }
    if len(arms) < 2 or observed.sum() == 0:
        notes.append("fewer than two arms or no users: no test")
        return {**result, "chi2": math.nan, "p": math.nan, "flagged": bool(unexpected), "notes": notes}
    test = stats.chisquare(observed, observed.sum() * shares / shares.sum())
    p = float(test.pvalue)
    flagged = bool(p < threshold or unexpected)
    return {**result, "chi2": float(test.statistic), "p": p, "flagged": flagged, "notes": notes}


# ------------------------------------------------------------------------------------------- interleaving
def user_credits(credits: pl.DataFrame, user_ids: np.ndarray, arms: list[str]) -> pl.DataFrame:
    """One row per exposed user: user_id and each arm's credits (a column per arm; 0 without any)."""
    totals = credits.group_by("user_id").agg(
        *[pl.col("credits").filter(pl.col("item_arm") == arm).sum().alias(arm) for arm in arms]
    )
    users = pl.DataFrame({"user_id": np.unique(user_ids)})
    return users.join(totals, on="user_id", how="left").fill_null(0)


def paired_t(differences: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``differences`` [samples, users]: the mean, the two-sided one-sample t-test's p against 0 and
    the 95% interval's half-width. A row whose differences are all equal has p 1 when they are 0, else 0."""
    n = differences.shape[1]
    mean = differences.mean(axis=1)
    if n < 2:
        return mean, np.ones_like(mean), np.full_like(mean, np.inf)
    se = differences.std(axis=1, ddof=1) / math.sqrt(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, mean / se, np.where(mean == 0, 0.0, np.inf))
    p = 2 * stats.t.sf(np.abs(t), n - 1)
    return mean, p, stats.t.ppf(1 - ALPHA / 2, n - 1) * se


def interleaving_analysis(credits: pl.DataFrame, user_ids: np.ndarray, arms: list[str]) -> dict[str, Any]:
    """``arms[1]`` against ``arms[0]`` over the exposed ``user_ids``: the mean per-user difference of credits
    with its 95% interval and a two-sided paired t-test (the decision), and wins, losses and ties (a user
    without credits is a tie) with a two-sided binomial sign test.

    ``credits``: rows user_id, item_arm, credits (likes on items that arm contributed)."""
    control, treatment = arms
    frame = user_credits(credits, user_ids, arms)
    a, b = frame[control].to_numpy(), frame[treatment].to_numpy()
    wins, losses = int((b > a).sum()), int((b < a).sum())
    ties = int(frame.height - wins - losses)
    sign_p = float(stats.binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else math.nan
    difference = (b - a).astype(np.float64)
    mean, p, half = paired_t(difference[None, :])
    mean, p, half = float(mean[0]), float(p[0]), float(half[0])
    preferred = None
    if p < ALPHA:
        preferred = treatment if mean > 0 else control
    return {
        "arms": arms,
        "users": frame.height,
        "users_with_credits": int(((a + b) > 0).sum()),
        "credits": {control: int(a.sum()), treatment: int(b.sum())},
        "wins_by_arm": {control: losses, treatment: wins},
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "win_share": wins / (wins + losses) if wins + losses else math.nan,
        "difference_per_user": {"value": mean, "ci95": [mean - half, mean + half]},
        "test": f"two-sided paired t-test on {treatment} minus {control} credits per user",
        "p": p,
        "sign_test": {"test": "two-sided binomial sign test on wins vs losses (ties left out)", "p": sign_p},
        "alpha": ALPHA,
        "preferred": preferred,
    }


# --------------------------------------------------------------------------------------------------- plot
BUCKETS = (("1s", 1), ("5s", 5), ("10s", 10), ("30s", 30), ("1m", 60), ("5m", 300), ("10m", 600),
           ("30m", 1800), ("1h", 3600), ("6h", 21600), ("1d", 86400), ("7d", 604800))  # fmt: skip
MAX_POINTS = 30


def _bucket(exposures: pl.DataFrame) -> str:
    """The smallest time bucket that keeps the plot to at most MAX_POINTS points per arm."""
    span = (exposures["time"].max() - exposures["time"].min()).total_seconds()
    return next((name for name, seconds in BUCKETS if span / seconds <= MAX_POINTS), BUCKETS[-1][0])


def rate_over_time(
    counts: pl.DataFrame, every: str, value: str = "likes", group: str = "arm"
) -> pl.DataFrame:
    """Cumulative ``value`` per exposure per ``group`` at the end of each time bucket of ``every`` (what an
    experiment's dashboard shows: the estimate as it settles): columns bucket, group, rate."""
    bucketed = counts.with_columns(pl.col("time").dt.truncate(every).alias("bucket"))
    return (
        bucketed.group_by("bucket", group)
        .agg(pl.col(value).sum().alias("value"), pl.col("exposures").sum())
        .sort("bucket", group)
        .with_columns(
            (pl.col("value").cum_sum().over(group) / pl.col("exposures").cum_sum().over(group)).alias("rate")
        )
        .select("bucket", group, "rate")
    )


def plot_over_time(series: pl.DataFrame, group: str, path: Path, title: str, ylabel: str) -> Path:
    """One line per ``group`` of ``rate`` against ``bucket``, as a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 3.5))
    for (name,), rows in series.partition_by(group, as_dict=True, maintain_order=True).items():
        axis.plot(rows["bucket"].to_list(), rows["rate"].to_list(), marker="o", label=str(name))
    axis.set(title=title, ylabel=ylabel)
    axis.legend(fontsize="small")
    figure.autofmt_xdate()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


# ------------------------------------------------------------------------------------------------- report
def _order_arms(observed: list[str], expected_shares: dict[str, float] | None) -> list[str]:
    """Configured arms first in config order (the first is the control), then the others alphabetically."""
    configured = [arm for arm in (expected_shares or {}) if arm in observed]
    return configured + sorted(set(observed) - set(configured))


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars to Python, NaN and infinities to None."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def report_path(workdir: Path, name: str) -> Path:
    """WORKDIR/reports/experiment-NAME.png (characters unsafe in a file name become '_')."""
    return Path(workdir) / "reports" / f"experiment-{re.sub(r'[^A-Za-z0-9._-]', '_', name)}.png"


@dataclass(frozen=True)
class ExperimentLog:
    """An experiment's lists and the feedback credited to them."""

    exposures: pl.DataFrame  # the experiment's served lists, with the user's ``arm``
    attributed: pl.DataFrame  # feedback credited to those lists (:func:`attribute`)
    feedback_events: int  # feedback events in the log, credited or not


def experiment_log(
    workdir: Path, name: str, window_days: float = 7.0, like_threshold: float = 3.5
) -> ExperimentLog:
    """Read WORKDIR's exposure and feedback logs for experiment ``name``; a clear error when it has no lists."""
    from starling.eventbus import open_event_log
    from starling.events import RATING_STREAM
    from starling.exposures import exposure_dir, read_exposures

    logged = with_arm(read_exposures(workdir), name)
    exposures = logged.filter(pl.col("arm").is_not_null())
    if exposures.is_empty():
        raise StarlingError(
            f"no exposures for experiment {name!r} in {exposure_dir(workdir)} ({logged.height:,} exposures of "
            "other lists there): add the experiment to the experiments file (STARLING_EXPERIMENTS), let the "
            "recommend service serve its users (it logs every list it serves unless STARLING_EXPOSURE_LOG=0), "
            "then report again"
        )
    feedback = open_event_log(workdir).read_all(RATING_STREAM)
    # Attribute over every logged list: a later list outside the experiment takes the credit for its movies.
    attributed = attribute(logged, feedback, timedelta(days=window_days), like_threshold)
    attributed = attributed.filter(pl.col("request_id").is_in(exposures["request_id"].implode()))
    return ExperimentLog(exposures, attributed, feedback.height)


def experiment_report(
    workdir: Path,
    name: str,
    expected_shares: dict[str, float] | None = None,
    kind: str | None = None,
    window_days: float = 7.0,
    like_threshold: float = 3.5,
    plot: bool = True,
) -> dict[str, Any]:
    """The report of experiment ``name`` from WORKDIR's exposure log and feedback (see the module docstring).

    ``expected_shares``: {arm: percent} in config order (the first arm is the control), None when the
    experiment is not in the config (equal shares assumed); ``kind``: "ab" or "interleaving" (None: from the
    log, interleaving when the exposures carry the arm "interleaved")."""
    log = experiment_log(workdir, name, window_days, like_threshold)
    exposures, attributed = log.exposures, log.attributed
    notes: list[str] = []
    if kind is None:
        kind = "interleaving" if (exposures["arm"] == INTERLEAVED).any() else "ab"
    if expected_shares is None:
        notes.append(
            f"experiment {name!r} is not in the experiments config: control = first arm alphabetically"
            + ("; equal arm shares assumed for the sample-ratio check" if kind == "ab" else "")
        )
    counts = per_exposure(exposures, attributed)
    every = _bucket(exposures)
    report: dict[str, Any] = {
        "experiment": name,
        "kind": kind,
        "start": exposures["time"].min().isoformat(),
        "end": exposures["time"].max().isoformat(),
        "exposures": exposures.height,
        "users": exposures["user_id"].n_unique(),
        "attribution": {
            "rule": "latest exposure of the user containing the movie, at or before the event",
            "window_days": window_days,
            "like": f"rating >= {like_threshold:g} or a watch",
            "feedback_events": log.feedback_events,
            "attributed": {kind_: int(attributed[kind_.removesuffix("s")].sum()) for kind_ in KINDS},
        },
        "bucket": every,
    }
    if kind == "ab":
        users = per_user(counts)
        arms = _order_arms(users["arm"].unique().to_list(), expected_shares)
        several = users.group_by("user_id").len().filter(pl.col("len") > 1).height
        if several:
            notes.append(f"{several:,} users were served in more than one arm (each arm counts them)")
        missing = [arm for arm in expected_shares or {} if arm not in arms]
        if missing:
            notes.append(f"configured arms without exposures: {', '.join(missing)}")
        if len(arms) < 2:
            notes.append("only one arm has exposures: nothing to compare")
        report["control"] = arms[0]
        report["method"] = {
            "per_exposure": DELTA_METHOD,
            "per_user": PER_USER_METHOD,
            "test": "two-sided z-test",
        }
        report["arms"] = ab_analysis(users, arms)
        users_per_arm = dict(users.group_by("arm").len().iter_rows())
        report["srm"] = sample_ratio_mismatch(users_per_arm, expected_shares)
        series = rate_over_time(counts.with_columns(exposures=pl.lit(1)), every)
        ylabel = "likes per exposure"
    else:
        credits = item_arm_credits(exposures, attributed)
        contributed = exposures["item_arms"].explode().drop_nulls()
        observed = sorted(set(contributed.to_list()) - {""})
        arms = _order_arms(observed, expected_shares)
        if expected_shares and len(arms) < 2:
            arms = _order_arms(list(expected_shares), expected_shares)
        if len(arms) != 2:
            raise StarlingError(
                f"interleaving experiment {name!r}: expected items from exactly two arms in the exposure log, "
                f"found {arms or 'none'}"
            )
        report["interleaving"] = interleaving_analysis(credits, exposures["user_id"].to_numpy(), arms)
        report["interleaving"]["items_by_arm"] = {arm: int((contributed == arm).sum()) for arm in arms}
        frame = pl.DataFrame({"item_arm": arms}).join(exposures.select("request_id", "time"), how="cross")
        frame = frame.join(
            credits.select("request_id", "item_arm", "credits"), on=["request_id", "item_arm"], how="left"
        ).fill_null(0)
        series = rate_over_time(frame.with_columns(exposures=pl.lit(1)), every, "credits", "item_arm")
        series = series.rename({"item_arm": "arm"})
        ylabel = "credited likes per exposure"
        notes.append("no sample-ratio check: every user of an interleaving experiment sees both arms")
    if plot:
        path = report_path(workdir, name)
        title = f"{name}: {ylabel}, cumulative (every {report['bucket']})"
        plot_over_time(series, "arm", path, title, ylabel)
        report["plot"] = str(path)
    report["notes"] = notes
    return _plain(report)


# ------------------------------------------------------------------------------------------------- format
def _num(value: float | None, digits: int = 4, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2g}"


def _interval(estimate: dict[str, Any], signed: bool = False) -> str:
    low, high = estimate["low"], estimate["high"]
    return (
        f"{_num(estimate['value'], signed=signed)} [{_num(low, signed=signed)}, {_num(high, signed=signed)}]"
    )


def format_report(report: dict[str, Any]) -> str:
    """The report as text: the header, the per-arm table, rates with intervals and tests, SRM or the
    interleaving tally, the plot's path and the notes."""
    attribution = report["attribution"]
    lines = [
        f"experiment {report['experiment']} ({'A/B' if report['kind'] == 'ab' else 'interleaving'}): "
        f"{report['exposures']:,} exposures to {report['users']:,} users, {report['start']} .. {report['end']}",
        f"attribution: {attribution['rule']}, within {attribution['window_days']:g} days; like = "
        f"{attribution['like']}; {attribution['feedback_events']:,} feedback events, attributed: "
        + ", ".join(f"{n:,} {kind}" for kind, n in attribution["attributed"].items()),
    ]
    if report["kind"] == "ab":
        arms = report["arms"]
        width = max(12, *(len(arm) + 2 for arm in arms))
        lines += ["", f"{'arm':<{width}}{'users':>9}{'exposures':>11}{'likes':>9}{'ratings':>9}{'clicks':>9}"]
        for arm, entry in arms.items():
            lines.append(
                f"{arm:<{width}}{entry['users']:>9,}{entry['exposures']:>11,}{entry['likes']:>9,}"
                f"{entry['ratings']:>9,}{entry['clicks']:>9,}"
            )
        method = report["method"]
        for metric, label in (
            ("like_rate", f"likes per exposure (ratio of sums; {method['per_exposure']})"),
            ("like_rate_per_user", f"likes per exposure, mean over users ({method['per_user']})"),
            ("rating_rate", f"ratings per exposure (ratio of sums; {method['per_exposure']})"),
            ("rating_rate_per_user", f"ratings per exposure, mean over users ({method['per_user']})"),
        ):
            lines += ["", f"{label}, 95% interval; difference vs {report['control']}, {method['test']}"]
            for arm, entry in arms.items():
                line = f"  {arm:<{width}}{_interval(entry[metric])}"
                if "vs_control" in entry:
                    diff = entry["vs_control"][metric]
                    relative = "" if diff["relative"] is None else f" ({diff['relative']:+.1%})"
                    line += f"   diff {_interval(diff, signed=True)}{relative}  p={_p(diff['p'])}"
                    line += " *" if diff["significant"] else ""
                lines.append(line)
        srm = report["srm"]
        verdict = "MISMATCH" if srm["flagged"] else "ok"
        shares = ", ".join(
            f"{arm} {srm['users'][arm]:,} ({_num(srm['observed_share'][arm], 3)} vs {srm['expected_share'][arm]:.3f})"
            for arm in srm["users"]
        )
        lines += [
            "",
            f"sample-ratio mismatch: {verdict} (chi-square p={_p(srm['p'])}, flagged when p < "
            f"{srm['threshold']:g}); users (observed vs expected share): {shares}",
        ]
        lines += [f"  note: {note}" for note in srm["notes"]]
    else:
        result = report["interleaving"]
        control, treatment = result["arms"]
        preferred = result["preferred"] or f"neither (p >= {result['alpha']:g})"
        lines += [
            "",
            f"interleaving {treatment} vs {control}: {result['users']:,} users ({result['users_with_credits']:,} "
            f"with credits); credits {control} {result['credits'][control]:,}, {treatment} "
            f"{result['credits'][treatment]:,}; items shown {control} {result['items_by_arm'][control]:,}, "
            f"{treatment} {result['items_by_arm'][treatment]:,}",
            f"credits per user, {treatment} minus {control}: "
            f"{_num(result['difference_per_user']['value'], signed=True)} "
            f"[{_num(result['difference_per_user']['ci95'][0], signed=True)}, "
            f"{_num(result['difference_per_user']['ci95'][1], signed=True)}]; {result['test']}: "
            f"p={_p(result['p'])}; preferred: {preferred}",
            f"wins {treatment} {result['wins']:,}, wins {control} {result['losses']:,}, ties {result['ties']:,}; "
            f"sign test: p={_p(result['sign_test']['p'])}",
        ]
    if "plot" in report:
        lines += ["", f"plot ({'hourly' if report['bucket'] == 'hour' else 'daily'}): {report['plot']}"]
    lines += [f"note: {note}" for note in report["notes"]]
    return "\n".join(lines)


def per_user_outcomes(
    workdir: Path, name: str, window_days: float = 7.0, like_threshold: float = 3.5, signal: str = "like"
) -> tuple[str, pl.DataFrame]:
    """(kind, one row per user): A/B: user_id, arm, exposures, credits (the user's ``signal`` events);
    interleaving: user_id and the ``signal`` credits of each arm (columns named after the arms)."""
    if signal not in SIGNALS:
        raise StarlingError(f"signal must be one of {', '.join(SIGNALS)}, got {signal!r}")
    log = experiment_log(workdir, name, window_days, like_threshold)
    exposures = log.exposures
    if (exposures["arm"] == INTERLEAVED).any():
        arms = sorted(set(exposures["item_arms"].explode().drop_nulls().to_list()) - {""})
        credits = item_arm_credits(exposures, log.attributed, signal)
        return "interleaving", user_credits(credits, exposures["user_id"].to_numpy(), arms)
    return "ab", per_user(per_exposure(exposures, log.attributed)).select(
        "user_id", "arm", "exposures", pl.col(f"{signal}s").alias("credits")
    )


def power_at(
    kind: str,
    users: pl.DataFrame,
    arms: list[str],
    n: int,
    alpha: float,
    resamples: int,
    seed: int,
    interleaving_test: str = "t",
) -> float:
    """The share of ``resamples`` samples of ``n`` users (with replacement) in which the test is significant:
    A/B, the z-test on credits (likes, ...) per exposure (delta method) of ``arms[1]`` vs ``arms[0]``;
    interleaving, the report's paired t-test (``interleaving_test`` "t") or the sign test of wins vs losses
    ("sign"). Vectorized over the resamples."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, users.height, size=(resamples, n))
    if kind == "interleaving":
        first, second = (users[arm].to_numpy()[picks] for arm in arms)
        if interleaving_test == "t":
            _, p, _ = paired_t((second - first).astype(np.float64))
            return float((p < alpha).mean())
        wins, losses = (second > first).sum(axis=1), (second < first).sum(axis=1)
        decided = wins + losses
        p = np.array(
            [
                stats.binomtest(int(w), int(d), 0.5).pvalue if d else 1.0
                for w, d in zip(wins, decided, strict=True)
            ]
        )
        return float((p < alpha).mean())
    arm = users["arm"].to_numpy()[picks]
    likes = users["credits"].to_numpy().astype(np.float64)[picks]
    shown = users["exposures"].to_numpy().astype(np.float64)[picks]
    estimates = []
    for name in arms[:2]:
        member = arm == name
        m = member.sum(axis=1).astype(np.float64)
        y, x = np.where(member, likes, 0.0), np.where(member, shown, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_y, mean_x = y.sum(axis=1) / m, x.sum(axis=1) / m
            ratio = mean_y / mean_x
            var_y = (np.where(member, (likes - mean_y[:, None]) ** 2, 0.0)).sum(axis=1) / (m - 1)
            var_x = (np.where(member, (shown - mean_x[:, None]) ** 2, 0.0)).sum(axis=1) / (m - 1)
            cov = (np.where(member, (likes - mean_y[:, None]) * (shown - mean_x[:, None]), 0.0)).sum(
                axis=1
            ) / (m - 1)
            variance = (var_y - 2 * ratio * cov + ratio**2 * var_x) / (m * mean_x**2)
        estimates.append((ratio, variance))
    (r0, v0), (r1, v1) = estimates
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (r1 - r0) / np.sqrt(v0 + v1)
    p = 2 * stats.norm.sf(np.abs(z))
    return float(np.nan_to_num(p < alpha, nan=0.0).mean())


def users_needed(
    workdir: Path,
    name: str,
    expected_shares: dict[str, float] | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    steps: Sequence[int] = (10, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480, 640),
    resamples: int = 400,
    window_days: float = 7.0,
    like_threshold: float = 3.5,
    seed: int = 0,
    signal: str = "like",
    interleaving_test: str = "t",
) -> dict[str, Any]:
    """How many users a significant result needs: the smallest n of ``steps`` at which the test (A/B:
    ``signal`` events per exposure of the second arm vs the first; interleaving: the paired t-test on
    ``signal`` credits, or with ``interleaving_test`` "sign" the sign test) is significant at ``alpha`` in at least ``power`` of ``resamples`` samples of n of the
    experiment's users (bootstrap power). Users who are in the experiment's log are the population; ``tried``
    has the power at each step."""
    if interleaving_test not in ("t", "sign"):
        raise StarlingError(f"interleaving_test must be t or sign, got {interleaving_test!r}")
    kind, users = per_user_outcomes(workdir, name, window_days, like_threshold, signal)
    arms = [
        a
        for a in (expected_shares or {})
        if a in (users.columns if kind == "interleaving" else set(users["arm"]))
    ]
    if len(arms) < 2:
        arms = (
            sorted(c for c in users.columns if c != "user_id")
            if kind == "interleaving"
            else sorted(set(users["arm"]))
        )
    tried: list[dict[str, Any]] = []
    needed = None
    for n in steps:
        share = power_at(kind, users, arms, n, alpha, resamples, seed, interleaving_test)
        tried.append({"users": n, "power": share})
        if share >= power:
            needed = n
            break
    return {
        "experiment": name,
        "kind": kind,
        "arms": arms,
        "alpha": alpha,
        "power": power,
        "users_needed": needed,
        "signal": signal,
        "test": (
            "z-test per exposure"
            if kind == "ab"
            else "paired t-test"
            if interleaving_test == "t"
            else "sign test"
        ),
        "users_in_log": users["user_id"].n_unique(),
        "method": f"bootstrap power: {resamples} samples of n users with replacement from the experiment's users",
        "tried": tried,
    }
