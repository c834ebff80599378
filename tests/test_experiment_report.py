"""Experiment reports: attribution, A/B intervals and tests, sample-ratio mismatch, interleaving, plot, CLI."""

from __future__ import annotations

import json
import math
import types
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from starling.errors import StarlingError
from starling.events import RATING_STREAM, append
from starling.exposures import ExposureLog, exposure_dir, read_exposures
from training.experiment_report import (
    BUCKETS,
    ab_analysis,
    attribute,
    experiment_report,
    format_report,
    sample_ratio_mismatch,
)

T0 = datetime(2026, 12, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def _us(when: datetime) -> int:
    return int((when - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))


def write_exposures(
    workdir: Path,
    experiment: str,
    rows: list[tuple[str, int, datetime, list[int], str, list[str] | None]],
) -> None:
    """rows: (request_id, user_id, time, items, arm, item_arms or None)."""
    log = ExposureLog(exposure_dir(workdir))
    for request_id, user_id, when, items, arm, item_arms in rows:
        log.append(
            {
                "request_id": request_id,
                "time_us": _us(when),
                "user_id": user_id,
                "k": len(items),
                "model_version": "test",
                "experiments": [{"experiment": experiment, "arm": arm}] if experiment else [],
                "items": items,
                "item_arms": item_arms or [""] * len(items),
            }
        )
    log.close()


def write_feedback(
    workdir: Path,
    rows: list[tuple[int, int, datetime, str, float]],
    request_ids: list[str | None] | None = None,
) -> None:
    """rows: (user_id, movie_id, time, kind, rating); ``request_ids``: the list each event names, if any."""
    user, movie, when, kind, rating = zip(*rows, strict=True)
    frame = pl.DataFrame(
        {
            "user_id": user,
            "movie_id": movie,
            "event_timestamp": when,
            "kind": kind,
            "rating": rating,
            "request_id": request_ids or [None] * len(rows),
        },
        schema_overrides={"event_timestamp": pl.Datetime("us", "UTC"), "request_id": pl.String},
    )
    append(workdir, RATING_STREAM, frame)


# ---------------------------------------------------------------------------------------------- attribution
def test_attribution_latest_exposure_within_window(tmp_path: Path) -> None:
    nan = math.nan
    write_exposures(
        tmp_path,
        "ab",
        [
            ("e1", 1, T0, [10, 11, 12], "control", None),
            ("e2", 1, T0 + HOUR, [10, 13], "control", None),
            ("e3", 2, T0, [10], "treatment", None),
        ],
    )
    write_feedback(
        tmp_path,
        [
            (1, 10, T0 + 2 * HOUR, "rating", 4.0),  # e1 and e2 hold 10: the latest (e2) wins
            (1, 10, T0 + 3 * HOUR, "watch", nan),  # a second like of (e2, 10): counted once
            (1, 11, T0 + 2 * HOUR, "rating", 2.0),  # e2 lacks 11: e1; a rating, not a like
            (1, 12, T0 + 8 * 24 * HOUR, "watch", nan),  # e1 is 8 days old: outside the window
            (1, 13, T0 + 0.5 * HOUR, "watch", nan),  # before e2, the only list with 13
            (1, 99, T0 + 2 * HOUR, "watch", nan),  # never shown
            (1, 12, T0 + 2 * HOUR, "click", nan),  # a click: NaN rating is no like
            (2, 10, T0, "rating", 3.5),  # at the exposure's time, at the threshold: a like
            (3, 10, T0 + HOUR, "watch", nan),  # another user
        ],
    )
    from starling.events import read_all

    attributed = attribute(read_exposures(tmp_path), read_all(tmp_path, RATING_STREAM), timedelta(days=7))
    got = {
        (row["request_id"], row["movie_id"]): (row["like"], row["rating"], row["click"])
        for row in attributed.iter_rows(named=True)
    }
    assert got == {
        ("e2", 10): (True, True, False),
        ("e1", 11): (False, True, False),
        ("e1", 12): (False, False, True),
        ("e3", 10): (True, True, False),
    }
    assert attributed.filter(pl.col("request_id") == "e1", pl.col("movie_id") == 12)["position"].item() == 2

    report = experiment_report(tmp_path, "ab", {"control": 50, "treatment": 50}, plot=False)
    assert report["arms"]["control"]["likes"] == 1
    assert report["arms"]["control"]["ratings"] == 2
    assert report["arms"]["control"]["clicks"] == 1
    assert report["arms"]["treatment"]["likes"] == 1
    assert report["attribution"]["attributed"] == {"likes": 2, "ratings": 3, "clicks": 1}

    short = attribute(read_exposures(tmp_path), read_all(tmp_path, RATING_STREAM), timedelta(minutes=30))
    assert set(short["request_id"]) == {"e3"}  # every other event is over 30 minutes after its list


def test_an_event_naming_its_list_is_credited_to_that_list(tmp_path: Path) -> None:
    write_exposures(
        tmp_path,
        "ab",
        [
            ("e1", 1, T0, [10, 11], "control", None),
            ("e2", 1, T0 + HOUR, [10, 11], "control", None),
            ("e3", 2, T0, [11], "treatment", None),
        ],
    )
    write_feedback(
        tmp_path,
        [
            (1, 10, T0 + 2 * HOUR, "rating", 4.0),  # names e1: e1, though e2 is later
            (1, 11, T0 + 2 * HOUR, "rating", 4.0),  # names a list never logged: the latest list, e2
            (2, 11, T0 + 2 * HOUR, "rating", 4.0),  # names user 1's list: not this user's, so by time (e3)
            (1, 12, T0 + 2 * HOUR, "rating", 4.0),  # names e1, which did not show 12: nothing
        ],
        request_ids=["e1", "lost", "e1", "e1"],
    )
    from starling.events import read_all

    attributed = attribute(read_exposures(tmp_path), read_all(tmp_path, RATING_STREAM), timedelta(days=7))
    assert set(zip(attributed["request_id"], attributed["movie_id"], strict=True)) == {
        ("e1", 10),
        ("e2", 11),
        ("e3", 11),
    }


# ------------------------------------------------------------------------------------------------------- A/B
def _ab_workdir(
    workdir: Path, p_control: float, p_treatment: float, users: int = 2000, seed: int = 0
) -> Path:
    """Users split 50/50, three lists of five movies each over three days; each list's first movie is
    watched with the arm's probability."""
    rng = np.random.default_rng(seed)
    arms = np.where(rng.random(users) < 0.5, "control", "treatment")
    exposures, feedback = [], []
    probability = {"control": p_control, "treatment": p_treatment}
    for user in range(users):
        arm = str(arms[user])
        for day in range(3):
            when = T0 + timedelta(days=day, seconds=user)
            items = [int(m) for m in rng.choice(1000, size=5, replace=False)]
            exposures.append((f"r{user}-{day}", user, when, items, arm, None))
            if rng.random() < probability[arm]:
                feedback.append((user, items[0], when + HOUR, "watch", math.nan))
    write_exposures(workdir, "ranker-ab", exposures)
    write_feedback(workdir, feedback)
    return workdir


@pytest.fixture(scope="module")
def planted_ab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _ab_workdir(tmp_path_factory.mktemp("planted_ab"), 0.2, 0.3)


def test_planted_better_arm_is_detected(planted_ab: Path) -> None:
    report = experiment_report(planted_ab, "ranker-ab", {"control": 50, "treatment": 50})
    assert report["kind"] == "ab" and report["control"] == "control"
    assert report["method"]["per_exposure"] == "delta method over users"
    control, treatment = report["arms"]["control"], report["arms"]["treatment"]
    assert control["users"] + treatment["users"] == 2000
    assert control["exposures"] == 3 * control["users"]
    assert (
        abs(control["like_rate"]["value"] - 0.2) < 0.03 and abs(treatment["like_rate"]["value"] - 0.3) < 0.03
    )
    for metric in ("like_rate", "like_rate_per_user"):
        diff = treatment["vs_control"][metric]
        assert diff["p"] < 0.05 and diff["significant"]
        assert 0 < diff["low"] < 0.1 < diff["high"]
    assert treatment["vs_control"]["rating_rate"]["value"] == 0  # only watches
    assert not report["srm"]["flagged"] and report["srm"]["threshold"] == 0.001
    assert Path(report["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["bucket"] == "6h"  # three days: at most 30 points
    text = format_report(report)
    assert "likes per exposure (ratio of sums; delta method over users)" in text
    assert "sample-ratio mismatch: ok" in text


def test_equal_arms_end_to_end(tmp_path: Path) -> None:
    report = experiment_report(_ab_workdir(tmp_path, 0.25, 0.25, users=1000, seed=3), "ranker-ab", plot=False)
    diff = report["arms"]["treatment"]["vs_control"]["like_rate"]
    assert diff["p"] > 0.05 and diff["low"] < 0 < diff["high"]
    assert any("equal arm shares assumed" in note for note in report["notes"])


def test_equal_arms_calibration() -> None:
    """Under no difference the z-test rejects about 5% of the time, and the delta-method standard error of
    the ratio of sums matches its spread over repeated experiments."""
    rng = np.random.default_rng(7)
    rejected, ratios, errors = 0, [], []
    runs, users = 400, 400
    for _ in range(runs):
        exposures = rng.poisson(3, size=users) + 1  # users differ in exposures: the delta method matters
        propensity = rng.beta(2, 6, size=users)  # and in how much they like
        likes = rng.binomial(exposures, propensity)
        frame = pl.DataFrame(
            {
                "arm": np.repeat(["a", "b"], users // 2),
                "user_id": np.arange(users),
                "exposures": exposures,
                "likes": likes,
                "ratings": likes,
                "clicks": likes,
            }
        )
        result = ab_analysis(frame, ["a", "b"])
        rejected += result["b"]["vs_control"]["like_rate"]["p"] < 0.05
        ratios.append(result["a"]["like_rate"]["value"])
        errors.append(result["a"]["like_rate"]["se"])
    assert 0.02 <= rejected / runs <= 0.085
    assert np.mean(errors) == pytest.approx(np.std(ratios), rel=0.15)


# ------------------------------------------------------------------------------------------------------ SRM
def test_sample_ratio_mismatch() -> None:
    rng = np.random.default_rng(1)
    even = int(rng.binomial(100_000, 0.5))
    result = sample_ratio_mismatch(
        {"control": even, "treatment": 100_000 - even}, {"control": 50, "treatment": 50}
    )
    assert not result["flagged"] and result["p"] > 0.001
    planted = int(rng.binomial(100_000, 0.45))
    result = sample_ratio_mismatch(
        {"control": planted, "treatment": 100_000 - planted}, {"control": 50, "treatment": 50}
    )
    assert result["flagged"] and result["p"] < 1e-6 and result["threshold"] == 0.001
    # shares are relative to the experiment's traffic (20% + 20% of the layer = 50/50)
    assert not sample_ratio_mismatch({"a": 5000, "b": 5010}, {"a": 20, "b": 20})["flagged"]
    assert "equal shares assumed" in sample_ratio_mismatch({"a": 5000, "b": 5010}, None)["notes"][0]
    assert sample_ratio_mismatch({"a": 5000, "b": 5010, "c": 3}, {"a": 50, "b": 50})["flagged"]


def test_srm_flagged_against_wrong_shares(planted_ab: Path) -> None:
    report = experiment_report(planted_ab, "ranker-ab", {"control": 70, "treatment": 30}, plot=False)
    assert report["srm"]["flagged"] and report["srm"]["expected_share"]["control"] == pytest.approx(0.7)
    assert "sample-ratio mismatch: MISMATCH" in format_report(report)


# ---------------------------------------------------------------------------------------------- interleaving
def test_interleaving_wins_losses_ties(tmp_path: Path) -> None:
    arms = ["a", "b", "a", "b"]
    write_exposures(
        tmp_path,
        "inter",
        [
            (f"r{user}", user, T0 + timedelta(minutes=user), [10, 11, 12, 13], "interleaved", arms)
            for user in range(1, 6)
        ],
    )
    nan = math.nan
    write_feedback(
        tmp_path,
        [
            (1, 11, T0 + HOUR, "watch", nan),  # user 1: b 2, a 1 -> win for b
            (1, 13, T0 + HOUR, "watch", nan),
            (1, 10, T0 + HOUR, "rating", 5.0),
            (2, 10, T0 + HOUR, "watch", nan),  # user 2: a 1 -> loss
            (2, 11, T0 + HOUR, "click", nan),  # a click is no credit
            (3, 10, T0 + HOUR, "watch", nan),  # user 3: 1 each -> tie
            (3, 11, T0 + HOUR, "rating", 4.5),
            (4, 11, T0 + HOUR, "rating", 1.0),  # user 4: a low rating is no credit -> tie
        ],  # user 5: nothing -> tie
    )
    report = experiment_report(tmp_path, "inter", {"a": 50, "b": 50})
    result = report["interleaving"]
    assert report["kind"] == "interleaving" and result["arms"] == ["a", "b"]
    assert (result["wins"], result["losses"], result["ties"]) == (1, 1, 3)
    assert result["wins_by_arm"] == {"a": 1, "b": 1}
    assert result["credits"] == {"a": 3, "b": 3} and result["users_with_credits"] == 3
    assert result["items_by_arm"] == {"a": 10, "b": 10}
    assert result["p"] == pytest.approx(1.0) and result["preferred"] is None
    assert result["sign_test"]["p"] == pytest.approx(1.0)
    assert result["difference_per_user"]["value"] == 0.0  # b - a per user: +1, -1, 0, 0, 0
    low, high = result["difference_per_user"]["ci95"]
    assert low < 0 < high
    assert report["bucket"] in {name for name, _ in BUCKETS} and Path(report["plot"]).is_file()


def test_interleaving_planted_preference(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    users = 400
    exposures, feedback = [], []
    for user in range(users):
        items = [int(m) for m in rng.choice(5000, size=10, replace=False)]
        item_arms = ["control", "treatment"] * 5 if user % 2 else ["treatment", "control"] * 5
        when = T0 + timedelta(hours=user % 72)
        exposures.append((f"r{user}", user, when, items, "interleaved", item_arms))
        liked = rng.random(10) < np.where(np.array(item_arms) == "treatment", 0.25, 0.1)
        feedback += [(user, item, when + HOUR, "watch", math.nan) for item in np.array(items)[liked].tolist()]
    write_exposures(tmp_path, "ranker-interleaving", exposures)
    write_feedback(tmp_path, feedback)
    report = experiment_report(tmp_path, "ranker-interleaving", kind="interleaving")
    result = report["interleaving"]
    assert result["arms"] == ["control", "treatment"]  # no config: alphabetical
    assert result["wins"] > 2 * result["losses"] and result["p"] < 1e-6
    assert result["preferred"] == "treatment"
    assert result["wins"] + result["losses"] + result["ties"] == users
    assert result["sign_test"]["p"] < 1e-6 and result["difference_per_user"]["ci95"][0] > 0
    assert "preferred: treatment" in format_report(report)

    from training.experiment_report import users_needed

    steps = (10, 20, 40, 80, 160, 320)
    by_t = users_needed(tmp_path, "ranker-interleaving", steps=steps, resamples=100)
    by_sign = users_needed(
        tmp_path, "ranker-interleaving", steps=steps, resamples=100, interleaving_test="sign"
    )
    assert (by_t["kind"], by_t["test"], by_sign["test"]) == ("interleaving", "paired t-test", "sign test")
    assert by_t["users_needed"] is not None and by_sign["users_needed"] is not None, (by_t, by_sign)
    with pytest.raises(StarlingError, match="interleaving_test must be t or sign"):
        users_needed(tmp_path, "ranker-interleaving", interleaving_test="z")


def test_paired_t_matches_scipy() -> None:
    from scipy import stats

    from training.experiment_report import paired_t

    rng = np.random.default_rng(3)
    differences = rng.integers(-2, 4, size=(5, 30)).astype(np.float64)
    mean, p, half = paired_t(differences)
    for row in range(5):
        expected = stats.ttest_1samp(differences[row], 0.0)
        assert p[row] == pytest.approx(expected.pvalue)
        low, high = expected.confidence_interval(0.95)
        assert (mean[row] - half[row], mean[row] + half[row]) == pytest.approx((low, high))
    constant = paired_t(np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))[1]
    assert constant.tolist() == [1.0, 0.0], "no spread: no difference is p 1, a constant one is p 0"


# ------------------------------------------------------------------------------------------------- errors, CLI
def test_no_exposures_is_a_clear_error(tmp_path: Path) -> None:
    write_exposures(tmp_path, "other", [("r1", 1, T0, [1], "control", None)])
    with pytest.raises(StarlingError, match=r"no exposures for experiment 'missing'.*experiments file"):
        experiment_report(tmp_path, "missing")


def test_cli_json(planted_ab: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import starling.config
    from starling.experiment_cli import experiment

    config = tmp_path / "experiments.yaml"
    config.write_text(
        "experiments:\n"
        "  - {name: ranker-ab, layer: ranking, salt: s, type: ab,\n"
        "     arms: [{name: control, share: 50}, {name: treatment, share: 50}]}\n"
    )
    settings = types.SimpleNamespace(experiments=config, like_threshold=3.5)
    monkeypatch.setattr(starling.config, "get_settings", lambda: settings)
    runner = CliRunner()
    result = runner.invoke(
        experiment, ["report", str(planted_ab), "ranker-ab", "--json", "--window-days", "2"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["control"] == "control" and report["notes"] == [] and report["srm"]["notes"] == []
    assert report["attribution"]["window_days"] == 2
    assert report["arms"]["treatment"]["vs_control"]["like_rate"]["significant"] is True

    result = runner.invoke(experiment, ["report", str(planted_ab), "ranker-ab"])
    assert result.exit_code == 0 and "sample-ratio mismatch: ok" in result.stdout

    result = runner.invoke(experiment, ["report", str(planted_ab), "nope"])
    assert result.exit_code == 2 and "error: no exposures for experiment 'nope'" in result.stderr


def test_users_needed_counts_the_chosen_signal(planted_ab: Path) -> None:
    from training.experiment_report import users_needed

    shares = {"control": 50, "treatment": 50}
    likes = users_needed(planted_ab, "ranker-ab", shares, steps=(50, 200, 800, 2000), resamples=100)
    assert likes["signal"] == "like" and likes["users_needed"] is not None, likes
    ratings = users_needed(planted_ab, "ranker-ab", shares, steps=(2000,), resamples=100, signal="rating")
    assert ratings["users_needed"] is None, "the planted feedback is watches, never a rating"
    with pytest.raises(StarlingError, match="signal must be one of like, rating, click"):
        users_needed(planted_ab, "ranker-ab", shares, signal="stars")
