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
