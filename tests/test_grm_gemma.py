"""`flowpheno grm` against the real GEMMA `-gk 1` centred relatedness matrix."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import EXAMPLES, run_cli

from flowpheno.io.plink import write_plink

pytestmark = pytest.mark.skipif(shutil.which("gemma") is None, reason="GEMMA absent: apt-get install gemma")


def _gemma_kinship(prefix: Path, workdir: Path) -> np.ndarray:
    # GEMMA keeps only individuals with a phenotype, and a .fam with -9 has none:
    # give every individual a dummy phenotype with -p so the GRM covers them all.
    n = len(pd.read_csv(f"{prefix}.fam", sep=r"\s+", header=None))
    (workdir / "dummy_pheno.txt").write_text("1\n" * n)
    result = subprocess.run(
        [
            "gemma",
            "-bfile",
            str(prefix),
            "-p",
            "dummy_pheno.txt",
            "-gk",
            "1",
            "-o",
            "kin",
            "-outdir",
            str(workdir / "gemma"),
        ],
        capture_output=True,
        text=True,
        cwd=workdir,
        timeout=300,  # a hang guard only: GEMMA takes seconds here
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return np.loadtxt(workdir / "gemma" / "kin.cXX.txt")


def _ours(prefix: Path, workdir: Path) -> np.ndarray:
    result = run_cli("grm", "--bfile", str(prefix), "--out", str(workdir / "ours.npz"))
    assert result.returncode == 0, result.stderr
    with np.load(workdir / "ours.npz") as archive:
        assert list(archive["ids"]) == list(pd.read_csv(f"{prefix}.fam", sep=r"\s+", header=None, dtype=str)[1])
        return archive["K"]


@pytest.mark.slow
def test_grm_equals_gemma_with_missing_and_rare_snps(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    n, m = 90, 800
    dosage = rng.binomial(2, rng.uniform(0.002, 0.5, m), size=(n, m)).astype(float)
    dosage[rng.random((n, m)) < 0.02] = np.nan
    dosage[:, :40][rng.random((n, 40)) < 0.15] = np.nan  # above GEMMA's 5% missingness filter
    fam = pd.DataFrame(
        {"FID": "f", "IID": [f"s{i}" for i in range(n)], "PAT": "0", "MAT": "0", "SEX": "1", "PHENO": "1"}
    )
    bim = pd.DataFrame(
        {
            "chrom": "1",
            "snp": [f"rs{j}" for j in range(m)],
            "cm": 0.0,
            "pos": np.arange(m) * 100 + 1,
            "a0": "A",
            "a1": "G",
        }
    )
    write_plink(tmp_path / "toy", dosage, fam, bim)
    np.testing.assert_allclose(_ours(tmp_path / "toy", tmp_path), _gemma_kinship(tmp_path / "toy", tmp_path), atol=1e-6)


@pytest.mark.slow
def test_grm_equals_gemma_on_example_cohort(tmp_path: Path) -> None:
    np.testing.assert_allclose(
        _ours(EXAMPLES / "cohort", tmp_path), _gemma_kinship(EXAMPLES / "cohort", tmp_path), atol=1e-6
    )
