"""The documentation points somewhere: every setting and command is in the generated references,
every file the deployment files cite exists, every link between the documents finds its
heading, and the README stays short with every figure naming the results file it comes from."""

import re
import subprocess
from pathlib import Path
from typing import Final

import pytest

from service.cli import SUBCOMMANDS
from service.config import OTHER_VARIABLES, Settings

REPO: Final = Path(__file__).resolve().parents[1]
README: Final = REPO / "README.md"
DOCS: Final = [README, *sorted((REPO / "docs").rglob("*.md"))]
README_MAX_LINES: Final = 200

# The results files the README quotes, each with the make command that writes it.
RESULTS_FILES: Final = {
    "bench-results/bench.json": "make bench",
    "chaos-results/chaos.json": "make chaos",
    "artifacts/eval-digits-defaults-2/results.json": (
        "make eval-digits DIGITS_OUT=artifacts/eval-digits-defaults-2"
    ),
}


def anchors(path: Path) -> set[str]:
    """Heading anchors (with -1, -2 for repeats; GitHub's and mkdocs' agree on these headings)
    and explicit <a id>s."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    found: set[str] = set(re.findall(r'<a id="([^"]+)"></a>', text))
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.MULTILINE):
        heading = re.sub(r"<a id=\"[^\"]+\"></a>", "", heading)
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        found.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return found


def test_every_setting_is_in_the_generated_settings_reference() -> None:
    reference = (REPO / "docs" / "reference" / "settings.md").read_text()
    for name in Settings.model_fields:
        assert f"<code>PIXELWATCH_{name.upper()}</code>" in reference, name
    for variable in OTHER_VARIABLES:
        assert f"<code>{variable}</code>" in reference, variable


def test_every_command_is_in_the_generated_command_reference() -> None:
    reference = (REPO / "docs" / "reference" / "cli.md").read_text()
    for command in SUBCOMMANDS:
        assert f"\n## `pixelwatch {command}`\n" in reference, command


def test_files_the_deployment_files_cite_exist() -> None:
    sources = [REPO / "docker-compose.yml", *(REPO / "deploy").rglob("*.y*ml")]
    cited = 0
    for source in sources:
        for path in re.findall(r"(?:deploy|docs)/[\w/.-]+\.md", source.read_text()):
            assert (REPO / path).is_file(), f"{source.name} cites {path}"
            cited += 1
    assert cited >= 5


@pytest.mark.parametrize("document", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_links_between_the_documents_find_their_headings(document: Path) -> None:
    links = re.findall(r"\]\(([^)#\s:]*\.md)?(#[\w-]+)?\)", document.read_text())
    for target, anchor in links:
        if not target and not anchor:
            continue
        path = (document.parent / target).resolve() if target else document
        assert path.is_file(), f"{document.name} links to {target}"
        if anchor:
            assert anchor[1:] in anchors(path), f"{document.name} links to {target}{anchor}"


def test_the_readme_links_every_page_of_the_site() -> None:
    readme = README.read_text()
    for page in sorted((REPO / "docs").rglob("*.md")):
        if page.name != "index.md":  # the site's home page, which says what the README says
            assert f"]({page.relative_to(REPO)})" in readme, page


def test_the_readme_has_at_most_200_lines() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


def measured_section() -> tuple[str, str]:
    """The README's "Measured" section, and the rest of the README."""
    text = README.read_text()
    start = text.index("\n## Measured\n")
    end = text.index("\n## ", start + 1)
    return text[start:end], text[:start] + text[end:]


def test_each_readme_figure_names_its_results_file_and_the_make_target_that_writes_it() -> None:
    section, elsewhere = measured_section()
    figures = [" ".join(b.split()) for b in re.split(r"\n- ", section)[1:]]
    assert [f.split("**")[1] for f in figures] == [
        "Throughput",
        "Fault tolerance",
        "Detection quality",
    ]
    cited = []
    for figure in figures:
        assert re.search(r"\d", figure), figure
        [results_file] = [f for f in RESULTS_FILES if f"`{f}`" in figure]
        assert f"`{RESULTS_FILES[results_file]}" in figure, (figure, RESULTS_FILES[results_file])
        cited.append(results_file)
    assert sorted(cited) == sorted(RESULTS_FILES)
    # Only the figures in this section: elsewhere the README states no measurement.
    measurement = r"\d[\d,.]* ?(?:messages/s|images/s|ms\b|s of failover|duplicates)|AUROC \d"
    assert not re.search(measurement, elsewhere)


@pytest.mark.parametrize("results_file", RESULTS_FILES)
def test_the_make_target_a_readme_figure_names_writes_its_results_file(results_file: str) -> None:
    """`make -n` shows what the target runs; that program's default output path, or the
    directory the command passes it, is the results file's."""
    words = RESULTS_FILES[results_file].split()
    dry = subprocess.run(
        ["make", "--no-print-directory", "-n", *words[1:]],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()[-1]
    directory, name = results_file.rsplit("/", 1)
    if "-m " in dry:
        module = dry.split("-m ", 1)[1].split()[0].replace(".", "/")
        base = REPO / "tests" if dry.startswith("PYTHONPATH=tests") else REPO
        candidates = [base / f"{module}.py", *sorted((base / module).glob("*.py"))]
    else:
        candidates = [REPO / dry.split()[1]]
    program = "".join(p.read_text() for p in candidates if p.is_file())
    assert f'"{name}"' in program, (dry, name)
    parts = directory.split("/")
    assert f"--out {directory}" in dry or all(f'"{part}"' in program for part in parts), dry
