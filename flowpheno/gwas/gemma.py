"""GEMMA runs: the centred GRM (``-gk 1``) and the LMM score tests (``-lmm 3``).

Each run happens in a scratch directory with ``-outdir``; outputs are renamed into
place only when GEMMA succeeded. Phenotypes always come from ``-p`` (never the
``.fam`` column, whose missing values make GEMMA drop everyone).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from flowpheno.errors import FlowphenoError
from flowpheno.gwas.tools import require, run_logged
from flowpheno.io.atomic import atomic_path
from flowpheno.io.plink import plink_prefix, read_fam

def gemma_grm(bfile: str | Path, out: str | Path) -> Path:
    """``gemma -gk 1`` over every individual of ``bfile``; writes ``out`` (a ``.cXX.txt``)."""
    gemma = require("gemma")
    prefix = plink_prefix(bfile).resolve()
    out = Path(out)
    n = len(read_fam(f"{prefix}.fam"))
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as scratch:
        scratch_path = Path(scratch)
        (scratch_path / "all.txt").write_text("1\n" * n)  # every individual "phenotyped", so none is dropped
        run_logged([gemma, "-bfile", str(prefix), "-p", "all.txt", "-gk", "1", "-o", "grm", "-outdir", "out"],
                   out.with_suffix(".log"), cwd=scratch_path)
        result = scratch_path / "out" / "grm.cXX.txt"
        with atomic_path(out) as tmp:
            shutil.copyfile(result, tmp)
    return out


def gemma_lmm(
    bfile: str | Path,
    kinship: str | Path,
    pheno: str | Path,
    columns: list[int],
    out: str | Path,
) -> pd.DataFrame:
    """``gemma -lmm 3 -n columns``: univariate (one column) or mvLMM score test.

    ``pheno`` is a GEMMA ``-p`` file (``.fam`` order); ``columns`` are 1-based.
    Writes GEMMA's own ``assoc.txt`` to ``out`` and returns SNP, CHR, BP, P.
    """
    gemma = require("gemma")
    prefix = plink_prefix(bfile).resolve()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
        scratch_path = Path(scratch)
        command = [
            gemma, "-bfile", str(prefix), "-k", str(Path(kinship).resolve()), "-p", str(Path(pheno).resolve()),
            "-n", *map(str, columns), "-lmm", "3", "-o", "assoc", "-outdir", "out",
        ]
        run_logged(command, out.with_suffix(".log"), cwd=scratch_path)
        result = scratch_path / "out" / "assoc.assoc.txt"
        if not result.exists():
            raise FlowphenoError(f"GEMMA wrote no association file; see {out.with_suffix('.log')}")
        with atomic_path(out) as tmp:
            shutil.copyfile(result, tmp)
    return read_gemma_assoc(out)


def read_gemma_assoc(path: str | Path) -> pd.DataFrame:
    """SNP, CHR, BP and the score-test P from a GEMMA ``assoc.txt``."""
    table = pd.read_csv(path, sep="\t", dtype={"rs": str, "chr": str})
    if "p_score" not in table.columns:
        raise FlowphenoError(f"{path}: no p_score column; was GEMMA run with -lmm 3?")
    return pd.DataFrame({"SNP": table["rs"], "CHR": table["chr"], "BP": table["ps"], "P": table["p_score"]})


def min_p_over_traits(per_trait: list[pd.DataFrame]) -> pd.DataFrame:
    """The ``single`` baseline: per SNP, the smallest p over traits times their number (Bonferroni).

    The per-trait p-values are kept as ``P_1 .. P_d``: the combined P is conservative
    by construction, so calibration (lambda GC) is judged on the per-trait tests.
    """
    merged = per_trait[0][["SNP", "CHR", "BP"]].copy()
    p_values = np.column_stack([table.set_index("SNP").loc[merged["SNP"], "P"].to_numpy() for table in per_trait])
    merged["P"] = np.minimum(np.nanmin(p_values, axis=1) * len(per_trait), 1.0)
    for j in range(p_values.shape[1]):
        merged[f"P_{j + 1}"] = p_values[:, j]
    return merged
