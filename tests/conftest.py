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


HANG_TIMEOUT = 3600
"""Seconds after which :func:`run_cli` gives up on a command: a guard against a hang only.
The longest command the tests run (``bench images --quick``) takes about a minute on an idle
machine; this is far above that, so that a heavily loaded machine never fails a test."""


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed console script the way a user would (a real process: its exit code,
    its console script). Error-message tests use the faster in-process :func:`invoke`."""
    script = Path(sys.executable).parent / "flowpheno"  # the console script of this environment
    command = [str(script), *args] if script.exists() else [sys.executable, "-m", "flowpheno.cli", *args]
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=HANG_TIMEOUT)


@pytest.fixture(scope="session")
def example_kinship(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded example's GRM, computed once per test session with `flowpheno grm` (in-process)."""
    out = tmp_path_factory.mktemp("example") / "kinship.npz"
    result = invoke("grm", "--bfile", str(EXAMPLES / "cohort"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def write_table(path: Path, table: pd.DataFrame, sep: str = "\t") -> Path:
    table.to_csv(path, sep=sep, index=False, na_rep="NA")
    return path


class Invocation:
    """What one in-process CLI call produced: exit code, stdout, stderr."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr

    def __repr__(self) -> str:
        return f"Invocation(returncode={self.returncode}, stderr={self.stderr[-2000:]!r})"


def invoke(*args: str) -> Invocation:
    """Run ``flowpheno ARGS`` in this process through :func:`flowpheno.cli.main`, exactly as
    the console script does (same error handling, same exit codes), capturing its output.

    Much faster than :func:`run_cli` (no interpreter start, no torch import per call);
    use :func:`run_cli` where a real process matters (kills, signals, environment).
    """
    import contextlib
    import io
    import warnings

    from flowpheno import cli

    stdout, stderr = io.StringIO(), io.StringIO()
    argv, showwarning = sys.argv, warnings.showwarning
    sys.argv = ["flowpheno", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), warnings.catch_warnings():
            try:
                cli.main()
            except SystemExit as done:
                code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        sys.argv, warnings.showwarning = argv, showwarning
    return Invocation(code, stdout.getvalue(), stderr.getvalue())


def snapshot(*paths: Path) -> dict[str, str]:
    """SHA-256 of every file under ``paths`` (files or folders), keyed by path: compare a
    snapshot before and after a command to prove it changed no user file."""
    import hashlib

    hashes: dict[str, str] = {}
    for root in map(Path, paths):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
        for file in files:
            hashes[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
    return hashes
