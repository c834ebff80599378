"""Progress for long CLI steps: a tqdm bar on a terminal, one summary line per step otherwise.

Every long command (ingest, features build, materialize, train, evaluate) reports through :func:`progress`,
on stderr so that ``--json`` output on stdout stays machine-readable. On a terminal the bar shows the count,
the rate and the time left; when stderr is not a terminal (CI logs, pipes, Kubernetes Jobs) each step prints
one line when it ends, e.g. ``features build: 5/5 steps in 0.7 s (samples 100,836, users 610)``, or
``evaluate pipeline: 72 users in 3.1 s (23.2 users/s)``. ``STARLING_PROGRESS=0`` silences both.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm

from starling.config import get_settings


def progress_enabled() -> bool:
    return get_settings().progress


def on_terminal() -> bool:
    return sys.stderr.isatty()


class Progress:
    """Counts units of one step; see the module's docstring for what it prints."""

    def __init__(self, description: str, total: int | None, unit: str) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.count = 0
        self.facts: dict[str, Any] = {}
        self.started = time.perf_counter()
        self.enabled = progress_enabled()
        self.bar = (
            tqdm(total=total, desc=description, unit=unit, file=sys.stderr, leave=False)
            if self.enabled and on_terminal()
            else None
        )

    def update(self, n: int = 1, **facts: Any) -> None:
        """``n`` more units done; ``facts`` (e.g. rows=100836) are shown beside the bar and in the line."""
        self.count += n
        self.facts.update(facts)
        if self.bar is not None:
            self.bar.update(n)
            if facts:
                self.bar.set_postfix({k: _format(v) for k, v in self.facts.items()}, refresh=False)

    def summary(self) -> str:
        seconds = time.perf_counter() - self.started
        done = f"{self.count:,}/{self.total:,}" if self.total is not None else f"{self.count:,}"
        parts = [f"{self.description}: {done} {self.unit} in {seconds:.1f} s"]
        details = [f"{self.count / seconds:,.1f} {self.unit}/s"] if seconds > 0 and self.count else []
        details += [f"{name} {_format(value)}" for name, value in self.facts.items()]
        return parts[0] + (f" ({', '.join(details)})" if details else "")

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        print(self.summary(), file=sys.stderr, flush=True)


def _format(value: Any) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3g}"
    return str(value)


@contextmanager
def progress(description: str, total: int | None = None, unit: str = "steps") -> Iterator[Progress]:
    """A :class:`Progress` for the body of a ``with`` block; its summary line is printed when it ends."""
    step = Progress(description, total, unit)
    try:
        yield step
    finally:
        step.close()
