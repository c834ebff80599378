"""`starling bench serve`: drive RecommendService over gRPC and report latency and throughput as JSON.

For each concurrency level, that many client tasks send `Recommend` back to back for ``duration`` seconds
(users drawn from the catalog's raters, k = 20). End-to-end latency is measured by the client; per-stage
latency comes from the orchestrator's trailing metadata (``starling-stage-ms``). The services must be up
(`starling up`), or are started from WORKDIR for the run and stopped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import polars as pl

from services.recommend.server import STAGE_TIMINGS_KEY
from starling.config import get_settings
from starling.errors import StarlingError
from starling.v1 import recommend_pb2, recommend_pb2_grpc

WARMUP_REQUESTS = 50


def _quantiles(values_ms: list[float]) -> dict[str, float]:
    if not values_ms:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan")}
    p50, p95, p99 = np.percentile(np.asarray(values_ms), [50, 95, 99])
    return {"p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3), "p99_ms": round(float(p99), 3)}


async def _drive(
    target: str, users: np.ndarray, k: int, duration_s: float, concurrency: int, seed: int
) -> dict[str, Any]:
    latencies: list[float] = []
    stages: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    degraded = 0
    rng = np.random.default_rng(seed)
    picks = rng.choice(users, size=1_000_000)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = recommend_pb2_grpc.RecommendServiceStub(channel)

        async def one(i: int) -> None:
            nonlocal degraded
            call = stub.Recommend(
                recommend_pb2.RecommendRequest(user_id=int(picks[i % len(picks)]), k=k), timeout=5
            )
            start = time.perf_counter()
            try:
                response = await call
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                return
            latencies.append((time.perf_counter() - start) * 1000.0)
            degraded += bool(response.degraded)
            for key, value in await call.trailing_metadata() or ():
                if key == STAGE_TIMINGS_KEY and value:
                    for part in value.split(","):
                        stage, ms = part.split("=")
                        stages.setdefault(stage, []).append(float(ms))

        for i in range(WARMUP_REQUESTS):
            await one(i)
        latencies.clear()
        stages.clear()
        counter = iter(range(WARMUP_REQUESTS, 10**12))
        deadline = time.perf_counter() + duration_s

        async def worker() -> None:
            while time.perf_counter() < deadline:
                await one(next(counter))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "degraded_responses": degraded,
        "requests_per_second": round(len(latencies) / elapsed, 1),
        **_quantiles(latencies),
        "stages": {
            stage: {k: v for k, v in _quantiles(ms).items() if k != "p95_ms"} for stage, ms in stages.items()
        },
    }


def process_cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) each process ``{name: pid}`` has used, its child processes (milvus-lite's
    server) included; processes that are gone are left out."""
    import psutil

    used: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            process = psutil.Process(pid)
            used[name] = sum(sum(p.cpu_times()[:2]) for p in [process, *process.children(recursive=True)])
        except psutil.Error:
            continue
    return used


def service_cpu_seconds(workdir: Path) -> dict[str, float]:
    """:func:`process_cpu_seconds` of every service process of WORKDIR's stack."""
    from starling.local import read_state

    return process_cpu_seconds({service.name: service.pid for service in read_state(workdir)})


def wait_until_quiet(
    workdir: Path, max_cores: float = 0.2, window_s: float = 1.0, timeout_s: float = 180.0
) -> float:
    """Wait until WORKDIR's stack uses at most ``max_cores`` CPUs over ``window_s`` (a stack just started is
    still loading in the background, e.g. recommend's text encoder for UpsertMovie: that work is not a
    request's); returns the seconds waited (the timeout's when it never settles: the run then says so)."""
    started = time.monotonic()
    before = service_cpu_seconds(workdir)
    while time.monotonic() - started < timeout_s:
        time.sleep(window_s)
        after = service_cpu_seconds(workdir)
        busy = sum(after[name] - before[name] for name in after if name in before) / window_s
        if busy <= max_cores:
            break
        before = after
    return round(time.monotonic() - started, 1)


