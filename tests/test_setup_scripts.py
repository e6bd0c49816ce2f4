"""deploy/*-setup.sh and prereqs.sh: what `make test` runs before anything else on a new machine."""

import os
import shutil
import subprocess
from pathlib import Path
from typing import Final

import pytest

from worker_harness import REPO

# Each script, and a package its error line names when the tools it checks are missing.
# browser-setup.sh checks fixed paths (/usr/bin/chromium: the tests drive exactly those), so a
# PATH cannot hide them; it has the same one-line shape through deploy/apt-install.sh.
MISSING: Final = {
    "prereqs.sh": "openjdk-17-jre-headless",
    "prometheus-setup.sh": "prometheus",
    "podman-setup.sh": "podman",
}
SCRIPTS: Final = [*MISSING, "browser-setup.sh", "jaeger-setup.sh"]


def run_without_tools(script: str, bin_dir: Path, uid: int) -> subprocess.CompletedProcess[str]:
    """`script` on a PATH holding only what the scripts themselves use, as user `uid`."""
    bin_dir.mkdir(exist_ok=True)
    for tool in ("dirname",):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    (bin_dir / "id").chmod(0o755)
    return subprocess.run(
        ["/bin/bash", str(REPO / "deploy" / script)],
        env={"PATH": str(bin_dir), "HOME": os.environ.get("HOME", "/")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("script", sorted(MISSING))
def test_a_missing_prerequisite_without_root_is_one_line_naming_the_packages(
    script: str, tmp_path: Path
) -> None:
    done = run_without_tools(script, tmp_path / "bin", uid=1000)
    assert done.returncode == 1, done.stdout + done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("error: ") and MISSING[script] in line, line


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_present_prerequisites_pass_without_output(script: str) -> None:
    # `make test` has just run these on this machine, so everything they check is here.
    done = subprocess.run(
        ["bash", str(REPO / "deploy" / script)], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def run_apt_get(tmp_path: Path, fake: str) -> subprocess.CompletedProcess[str]:
    """deploy/apt-install.sh's `apt_get update` against a stand-in apt-get (`fake`, a shell
    script body), retrying without delay."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text(f"#!/bin/sh\n{fake}\n")
    (bin_dir / "apt-get").chmod(0o755)
    script = f'source "{REPO}/deploy/apt-install.sh"; apt_get update -qq && echo done'
    return subprocess.run(
        ["/bin/bash", "-c", script],
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "APT_RETRY_SECONDS": "0"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_apt_waits_while_another_apt_holds_its_lock(tmp_path: Path) -> None:
    # Busy twice (as apt-get update says when another apt runs), then free.
    busy = (
        'n=$(cat tries 2>/dev/null || echo 0); echo $((n + 1)) > tries; [ "$n" -ge 2 ] && exit 0\n'
        "echo 'E: Could not get lock /var/lib/apt/lists/lock. It is held by process 7 (apt-get)'"
        " >&2; exit 100"
    )
    done = run_apt_get(tmp_path, busy)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "done\n"
    assert (tmp_path / "tries").read_text().strip() == "3"
    assert done.stderr == "apt is busy (another apt holds its lock); waiting…\n"


def test_any_other_apt_failure_is_reported_at_once_in_apts_words(tmp_path: Path) -> None:
    failing = "echo tried >> tries; echo 'E: Unable to locate package nope' >&2; exit 100"
    failed = run_apt_get(tmp_path, failing)
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert failed.stderr == "E: Unable to locate package nope\n"
    assert (tmp_path / "tries").read_text() == "tried\n"
