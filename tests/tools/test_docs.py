"""The docs a newcomer reads: a short front door, a configuration reference made from the
code, and no link to a page or anchor that is not there."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from ray_ft.config import FTConfig
from ray_ft.tools import config_doc

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_BYTES = 12_500


def test_every_setting_has_its_doc_once_in_the_reference():
    docs = config_doc.field_docs()
    names = [f.name for f in dataclasses.fields(FTConfig)]
    assert [n for n in names if not docs.get(n)] == []
    page = (ROOT / config_doc.PAGE).read_text()
    for name in names:
        assert page.count(f"| `{name}` |") == 1, name


def test_the_reference_is_what_the_code_says():
    page = (ROOT / config_doc.PAGE).read_text()
    assert page == config_doc.render(), "docs/configuration.md is stale: run `make docs`"


def test_a_field_without_a_doc_is_refused_by_name(monkeypatch):
    docs = config_doc.field_docs()
    del docs["max_retries"]
    monkeypatch.setattr(config_doc, "field_docs", lambda: docs)
    with pytest.raises(ValueError, match=r"FTConfig\.max_retries has no docstring"):
        config_doc.render()


def test_the_readme_is_a_front_door():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes: move depth into docs/"


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
            out.add(slug)
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_exists(page):
    broken = []
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in _anchors(file)):
            broken.append(target)
    assert broken == [], f"{page.name}: broken links {broken}"
