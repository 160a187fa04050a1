"""The README leads and the docs hold the rest: README under 200 lines, every wf command and
command group in docs/commands.md, and every page rendering on GitHub with links that work."""

from pathlib import Path

import pytest

from tests.reference_tools import assert_renders_on_github

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_the_readme_is_short_and_links_every_page_of_the_docs():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"](docs/{page.name})" in readme, page.name


def test_every_command_is_documented():
    from typer.main import get_command

    from mlflow_core.cli import app

    root = get_command(app)
    documented = (REPO / "docs" / "commands.md").read_text()
    for name, command in root.commands.items():
        assert f"`wf {name}" in documented, name
        for sub in getattr(command, "commands", {}):
            assert sub in documented, f"wf {name} {sub}"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_the_docs_render_on_github_with_working_links(page):
    assert_renders_on_github(page, REPO)
