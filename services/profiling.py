"""`starling bench serve --profile DIR`: py-spy flamegraphs of every service while the benchmark drives it, and
where each service's samples went.

For each service process of the stack, two py-spy recorders run side by side for the same window
(``--nonblocking``: the service is never paused): one writes the flamegraph (SVG) for a person to read, the
other the collapsed stacks (py-spy's ``raw`` format: ``frame;frame;... count`` per line), which
:func:`summarize` reduces to each service's heaviest functions, by own (self) samples and by inclusive
samples, so the report names where the time went without opening a picture.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starling.errors import StarlingError

TOP_FUNCTIONS = 8


@dataclass(frozen=True)
class Recording:
    service: str
    svg: Path
    raw: Path
    processes: tuple[subprocess.Popen, ...]


def py_spy() -> str:
    """The py-spy executable beside this interpreter (a virtual environment's), or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.is_file() else shutil.which("py-spy")
    if found is None:
        raise StarlingError("--profile needs py-spy (pip install py-spy; it is in requirements.lock)")
    return found


def start_recording(
    services: dict[str, int], directory: Path, label: str, duration_s: float, rate: int = 200
) -> list[Recording]:
    """Start two recorders (SVG, raw) per service ``{name: pid}`` for ``duration_s`` seconds."""
    executable = py_spy()
    directory.mkdir(parents=True, exist_ok=True)
    recordings = []
    seconds = str(max(1, round(duration_s)))
    for name, pid in sorted(services.items()):
        svg, raw = directory / f"{name}-{label}.svg", directory / f"{name}-{label}.txt"
        common = [executable, "record", "--pid", str(pid), "--duration", seconds, "--rate", str(rate)]
        # No --subprocesses: the services' only children are native (milvus-lite), and py-spy's watch over
        # children races with their exits (benfred/py-spy#243, #759) and fails the whole recording.
        common.append("--nonblocking")
        processes = tuple(
            subprocess.Popen(
                [*common, "--format", fmt, "--output", str(path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for fmt, path in (("flamegraph", svg), ("raw", raw))
        )
        recordings.append(Recording(name, svg, raw, processes))
    return recordings


def _error_line(stderr: str, returncode: int) -> str:
    """py-spy's own message from its stderr (``Error: ...`` or a panic), not the backtrace lines after it."""
    lines = [line.strip() for line in (stderr or "").splitlines() if line.strip()]
    found = next((line for line in lines if line.startswith("Error") or "panicked" in line), None)
    return found or (lines[0] if lines else f"py-spy exited with {returncode}")


def finish_recording(recordings: list[Recording], timeout_s: float) -> dict[str, Any]:
    """Wait for the recorders; per service, the flamegraph's path and :func:`summarize` of its stacks, or
    the recorder's error (e.g. when the system forbids attaching to another process). A flamegraph that
    failed while the stacks were written is reported as ``flamegraph_error`` beside the summary."""
    out: dict[str, Any] = {}
    for recording in recordings:
        errors: dict[str, str] = {}
        for fmt, process in zip(("flamegraph", "raw"), recording.processes, strict=True):
            try:
                _, stderr = process.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                _, stderr = process.communicate()
            if process.returncode != 0:
                errors[fmt] = _error_line(stderr, process.returncode)
        if "raw" in errors or not recording.raw.is_file():
            out[recording.service] = {"error": "; ".join(errors.values()) or "py-spy wrote nothing"}
            continue
        found = summarize(recording.raw.read_text().splitlines())
        if "flamegraph" in errors or not recording.svg.is_file():
            out[recording.service] = {
                "flamegraph_error": errors.get("flamegraph", "py-spy wrote nothing"),
                **found,
            }
        else:
            out[recording.service] = {"flamegraph": str(recording.svg), **found}
    return out


#: Leaf frames of a thread waiting for work, not working: the event loop's selector, executor workers and
#: threads blocked in a condition (py-spy samples them: a wait inside Python is not seen as idle).
IDLE_LEAVES = frozenset(
    {
        "EpollSelector.select (selectors.py)",
        "_PollLikeSelector.select (selectors.py)",
        "select (selectors.py)",
        "Condition.wait (threading.py)",
        "Event.wait (threading.py)",
        "_worker (thread.py)",
        "Thread.run (threading.py)",
    }
)
#: Path prefixes of the project's own code, as py-spy prints them (relative to the import root).
PROJECT_PREFIXES = ("services/", "starling/", "training/")


def _function(frame: str) -> tuple[str, bool]:
    """``name (path/to/file.py:line)`` -> (``name (file.py)``, whether the file is the project's own)."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0].rstrip(")")
    file = path.rsplit("/", 1)[-1]
    return (f"{name} ({file})" if file else name), path.startswith(PROJECT_PREFIXES)


def summarize(lines: list[str], top: int = TOP_FUNCTIONS) -> dict[str, Any]:
    """Collapsed stacks (``frame;frame;... count``, root first; one line per distinct stack) -> samples, the
    share spent waiting (:data:`IDLE_LEAVES`), and, as shares of the busy samples, the ``top`` functions by
    own time (``top_self``, any code) and the project functions whose calls the busy time was in
    (``top_project``: each sample goes to its innermost project frame, with the library code it called)."""
    own: Counter[str] = Counter()
    project: Counter[str] = Counter()
    total = idle = 0
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        frames = [_function(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        if frames[-1][0] in IDLE_LEAVES:
            idle += count
            continue
        own[frames[-1][0]] += count
        innermost = next((name for name, ours in reversed(frames) if ours), None)
        if innermost is not None:
            project[innermost] += count
    busy = total - idle

    def shares(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"function": f, "share": round(c / max(busy, 1), 3)} for f, c in counter.most_common(top)]

    return {
        "samples": total,
        "idle_share": round(idle / total, 3) if total else 0.0,
        "top_self": shares(own),
        "top_project": shares(project),
    }
