"""The documentation stands on its own: every file it links to is in the repository, and it
cites no design notes that are not (DESIGN.md, the authors' shared folder)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support import ROOT

DOCUMENTS = sorted([ROOT / "README.md", ROOT / "bench" / "README.md",
                    *(ROOT / "docs").glob("*.md"), *(ROOT / "app").rglob("README.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")
NOT_HERE = re.compile(r"DESIGN\.md|\bshared/(reference|DESIGN|STYLE)|\.\./shared")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_lead_to_files_in_the_repository(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    missing = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address or an anchor in the same document
        path = (document.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            missing.append(target)
    assert not missing, missing


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_document_cites_notes_outside_the_repository(document: Path) -> None:
    cited = [m.group(0) for m in NOT_HERE.finditer(document.read_text(encoding="utf-8"))]
    assert not cited, cited
