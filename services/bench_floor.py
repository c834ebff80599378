"""`starling bench floor`: what the served path's hops cost with no work behind them, beside the real stack.

The floor is the same topology as a normal Recommend (the orchestrator calls recall, then the KServe ranker
over v2 gRPC, then rerank), built from the same parts: :func:`services.common.server.start_service` (its
five interceptors, health, reflection) for the orchestrator, recall and rerank, and the project's KServe
``RankerServer`` for the ranker. Each process answers with a message captured from WORKDIR's running stack
for one user (the recall response with its 500 candidates and their features, the ranker's scores, the
re-ranked list, the final response), so every byte that crosses a hop is the real one's, and does nothing
else. The load alternates between the floor and the real stack in short bursts, so both meet the same
machine; the difference is the work: ranking, recall's channels, features, reasons, logging.

Run as ``python -m services.bench_floor ROLE MESSAGES_DIR PORT [...]`` it is one floor process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import polars as pl

from starling.config import Settings, get_settings
from starling.errors import StarlingError
from starling.v1 import (
    recall_pb2,
    recall_pb2_grpc,
    recommend_pb2,
    recommend_pb2_grpc,
    rerank_pb2,
    rerank_pb2_grpc,
)

ROLES = ("recall", "ranker", "rerank", "recommend")
MESSAGES = {  # file -> message type; the ranker's request and reply are rebuilt from the recall response
    "recall_request": recall_pb2.RecallRequest,
    "recall_response": recall_pb2.RecallResponse,
    "rerank_request": rerank_pb2.RerankRequest,
    "rerank_response": rerank_pb2.RerankResponse,
    "recommend_response": recommend_pb2.RecommendResponse,
}


def _read(directory: Path, name: str) -> Any:
    message = MESSAGES[name]()
    message.ParseFromString((directory / f"{name}.bin").read_bytes())
    return message


def _candidates(recalled: recall_pb2.RecallResponse) -> tuple[np.ndarray, np.ndarray]:
    movie_ids = np.asarray(recalled.movie_ids, dtype=np.int64)
    features = np.frombuffer(recalled.features, dtype="<f4").reshape(
        len(movie_ids), len(recalled.feature_names)
    )
    return movie_ids, features


# ------------------------------------------------------------------------------------------- capture
def capture_messages(settings: Any, user_id: int, k: int, directory: Path) -> dict[str, int]:
    """Ask WORKDIR's running stack, stage by stage, what it sends and answers for ``user_id`` (the requests
    built as RecommendService builds them) and write each message to ``directory``; returns their sizes."""
    from kserve import InferenceGRPCClient

    from services.bench import _infer_request

    directory.mkdir(parents=True, exist_ok=True)
    recall_request = recall_pb2.RecallRequest(user_id=user_id, n=settings.recall_size)
    with grpc.insecure_channel(f"127.0.0.1:{settings.recall_port}") as channel:
        recalled = recall_pb2_grpc.RecallServiceStub(channel).Recall(recall_request, timeout=30)
    if not recalled.known_user or not len(recalled.movie_ids):
        raise StarlingError(f"user {user_id}: recall knows no history; the floor needs a warm user's path")
    movie_ids, features = _candidates(recalled)

    async def score() -> np.ndarray:
        async with InferenceGRPCClient(
            f"127.0.0.1:{settings.ranker_grpc_port}", retries=0, timeout=30
        ) as client:
            reply = await client.infer(
                _infer_request(user_id, movie_ids, features.copy(), settings.ranker_model_name)
            )
        return next(output for output in reply.outputs if output.name == "scores").as_numpy()

    scores = asyncio.run(score()).astype(np.float32).reshape(-1)
    rerank_request = rerank_pb2.RerankRequest(
        user_id=user_id,
        k=k,
        movie_ids=movie_ids.tolist(),
        scores=scores.tolist(),
        channels=list(recalled.channels),
        user_genres=list(recalled.user_top_genres),
    )
    with grpc.insecure_channel(f"127.0.0.1:{settings.rerank_port}") as channel:
        reranked = rerank_pb2_grpc.RerankServiceStub(channel).Rerank(rerank_request, timeout=30)
    with grpc.insecure_channel(f"127.0.0.1:{settings.recommend_port}") as channel:
        served = recommend_pb2_grpc.RecommendServiceStub(channel).Recommend(
            recommend_pb2.RecommendRequest(user_id=user_id, k=k), timeout=30
        )
    messages = {
        "recall_request": recall_request,
        "recall_response": recalled,
        "rerank_request": rerank_request,
        "rerank_response": reranked,
        "recommend_response": served,
    }
    for name, message in messages.items():
        (directory / f"{name}.bin").write_bytes(message.SerializeToString())
    (directory / "ranker.json").write_text(json.dumps({"model_name": settings.ranker_model_name}))
    return {name: message.ByteSize() for name, message in messages.items()} | {
        "ranker_request_tensors": int(movie_ids.nbytes + features.nbytes + 8),
        "ranker_response_tensors": int(scores.nbytes + 1),
    }


# ------------------------------------------------------------------------------------------ processes
def _serve_answer(
    role: str, pb2: Any, pb2_grpc: Any, service: str, method: str, directory: Path, port: int
) -> None:
    """A ``service`` whose ``method`` answers the captured ``<role>_response``, on the services' bootstrap."""
    from services.common.server import run_service

    reply = _read(directory, f"{role}_response")

    async def answer(self: Any, request: Any, context: Any) -> Any:
        return reply

    servicer = type(f"Floor{service}", (getattr(pb2_grpc, f"{service}Servicer"),), {method: answer})()

    async def register(server: grpc.aio.Server) -> list[str]:
        getattr(pb2_grpc, f"add_{service}Servicer_to_server")(servicer, server)
        return [pb2.DESCRIPTOR.services_by_name[service].full_name]

    run_service(f"floor-{role}", register, port)


