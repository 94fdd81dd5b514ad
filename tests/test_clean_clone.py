"""The repository carries everything its tests read.

A clone of HEAD into a temporary directory outside this workspace runs a smoke subset of the
tests (the ones that read fixtures: CSV uploads, real price history) with the clone's own
code on PYTHONPATH. A test that reads `../shared/...`, a file that was never committed, or the
workspace by absolute path fails there, so that cannot come back unnoticed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ("tests/test_portfolio_csv.py", "tests/test_factors.py", "tests/test_layout.py")


def test_no_test_names_a_path_outside_the_repository() -> None:
    outside = [str(ROOT.parent), "../shared", "shared/fixtures"]
    offenders = [
        f"{path.relative_to(ROOT)} mentions {needle!r}"
        for path in sorted((ROOT / "tests").rglob("*.py"))
        if path.name != Path(__file__).name
        for needle in outside
        if needle in path.read_text()
    ]
    assert offenders == []


def test_smoke_subset_passes_in_a_fresh_clone() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to clone")
    workdir = Path(tempfile.mkdtemp(prefix="sigmabatch-clone-"))
    try:
        assert not workdir.is_relative_to(ROOT.parent), "the clone must live outside the workspace"
        clone = workdir / "sigmabatch"
        subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)],
                       check=True, capture_output=True, timeout=120)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        env["PYTHONPATH"] = str(clone)
        where = subprocess.run(
            [sys.executable, "-c", "import libs.common, tests; "
                                   "print(libs.common.__file__); print(tests.__file__)"],
            cwd=clone, env=env, capture_output=True, text=True, timeout=60, check=True)
        assert all(Path(line).is_relative_to(clone) for line in where.stdout.split()), (
            f"the clone's run imported code from elsewhere: {where.stdout}")
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *SMOKE],
            cwd=clone, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
        assert " passed" in run.stdout
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
