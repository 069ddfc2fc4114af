"""The README's config reference names every config key, and the two set-up commands come first."""

from pydantic import BaseModel

from pipeline.config import Config
from tests.conftest import REPO


def _keys(cls, prefix=""):
    for name, field in cls.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _keys(field.annotation, f"{name}.")
        else:
            yield prefix, name


def test_every_config_key_is_documented():
    readme = (REPO / "README.md").read_text()
    reference = readme.split("## Configuration reference", 1)[1]
    missing = [f"{p}{name}" for p, name in _keys(Config) if f"`{name}`" not in reference]
    assert not missing, f"keys missing from the README's config reference: {missing}"


def test_readme_starts_with_the_two_commands():
    first_block = (REPO / "README.md").read_text().split("```bash", 1)[1].split("```", 1)[0]
    assert "make folds train ensemble" in first_block and "make test" in first_block
