"""Experiments: which arm of which experiment serves a user, from a YAML file re-read without restart.

The file (``STARLING_EXPERIMENTS``, default services/recommend/experiments.yaml; a ConfigMap in the chart):

    experiments:
      - name: ranker-vs-random          # unique
        layer: ranking                  # experiments in different layers are orthogonal
        salt: "2026-12"                 # change it to reshuffle users
        type: ab                        # ab | interleaving (exactly two arms, team-draft)
        arms:
          - {name: control, share: 50}  # percent of the layer's users
          - {name: random, share: 50, overrides: {ranker: random}}

Assignment (overlapping-experiments design, Tang et al. 2010): a user's bucket in a layer is a deterministic
hash of (layer, user_id) into 10,000 buckets; the layer's experiments take consecutive bucket ranges, as
large as their arms' shares add up to (at most 100% per layer), so a user is in at most one experiment per
layer. Within the experiment, a second hash of (salt, user_id) picks the arm in proportion to the shares.
The hashes are splitmix64 over the user id xor a blake2b digest of the text: the same on every replica, every
process and every request, and vectorized (numpy) for reports and tests.

Arm overrides (knobs; any other key is an error): ``ranker`` (``model``: the published ranker; ``recall_order``:
recall's merged order; ``random``: recalled candidates in random order, a deliberately worse arm),
``ranker_version`` (a version under WORKDIR/models, e.g. a candidate trained without --publish: the ranker
loads it beside the published one and the arm's users are ranked by it),
``recall_size`` (1..2000), ``recall_quotas`` ({channel: n}), ``rerank`` (false: top k by score). Two layers may
not override the same knob (their effects would not be separable).

A bad file (shares over 100%, an unknown knob or value, duplicate names, ...) is rejected with an error that
names the field; :class:`ExperimentsWatcher` keeps serving the previous configuration then.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from services.recall.logic import CHANNEL_PRIORITY
from starling.errors import StarlingError

log = logging.getLogger("starling.experiments")

BUCKETS = 10_000
KINDS = ("ab", "interleaving")
RANKER_MODES = ("model", "recall_order", "random")
MAX_RECALL_SIZE = 2000
MAX_EXPERIMENTS = 100
KNOBS = ("ranker", "ranker_version", "recall_size", "recall_quotas", "rerank")
VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
INTERLEAVED = "interleaved"  # the arm name an interleaving experiment reports for its users
DEFAULT_PATH = Path(__file__).resolve().parent.parent / "recommend" / "experiments.yaml"


class ExperimentsConfigError(StarlingError):
    """A bad experiments file; the message names the file and the field."""


@dataclass(frozen=True)
class Overrides:
    """Serving knobs an arm changes (None: the service's default)."""

    ranker: str | None = None
    ranker_version: str | None = None
    recall_size: int | None = None
    recall_quotas: Mapping[str, int] | None = None
    rerank: bool | None = None

    def knobs(self) -> set[str]:
        return {name for name in KNOBS if getattr(self, name) is not None}

    def merged(self, other: Overrides) -> Overrides:
        """These overrides with ``other``'s set knobs on top."""
        return Overrides(**{**self.__dict__, **{k: getattr(other, k) for k in other.knobs()}})


@dataclass(frozen=True)
class Arm:
    name: str
    share: float  # percent of the layer's users
    overrides: Overrides = field(default_factory=Overrides)


@dataclass(frozen=True)
class Experiment:
    name: str
    layer: str
    salt: str
    kind: str
    arms: tuple[Arm, ...]

    @property
    def traffic(self) -> float:
        return sum(arm.share for arm in self.arms)

    @property
    def arm_names(self) -> list[str]:
        return [arm.name for arm in self.arms]


@dataclass(frozen=True)
class ExperimentsConfig:
    experiments: tuple[Experiment, ...] = ()
    source: str = ""

    # Derived once per configuration (cached_property writes the instance dict, which a frozen dataclass
    # allows): requests read them on every Recommend.
    @cached_property
    def by_name(self) -> dict[str, Experiment]:
        return {e.name: e for e in self.experiments}

    @cached_property
    def layer_ranges(self) -> dict[str, list[tuple[Experiment, int, int]]]:
        """Per layer: (experiment, first bucket, end bucket) in file order."""
        ranges: dict[str, list[tuple[Experiment, int, int]]] = {}
        for experiment in self.experiments:
            taken = ranges.setdefault(experiment.layer, [])
            start = taken[-1][2] if taken else 0
            taken.append((experiment, start, start + round(experiment.traffic * BUCKETS / 100)))
        return ranges


# --------------------------------------------------------------------------------------------------- hashing
def _text_key(text: str) -> np.uint64:
    return np.uint64(int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little"))


def buckets(text: str, user_ids: np.ndarray | Sequence[int]) -> np.ndarray:
    """The bucket (0..9,999) of each user for a salt or layer name: splitmix64(user_id xor blake2b(text))."""
    x = np.asarray(user_ids, dtype=np.int64).astype(np.uint64) ^ _text_key(text)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x % np.uint64(BUCKETS)).astype(np.int64)


def arm_indices(config: ExperimentsConfig, name: str, user_ids: np.ndarray | Sequence[int]) -> np.ndarray:
    """For each user: the index of their arm in experiment ``name``, -1 when the user is not in it."""
    experiment = config.by_name[name]
    users = np.asarray(user_ids, dtype=np.int64)
    _, start, end = next(r for r in config.layer_ranges[experiment.layer] if r[0].name == name)
    layer_bucket = buckets(experiment.layer, users)
    inside = (layer_bucket >= start) & (layer_bucket < end)
    shares = np.array([arm.share for arm in experiment.arms], dtype=np.float64)
    edges = np.cumsum(shares) / shares.sum() * BUCKETS
    arm = np.searchsorted(edges, buckets(experiment.salt, users), side="right")
    return np.where(inside, np.minimum(arm, len(shares) - 1), -1)


def assign(
    config: ExperimentsConfig, user_id: int, forced: Mapping[str, str] | None = None
) -> list[tuple[Experiment, Arm | None]]:
    """The experiments serving ``user_id`` with their arm (None for interleaving: both arms serve);
    ``forced`` ({experiment: arm}, checked by :func:`checked_forced_arms`) overrides the hash."""
    forced = forced or {}
    chosen: list[tuple[Experiment, Arm | None]] = []
    for experiment in config.experiments:
        if experiment.name in forced:
            arm_name = forced[experiment.name]
            arm = next((a for a in experiment.arms if a.name == arm_name), None)
            chosen.append((experiment, None if arm_name == INTERLEAVED else arm))
            continue
        index = int(arm_indices(config, experiment.name, [user_id])[0])
        if index >= 0:
            chosen.append((experiment, None if experiment.kind == "interleaving" else experiment.arms[index]))
    return chosen


# --------------------------------------------------------------------------------------------------- parsing
def _fail(source: str, where: str, why: str) -> ExperimentsConfigError:
    return ExperimentsConfigError(f"{source}: {where}: {why}")


def parse_overrides(raw: Any, source: str, where: str, known_versions: set[str] | None = None) -> Overrides:
    if raw is None:
        return Overrides()
    if not isinstance(raw, dict):
        raise _fail(source, where, f"must be a mapping of knobs, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(KNOBS))
    if unknown:
        raise _fail(source, where, f"unknown knob(s) {unknown}; known: {', '.join(KNOBS)}")
    ranker = raw.get("ranker")
    if ranker is not None and ranker not in RANKER_MODES:
        raise _fail(source, f"{where}.ranker", f"{ranker!r} must be one of {', '.join(RANKER_MODES)}")
    version = raw.get("ranker_version")
    if version is not None:
        if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
            raise _fail(source, f"{where}.ranker_version", f"must be a model version name, got {version!r}")
        if known_versions is not None and version not in known_versions:
            known = ", ".join(sorted(known_versions)[-5:]) or "none"
            raise _fail(
                source,
                f"{where}.ranker_version",
                f"unknown model version {version!r} (latest known: {known})",
            )
        if ranker not in (None, "model"):
            raise _fail(source, f"{where}.ranker_version", f"needs ranker: model, not {ranker!r}")
    size = raw.get("recall_size")
    if size is not None and (
        isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_RECALL_SIZE
    ):
        raise _fail(source, f"{where}.recall_size", f"must be an integer 1..{MAX_RECALL_SIZE}, got {size!r}")
    quotas = raw.get("recall_quotas")
    if quotas is not None:
        if not isinstance(quotas, dict) or not quotas:
            raise _fail(source, f"{where}.recall_quotas", "must be a non-empty mapping {channel: count}")
        bad = sorted(set(quotas) - set(CHANNEL_PRIORITY))
        if bad:
            raise _fail(
                source,
                f"{where}.recall_quotas",
                f"unknown channel(s) {bad}; known: {', '.join(CHANNEL_PRIORITY)}",
            )
        for channel, count in quotas.items():
            if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_RECALL_SIZE:
                raise _fail(
                    source,
                    f"{where}.recall_quotas.{channel}",
                    f"must be an integer 0..{MAX_RECALL_SIZE}, got {count!r}",
                )
    rerank = raw.get("rerank")
    if rerank is not None and not isinstance(rerank, bool):
        raise _fail(source, f"{where}.rerank", f"must be true or false, got {rerank!r}")
    return Overrides(ranker, version, size, dict(quotas) if quotas else None, rerank)


def _text(raw: dict, key: str, source: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip() or len(value) > 100:
        raise _fail(
            source, f"{where}.{key}", f"must be a non-empty string of at most 100 characters, got {value!r}"
        )
    return value.strip()


def parse_config(
    raw: Any, source: str = "experiments", known_versions: set[str] | None = None
) -> ExperimentsConfig:
    """Validate a parsed YAML document; raise :class:`ExperimentsConfigError` naming the field.
    ``known_versions``: the model versions an arm may pin (None: not checked)."""
    if raw is None:
        return ExperimentsConfig((), source)
    if not isinstance(raw, dict) or set(raw) - {"experiments"}:
        raise _fail(source, "top level", "must be a mapping with the single key 'experiments'")
    items = raw.get("experiments") or []
    if not isinstance(items, list) or len(items) > MAX_EXPERIMENTS:
        raise _fail(source, "experiments", f"must be a list of at most {MAX_EXPERIMENTS} experiments")
    experiments: list[Experiment] = []
    for i, item in enumerate(items):
        where = f"experiments[{i}]"
        if not isinstance(item, dict):
            raise _fail(source, where, "must be a mapping")
        unknown = sorted(set(item) - {"name", "layer", "salt", "type", "arms"})
        if unknown:
            raise _fail(source, where, f"unknown key(s) {unknown}; expected name, layer, salt, type, arms")
        name = _text(item, "name", source, where)
        where = f"experiments[{i}] ({name})"
        kind = item.get("type", "ab")
        if kind not in KINDS:
            raise _fail(source, f"{where}.type", f"{kind!r} must be one of {', '.join(KINDS)}")
        arms_raw = item.get("arms")
        if not isinstance(arms_raw, list) or len(arms_raw) < 2:
            raise _fail(source, f"{where}.arms", "must be a list of at least two arms")
        if kind == "interleaving" and len(arms_raw) != 2:
            raise _fail(
                source,
                f"{where}.arms",
                f"an interleaving experiment has exactly two arms, got {len(arms_raw)}",
            )
        arms: list[Arm] = []
        for j, arm_raw in enumerate(arms_raw):
            arm_where = f"{where}.arms[{j}]"
            if not isinstance(arm_raw, dict) or set(arm_raw) - {"name", "share", "overrides"}:
                raise _fail(source, arm_where, "must be a mapping with name, share and optional overrides")
            arm_name = _text(arm_raw, "name", source, arm_where)
            if arm_name == INTERLEAVED:
                raise _fail(source, f"{arm_where}.name", f"{INTERLEAVED!r} is reserved")
            share = arm_raw.get("share")
            if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 100:
                raise _fail(source, f"{arm_where}.share", f"must be a percentage in (0, 100], got {share!r}")
            overrides = parse_overrides(
                arm_raw.get("overrides"), source, f"{arm_where}.overrides", known_versions
            )
            arms.append(Arm(arm_name, float(share), overrides))
        names = [a.name for a in arms]
        if len(set(names)) != len(names):
            raise _fail(
                source,
                f"{where}.arms",
                f"duplicate arm names {sorted(n for n in set(names) if names.count(n) > 1)}",
            )
        experiments.append(
            Experiment(
                name,
                _text(item, "layer", source, where),
                _text(item, "salt", source, where),
                kind,
                tuple(arms),
            )
        )
    names = [e.name for e in experiments]
    duplicates = sorted(n for n in set(names) if names.count(n) > 1)
    if duplicates:
        raise _fail(source, "experiments", f"duplicate experiment names {duplicates}")
    config = ExperimentsConfig(tuple(experiments), source)
    knob_layers: dict[str, str] = {}
    for layer, ranges in config.layer_ranges.items():
        total = sum(e.traffic for e, _, _ in ranges)
        if total > 100 + 1e-9:
            raise _fail(
                source, f"layer {layer!r}", f"its experiments' shares add up to {total:g}% (at most 100%)"
            )
        for experiment, _, _ in ranges:
            for arm in experiment.arms:
                for knob in arm.overrides.knobs():
                    other = knob_layers.setdefault(knob, layer)
                    if other != layer:
                        raise _fail(
                            source,
                            f"experiment {experiment.name!r}",
                            f"knob {knob!r} is overridden in layers {other!r} and {layer!r}; one layer owns a knob",
                        )
    return config


def model_versions(workdir: Path | None) -> set[str] | None:
    """The versions under WORKDIR/models (those with a manifest); None without a workdir."""
    if workdir is None:
        return None
    models = Path(workdir) / "models"
    return {p.parent.name for p in models.glob("*/manifest.json")} if models.is_dir() else set()


def pinned_versions(config: ExperimentsConfig) -> set[str]:
    """The model versions the experiments' arms pin (the ranker loads them)."""
    return {
        arm.overrides.ranker_version
        for experiment in config.experiments
        for arm in experiment.arms
        if arm.overrides.ranker_version
    }


def load_config(path: Path | None = None, workdir: Path | None = None) -> ExperimentsConfig:
    """Read and validate the experiments file (no file: no experiments); with ``workdir``, pinned model
    versions must exist under WORKDIR/models."""
    path = Path(path) if path else DEFAULT_PATH
    if not path.exists():
        return ExperimentsConfig((), str(path))
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ExperimentsConfigError(f"{path}: cannot read the experiments file: {exc}") from exc
    return parse_config(raw, str(path), model_versions(workdir))


class ExperimentsWatcher:
    """The current configuration of a file, re-read when it changes; a bad new version is logged and the
    previous configuration keeps serving (``last_error`` says why)."""

    def __init__(self, path: Path | None, workdir: Path | None = None) -> None:
        self.path = Path(path) if path else DEFAULT_PATH
        self.workdir = workdir
        self.config = load_config(self.path, workdir)  # a bad file at start: nothing to fall back to
        self.last_error: str | None = None
        self._stamp = self._signature()

    def _signature(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def poll(self) -> bool:
        """Re-read the file when it changed; True when a new configuration was taken."""
        stamp = self._signature()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            config = load_config(self.path, self.workdir)
        except ExperimentsConfigError as exc:
            self.last_error = str(exc)
            log.error(
                "experiments file rejected; the previous configuration keeps serving",
                extra={"error": str(exc)},
            )
            return False
        self.config, self.last_error = config, None
        log.info("experiments reloaded", extra={"experiments": [e.name for e in config.experiments]})
        return True
