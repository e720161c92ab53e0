"""Independent loci from association results with PLINK 1.9 ``--clump``."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from flowpheno.gwas.tools import require, run_logged
from flowpheno.io.plink import plink_prefix

LOCUS_COLUMNS = ["CHR", "SNP", "BP", "P", "TOTAL"]


def clump(
    bfile: str | Path,
    assoc: pd.DataFrame,
    p1: float,
    r2: float = 0.1,
    kb: int = 250,
    p2: float = 0.01,
    log: str | Path | None = None,
) -> pd.DataFrame:
    """Clump ``assoc`` (SNP, P) on the LD of ``bfile``: one row per locus (index SNP).

    ``--make-founders`` lets PLINK use every individual for LD even when the ``.fam``
    lists parents (otherwise it skips clumping: "no founders").
    """
    plink = require("plink1.9")
    prefix = plink_prefix(bfile).resolve()
    with tempfile.TemporaryDirectory() as scratch:
        scratch_path = Path(scratch)
        assoc[["SNP", "P"]].dropna().to_csv(scratch_path / "assoc.tsv", sep="\t", index=False)
        command = [
            plink, "--bfile", str(prefix), "--clump", "assoc.tsv", "--clump-p1", f"{p1:.6g}", "--clump-p2", f"{max(p2, p1):.6g}",
            "--clump-r2", f"{r2:g}", "--clump-kb", str(kb), "--clump-snp-field", "SNP", "--clump-field", "P",
            "--allow-no-sex", "--make-founders", "--out", "clumped",
        ]
        run_logged(command, Path(log) if log else scratch_path / "plink.log", cwd=scratch_path)
        result = scratch_path / "clumped.clumped"
        if not result.exists() or not result.read_text().strip():
            return pd.DataFrame(columns=LOCUS_COLUMNS)
        table = pd.read_csv(result, sep=r"\s+", dtype={"CHR": str, "SNP": str})
    return table[LOCUS_COLUMNS].sort_values("P").reset_index(drop=True)
