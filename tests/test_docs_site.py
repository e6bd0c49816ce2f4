"""The documentation site builds with `mkdocs build --strict`: a broken link or anchor in a page
fails the build, and the pages carry the generated references and the examples' code."""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Final

import yaml

REPO: Final = Path(__file__).resolve().parents[1]
MKDOCS: Final = Path(sys.executable).parent / "mkdocs"


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MKDOCS), "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def test_the_site_builds_strict_with_the_references_and_the_examples(tmp_path: Path) -> None:
    result = build(REPO / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr
    site = tmp_path / "site"
    settings = (site / "reference" / "settings" / "index.html").read_text()
    assert "<code>PIXELWATCH_BATCH_SIZE</code>" in settings
    cli = (site / "reference" / "cli" / "index.html").read_text()
    assert 'id="pixelwatch-worker"' in cli
    examples = (site / "examples" / "index.html").read_text()
    # Highlighted: each name is a token of its own.
    assert ">NewClient<" in examples and ">KafkaProducer<" in examples
    assert not (site / "generate.py").exists()  # the generator is not published
    home = (site / "index.html").read_text()  # the site's root is a page, not a 404
    assert 'href="reference/settings/"' in home and 'src="anomaly-page.png"' in home


def test_a_broken_anchor_fails_the_strict_build(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(REPO / "docs", docs)
    page = docs / "examples.md"
    broken = "\nSee [the settings](reference/settings.md#no-such-part).\n"
    page.write_text(page.read_text() + broken)
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    config["docs_dir"] = str(docs)
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    result = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-part" in result.stderr