def _start_profile(workdir: Path, directory: Path | None, label: str, duration_s: float) -> list | None:
    """py-spy recorders on every service of WORKDIR's stack for the level's window (None: not profiling)."""
    if directory is None:
        return None
    from services.profiling import start_recording
    from starling.local import read_state

    services = {
        s.name: s.pid for s in read_state(workdir) if s.name != "web"
    }  # the gateway is not on the path
    return start_recording(services, directory, label, duration_s)


def cpu_per_request(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
    """Milliseconds of server CPU per request, per service and in total, between two readings."""
    per = {
        name: round((after[name] - before[name]) * 1000.0 / max(requests, 1), 3)
        for name in sorted(after)
        if name in before
    }
    return {**per, "total": round(sum(per.values()), 3)}


COMPARED = ("requests_per_second", "p50_ms", "p99_ms", "server_cpu_ms_per_request")


def compare_runs(current: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """Per concurrency level both reports ran: each figure of ``COMPARED`` now, then, and now / then (for
    req/s higher is better; for the others lower is)."""
    then = {run["concurrency"]: run for run in baseline.get("runs", [])}
    levels = []
    for run in current["runs"]:
        old = then.get(run["concurrency"])
        if old is None:
            continue
        figures = {}
        for name in COMPARED:
            new_value, old_value = run.get(name), old.get(name)
            if isinstance(new_value, dict):
                new_value, old_value = new_value.get("total"), (old_value or {}).get("total")
            if new_value is None or old_value is None:
                continue
            figures[name] = {
                "now": new_value,
                "baseline": old_value,
                "ratio": round(new_value / old_value, 3) if old_value else None,
            }
        levels.append({"concurrency": run["concurrency"], **figures})
    return {"baseline_machine": baseline.get("machine"), "levels": levels}


def bench_serve(
    workdir: Path,
    duration_s: float,
    concurrency: list[int],
    k: int = 20,
    target: str | None = None,
    baseline: dict[str, Any] | None = None,
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    """``profile_dir``: py-spy flamegraphs of every service at each level (services/profiling.py), with the
    heaviest functions of each in the level's ``profile``."""
    from starling.local import down, is_healthy, up

    settings = get_settings()
    if duration_s <= 0 or not concurrency or min(concurrency) < 1:
        raise StarlingError("--duration must be > 0 and --concurrency a list of integers >= 1")
    target = target or f"127.0.0.1:{settings.recommend_port}"
    started_here = False
    if not is_healthy("recommend", int(target.rsplit(":", 1)[1])):
        up(workdir)
        started_here = True
    try:
        users = (
            pl.read_parquet(workdir / "ratings.parquet", columns=["user_id"])["user_id"].unique().to_numpy()
        )
        waited = wait_until_quiet(workdir)
        runs = []
        for level in concurrency:
            recordings = _start_profile(workdir, profile_dir, f"c{level}", duration_s)
            before = service_cpu_seconds(workdir)
            run = asyncio.run(_drive(target, users, k, duration_s, level, seed=level))
            # the warm-up's requests are in the CPU reading too: counted with the measured ones
            run["server_cpu_ms_per_request"] = cpu_per_request(
                before, service_cpu_seconds(workdir), run["requests"] + WARMUP_REQUESTS
            )
            if recordings is not None:
                from services.profiling import finish_recording

                run["profile"] = finish_recording(recordings, timeout_s=duration_s + 30)
            runs.append(run)
    finally:
        if started_here:
            down(workdir)
    report = {
        "benchmark": "serve",
        "target": target,
        "k": k,
        "candidates": settings.recall_size,
        "duration_s": duration_s,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {platform.system()}",
        "waited_for_quiet_s": waited,
        "runs": runs,
    }
    if baseline is not None:
        report["compared"] = compare_runs(report, baseline)
    return report


# ------------------------------------------------------------------------------------------------ upsert
@contextmanager
def private_stack(workdir: Path, purpose: str) -> Iterator[tuple[Path, Any]]:
    """(the copy, its settings): every service of `starling up` on a private copy of WORKDIR (which must have a
    published model), on free ports, stopped and deleted on exit, so a benchmark's writes never reach WORKDIR."""
    import tempfile

    from starling.local import copy_workdir, down, up_on_free_ports

    source = Path(workdir).resolve()
    if not (source / "models" / "current").exists():
        raise StarlingError(f"{source}: no published model (run `make demo` or `starling train` first)")
    with tempfile.TemporaryDirectory(prefix=f"starling-bench-{purpose}-") as tmp:
        copy = Path(tmp) / "workdir"
        copy_workdir(source, copy)
        settings = up_on_free_ports(copy, get_settings().model_copy(update={"workdir": copy}))
        try:
            yield copy, settings
        finally:
            down(copy)


def bench_upsert(workdir: Path, n: int = 200, visible_sample: int = 20, rate: float = 4.0) -> dict[str, Any]:
    """UpsertMovie latency (client side, one at a time, started ``rate`` times a second; 0 = back to back)
    with the text encoder on the write path, and how long recall takes to place the new movie (SimilarMovies
    finds it with neighbours). Every service follows each upsert (the catalog, recall's placement), so back to
    back the machine is busy with the previous movies while the next is written; a catalog grows by a few
    movies a minute, so the default paces them. Runs on a private copy of WORKDIR with its own stack on free
    ports, so the benchmark's movies never enter WORKDIR's catalog."""
    from starling.auth import authorized_channel, client_token
    from starling.events import MOVIE_STREAM, read_all
    from starling.v1 import catalog_pb2, catalog_pb2_grpc, recall_pb2, recall_pb2_grpc

    if n < 1 or visible_sample < 0 or rate < 0:
        raise StarlingError("--n must be >= 1, --visible-sample >= 0 and --rate >= 0")
    genres = [["Animation", "Children", "Comedy"], ["Horror", "Thriller"], ["Drama", "Romance"], ["Sci-Fi"]]
    with private_stack(workdir, "upsert") as (copy, settings):
        admin = authorized_channel(f"127.0.0.1:{settings.admin_port}", client_token(settings))
        catalog = catalog_pb2_grpc.CatalogServiceStub(admin)
        recall = recall_pb2_grpc.RecallServiceStub(grpc.insecure_channel(f"127.0.0.1:{settings.recall_port}"))

        def upsert(i: int) -> tuple[int, float]:
            movie = catalog_pb2.Movie(
                title=f"Starling Bench {i}: The Return", release_year=2026, genres=genres[i % len(genres)]
            )
            start = time.perf_counter()
            reply = catalog.UpsertMovie(catalog_pb2.UpsertMovieRequest(movie=movie), timeout=120)
            return reply.movie.movie_id, (time.perf_counter() - start) * 1000.0

        first_ms = upsert(0)[1]  # waits for the encoder if it is still loading
        for i in range(1, 6):
            upsert(i)
        latencies, visible = [], []
        next_start = time.perf_counter()
        for i in range(6, 6 + n):
            time.sleep(max(0.0, next_start - time.perf_counter()))
            next_start = time.perf_counter() + (1.0 / rate if rate else 0.0)
            movie_id, ms = upsert(i)
            latencies.append(ms)
            if len(visible) < visible_sample:
                start = time.perf_counter()
                while time.perf_counter() - start < 10:
                    found = recall.SimilarMovies(recall_pb2.SimilarMoviesRequest(movie_id=movie_id, k=5))
                    if found.found and len(found.movie_ids):
                        visible.append((time.perf_counter() - start) * 1000.0)
                        break
                    time.sleep(0.005)
        events = read_all(copy, MOVIE_STREAM)
        with_vector = int(events["content"].is_not_null().sum())
        admin.close()
    return {
        "benchmark": "upsert",
        "upserts": n,
        "concurrency": 1,
        "rate_per_s": rate or "back to back",
        "first_upsert_ms": round(first_ms, 1),
        "latency": _quantiles(latencies),
        "recall_placed_ms": _quantiles(visible),
        "events_with_text_vector": f"{with_vector}/{events.height}",
        "text_encoder": settings.content_on_upsert,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {platform.system()}",
    }


# ------------------------------------------------------------------------------------------------ ranker
RANKER_CONFIGS: dict[str, dict[str, int | str]] = {  # setting overrides per ranker process: one change each
    "alone": {"ranker_batching": "off", "ranker_user_cache_size": 0},
    "batching": {"ranker_batching": "on", "ranker_user_cache_size": 0},
    "user_cache": {"ranker_batching": "off"},
}


def _infer_request(user_id: int, movie_ids: np.ndarray, features: np.ndarray, model_name: str) -> Any:
    from kserve import InferInput, InferRequest

    user = InferInput("user_id", [1], "INT64")
    user.set_data_from_numpy(np.array([user_id], dtype=np.int64), binary_data=True)
    movies = InferInput("movie_ids", [len(movie_ids)], "INT64")
    movies.set_data_from_numpy(movie_ids, binary_data=True)
    candidate = InferInput("candidate_features", list(features.shape), "FP32")
    candidate.set_data_from_numpy(features, binary_data=True)
    return InferRequest(model_name=model_name, infer_inputs=[user, movies, candidate])


async def _drive_ranker(
    target: str,
    model_name: str,
    users: np.ndarray,
    movie_ids: np.ndarray,
    concurrency: int,
    duration_s: float,
) -> tuple[list[float], int]:
    """Latencies (ms) of back-to-back v2 gRPC infer calls from ``concurrency`` tasks, and the errors."""
    from kserve import InferenceGRPCClient

    from starling.features.spec import CANDIDATE_FEATURES

    rng = np.random.default_rng(concurrency)
    features = np.full((len(movie_ids), len(CANDIDATE_FEATURES)), np.nan, dtype=np.float32)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration_s
    async with InferenceGRPCClient(target, retries=0, timeout=10) as client:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                request = _infer_request(int(rng.choice(users)), movie_ids, features, model_name)
                start = time.perf_counter()
                try:
                    await client.infer(request)
                except Exception:
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - start) * 1000.0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors


def bench_ranker(
    workdir: Path, concurrency: list[int], rounds: int = 6, burst_s: float = 2.0, candidates: int = 500
) -> dict[str, Any]:
    """The KServe ranker alone, three processes side by side on WORKDIR's published model and online store:
    every request scored alone with no cache ("alone"), batching under load ("batching",
    services/ranker/batching.py) and the user-feature cache ("user_cache", the CPU default), each one change
    from "alone". The load alternates between
    them in short bursts (``rounds`` per level), so that a machine whose speed drifts treats each alike; each
    request scores ``candidates`` catalog movies (candidate features missing) for a random rater. Per level and
    process: req/s, p50/p99 ms, the ranker's CPU ms per request, and each figure over "alone"'s."""
    import psutil

    from starling.local import free_port, start_replica, wait_healthy

    if rounds < 1 or burst_s <= 0 or not concurrency or min(concurrency) < 1 or candidates < 1:
        raise StarlingError("--rounds >= 1, --burst > 0, --candidates >= 1 and --concurrency integers >= 1")
    workdir = Path(workdir).resolve()
    if not (workdir / "models" / "current").exists():
        raise StarlingError(f"{workdir}: no published model (run `make demo` or `starling train` first)")
    settings = get_settings().model_copy(update={"workdir": workdir})
    users = pl.read_parquet(workdir / "ratings.parquet", columns=["user_id"])["user_id"].unique().to_numpy()
    catalog = pl.read_parquet(workdir / "movies.parquet", columns=["movie_id"])["movie_id"].to_numpy()
    movie_ids = np.random.default_rng(0).choice(catalog, min(candidates, len(catalog)), replace=False)
    processes: dict[str, tuple[Any, str]] = {}
    try:
        for name, overrides in RANKER_CONFIGS.items():
            ports = {"ranker_grpc_port": free_port(), "ranker_http_port": free_port()}
            config = settings.model_copy(update={**ports, **overrides})
            log_path = workdir / "run" / "logs" / f"bench-ranker-{name}.log"
            processes[name] = (start_replica(workdir, "ranker", config, log_path), ports["ranker_grpc_port"])
        for process, port in processes.values():
            wait_healthy("ranker", port, 180, process=process)
        tallies = {(level, name): [[], 0, 0.0, 0.0] for level in concurrency for name in processes}
        for _, port in processes.values():  # warm-up: the load of a serving ranker, briefly
            asyncio.run(
                _drive_ranker(f"127.0.0.1:{port}", settings.ranker_model_name, users, movie_ids, 4, 1.0)
            )
        for level in concurrency:
            for _ in range(rounds):
                for name, (process, port) in processes.items():
                    cpu = psutil.Process(process.pid)
                    before = sum(cpu.cpu_times()[:2])
                    started = time.perf_counter()
                    latencies, errors = asyncio.run(
                        _drive_ranker(
                            f"127.0.0.1:{port}", settings.ranker_model_name, users, movie_ids, level, burst_s
                        )
                    )
                    tally = tallies[(level, name)]
                    tally[0] += latencies
                    tally[1] += errors
                    tally[2] += time.perf_counter() - started
                    tally[3] += sum(cpu.cpu_times()[:2]) - before
    finally:
        for process, _ in processes.values():
            process.terminate()
        for process, _ in processes.values():
            process.wait(timeout=30)
    levels = []
    for level in concurrency:
        figures = {}
        for name in processes:
            latencies, errors, seconds, cpu_s = tallies[(level, name)]
            figures[name] = {
                "requests": len(latencies),
                "errors": errors,
                "requests_per_second": round(len(latencies) / seconds, 1),
                **{k: v for k, v in _quantiles(latencies).items() if k != "p95_ms"},
                "cpu_ms_per_request": round(cpu_s * 1000.0 / max(len(latencies), 1), 3),
            }
        alone = figures["alone"]
        for name in processes:
            if name != "alone":
                figures[name]["over_alone"] = {
                    key: round(figures[name][key] / alone[key], 3) if alone[key] else None
                    for key in ("requests_per_second", "p50_ms", "p99_ms", "cpu_ms_per_request")
                }
        levels.append({"concurrency": level, **figures})
    return {
        "benchmark": "ranker",
        "candidates": len(movie_ids),
        "rounds": rounds,
        "burst_s": burst_s,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {platform.system()}",
        "levels": levels,
    }


# ----------------------------------------------------------------------------------------------- history
FEEDBACK_BATCH = 1000  # RecordFeedback's most events per call


def _recommend_timed(stub: Any, user_id: int, k: int) -> tuple[float, list[int], dict[str, float]]:
    """One Recommend: (client ms, the movie ids, the per-stage ms of the trailing metadata)."""
    start = time.perf_counter()
    response, call = stub.Recommend.with_call(
        recommend_pb2.RecommendRequest(user_id=user_id, k=k), timeout=10
    )
    elapsed = (time.perf_counter() - start) * 1000.0
    stages = {}
    for key, value in call.trailing_metadata() or ():
        if key == STAGE_TIMINGS_KEY and value:
            stages = {stage: float(ms) for stage, ms in (part.split("=") for part in value.split(","))}
    return elapsed, [item.movie_id for item in response.items], stages


def bench_history(
    workdir: Path, ratings: int = 20_000, duration_s: float = 10.0, k: int = 20, seed: int = 0
) -> dict[str, Any]:
    """Recommend latency for a user with a long history against light users, at concurrency 1, the two kinds
    of request alternated in one run. A new user rates ``ratings`` distinct movies (at most 80% of the
    catalog, so something is left to recommend) through RecordFeedback, the real-time path; light users are
    raters with at most the median number of ratings. Runs on a private copy of WORKDIR with its own stack on
    free ports, so the heavy user never enters WORKDIR. Every heavy answer is checked to hold no rated movie."""
    from google.protobuf.timestamp_pb2 import Timestamp

    from starling.auth import authorized_channel, client_token
    from starling.v1 import catalog_pb2, catalog_pb2_grpc

    if ratings < 1 or duration_s <= 0 or k < 1:
        raise StarlingError("--ratings must be >= 1, --duration > 0 and --k >= 1")
    with private_stack(workdir, "history") as (copy, settings):
        history = pl.read_parquet(copy / "ratings.parquet", columns=["user_id", "movie_id"])
        catalog = pl.read_parquet(copy / "movies.parquet", columns=["movie_id"])["movie_id"].to_numpy()
        counts = history.group_by("user_id").len()
        light_users = counts.filter(pl.col("len") <= pl.col("len").median())["user_id"].to_numpy()
        heavy_user = int(counts["user_id"].max()) + 1
        rng = np.random.default_rng(seed)
        n_rated = min(ratings, int(len(catalog) * 0.8))
        rated = rng.choice(catalog, size=n_rated, replace=False)
        stars = rng.integers(1, 11, size=n_rated) / 2.0
        now = time.time()
        channel = authorized_channel(f"127.0.0.1:{settings.recommend_port}", client_token(settings))
        stub = recommend_pb2_grpc.RecommendServiceStub(channel)
        catalog_stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        written_at = time.perf_counter()
        for start in range(0, n_rated, FEEDBACK_BATCH):
            events = []
            for offset in range(start, min(start + FEEDBACK_BATCH, n_rated)):  # building the request
                when = Timestamp()
                when.FromNanoseconds(int((now - (n_rated - offset)) * 1e9))  # one a second, oldest first
                events.append(
                    recommend_pb2.FeedbackEvent(
                        user_id=heavy_user,
                        movie_id=int(rated[offset]),
                        kind=recommend_pb2.FEEDBACK_KIND_RATING,
                        rating=float(stars[offset]),
                        time=when,
                    )
                )
            reply = stub.RecordFeedback(recommend_pb2.RecordFeedbackRequest(events=events), timeout=60)
            if reply.rejected:
                raise StarlingError(f"RecordFeedback rejected {reply.rejected} of the heavy user's ratings")
        rated_set = set(rated.tolist())
        deadline = time.monotonic() + 120
        while True:  # until every stage has followed the ratings: the catalog counts them, none is served
            total = catalog_stub.ListUserRatings(
                catalog_pb2.ListUserRatingsRequest(user_id=heavy_user, limit=1), timeout=10
            ).total
            _, answer, _ = _recommend_timed(stub, heavy_user, k)
            if total == n_rated and not rated_set.intersection(answer):
                break
            if time.monotonic() > deadline:
                raise StarlingError(f"the heavy user's {n_rated} ratings were not followed within 120 s")
            time.sleep(0.2)
        followed_s = time.perf_counter() - written_at
        waited = wait_until_quiet(copy)
        for i in range(WARMUP_REQUESTS):
            _recommend_timed(stub, heavy_user if i % 2 else int(rng.choice(light_users)), k)
        latencies: dict[str, list[float]] = {"light": [], "heavy": []}
        stages: dict[str, dict[str, list[float]]] = {"light": {}, "heavy": {}}
        served_rated = 0
        deadline = time.perf_counter() + duration_s
        turn = 0
        while time.perf_counter() < deadline:
            kind = "heavy" if turn % 2 else "light"
            user = heavy_user if kind == "heavy" else int(rng.choice(light_users))
            ms, answer, stage_ms = _recommend_timed(stub, user, k)
            latencies[kind].append(ms)
            for stage, value in stage_ms.items():
                stages[kind].setdefault(stage, []).append(value)
            if kind == "heavy":
                served_rated += len(rated_set.intersection(answer))
            turn += 1
        channel.close()
    report: dict[str, Any] = {
        "benchmark": "history",
        "k": k,
        "concurrency": 1,
        "duration_s": duration_s,
        "heavy_user_id": heavy_user,
        "heavy_user_ratings": n_rated,
        "light_user_ratings_max": int(counts["len"].median()),
        "ratings_followed_s": round(followed_s, 2),
        "waited_for_quiet_s": waited,
        "rated_movies_served_to_heavy_user": served_rated,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {platform.system()}",
    }
    for kind in ("light", "heavy"):
        report[kind] = {
            "requests": len(latencies[kind]),
            **_quantiles(latencies[kind]),
            "stages": {
                stage: {key: v for key, v in _quantiles(ms).items() if key != "p95_ms"}
                for stage, ms in stages[kind].items()
            },
        }
    report["heavy_over_light"] = {
        name: round(report["heavy"][name] / report["light"][name], 3) for name in ("p50_ms", "p99_ms")
    }
    return report
