"""The README's "Journey" commands are the commands this tier runs: each fenced command of that section is one of
tests/e2e/journey.py's command strings, and each of those is run by an e2e test (so neither can drift).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from e2e import journey as j

pytestmark = pytest.mark.e2e

E2E = Path(__file__).resolve().parent


def journey_commands(readme: str) -> list[str]:
    """Commands in the fenced blocks of the README's `## Journey` section (continuations joined, comments dropped)."""
    section = readme.split("\n## Journey\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", section, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(" ".join(line.split()))
    return commands


def _constants() -> dict[str, str]:
    return {name: " ".join(v.split()) for name, v in vars(j).items() if name.isupper() and isinstance(v, str)}


def test_readme_journey_commands_are_run_by_the_tier() -> None:
    readme = (j.REPO / "README.md").read_text(encoding="utf-8")
    commands = journey_commands(readme)
    assert len(commands) >= 10, "the README's Journey section lost its commands"
    by_text = {text: name for name, text in _constants().items()}
    unknown = [c for c in commands if c not in by_text]
    assert not unknown, (
        f"README Journey commands that tests/e2e/journey.py does not hold (and no test runs): {unknown}"
    )
    # used = named again beyond its definition (by a test, or by journey.TRAIN_RUNS which the recipe tests run)
    sources = "\n".join(p.read_text() for p in E2E.glob("*.py"))
    unused = [by_text[c] for c in commands if len(re.findall(rf"\b{by_text[c]}\b", sources)) < 2]
    assert not unused, f"journey commands in the README that no e2e test runs: {unused}"


def test_journey_sections_in_order() -> None:
    readme = (j.REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Journey\n", 1)[1].split("\n## ", 1)[0]
    headings = re.findall(r"^### \d\. (.+)$", section, flags=re.M)
    assert headings == ["Prepare", "Shard", "Cache", "Train", "Sample", "Use the LoRA elsewhere"]
