"""The container images, checked statically (no Docker engine here): docker/Dockerfile.services (gRPC services,
CPU torch) and docker/Dockerfile.ranker (KServe ranker and training Jobs, CUDA torch). Pinned base images,
multi-stage with no build tools in the final stage, a numeric non-root USER, dependencies from
requirements.lock, every CMD module present in the source the image copies, and a .dockerignore that keeps
the context to exactly that source."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from starling.config import REPO_ROOT

DOCKERFILES = {
    "services": REPO_ROOT / "docker" / "Dockerfile.services",
    "ranker": REPO_ROOT / "docker" / "Dockerfile.ranker",
}
BUILD_TOOLS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|cmake|cython|python3?-dev|libc6-dev)\b")
# An exact version tag (3.11.13-slim-bookworm) or a digest; floating tags (3.11-slim, latest) are rejected.
PINNED_IMAGE = re.compile(r"^[\w./-]+(:\d+\.\d+\.\d+[\w.-]*)?(@sha256:[0-9a-f]{64})?$")


@dataclass
class Instruction:
    keyword: str
    arguments: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile; joins continuation lines, drops comments."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    logical, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if logical and stripped.startswith("#"):
            continue
        if not logical:
            start = number
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, arguments = logical.partition(" ")
        keyword, arguments, logical = keyword.upper(), arguments.strip(), ""
        if keyword == "FROM":
            words = arguments.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name, start))
        elif not stages and keyword == "ARG":
            arg, _, default = arguments.partition("=")
            global_args[arg] = default
        else:
            if not stages:
                raise AssertionError(f"{path}:{start}: {keyword} before the first FROM")
            stages[-1].instructions.append(Instruction(keyword, arguments, start))
    return global_args, stages


def exec_form(instruction: Instruction, path: Path) -> list[str]:
    try:
        words = json.loads(instruction.arguments)
    except json.JSONDecodeError as exc:
        raise AssertionError(
            f"{path}:{instruction.line}: use the exec (JSON) form, not a shell string"
        ) from exc
    assert isinstance(words, list) and all(isinstance(w, str) for w in words), f"{path}:{instruction.line}"
    return words


def module_file(module: str) -> Path | None:
    """The source file `python -m module` would run, or None."""
    base = REPO_ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__main__.py"):
        if candidate.is_file():
            return candidate
    return None


@pytest.fixture(params=sorted(DOCKERFILES), scope="module")
def dockerfile(request: pytest.FixtureRequest) -> tuple[str, Path, dict[str, str], list[Stage]]:
    path = DOCKERFILES[request.param]
    global_args, stages = parse_dockerfile(path)
    return request.param, path, global_args, stages


def test_base_images_are_pinned(dockerfile) -> None:
    _, path, global_args, stages = dockerfile
    names = {stage.name for stage in stages if stage.name}
    for stage in stages:
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), stage.base)
        if image in names:
            continue
        assert "$" not in image, f"{path}:{stage.line}: unresolved ARG in FROM {stage.base}"
        assert ":" in image.split("/")[-1] or "@sha256:" in image, f"{path}:{stage.line}: {image} has no tag"
        assert PINNED_IMAGE.match(image), f"{path}:{stage.line}: {image} is not pinned to a version or digest"


def test_multi_stage_without_build_tools_in_the_final_stage(dockerfile) -> None:
    _, path, _, stages = dockerfile
    assert len(stages) >= 2, f"{path}: expected a builder stage and a runtime stage"
    builder, final = stages[0], stages[-1]
    assert any(BUILD_TOOLS.search(run.arguments) for run in builder.all("RUN")), "builder compiles wheels"
    for run in final.all("RUN"):
        assert not BUILD_TOOLS.search(run.arguments), f"{path}:{run.line}: build tool in the final stage"
    copied = [c.arguments for c in final.all("COPY") if c.arguments.startswith(f"--from={builder.name}")]
    assert any("/opt/venv" in c for c in copied), (
        f"{path}: the final stage must copy the venv from the builder"
    )


def test_final_stage_runs_as_numeric_non_root_user(dockerfile) -> None:
    _, path, _, stages = dockerfile
    users = stages[-1].all("USER")
    assert users, f"{path}: the final stage sets no USER"
    uid, _, gid = users[-1].arguments.partition(":")
    assert uid.isdigit() and int(uid) > 0, f"{path}:{users[-1].line}: USER {users[-1].arguments}"
    assert not gid or (gid.isdigit() and int(gid) > 0), f"{path}:{users[-1].line}: group must be numeric"
    after_user = stages[-1].instructions[stages[-1].instructions.index(users[-1]) :]
    assert not [i for i in after_user if i.keyword == "RUN"], f"{path}: RUN after USER"


def test_dependencies_come_from_requirements_lock(dockerfile) -> None:
    kind, path, _, stages = dockerfile
    builder = stages[0]
    copies = " ".join(c.arguments for c in builder.all("COPY"))
    assert "requirements.lock" in copies, f"{path}: requirements.lock is not copied"
    runs = [shlex.split(r.arguments) for r in builder.all("RUN")]
    installs = [words for words in runs if "pip" in words and "install" in words]
    assert any(
        "-r" in words and words[words.index("-r") + 1].endswith("requirements.lock") for words in installs
    )
    torch_lock = next(
        line
        for line in (REPO_ROOT / "requirements.lock").read_text().splitlines()
        if line.startswith("torch==")
    )
    torch_runs = " ".join(r.arguments for r in builder.all("RUN") if "download.pytorch.org" in r.arguments)
    assert torch_lock in torch_runs, f"{path}: torch must be installed at the locked version {torch_lock}"
    if kind == "services":
        assert "download.pytorch.org/whl/cpu" in torch_runs
    else:
        variant = next(a.arguments for a in builder.all("ARG") if a.arguments.startswith("TORCH_VARIANT="))
        assert re.fullmatch(r"TORCH_VARIANT=cu\d{3}", variant), f"{path}: default must be a CUDA build"
        assert "download.pytorch.org/whl/${TORCH_VARIANT}" in torch_runs


def test_cmd_modules_exist_and_are_copied(dockerfile) -> None:
    kind, path, _, stages = dockerfile
    final = stages[-1]
    commands = final.all("CMD") + final.all("ENTRYPOINT")
    assert commands, f"{path}: no CMD/ENTRYPOINT"
    copied_dirs = {
        c.arguments.split()[0].strip("/") for c in stages[0].all("COPY") if not c.arguments.startswith("--")
    }
    for instruction in commands:
        words = exec_form(instruction, path)
        assert words[:2] == ["python", "-m"], f"{path}:{instruction.line}: run modules with python -m"
        module = words[2]
        assert module_file(module), f"{path}:{instruction.line}: module {module} not found in the repository"
        assert module.split(".")[0] in copied_dirs, f"{path}: {module} is not copied into the image"
    assert json.loads(commands[-1].arguments)[2] == (
        "services.recommend.server" if kind == "services" else "services.ranker.server"
    )
    env = " ".join(e.arguments for e in final.all("ENV"))
    for setting in ("PYTHONPATH=/app", "STARLING_HOST=0.0.0.0", "HOME=/tmp", "STARLING_FEATURE_REPO=/app/"):
        assert setting in env, f"{path}: ENV {setting} missing"
    assert "feature_repo" in copied_dirs, "the ranker reads the Feast repo definitions"


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, regex) per .dockerignore line, in Docker's semantics: `*` stays within one path segment,
    `**` spans segments, a pattern also matches everything below a matched directory, `!` re-includes."""
    rules = []
    for line in (REPO_ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        for part in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
            regex += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        rules.append((not include, re.compile(rf"^{regex}(/.*)?$")))
    return rules


def is_ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    ignored = False
    for excludes, regex in rules:
        if regex.match(relative):
            ignored = excludes
    return ignored


def test_dockerignore_keeps_the_context_to_the_copied_sources() -> None:
    rules = _dockerignore_rules()
    for needed in (
        "requirements.lock",
        "pyproject.toml",
        "starling/config.py",
        "services/recommend/server.py",
        "services/rerank/rules.yaml",
        "training/train.py",
        "feature_repo/definitions.py",
    ):
        assert not is_ignored(needed, rules), f".dockerignore drops {needed}, which an image copies"
    for unwanted in (
        ".venv/bin/python",
        ".git/HEAD",
        "work/ratings.parquet",
        ".tools/bin/helm",
        "tests/conftest.py",
        "services/__pycache__/bench.cpython-311.pyc",
        "feature_repo/data/registry.db",
    ):
        assert is_ignored(unwanted, rules), f".dockerignore lets {unwanted} into the build context"
    for path in DOCKERFILES.values():
        for stage in parse_dockerfile(path)[1]:
            for copy in stage.all("COPY"):
                if copy.arguments.startswith("--"):
                    continue
                source = copy.arguments.split()[0].strip("/")
                assert (REPO_ROOT / source).exists(), f"{path}:{copy.line}: COPY {source} does not exist"
                assert not is_ignored(source, rules), f"{path}:{copy.line}: {source} is in .dockerignore"
