"""The documentation points somewhere: every setting and command is documented, every file the
deployment files cite exists, and every link between the documents finds its heading."""

import re
from pathlib import Path
from typing import Final

import pytest

from service.cli import SUBCOMMANDS
from service.config import OTHER_VARIABLES, Settings

REPO: Final = Path(__file__).resolve().parents[1]
DOCS: Final = [
    REPO / "README.md",
    REPO / "deploy" / "DEPLOYMENT.md",
    REPO / "deploy" / "OPERATIONS.md",
]


def section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    level = heading.split(" ")[0]
    end = re.search(rf"\n{level} ", text[start + len(heading) + 2 :])
    return text[start : start + len(heading) + 2 + end.start()] if end else text[start:]


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors (with -1, -2 for repeats) and explicit <a id>s."""
    text = path.read_text()
    found: set[str] = set(re.findall(r'<a id="([^"]+)"></a>', text))
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.MULTILINE):
        heading = re.sub(r"<a id=\"[^\"]+\"></a>", "", heading)
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        found.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return found


def test_every_setting_is_in_the_readme_settings_table() -> None:
    table = section((REPO / "README.md").read_text(), "### Settings")
    for name in Settings.model_fields:
        variable = f"PIXELWATCH_{name.upper()}"
        suffix = f"`_{name.upper()}`"
        assert f"`{variable}`" in table or suffix in table, variable
    for variable in OTHER_VARIABLES:
        assert variable in (REPO / "README.md").read_text(), variable


def test_every_command_is_in_the_readme_command_table() -> None:
    table = section((REPO / "README.md").read_text(), "## The command line")
    for command in SUBCOMMANDS:
        assert f"| `pixelwatch {command}" in table, command


def test_files_the_deployment_files_cite_exist() -> None:
    sources = [REPO / "docker-compose.yml", *(REPO / "deploy").rglob("*.y*ml")]
    cited = 0
    for source in sources:
        for path in re.findall(r"deploy/[\w/.-]+\.md", source.read_text()):
            assert (REPO / path).is_file(), f"{source.name} cites {path}"
            cited += 1
    assert cited >= 5


@pytest.mark.parametrize("document", DOCS, ids=lambda p: p.name)
def test_links_between_the_documents_find_their_headings(document: Path) -> None:
    links = re.findall(r"\]\(([^)#\s]*\.md)?(#[\w-]+)?\)", document.read_text())
    checked = 0
    for target, anchor in links:
        if not target and not anchor:
            continue
        path = (document.parent / target).resolve() if target else document
        assert path.is_file(), f"{document.name} links to {target}"
        if anchor:
            assert anchor[1:] in anchors(path), f"{document.name} links to {target}{anchor}"
        checked += 1
    assert checked > 0
