"""The generated documentation pages are what docs/generate.py renders from the code now: the
command line, settings and messages references, and the examples page's code blocks."""

import importlib.util
import shutil
from pathlib import Path
from typing import Any, Final

import pytest

from service.config import Settings
from service.schemas import HEADERS, ImageMessage

REPO: Final = Path(__file__).resolve().parents[1]
DOCS: Final = REPO / "docs"


def generator() -> Any:
    """docs/generate.py, which is a script rather than part of a package."""
    spec = importlib.util.spec_from_file_location("pixelwatch_docs", DOCS / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_generated_pages_are_current() -> None:
    docs = generator()
    pages = docs.render_all()
    assert set(pages) == {
        DOCS / "reference" / "cli.md",
        DOCS / "reference" / "settings.md",
        DOCS / "reference" / "messages.md",
        DOCS / "examples.md",
    }
    outdated = [str(p.relative_to(REPO)) for p in docs.stale(pages)]
    assert outdated == [], f"stale: {outdated}; run `make reference`"


def test_a_changed_setting_description_makes_the_settings_page_stale(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = generator()
    page = DOCS / "reference" / "settings.md"
    assert docs.stale({page: docs.render_settings()}) == []
    field = Settings.model_fields["batch_window"]
    monkeypatch.setattr(field, "description", "seconds to wait before giving up")
    rendered = docs.render_settings()
    assert "seconds to wait before giving up" in rendered
    assert docs.stale({page: rendered}) == [page]


def test_a_changed_command_help_makes_the_cli_page_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = generator()
    page = DOCS / "reference" / "cli.md"
    monkeypatch.setitem(docs.SUBCOMMANDS, "dlq", ("service.cli.dlq", "send dead letters back"))
    rendered = docs.render_cli()
    assert "| send dead letters back |" in rendered
    assert docs.stale({page: rendered}) == [page]


def test_a_changed_schema_makes_the_messages_page_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = generator()
    page = DOCS / "reference" / "messages.md"
    monkeypatch.setattr(ImageMessage, "__doc__", "A picture.")
    assert docs.stale({page: docs.render_messages()}) == [page]


def test_a_changed_example_file_makes_the_examples_page_stale(tmp_path: Path) -> None:
    docs = generator()
    page = DOCS / "examples.md"
    copy = tmp_path / "docs"
    shutil.copytree(DOCS / "examples", copy / "examples")
    script = copy / "examples" / "kcat" / "produce.sh"
    script.write_text(script.read_text().replace("localhost:9092", "kafka:9092"))
    rendered = docs.render_examples(page.read_text(), copy)
    assert "kafka:9092" in rendered
    assert docs.stale({page: rendered}) == [page]


def test_the_examples_page_quotes_every_example_file() -> None:
    docs = generator()
    quoted = set(docs.examples_quoted((DOCS / "examples.md").read_text()))
    files = {
        str(p.relative_to(DOCS))
        for p in (DOCS / "examples").rglob("*")
        if p.is_file() and p.name != "go.sum"  # go.sum holds checksums, nothing to read
    }
    assert quoted == files


def test_every_setting_and_command_is_in_the_references() -> None:
    docs = generator()
    settings, cli, messages = docs.render_settings(), docs.render_cli(), docs.render_messages()
    for name, field in Settings.model_fields.items():
        assert f"<code>PIXELWATCH_{name.upper()}</code>" in settings, name
        assert field.description, f"setting {name} has no description"
    for command in docs.SUBCOMMANDS:
        assert f"## `pixelwatch {command}`" in cli, command
    for header in HEADERS:
        assert f"<code>{header}</code>" in messages