def _serve_ranker(directory: Path, grpc_port: int, http_port: int) -> None:
    """The project's KServe server (services/ranker/server.py) with a model that answers the captured scores."""
    from kserve import InferOutput, InferResponse, Model

    from services.common.jsonlog import configure_logging
    from services.ranker.server import RankerServer

    scores = np.asarray(_read(directory, "rerank_request").scores, dtype=np.float32)
    model_name = json.loads((directory / "ranker.json").read_text())["model_name"]

    class FloorModel(Model):
        def load(self) -> bool:
            self.ready = True
            return self.ready

        async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> InferResponse:
            scores_out = InferOutput("scores", shape=[len(scores)], datatype="FP32")
            scores_out.set_data_from_numpy(scores, binary_data=True)
            found_out = InferOutput("user_features_found", shape=[1], datatype="BOOL")
            found_out.set_data_from_numpy(np.array([True]), binary_data=False)
            return InferResponse(
                response_id=payload.id or "", model_name=self.name, infer_outputs=[scores_out, found_out]
            )

    configure_logging("floor-ranker")
    for name in ("kserve", "kserve.trace"):
        logging.getLogger(name).setLevel(logging.WARNING)
    model = FloorModel(model_name)
    model.load()
    server = RankerServer(
        get_settings().host,
        http_port=http_port,
        grpc_port=grpc_port,
        workers=1,
        enable_docs_url=False,
        enable_latency_logging=False,
    )
    server.start([model])


