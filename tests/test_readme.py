"""The README stays a newcomer's page: the two commands first, short, every docs page linked; the config
reference (docs/configuration.md) names every config key."""

import re

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
    reference = (REPO / "docs" / "configuration.md").read_text()
    missing = [f"{p}{name}" for p, name in _keys(Config) if f"`{name}`" not in reference]
    assert not missing, f"keys missing from docs/configuration.md: {missing}"


def test_readme_starts_with_the_two_commands():
    first_block = (REPO / "README.md").read_text().split("```bash", 1)[1].split("```", 1)[0]
    assert "make folds train ensemble" in first_block and "make test" in first_block


def test_the_readme_is_short_and_links_every_docs_page_and_every_link_resolves():
    readme = (REPO / "README.md").read_text()
    assert readme.count("\n") <= 300, "the README is a newcomer's page: move measured sections to docs/"
    linked = set(re.findall(r"\]\((docs/[^)#]+\.md)", readme))
    pages = {f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")}
    assert pages <= linked, f"docs pages the README does not link: {sorted(pages - linked)}"
    for page in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+\.(?:md|png))", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.name} links to {target}, which does not exist"
