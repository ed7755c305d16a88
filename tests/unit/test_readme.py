"""The README's settings table is generated from the one settings declaration, and the
documents refer only to files in the repository."""

import re
from pathlib import Path

import pytest

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


ROOT = README.parent
# What a reader of the repository gets: the guides, the deployment files, the bench's guide.
DOCUMENTS = sorted({
    README, ROOT / "CHANGELOG.md", ROOT / "Dockerfile", ROOT / "docker-compose.yml",
    ROOT / "bench" / "README.md",
    *ROOT.glob("docs/*.md"), *ROOT.glob("deploy/**/*.md"), *ROOT.glob("deploy/**/*.yaml"),
    *ROOT.glob("deploy/**/*.conf"),
})
# Paths that only exist on the machine the project was first written on.
OUTSIDE = re.compile(r"\.\./shared|\bshared/(?:CONTRACT|bench|peers)|CONTRACT\.md|/work/")
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_documents_refer_only_to_the_repository(path: Path) -> None:
    """The repository stands alone: no document sends its reader to a file outside it, and
    every relative link resolves to a file in it."""
    text = path.read_text(encoding="utf-8")
    outside = sorted({m.group(0) for m in OUTSIDE.finditer(text)})
    assert not outside, f"{path.name} refers to files outside the repository: {outside}"
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same page
        resolved = (path.parent / target.split("#", 1)[0]).resolve()
        assert resolved.exists(), f"{path.name}: broken link {target}"
        assert resolved.is_relative_to(ROOT), f"{path.name}: link {target} leaves the repository"
