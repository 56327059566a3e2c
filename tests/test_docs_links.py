"""Every file under docs/results/ that a doc cites exists, or the doc names the commit that has it.

Raw benchmark files of earlier runs were removed from the tree to keep ``docs/`` small; a doc that
still cites one must name, in the same paragraph (list item, table row; a heading counts with the
paragraph under it), a ``<commit>:<path>`` at which git still has the file or its folder, e.g.
``git show 744348e:docs/results/engine/h100-2026-11-26-first/kernels.json``. Where git can read
the commit, the test also checks that the commit really holds the cited path.

Citations recognised: paths containing ``results/`` (from the repository root when they start with
``docs/``, else from the doc's folder), markdown link and image targets (from the doc's folder), run
folders named ``h100-YYYY-MM-DD...``/``h200-...`` (under ``docs/results/engine/``), and bare file
names in backticks that follow a run folder in the same paragraph (in that folder). Placeholders
(``<run>``) are skipped; globs (``*.json``) must match at least one file.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINE = "docs/results/engine"

COMMIT_SPEC = re.compile(r"(?<![\w/])([0-9a-f]{7,40}):((?:docs/)?results/[\w./*-]+)")
RESULTS_PATH = re.compile(r"(?<![\w/.-])((?:docs/)?results/[\w./*<>-]*)")
LINK = re.compile(r"\]\(([^)\s]+)\)")
RUN_FOLDER = re.compile(r"(?<![\w.-])(h\d00-\d{4}-\d\d-\d\d[\w-]*)(/[\w./*-]*)?")
BARE_FILE = re.compile(r"`([\w.*-]+\.(?:json|txt|log|png))`")


def doc_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def blocks(text: str) -> list[str]:
    """Paragraphs, list items and table rows; a heading joins the block under it."""
    out: list[list[str]] = []
    cur: list[str] = []
    heading = False
    for line in text.splitlines():
        s = line.strip()
        if not s:
            if cur and not heading:
                out.append(cur)
                cur = []
            continue
        starts = s.startswith("#") or s.startswith("|") or re.match(r"([*-]|\d+\.)\s", s)
        if starts and cur and not heading:
            out.append(cur)
            cur = []
        cur.append(line)
        heading = s.startswith("#")
        if s.startswith("|"):
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return ["\n".join(b) for b in out]


def _norm(path: str) -> str:
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


def citations(block: str, doc_dir: str) -> list[str]:
    """Repository-relative paths (or globs) cited in one block, commit specs left out."""
    text = COMMIT_SPEC.sub(" ", block)
    found: list[str] = []
    for m in RESULTS_PATH.finditer(text):
        p = m.group(1).rstrip(".")
        found.append(p if p.startswith("docs/") else f"{doc_dir}/{p}")
    for m in LINK.finditer(text):
        target = m.group(1).split("#")[0]
        if target and not re.match(r"[a-z]+:", target) and "results/" not in target:
            found.append(f"{doc_dir}/{target}")
    last_run = None
    events = [(m.start(), "run", m) for m in RUN_FOLDER.finditer(text)]
    events += [(m.start(), "file", m) for m in BARE_FILE.finditer(text)]
    for _, kind, m in sorted(events, key=lambda e: e[0]):
        if kind == "run":
            last_run = m.group(1)
            if text[:m.start()].endswith("/"):
                continue  # inside a results/ path, already taken
            found.append(f"{ENGINE}/{m.group(1)}{(m.group(2) or '').rstrip('.')}")
        elif last_run is not None:
            found.append(f"{ENGINE}/{last_run}/{m.group(1)}")
    return [_norm(p) for p in found if "<" not in p and ">" not in p]


def commit_specs(block: str) -> list[tuple[str, str]]:
    return [(c, _norm(p)) for c, p in COMMIT_SPEC.findall(block)]


def _covers(spec: str, path: str) -> bool:
    """A commit spec names ``path`` when they share the run folder: the spec is the path, a folder
    above it, a file inside it, or a file beside it (verified against git where git can)."""
    folder = spec.rsplit("/", 1)[0] if "." in spec.rsplit("/", 1)[-1] else spec
    return path == spec or path.startswith(folder + "/") or spec.startswith(path + "/")


def exists_here(root: Path, path: str) -> bool:
    if any(ch in path for ch in "*?["):
        return any(root.glob(path))
    return (root / path).exists()


@lru_cache(maxsize=None)
def _git_files(root: str, commit: str) -> frozenset[str] | None:
    """Files tracked at ``commit``, or None where git cannot read the commit (no repo, shallow)."""
    try:
        ok = subprocess.run(["git", "-C", root, "cat-file", "-e", f"{commit}^{{commit}}"],
                            capture_output=True).returncode == 0
        if not ok:
            return None
        out = subprocess.run(["git", "-C", root, "ls-tree", "-r", "--name-only", commit, "--", "docs"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return frozenset(out.splitlines())


def exists_at(root: Path, commit: str, path: str) -> bool | None:
    files = _git_files(str(root), commit)
    if files is None:
        return None
    return any(f == path or f.startswith(path + "/") or fnmatch.fnmatch(f, path) for f in files)


def problems(root: Path = ROOT, docs: list[Path] | None = None) -> list[str]:
    out: list[str] = []
    for doc in docs if docs is not None else doc_files(root):
        rel = doc.relative_to(root).as_posix()
        doc_dir = Path(rel).parent.as_posix()
        for block in blocks(doc.read_text(encoding="utf-8")):
            specs = commit_specs(block)
            for commit, path in specs:
                if exists_at(root, commit, path) is False:
                    out.append(f"{rel}: {commit}:{path} is not in commit {commit}")
            for path in citations(block, "" if doc_dir == "." else doc_dir):
                if exists_here(root, path):
                    continue
                named = [c for c, p in specs if _covers(p, path)]
                if not named:
                    out.append(f"{rel}: cites {path}, which is missing, and names no commit that has it")
                elif all(exists_at(root, c, path) is False for c in named):
                    out.append(f"{rel}: cites {path}, which is missing and not in {', '.join(named)}")
    return out


def test_docs_cite_existing_files_or_name_a_commit():
    assert problems() == []


def test_check_fails_on_missing_file_without_commit(tmp_path):
    (tmp_path / "docs" / "results" / "engine" / "h100-2026-11-26-kept").mkdir(parents=True)
    (tmp_path / "docs" / "results" / "engine" / "h100-2026-11-26-kept" / "kernels.json").write_text("{}")
    doc = tmp_path / "docs" / "page.md"
    doc.write_text(
        "Kept: `docs/results/engine/h100-2026-11-26-kept/kernels.json`, ok.\n\n"
        "Gone: `docs/results/gone.json` and ![plot](results/gone.png).\n\n"
        "Files `h100-2026-11-26-kept/` and `h100-2026-11-26-lost/`; `decode.json`.\n\n"
        "### Old run (`docs/results/engine/h100-2026-11-26-old/`)\n\n"
        "Raw files: `git show abc1234:docs/results/engine/h100-2026-11-26-old/kernels.json`.\n"
    )
    found = problems(tmp_path, [doc])
    text = "\n".join(found)
    assert "docs/results/gone.json" in text
    assert "docs/results/gone.png" in text
    assert "docs/results/engine/h100-2026-11-26-lost" in text
    assert "docs/results/engine/h100-2026-11-26-lost/decode.json" in text
    assert "h100-2026-11-26-kept" not in text  # exists
    assert "h100-2026-11-26-old" not in text  # names a commit (tmp_path is no git repo: not verified)
    assert len(found) == 4, found


def test_check_fails_when_the_named_commit_lacks_the_file():
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    if head.returncode != 0:
        import pytest
        pytest.skip("not a git checkout")
    commit = head.stdout.strip()
    assert exists_at(ROOT, commit, "docs/results/no-such-run/kernels.json") is False
    assert exists_at(ROOT, commit, "docs/results/oneshot.json") is True
