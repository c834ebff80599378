"""`starling bench features`: time and peak memory of `features build` on synthetic ratings or a given source.

Input data is prepared first (not timed) with `starling data ingest`; the build then runs in a fresh Python
process so that the reported peak RSS is the build's own (plus the interpreter and its imports).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from starling.errors import StarlingError

_BUILD_IN_CHILD = """
import json, resource, sys, threading, time
from pathlib import Path
import psutil
from starling.features.build import SplitConfig, build_features

engine, master = sys.argv[2], sys.argv[3]
me = psutil.Process()
peak = [0]
done = threading.Event()

def sample():  # the process tree's RSS (Spark's JVM is a child): at once, then every 0.1 s
    while True:
        total = 0
        for process in [me, *me.children(recursive=True)]:
            try:
                total += process.memory_info().rss
            except psutil.Error:
                pass
        peak[0] = max(peak[0], total)
        if done.wait(0.1):
            return

sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
started = time.perf_counter()
if engine == "spark":
    from starling.features.spark_engine import build_features_spark
    report = build_features_spark(Path(sys.argv[1]), SplitConfig(), master=master)
else:
    report = build_features(Path(sys.argv[1]), SplitConfig())
seconds = time.perf_counter() - started
done.set()
sampler.join()
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_kib / 1024, "peak_tree_rss_mb": peak[0] / 2**20,
                  "users": report.users, "movies": report.movies}))
"""


def _prepare(workdir: Path, n_ratings: int, source: str | None) -> tuple[str, int]:
    """Write canonical inputs into ``workdir``; returns the source used and how many bad rows were dropped."""
    from starling.data.ingest import ingest

    used = source if source is not None else f"synthetic:{n_ratings}"
    # a benchmark measures the build: rows that ingestion rejects are dropped (as `--on-bad skip` does) and
    # counted in the output's "skipped_rows"
    report = ingest(used, workdir, on_bad="skip")
    return used, report.n_skipped


def bench_features(
    n_ratings: int = 100_000, source: str | None = None, engine: str = "polars", master: str = "local[2]"
) -> dict[str, Any]:
    """Build features once with ``engine`` (polars or spark on ``master``); returns {"ratings", "users",
    "movies", "seconds", "peak_rss_mb" (the building process), "peak_tree_rss_mb" (with its children: Spark's
    JVM; sampled every 0.1 s), "engine", "source", "skipped_rows"}."""
    if source is None and n_ratings <= 0:
        raise StarlingError(f"--ratings {n_ratings}: must be positive")
    if engine not in ("polars", "spark"):
        raise StarlingError(f"--engine {engine!r}: expected polars or spark")
    if engine == "spark":
        from starling.features.spark_engine import check_master

        check_master(master)
    with tempfile.TemporaryDirectory(prefix="starling-bench-features-") as tmp:
        workdir = Path(tmp)
        used, skipped = _prepare(workdir, n_ratings, source)
        child = subprocess.run(
            [sys.executable, "-c", _BUILD_IN_CHILD, str(workdir), engine, master],
            capture_output=True,
            text=True,
            check=False,
        )
        if child.returncode != 0:
            last_lines = "\n".join(child.stderr.strip().splitlines()[-5:])
            raise StarlingError(f"features build failed in the benchmark process:\n{last_lines}")
        measured = json.loads(child.stdout.strip().splitlines()[-1])
        n_rows = pq.ParquetFile(workdir / "ratings.parquet").metadata.num_rows
    return {
        "ratings": n_rows,
        "users": measured["users"],
        "movies": measured["movies"],
        "seconds": round(measured["seconds"], 3),
        "peak_rss_mb": round(measured["peak_rss_mb"], 1),
        "peak_tree_rss_mb": round(measured["peak_tree_rss_mb"], 1),
        "engine": engine if engine == "polars" else f"spark {master}",
        "source": used,
        "skipped_rows": skipped,
    }
