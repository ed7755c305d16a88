"""The README's settings table is generated from the one settings declaration."""

from pathlib import Path

from gateway.config import settings_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_settings_table_matches_declaration() -> None:
    text = README.read_text(encoding="utf-8")
    start = text.index("<!-- settings:begin")
    start = text.index("\n", start) + 1
    end = text.index("<!-- settings:end -->")
    assert text[start:end].strip() == settings_table().strip(), (
        "README settings table drifted; regenerate it with "
        "`python -c 'from gateway.config import settings_table; print(settings_table())'`"
    )


def test_readme_opens_with_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    first_block = text.split("```sh", 1)[1].split("```", 1)[0]
    assert "gateway --dev" in first_block
    assert "scripts/test" in first_block