def _serve_recommend(directory: Path, port: int, recall: str, ranker: str, rerank: str) -> None:
    """The orchestrator's three calls, one after the other, each with the captured request, through the same
    channel options and KServe client as RecommendService; answers the captured response."""
    from kserve import InferenceGRPCClient

    from services.bench import _infer_request
    from services.common.channels import STAGE_CHANNEL_OPTIONS
    from services.common.server import run_service

    recall_request = _read(directory, "recall_request")
    rerank_request = _read(directory, "rerank_request")
    reply = _read(directory, "recommend_response")
    movie_ids, features = _candidates(_read(directory, "recall_response"))
    model_name = json.loads((directory / "ranker.json").read_text())["model_name"]

    class FloorRecommend(recommend_pb2_grpc.RecommendServiceServicer):
        def __init__(self) -> None:
            options = list(STAGE_CHANNEL_OPTIONS)
            self.recall = recall_pb2_grpc.RecallServiceStub(
                grpc.aio.insecure_channel(recall, options=options)
            )
            self.rerank = rerank_pb2_grpc.RerankServiceStub(
                grpc.aio.insecure_channel(rerank, options=options)
            )
            self.ranker = InferenceGRPCClient(ranker, retries=0, timeout=None, channel_args=options)

        async def Recommend(self, request, context):
            await self.recall.Recall(recall_request, timeout=5)
            infer = _infer_request(recall_request.user_id, movie_ids, features, model_name)
            await self.ranker.infer(infer, timeout=5)
            await self.rerank.Rerank(rerank_request, timeout=5)
            return reply

    async def register(server: grpc.aio.Server) -> list[str]:
        recommend_pb2_grpc.add_RecommendServiceServicer_to_server(FloorRecommend(), server)
        return [recommend_pb2.DESCRIPTOR.services_by_name["RecommendService"].full_name]

    run_service("floor-recommend", register, port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="One process of `starling bench floor`.")
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("messages", type=Path)
    parser.add_argument("port", type=int)
    parser.add_argument("--http-port", type=int, default=0, help="ranker: the REST port KServe also opens")
    parser.add_argument("--recall", default="", help="recommend: the floor recall's address")
    parser.add_argument("--ranker", default="", help="recommend: the floor ranker's v2 gRPC address")
    parser.add_argument("--rerank", default="", help="recommend: the floor rerank's address")
    args = parser.parse_args(argv)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    if args.role == "recall":
        _serve_answer(
            "recall", recall_pb2, recall_pb2_grpc, "RecallService", "Recall", args.messages, args.port
        )
    elif args.role == "rerank":
        _serve_answer(
            "rerank", rerank_pb2, rerank_pb2_grpc, "RerankService", "Rerank", args.messages, args.port
        )
    elif args.role == "ranker":
        _serve_ranker(args.messages, args.port, args.http_port)
    else:
        _serve_recommend(args.messages, args.port, args.recall, args.ranker, args.rerank)


