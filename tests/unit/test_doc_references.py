"""Every file the repository's comments, docstrings and docs cite is in the repository.

A citation is a path ending in `.md`, `.py` or `.yaml`: any `.md` name (docs are cited in prose), and `.py` /
`.yaml` paths whose first folder is one of ours (`mova_train/...`, `conf/...`, `tests/...`). It must name a file of
the checkout, relative to the root or to the citing file, a bare name must exist somewhere in it, or it must be a
path git ignores (a user's own `conf/local/default.yaml`). Paths in other projects (`mova/engine/...`,
`comfy/sd.py`) are not ours and not checked, nor is what a command writes (`| tee gpu_check.md`); golden data
are read from `$MOVA_GOLDEN_DIR`, not cited.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("mova_train", "conf", "data_tools", "tests", "benchmarks", "docs", "recipes", "README.md")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".sbatch", ".toml", ".txt"}
OURS = {"mova_train", "conf", "data_tools", "tests", "benchmarks", "docs", "recipes"}
WRITTEN = re.compile(r"(?:\btee|>|--out|-o)\s+$")
PATH = re.compile(r"(?<![\w/.:-])((?:\.\./|\./)?[\w.-]+(?:/[\w.-]+)*\.(?:md|py|ya?ml))\b")


def _git(*args: str) -> list[str]:
    out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line]


def _files() -> list[str]:
    """Tracked files and untracked ones git does not ignore (what lands with the next commit)."""
    listed = _git("ls-files", "--cached", "--others", "--exclude-standard", "--", *SCANNED)
    return sorted({p for p in listed if (REPO / p).is_file()})


def _cites(path: str) -> bool:
    """Whether a path-like token is a citation of one of our files (rather than another project's)."""
    if path.endswith(".md"):
        return True
    first = path.split("/", 1)[0]
    return first in OURS or first == ".." or (first == "." and "/" in path)


def _resolves(ref: str, citing: str, files: set[str], names: set[str]) -> bool:
    if "/" not in ref.lstrip("./") and Path(ref).name in names:
        return True
    for base in (REPO, (REPO / citing).parent):
        target = (base / ref).resolve()
        if target.is_relative_to(REPO) and str(target.relative_to(REPO)) in files:
            return True
    if ref.startswith(".."):
        return False
    return subprocess.run(["git", "check-ignore", "-q", ref], cwd=REPO, capture_output=True).returncode == 0


def dangling_citations() -> list[str]:
    """``file:line: path`` for every citation of a file that is not in the repository."""
    files = set(_files())
    names = {Path(p).name for p in files}
    bad = []
    for citing in sorted(files):
        if Path(citing).suffix not in SUFFIXES or citing == "tests/unit/test_doc_references.py":
            continue
        for number, line in enumerate((REPO / citing).read_text(encoding="utf-8").splitlines(), 1):
            for match in PATH.finditer(line):
                ref = match.group(1)
                if "://" in line and f"/{ref}" in line:  # a URL's path
                    continue
                if WRITTEN.search(line[: match.start()]):  # a file a command line writes, not a citation
                    continue
                if _cites(ref) and not _resolves(ref, citing, files, names):
                    bad.append(f"{citing}:{number}: {ref}")
    return bad


def test_every_cited_file_is_in_the_repository() -> None:
    bad = dangling_citations()
    assert not bad, (
        "comments/docs cite files that are not in the repository (copy the facts into docs/ and cite that):\n"
        + "\n".join(bad)
    )


def test_cited_sections_and_gotchas_exist() -> None:
    """`docs/model.md §7.3` needs a heading `7.3` there, `docs/environment.md gotcha 3` an item 3."""
    sections = set(re.findall(r"^#+ (\d+(?:\.\d+)*)\.? ", (REPO / "docs/model.md").read_text(), flags=re.M))
    gotchas = set(re.findall(r"^(\d+)\. \*\*", (REPO / "docs/environment.md").read_text(), flags=re.M))
    missing = []
    for citing in _files():
        if Path(citing).suffix not in SUFFIXES:
            continue
        text = (REPO / citing).read_text(encoding="utf-8")
        for cited in re.findall(r"docs/model\.md §(\d+(?:\.\d+)*)((?:,? §\d+(?:\.\d+)*)*)", text):
            for number in [cited[0], *re.findall(r"§(\d+(?:\.\d+)*)", cited[1])]:
                if number not in sections:
                    missing.append(f"{citing}: docs/model.md §{number}")
        missing += [f"{citing}: gotcha {n}" for n in re.findall(r"docs/environment\.md gotcha (\d+)", text)
                    if n not in gotchas]  # fmt: skip
    assert not missing, f"citations of sections that do not exist: {missing}"


def test_a_dangling_citation_is_found(tmp_path: Path) -> None:
    names = {"README.md"}
    files = {"docs/model.md", "mova_train/train.py"}
    assert _cites("mova_spec.md") and _cites("../shared/docs/environment.md") and _cites("mova_train/x.py")
    assert not _cites("mova/engine/trainer/accelerate/lora_utils.py") and not _cites("comfy/sd.py")
    assert not _resolves("mova_spec.md", "mova_train/models/lora.py", files, names)
    assert not _resolves("../shared/docs/environment.md", "docs/design.md", files, names)
    assert _resolves("docs/model.md", "mova_train/models/lora.py", files, names)
    assert _resolves("model.md", "docs/design.md", files, names)
    assert _resolves("README.md", "tests/conftest.py", files, names)
