"""The README is an entry point that stays true: its settings tables are the settings classes', its quickstart
is the two commands CI runs, and every file it links to exists."""

from __future__ import annotations

import re
from pathlib import Path

from scripts.settings_table import END, START, readme_tables, tables

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_settings_tables_are_the_settings_classes() -> None:
    current = readme_tables(README)
    assert current, f"README.md lacks the markers {START!r} ... {END!r}"
    assert current == tables(), "README's settings tables are stale: python -m scripts.settings_table --write"


def test_every_setting_has_a_row_and_a_description() -> None:
    from pacs.settings import PacsSettings
    from service.settings import Settings

    for settings, prefix in ((Settings, "CXR_"), (PacsSettings, "CXR_PACS_")):
        for name, field in settings.model_fields.items():
            assert f"| `{prefix}{name.upper()}` |" in README, name
            assert field.description, f"{settings.__name__}.{name} has no description for the table"


def test_quickstart_is_exactly_the_two_commands_ci_runs() -> None:
    section = README.split("## Quickstart", 1)[1]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]
    assert commands == ["./scripts/serve.sh", "./scripts/test.sh"]


def test_readme_is_an_entry_point_and_its_links_resolve() -> None:
    assert len(README.splitlines()) <= 220
    assert "Research use only" in README
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    missing = [t for t in targets if not t.startswith(("http://", "https://")) and not (ROOT / t).exists()]
    assert missing == []


def test_docs_pages_link_to_files_that_exist() -> None:
    missing = []
    for page in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if (
                not target.startswith(("http://", "https://", "mailto:"))
                and not (page.parent / target).exists()
            ):
                missing.append(f"{page.name}: {target}")
    assert missing == []
