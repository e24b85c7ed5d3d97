"""The README and docs/: links resolve, no page repeats another, the README stays short.

Pages are read as GitHub renders them: a heading's anchor is its GitHub slug, code
blocks and inline code hold no links, and ``<a name="...">`` adds an anchor.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
#: The README's length limit, in lines (the aim is ~300).
README_MAX_LINES = 320
#: A paragraph at least this long (characters) may appear in one page only.
LONG_PARAGRAPH = 200

_FENCE = re.compile(r"^(```|~~~)")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_NAMED = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")


def _prose(text: str) -> list[str]:
    """The page's lines with code blocks blanked and inline code removed."""
    out, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
            out.append("")
            continue
        out.append("" if fenced else re.sub(r"`[^`]*`", "", line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # keeps letters (any script), digits, _ and -
    return text.replace(" ", "-")


def headings(text: str) -> list[tuple[int, str]]:
    """``(level, text)`` of each ATX heading outside code blocks."""
    out, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
        elif not fenced and (m := re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)):
            out.append((len(m.group(1)), m.group(2)))
    return out


def anchors(text: str) -> set[str]:
    """Every anchor of a page: heading slugs (GitHub's -1, -2 for repeats) and named anchors."""
    seen: Counter[str] = Counter()
    out = set(_NAMED.findall(text))
    for _, h in headings(text):
        s = slug(h)
        out.add(s if seen[s] == 0 else f"{s}-{seen[s]}")
        seen[s] += 1
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """``(line, target)`` of each relative link and image of the page (web links left out)."""
    out = []
    for i, line in enumerate(_prose(path.read_text(encoding="utf-8")), 1):
        for target in _LINK.findall(line):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                out.append((i, target))
    return out


def sections(text: str) -> list[tuple[str, str]]:
    """``(heading, body)`` of each section, the body up to the next heading of any level."""
    out: list[tuple[str, str]] = []
    current, body, fenced = None, [], False
    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
        m = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if m:
            if current is not None:
                out.append((current, "\n".join(body).strip()))
            current, body = m.group(1), []
        else:
            body.append(line)
    if current is not None:
        out.append((current, "\n".join(body).strip()))
    return out


def paragraphs(text: str) -> list[str]:
    """Prose paragraphs and tables (code blocks left out), whitespace normalised."""
    out, block, fenced = [], [], False
    for line in [*text.splitlines(), ""]:
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if fenced:
            continue
        if line.strip():
            block.append(line.strip())
        elif block:
            out.append(" ".join(block))
            block = []
    return out


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ---- the checks -----------------------------------------------------------------------
@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for line, target in links(page):
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / unquote(file_part)).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{_name(page)}:{line}: {target} (no file {dest})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text("utf-8")):
            broken.append(f"{_name(page)}:{line}: {target} (no heading with anchor #{anchor})")
    assert not broken, "\n".join(broken)


def test_no_two_pages_repeat_a_section() -> None:
    where: dict[tuple[str, str], list[str]] = defaultdict(list)
    for page in PAGES:
        for heading, body in sections(page.read_text(encoding="utf-8")):
            if body:
                where[(heading.strip().lower(), " ".join(body.split()))].append(_name(page))
    repeated = {h: pages for (h, _), pages in where.items() if len(pages) > 1}
    assert not repeated, f"the same section (heading and body) in several places: {repeated}"


def test_no_long_paragraph_or_table_appears_twice() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for page in PAGES:
        for para in paragraphs(page.read_text(encoding="utf-8")):
            if len(para) >= LONG_PARAGRAPH:
                where[para].append(_name(page))
    repeated = {p[:80] + "…": pages for p, pages in where.items() if len(pages) > 1}
    assert not repeated, f"paragraphs written twice (keep each in one page, link it): {repeated}"


def test_readme_is_short_and_links_every_docs_page() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES, (
        f"README.md has {len(text.splitlines())} lines; move details to docs/ (limit "
        f"{README_MAX_LINES})")
    linked = {(README.parent / t.partition("#")[0]).resolve() for _, t in links(README)}
    unlinked = [_name(p) for p in PAGES[1:] if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_setup_commands_come_first_and_ci_runs_the_readmes_test_command() -> None:
    text = README.read_text(encoding="utf-8")
    block = text.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert block[:2] == ['pip install -e . && gradscope compare --quick',
                         'pip install -e ".[test,lightning,hf]" && python -m pytest -q']
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert '-e ".[test,lightning,hf]"' in ci
    test_command = block[1].split("&& ", 1)[1]  # python -m pytest -q
    assert re.search(rf"^python3? {re.escape(test_command.split(' ', 1)[1])}$", ci, re.M), (
        f".ci/run does not run the README's test command {test_command!r}")


def test_the_checks_catch_what_they_should(tmp_path: Path) -> None:
    """The helpers on a page made to fail: a broken anchor, a repeat, GitHub's slugs."""
    assert slug("Overhead (benchmarks/overhead.py)") == "overhead-benchmarksoverheadpy"
    assert slug("What is measured — exact definitions") == "what-is-measured--exact-definitions"
    assert slug("`gradscope report`") == "gradscope-report"
    assert slug("NaN/Inf on every step") == "naninf-on-every-step"
    page = tmp_path / "p.md"
    page.write_text("# A\n\ntext\n\n## A\n\n<a name=\"x\"></a>[ok](#a-1) [also](#x) "
                    "`[code](#nowhere)`\n\n```\n[fenced](#nowhere)\n```\n[bad](#b)\n",
                    encoding="utf-8")
    assert anchors(page.read_text()) == {"a", "a-1", "x"}
    assert [t for _, t in links(page)] == ["#a-1", "#x", "#b"]


def test_the_readmes_picture_script_runs(tmp_path: Path) -> None:
    """scripts/gradient_flow_pair.py at a tiny size: two nets, one PNG of both images."""
    import importlib.util

    from PIL import Image

    spec = importlib.util.spec_from_file_location("gradient_flow_pair",
                                                  ROOT / "scripts" / "gradient_flow_pair.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    from gradscope.writers.figures import gradient_flow_image

    images = {title: gradient_flow_image(script.train(act, init, steps=2))
              for title, (act, init) in script.NETS.items()}
    script.side_by_side(images, tmp_path / "pair.png")
    with Image.open(tmp_path / "pair.png") as png:
        width, height = png.size
    assert width == sum(im.shape[1] for im in images.values())
    assert height == max(im.shape[0] for im in images.values()) + script.HEADER_PX
