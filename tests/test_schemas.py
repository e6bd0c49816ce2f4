"""The published JSON Schemas match the pydantic models that enforce them."""

from pathlib import Path

from service.schemas import render_schemas

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "deploy" / "schemas"


def test_deploy_schemas_are_generated_from_the_models() -> None:
    for name, text in render_schemas().items():
        path = SCHEMA_DIR / name
        assert path.is_file(), f"{path} missing: run `make schemas`"
        assert path.read_text() == text, f"{path} is stale: run `make schemas`"
