"""deploy/Dockerfile and .dockerignore: linted, and read for what each image installs and runs.

No Docker engine runs here, so the images are checked through their build file: hadolint, the
worker stage's install steps (no torch, no train extra, no compiler), the dependency split the
`requirements` stage writes (executed on the real pyproject.toml), users and layer order.
"""

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Final

import pytest

from worker_harness import DOCKERFILE, REPO, Dockerfile, Instruction, parse_dockerfile

HADOLINT: Final = Path(sys.executable).parent / "hadolint"
# The worker image gets none of these (Pillow reads image files; the worker never does).
TRAIN_PACKAGES: Final = ("torch", "onnx", "onnxscript", "matplotlib", "scikit-learn", "pillow")
COMPILERS: Final = ("gcc", "g++", "cc ", "clang", "build-essential", "cmake", "make ", "gfortran")
PACKAGE_MANAGERS: Final = ("apt-get", "apt ", "aptitude", "dpkg -i", "apk ", "yum", "dnf")
USER_ID: Final = "10001"


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile()


def pyproject() -> dict[str, object]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert isinstance(project, dict)
    return project


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert match, requirement
    return match.group(0).lower().replace("_", "-")


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    # -t style: any finding at all fails, so every exception must be an inline ignore.
    command = [str(HADOLINT), "--no-color", "--failure-threshold", "style", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_hadolint_reports_nothing() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_fails_on_a_flawed_dockerfile(tmp_path: Path) -> None:
    """The lint run above is not vacuous: the same invocation rejects the usual mistakes."""
    flawed = tmp_path / "Dockerfile"
    flawed.write_text(
        "FROM python:latest\nRUN apt-get update && apt-get install -y gcc\nRUN pip install torch\n"
    )
    result = hadolint(flawed)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3013"):
        assert rule in result.stdout, result.stdout


def test_every_hadolint_exception_is_justified_inline() -> None:
    for number, line in enumerate(DOCKERFILE.read_text().splitlines(), 1):
        match = re.search(r"hadolint\s+ignore=(\S+)(.*)", line)
        if match:
            codes, reason = match.groups()
            assert re.fullmatch(r"((DL|SC)\d{4},?)+", codes), f"line {number}: {line}"
            assert len(reason.strip(" #:-—")) >= 10, f"line {number} gives no reason: {line}"


def test_worker_is_the_default_target_and_builds_on_the_shared_base(dockerfile: Dockerfile) -> None:
    assert dockerfile.stages[-1].name == "worker"  # `docker build` without --target
    assert [s.name for s in dockerfile.chain("worker")] == ["base", "worker"]
    assert [s.name for s in dockerfile.chain("trainer")] == ["base", "trainer"]
    assert [s.name for s in dockerfile.chain("model")] == ["base", "model"]


def test_base_image_is_a_pinned_python_311_slim_bookworm(dockerfile: Dockerfile) -> None:
    image = dockerfile.args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", image), image
    names = {s.name for s in dockerfile.stages}
    for stage in dockerfile.stages:
        assert stage.base in names | {"${PYTHON_IMAGE}", "scratch"}, stage


def worker_runs(dockerfile: Dockerfile) -> list[Instruction]:
    return [i for stage in dockerfile.chain("worker") for i in stage.find("RUN")]


def test_worker_image_installs_no_torch_no_train_extra_and_no_compiler(
    dockerfile: Dockerfile,
) -> None:
    runs = worker_runs(dockerfile)
    installs = [r for r in runs if "pip install" in r.body]
    assert len(installs) == 2, installs  # the runtime dependencies, then the package
    for run in runs:
        text = f"{run.value} ".lower()
        assert "torch" not in text and "train" not in text, f"line {run.line}: {run.value}"
        for tool in COMPILERS + PACKAGE_MANAGERS:
            assert tool not in text, f"line {run.line} installs or runs {tool.strip()!r}"
    dependencies, package = installs
    # The dependency step sees only the worker list: its single bind mount is worker.txt.
    assert [m for m in dependencies.flags["mount"] if "type=bind" in m] == [
        "type=bind,from=requirements,source=/requirements/worker.txt,target=/tmp/worker.txt"
    ]
    assert dependencies.body == "pip install -r /tmp/worker.txt"
    # The package alone: no extras, no dependency resolution that could reach for them.
    assert "--no-deps" in package.body.split() and "[" not in package.body
    assert re.search(r"/tmp/wheels/pixelwatch-\*\.whl$", package.body), package.body


def test_trainer_image_installs_the_train_extra_with_cpu_torch(dockerfile: Dockerfile) -> None:
    runs = " ".join(r.value for r in dockerfile.stage("trainer").find("RUN"))
    for requirements in ("torch.txt", "worker.txt", "train.txt"):
        assert f"/tmp/requirements/{requirements}" in runs
    args = [a.value for a in dockerfile.stage("trainer").find("ARG")]
    assert args == ["PIP_CERT", "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu"], args
    assert '--index-url "${TORCH_INDEX_URL}"' in runs


def test_pip_cert_is_a_build_argument_without_a_default_in_every_stage_that_runs_pip(
    dockerfile: Dockerfile,
) -> None:
    # Unset unless given (deploy/image.sh gives it with the CA bundle it mounts): an ENV, or a
    # default, would carry a build machine's path into every container.
    for stage in dockerfile.stages:
        if any("pip " in r.value for r in stage.find("RUN")):
            assert "PIP_CERT" in [a.value for a in stage.find("ARG")], stage.name
    assert not any("PIP_CERT" in e.value for s in dockerfile.stages for e in s.find("ENV"))


def test_requirements_stage_splits_pyproject_into_worker_torch_and_train_lists(
    dockerfile: Dockerfile, tmp_path: Path
) -> None:
    """Runs the stage's own RUN step on the real pyproject.toml."""
    stage = dockerfile.stage("requirements")
    assert [c.value for c in stage.find("COPY")] == ["pyproject.toml ./"]  # no code: cacheable
    [run] = stage.find("RUN")
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}  # `python` is 3.11+
    result = subprocess.run(
        run.argv(), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr

    def read(name: str) -> list[str]:
        return (tmp_path / name).read_text().splitlines()

    project = pyproject()
    extras = project["optional-dependencies"]
    assert isinstance(extras, dict)
    assert read("worker.txt") == project["dependencies"]
    assert read("torch.txt") + read("train.txt") == sorted(
        extras["train"], key=lambda r: requirement_name(r) != "torch"
    )
    assert [requirement_name(r) for r in read("torch.txt")] == ["torch"]
    worker_names = {requirement_name(r) for r in read("worker.txt")}
    assert worker_names.isdisjoint(TRAIN_PACKAGES), worker_names
    assert "onnxruntime" in worker_names


def test_dependency_layers_come_before_the_code(dockerfile: Dockerfile) -> None:
    for target in ("worker", "trainer"):
        runs = dockerfile.stage(target).find("RUN")
        mounts = [" ".join(r.flags.get("mount", [])) for r in runs]
        dependencies = next(i for i, m in enumerate(mounts) if "from=requirements" in m)
        package = next(i for i, m in enumerate(mounts) if "from=wheel" in m)
        assert dependencies < package, target
    # The code enters the build in the wheel stage only.
    for stage in dockerfile.stages:
        for copy in stage.find("COPY"):
            if "from" not in copy.flags and re.search(r"\b(service|model_export)\b", copy.body):
                code = copy.body.split()[0]
                assert stage.name == "wheel" or code.startswith("service/samples/"), copy


def test_images_run_as_an_unprivileged_user_that_owns_the_model_and_state_dirs(
    dockerfile: Dockerfile,
) -> None:
    for target in ("worker", "trainer", "model"):
        assert dockerfile.image(target, {}).user == f"{USER_ID}:{USER_ID}", target
    [create] = dockerfile.stage("base").find("RUN")
    assert f"useradd --system --uid {USER_ID}" in create.value
    assert f"install -d -o {USER_ID} -g {USER_ID}" in create.value
    assert "/models" in create.value and "/var/lib/pixelwatch" in create.value
    [model_copy] = dockerfile.stage("model").find("COPY")
    assert model_copy.flags["chown"] == [f"{USER_ID}:{USER_ID}"]


def test_worker_image_defaults_and_healthcheck(dockerfile: Dockerfile) -> None:
    image = dockerfile.image("worker", {})
    assert image.entrypoint == ["pixelwatch"] and image.cmd == ["worker"]
    assert image.env["PIXELWATCH_MODEL"] == "/models/model.onnx"
    assert image.env["PIXELWATCH_METRICS_PORT"] == "6066"
    [expose] = dockerfile.stage("worker").find("EXPOSE")
    assert expose.value == image.env["PIXELWATCH_METRICS_PORT"]
    # Slim images have no curl: the check is Python's urllib against /healthz on the port
    # the worker serves (its environment, so an override of the port is followed).
    assert image.healthcheck is not None
    program, flag, code = image.healthcheck
    assert (program, flag) == ("python", "-c")
    assert "urllib.request.urlopen(" in code and "+ '/healthz'" in code
    assert "os.environ.get('PIXELWATCH_METRICS_PORT', '6066')" in code
    [check] = dockerfile.stage("worker").find("HEALTHCHECK")
    assert set(check.flags) == {"interval", "timeout", "start-period", "retries"}


def test_model_image_holds_the_model_where_the_init_container_copies_it_from(
    dockerfile: Dockerfile,
) -> None:
    [copy] = dockerfile.stage("model").find("COPY")
    assert copy.flags["from"] == ["trained-model"]
    assert copy.body == "/model.onnx /models/model.onnx"
    trained = dockerfile.stage("trained-model")
    assert trained.base == "scratch"  # replaceable by `--build-context trained-model=DIR`
    assert [c.body for c in trained.find("COPY")] == ["/models/model.onnx /model.onnx"]
    [train] = dockerfile.stage("seed-model").find("RUN")
    assert train.body.startswith("pixelwatch train --data /opt/pixelwatch/samples/seed_train.txt")
    assert "--out /models/model.onnx" in train.body


# ---- .dockerignore ---------------------------------------------------------------------------


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        options = [pattern, pattern.removeprefix("**/")]
        if any(fnmatch.fnmatchcase(c, p) for c in candidates for p in options):
            excluded = not negated
    return excluded


def test_dockerignore_sends_what_the_build_copies_and_nothing_else(
    dockerfile: Dockerfile,
) -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    copied: list[str] = []
    for stage in dockerfile.stages:
        for copy in stage.find("COPY"):
            if "from" not in copy.flags:
                copied += [s for s in copy.body.split()[:-1] if "*" not in s]
    assert "pyproject.toml" in copied and "service" in copied
    for source in copied:
        root = REPO / source
        files = [root] if root.is_file() else sorted(root.rglob("*.py"))
        assert files, source
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            assert not dockerignore_excludes(relative, patterns), f"{relative} is ignored"
    assert not dockerignore_excludes("README.md", patterns)  # COPY README.md* (optional)
    for unwanted in (
        ".venv/bin/python", ".git/HEAD", "artifacts/seed.onnx", ".kafka/data/x", "tests/x.py",
        "deploy/k8s/deployment.yaml", "service/__pycache__/app.cpython-311.pyc", ".env",
    ):  # fmt: skip
        assert dockerignore_excludes(unwanted, patterns), f"{unwanted} would be sent"
