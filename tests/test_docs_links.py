"""Every relative link in README.md and docs/**/*.md points to a file that exists (anchors not checked),
and every `docs/NAME.md` path the prose names exists too (the docs cite each other by path)."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
DOC_PATH = re.compile(r"(?<![\w/.])(docs/[\w./-]+?\.md)\b")


def _relative_links(text: str) -> list[str]:
    out = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # http(s), mailto, data: ... and same-page anchors
        out.append(target.split("#", 1)[0])
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path):
    missing = [t for t in _relative_links(doc.read_text()) if not (doc.parent / t).exists()]
    assert not missing, f"{doc.relative_to(ROOT)} links to files that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_doc_paths_exist(doc: Path):
    missing = sorted({p for p in DOC_PATH.findall(doc.read_text()) if not (ROOT / p).is_file()})
    assert not missing, f"{doc.relative_to(ROOT)} names docs that do not exist: {missing}"


def test_link_parser_sees_relative_links_only():
    text = "[a](docs/X.md#part) [b](https://x.org/y.md) [c](#top) [d](../y.md \"title\")"
    assert _relative_links(text) == ["docs/X.md", "../y.md"]


def test_results_page_describes_the_shipped_bundles():
    """docs/RESULTS.md's generated ledger lines state each shipped bundle's own epsilon, noise and steps
    (regenerate with `python benchmarks/summarize_defaults.py --write docs/RESULTS.md` after `make bundles`)."""
    text = (ROOT / "docs" / "RESULTS.md").read_text()
    for meta in sorted((ROOT / "bundles").glob("*/metadata.json")):
        p = json.loads(meta.read_text())["privacy"]
        name = meta.parent.name
        line = next((ln for ln in text.splitlines() if ln.startswith(f"- {name}: epsilon ")), None)
        assert line, f"docs/RESULTS.md has no ledger line for the shipped bundle {name}"
        assert f"epsilon {p['epsilon']} " in line and f"noise multiplier {p['noise_multiplier']:.4f}," in line \
            and f"steps {p['steps']}," in line, f"docs/RESULTS.md is stale for {name}: {line[:120]}"
