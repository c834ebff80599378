"""`starling train --nproc N`: distributed data parallel training through torchrun.

The command re-runs itself under ``torch.distributed.run`` (torchrun) with N processes on this machine
(``--standalone``; across nodes, the chart's PyTorchJob starts torchrun itself). Each process joins one process
group (gloo on CPU, NCCL on CUDA), prepares the same training data, and trains on its share of the groups
(training/loop.py); rank 0 alone writes, gates and publishes the version.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from training.loop import training_device


def launched_by_torchrun() -> bool:
    """Whether this process is one of torchrun's workers (it sets WORLD_SIZE, RANK, MASTER_ADDR...)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def without_option(arguments: list[str], option: str) -> list[str]:
    """``arguments`` less ``option`` and its value (``--opt V`` or ``--opt=V``): torchrun would read an option
    of ours that abbreviates one of its own (``--nproc``) as its own; the workers know their count anyway."""
    out, skip = [], False
    for argument in arguments:  # a command line: a handful of words
        if skip:
            skip = False
        elif argument == option:
            skip = True
        elif not argument.startswith(f"{option}="):
            out.append(argument)
    return out


def relaunch_with_torchrun(nproc: int, arguments: list[str]) -> int:
    """Run ``python <arguments>`` as ``nproc`` torchrun workers on this machine; their exit status."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        *arguments,
    ]
    # Each worker gets an equal share of the cores for its intra-op threads.
    threads = max(1, (os.cpu_count() or 1) // nproc)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    return subprocess.call(command, env=env)


@contextmanager
def training_process_group() -> Iterator[int]:
    """Inside torchrun: join the process group for the duration (yields this rank); otherwise yields 0."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) < 2:
        yield 0
        return
    import torch.distributed as dist

    device = training_device()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    try:
        yield dist.get_rank()
    finally:
        dist.destroy_process_group()