# -------------------------------------------------------------------------------------------- benchmark
def _start_floor(
    directory: Path, workdir: Path, settings: Settings, log_dir: Path
) -> dict[str, tuple[subprocess.Popen, int]]:
    """The four floor processes on free ports, healthy; {role: (process, gRPC port)}."""
    from starling.local import REPO_ROOT, free_port, service_environment, wait_healthy

    env = service_environment(workdir, settings) | {"STARLING_METRICS_PORT": "0"}  # each: its port + 1000
    ports = {role: free_port(metrics_neighbour=role != "ranker") for role in ROLES}
    extra = {
        "ranker": ["--http-port", str(free_port())],
        "recommend": [
            "--recall", f"127.0.0.1:{ports['recall']}",
            "--ranker", f"127.0.0.1:{ports['ranker']}",
            "--rerank", f"127.0.0.1:{ports['rerank']}",
        ],
    }  # fmt: skip
    log_dir.mkdir(parents=True, exist_ok=True)
    started: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        for role in ROLES:
            with (log_dir / f"floor-{role}.log").open("ab") as output:
                command = [
                    sys.executable,
                    "-m",
                    "services.bench_floor",
                    role,
                    str(directory),
                    str(ports[role]),
                ]
                process = subprocess.Popen(
                    [*command, *extra.get(role, [])],
                    env=env,
                    cwd=REPO_ROOT,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            started[role] = (process, ports[role])
        for role, (process, port) in started.items():
            try:
                wait_healthy(role, port, 120, process=process)
            except StarlingError as exc:
                raise StarlingError(f"floor {exc} (log: {log_dir / f'floor-{role}.log'})") from exc
    except BaseException:
        _stop(started)
        raise
    return started


def _stop(processes: dict[str, tuple[subprocess.Popen, int]]) -> None:
    for process, _ in processes.values():
        if process.poll() is None:
            process.terminate()
    for process, _ in processes.values():
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _median(values: list[float]) -> float:
    return round(float(np.median(values)), 3) if values else float("nan")


def bench_floor(
    workdir: Path,
    concurrency: list[int],
    rounds: int = 4,
    burst_s: float = 3.0,
    k: int = 20,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Per concurrency level, ``rounds`` bursts of back-to-back Recommends on the floor, then on WORKDIR's real
    stack (which must be up: `starling up`), alternated; per stack the median req/s, p50 and p99 of the bursts,
    the server CPU per request of each process (and of this client), and real over floor."""
    import psutil

    from services.bench import (
        WARMUP_REQUESTS,
        _drive,
        process_cpu_seconds,
        service_cpu_seconds,
        wait_until_quiet,
    )
    from starling.local import is_healthy, read_state

    if rounds < 1 or burst_s <= 0 or not concurrency or min(concurrency) < 1 or k < 1:
        raise StarlingError("--rounds >= 1, --burst > 0, --k >= 1 and --concurrency integers >= 1")
    workdir = Path(workdir).resolve()
    settings = settings or get_settings()
    if not is_healthy("recommend", settings.recommend_port):
        raise StarlingError(
            f"no RecommendService at 127.0.0.1:{settings.recommend_port}: start the stack (`starling up {workdir}`)"
        )
    ratings = pl.read_parquet(workdir / "ratings.parquet", columns=["user_id"])
    counts = ratings.group_by("user_id").len().sort(["len", "user_id"])
    users = counts["user_id"].to_numpy()
    sample_user = int(users[len(users) // 2])  # a rater with the median history
    client = psutil.Process()
    with tempfile.TemporaryDirectory(prefix="starling-bench-floor-") as tmp:
        sizes = capture_messages(settings, sample_user, k, Path(tmp))
        floor = _start_floor(Path(tmp), workdir, settings, workdir / "run" / "logs")
        try:
            stacks = {
                "floor": (f"127.0.0.1:{floor['recommend'][1]}", lambda: process_cpu_seconds({r: p.pid for r, (p, _) in floor.items()})),
                "real": (f"127.0.0.1:{settings.recommend_port}", lambda: service_cpu_seconds(workdir)),
            }  # fmt: skip
            waited = wait_until_quiet(workdir)
            tallies = {
                (level, name): {"rps": [], "p50": [], "p99": [], "requests": 0, "cpu": {}, "client": 0.0}
                for level in concurrency
                for name in stacks
            }
            for level in concurrency:
                for round_ in range(rounds):
                    for name, (target, cpu) in stacks.items():
                        before, client_before = cpu(), sum(client.cpu_times()[:2])
                        run = asyncio.run(
                            _drive(target, users, k, burst_s, level, seed=level * 1000 + round_)
                        )
                        after, client_after = cpu(), sum(client.cpu_times()[:2])
                        tally = tallies[(level, name)]
                        if run["errors"]:
                            raise StarlingError(f"{name} at concurrency {level}: errors {run['errors']}")
                        tally["rps"].append(run["requests_per_second"])
                        tally["p50"].append(run["p50_ms"])
                        tally["p99"].append(run["p99_ms"])
                        tally["requests"] += run["requests"] + WARMUP_REQUESTS  # the warm-up's CPU is in
                        for process in after:
                            if process in before:
                                tally["cpu"][process] = (
                                    tally["cpu"].get(process, 0.0) + after[process] - before[process]
                                )
                        tally["client"] += client_after - client_before
        finally:
            _stop(floor)
    levels = []
    for level in concurrency:
        figures: dict[str, Any] = {}
        for name in stacks:
            tally = tallies[(level, name)]
            per = {
                p: round(s * 1000.0 / tally["requests"], 3)
                for p, s in sorted(tally["cpu"].items())
                if p != "web"
            }
            figures[name] = {
                "requests_per_second": _median(tally["rps"]),
                "p50_ms": _median(tally["p50"]),
                "p99_ms": _median(tally["p99"]),
                "server_cpu_ms_per_request": {**per, "total": round(sum(per.values()), 3)},
                "client_cpu_ms_per_request": round(tally["client"] * 1000.0 / tally["requests"], 3),
            }
        real, bare = figures["real"], figures["floor"]
        figures["real_over_floor"] = {
            "requests_per_second": round(real["requests_per_second"] / bare["requests_per_second"], 3),
            "p50_ms": round(real["p50_ms"] / bare["p50_ms"], 3),
            "server_cpu_ms_per_request": round(
                real["server_cpu_ms_per_request"]["total"] / bare["server_cpu_ms_per_request"]["total"], 3
            ),
        }
        levels.append({"concurrency": level, **figures})
    return {
        "benchmark": "floor",
        "sample_user": sample_user,
        "message_bytes": sizes,
        "rounds": rounds,
        "burst_s": burst_s,
        "k": k,
        "waited_for_quiet_s": waited,
        "live_services": sorted(s.name for s in read_state(workdir)),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {platform.system()}",
        "levels": levels,
    }


if __name__ == "__main__":
    main()
