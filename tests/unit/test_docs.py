"""The repository explains itself: its documents are its own, and every link points inside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Documents that exist only beside the repository, never in it.
OUTSIDE = re.compile(r"\.\./shared|\bPROTOCOL\.md\b|\bDESIGN\.md\b|\bSTYLE\.md\b")
LINK = re.compile(r"\]\(([^)#]+)(#[^)]*)?\)")
DOC_PATH = re.compile(r"\bdocs/[\w.-]+\.md\b")


def _tracked() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    return [ROOT / name for name in names if not name.startswith("pb/")]


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except UnicodeDecodeError:
        return ""


def test_nothing_refers_to_a_document_outside_the_repository() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in _tracked()
                 if p != Path(__file__) and OUTSIDE.search(_text(p))]
    assert offenders == []


def test_every_docs_path_named_anywhere_exists() -> None:
    missing = {(str(p.relative_to(ROOT)), name) for p in _tracked()
               for name in DOC_PATH.findall(_text(p)) if not (ROOT / name).exists()}
    assert missing == set()


def test_every_relative_link_in_the_documents_leads_to_a_file() -> None:
    documents = [p for p in _tracked() if p.suffix == ".md"]
    broken = [(str(doc.relative_to(ROOT)), target) for doc in documents
              for target, _ in LINK.findall(_text(doc))
              if "://" not in target and not (doc.parent / target).exists()]
    assert broken == []
    assert {"protocol.md", "design.md", "job-rules.md", "migrating.md", "differences.md"} <= {
        p.name for p in (ROOT / "docs").iterdir()}
