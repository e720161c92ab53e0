"""Shared fixtures: small simulated cohorts written by the tests themselves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def family_kinship(n: int, rng: np.random.Generator, relatedness: float = 0.5) -> np.ndarray:
    """Block-diagonal kinship of families of 1-8 members, ``relatedness`` within a family."""
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(1, 9)))
    sizes[-1] -= sum(sizes) - n
    kinship = np.zeros((n, n))
    start = 0
    for size in sizes:
        kinship[start : start + size, start : start + size] = relatedness
        start += size
    np.fill_diagonal(kinship, 1.0)
    return kinship


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed console script the way a user would."""
    script = Path(sys.executable).parent / "flowpheno"  # the console script of this environment
    command = [str(script), *args] if script.exists() else [sys.executable, "-m", "flowpheno.cli", *args]
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="session")
def example_kinship(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded example's GRM, computed once per test session with `flowpheno grm`."""
    out = tmp_path_factory.mktemp("example") / "kinship.npz"
    result = run_cli("grm", "--bfile", str(EXAMPLES / "cohort"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def write_table(path: Path, table: pd.DataFrame, sep: str = "\t") -> Path:
    table.to_csv(path, sep=sep, index=False, na_rep="NA")
    return path
