"""README.md and the pages of docs/ link to each other: every relative link points to a file that
exists and, with #anchor, to a heading of that file (GitHub's anchors)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "slurm" / "README.md"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def outside_code(text: str) -> str:
    """The text outside fenced code blocks (where `# comment` is no heading, `[a](b)` no link)."""
    return "".join(re.split(r"^```.*?^```[^\n]*$", text, flags=re.M | re.S))


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -1, -2 ...
    for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#+ (.+)$", outside_code(page.read_text()), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def links(page: Path) -> list[str]:
    return [t for t in LINK.findall(outside_code(page.read_text()))
            if not re.match(r"[a-z]+:", t)]


def test_the_pages_exist_and_readme_links_each_docs_page():
    readme_links = {(ROOT / t.split("#")[0]).resolve() for t in links(ROOT / "README.md")}
    assert set(PAGES[1:-1]) <= readme_links, "a docs page README.md does not link"


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert not broken_links(page)


def test_a_missing_file_or_heading_is_found(tmp_path):
    (tmp_path / "a.md").write_text("# A page\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "index.md"
    page.write_text("[ok](a.md#a-page) [ok](a.md#twice-1) [no](b.md) [no](a.md#twice-2)\n"
                    "[ok](https://example.org/x.md)\n```\n[in code](c.md)\n```\n")
    assert [b.split(":")[0] for b in broken_links(page)] == ["b.md", "a.md#twice-2"]


def test_anchors_follow_github():
    page = ROOT / "docs" / "recipes.md"
    assert {"launchers-launchers", "recipe-cards"} <= anchors(page)
    assert "against-timms-trainpy" in anchors(ROOT / "docs" / "performance.md")
