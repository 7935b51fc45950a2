"""The README and docs/ stay true: every relative link and image resolves inside the repository (anchors
to an existing heading), no link leaves it, the README stays a guide (≤ 200 lines), and every table
generated from the code (CLI options, config keys, samplers, metrics, shipped files, tests) is current."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import gen_docs  # noqa: E402

LINK_RE = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE_RE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


def docs() -> list[Path]:
    return gen_docs.doc_files() + sorted(p for p in (REPO / "docs" / "results").glob("*/report.md"))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    h = re.sub(r"[`*_]", "", heading.strip().lower())
    h = re.sub(r"[^\w\- ]", "", h)
    return h.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE_RE.sub("", path.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.MULTILINE)}


def links(path: Path) -> list[str]:
    return LINK_RE.findall(FENCE_RE.sub("", path.read_text()))


@pytest.mark.parametrize("path", docs(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves_inside_the_repository(path):
    bad = []
    for target in links(path):
        if re.match(r"^[a-z]+:", target):  # http(s), mailto: not files of ours
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if REPO not in dest.parents and dest != REPO:
            bad.append(f"{target} (leaves the repository)")
        elif not dest.exists():
            bad.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target} (no heading #{anchor} in {dest.relative_to(REPO)})")
    assert not bad, f"{path.relative_to(REPO)}: dead links: {bad}"


def test_the_link_checker_finds_dead_links(tmp_path):
    page = REPO / "docs" / "_probe.md"
    page.write_text("[a](missing.md) [b](../../outside.md) [c](sampling.md#no-such-heading) ![d](../README.md)\n")
    try:
        with pytest.raises(AssertionError) as e:
            test_every_relative_link_resolves_inside_the_repository(page)
    finally:
        page.unlink()
    msg = str(e.value)
    assert "missing.md (no such file)" in msg and "outside.md (leaves the repository)" in msg
    assert "no heading #no-such-heading" in msg and "README.md" not in msg.split("dead links:")[1]


def test_readme_is_a_guide_not_a_reference():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; reference material belongs in docs/"


def test_generated_tables_are_current():
    assert gen_docs.main(["--check"]) == 0, "run: python scripts/gen_docs.py"


def test_generated_block_detects_a_stale_table():
    gens = {"x": lambda: "fresh\n"}
    text = "a\n<!-- generated: x -->\nold\n<!-- end generated: x -->\nb\n"
    assert gen_docs.regenerate(text, gens, "t") == "a\n<!-- generated: x -->\nfresh\n<!-- end generated: x -->\nb\n"
    with pytest.raises(SystemExit, match="unknown generated block 'y'"):
        gen_docs.regenerate(text.replace(": x", ": y"), gens, "t")
