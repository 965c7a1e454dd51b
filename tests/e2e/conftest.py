"""Session fixtures of the end-to-end tier: one workspace with the release folder, the data and its cache, and
every training run made at most once (started ahead in the background for the tests that are selected).
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from e2e import journey as j
from e2e.workspace import Runs, Workspace

TIMINGS: dict[str, float] = {}  # command -> wall seconds, reported at the end of the session


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e_runs(*names): training runs of journey.TRAIN_RUNS the test reads")


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory, media_dir: Path) -> Workspace:
    """The user's working folder, with upstream's sample clip (and its metadata.json) under `media/`."""
    root = tmp_path_factory.mktemp("journey")
    (root / "media").mkdir()
    for name in ("mova_360p_sample.mp4", "metadata.json", "single_person.jpg"):
        shutil.copy(media_dir / name, root / "media" / name)
    return Workspace(root, timings=TIMINGS)


@pytest.fixture(scope="session")
def release(workspace: Workspace, golden_dir: Path) -> Path:
    """`checkpoints/MOVA-360p`: the tiny release-layout folder, written by its script as a human would."""
    workspace.run(j.RELEASE_FOLDER, f"--golden {golden_dir}").check()
    return workspace.root / "checkpoints" / "MOVA-360p"


def _clips_and_shards(workspace: Workspace) -> None:
    """Prepare and shard: synthetic clips, then both shard folders (neither needs the model folder)."""
    workspace.run(j.MAKE_SYNTHETIC, j.TINY_CLIPS).check()
    for result in workspace.run_all((j.SHARD_SYNTHETIC,), (j.SHARD_REAL,)):
        result.check()


@pytest.fixture(scope="session")
def cache(request: pytest.FixtureRequest, workspace: Workspace) -> Path:
    """Prepare -> shard -> cache: synthetic clips and upstream's sample, both cached with the release's codecs
    (the clips are made and sharded while the release folder is written).
    """
    with ThreadPoolExecutor(1) as pool:
        shards = pool.submit(_clips_and_shards, workspace)
        request.getfixturevalue("release")
        shards.result()
    for result in workspace.run_all((j.CACHE_SYNTHETIC, j.TINY_CACHE), (j.CACHE_REAL, j.TINY_CACHE)):
        result.check()
    return workspace.root / "data" / "cache"


@pytest.fixture(scope="session")
def runs(request: pytest.FixtureRequest, workspace: Workspace, cache: Path) -> Runs:
    """The session's training runs; those the selected tests name (`e2e_runs`) start now, in test order."""
    runs = Runs(workspace)
    needed: list[str] = []
    for item in request.session.items:
        for mark in item.iter_markers("e2e_runs"):
            needed += [name for name in mark.args if name not in needed]
    runs.prefetch(needed)
    yield runs
    runs.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Wall time of every journey command (and their total) after the run."""
    if not TIMINGS:
        return
    terminalreporter.section("e2e commands")
    for what, seconds in TIMINGS.items():
        terminalreporter.write_line(f"{seconds:7.1f} s  {what}")
    terminalreporter.write_line(f"{sum(TIMINGS.values()):7.1f} s  in {len(TIMINGS)} commands")
