"""The PLINK fileset every GWAS step reads: the cohort's, sorted as PLINK 1.9 needs it,
without the SNPs that have no place on the genome.

PLINK 1.9 skips variants at a negative position (``-9``: unknown) and refuses ``--clump``
on a ``.bim`` whose positions decrease within a chromosome (PLINK 1.9 manual, "--make-bed";
error "--clump requires a sorted .bim"); GEMMA reads every variant as it comes. So that the
GRM, the association tests, clumping and the SNP counts all see the same SNPs, the workflow
runs every step on one copy written by :func:`prepare_fileset`: SNPs at a negative position
or on chromosome ``0`` (PLINK's code for unplaced) are left out of every step, the rest is
sorted by PLINK ``--make-bed`` (alleles in their ``.bim`` order, chromosome names as the
``.bim`` has them).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from flowpheno.errors import FlowphenoError
from flowpheno.gwas.clump import plink_chromosome_codes
from flowpheno.gwas.tools import require, run_logged
from flowpheno.io.atomic import atomic_path, write_errors
from flowpheno.io.plink import check_bed, check_snp_ids, plink_prefix, plink_unsorted, read_bim, read_fam

UNPLACED_CHROMOSOMES = ("0", "chr0")
"""Chromosome codes PLINK 1.9 reads as "unplaced" (code 0)."""
FILESET_SUFFIXES = (".bed", ".bim", ".fam", ".excluded.tsv", ".log")
"""What :func:`prepare_fileset` writes beside its prefix."""


def unplaced_snps(bim: pd.DataFrame) -> pd.DataFrame:
    """SNPs without a place on the genome: ``SNP``, ``CHR``, ``BP`` and ``reason``
    (``position -9``-like negative positions, ``chromosome 0``), indexed as in ``bim``
    (a :func:`~flowpheno.io.plink.read_bim` table).

    Example:
        >>> bim = pd.DataFrame({"chrom": ["1", "0", "2"], "snp": ["rs1", "rs2", "rs3"], "pos": [100, 5, -9]})
        >>> unplaced_snps(bim)
           SNP CHR  BP             reason
        1  rs2   0   5       chromosome 0
        2  rs3   2  -9  negative position
    """
    negative = bim["pos"] < 0
    unplaced = bim["chrom"].str.lower().isin(UNPLACED_CHROMOSOMES)
    excluded = bim[negative | unplaced]
    reason = unplaced[excluded.index].map({True: "chromosome 0", False: "negative position"})
    return pd.DataFrame({"SNP": excluded["snp"], "CHR": excluded["chrom"], "BP": excluded["pos"], "reason": reason})


def prepare_fileset(bfile: str | Path, out: str | Path) -> dict[str, Any]:
    """Write ``out``.bed/.bim/.fam: the SNPs of ``bfile`` that have a place on the genome,
    sorted by chromosome and position with PLINK 1.9 ``--make-bed --keep-allele-order``.

    Also writes ``out``.excluded.tsv (the SNPs left out, with the reason: see
    :func:`unplaced_snps`) and ``out``.log (PLINK's log). Individuals and their order
    are unchanged; chromosome codes keep the ``.bim``'s spelling (PLINK would write
    ``chrX`` as ``23``). Returns counts: ``snps_in``, ``snps_out``, ``negative_position``,
    ``chromosome_0``, ``individuals``, ``was_sorted`` and ``unsorted`` (why PLINK called the
    input unsorted, or ``None``).

    Raises:
        FlowphenoError: SNP IDs are not unique, no SNP has a place on the genome, two
            chromosome names denote one PLINK chromosome (``chr1`` and ``1``), or PLINK failed.
    """
    prefix = plink_prefix(bfile).resolve()
    out = Path(out)
    bim_path = Path(f"{prefix}.bim")
    bim = read_bim(bim_path)
    check_snp_ids(bim, bim_path)
    excluded = unplaced_snps(bim)
    if len(excluded) == len(bim):
        raise FlowphenoError(
            f"{bim_path}: none of its {len(bim)} SNPs has a position on a chromosome (all are at a negative "
            "position or on chromosome 0); the GWAS needs positions: update them (plink1.9 --update-map)"
        )
    kept = bim.drop(index=excluded.index)
    unsorted = plink_unsorted(kept)
    plink = require("plink1.9")
    n = len(read_fam(f"{prefix}.fam"))
    negative = int((excluded["reason"] == "negative position").sum())
    summary = {
        "snps_in": len(bim),
        "snps_out": len(kept),
        "negative_position": negative,
        "chromosome_0": len(excluded) - negative,
        "individuals": n,
        "was_sorted": unsorted is None,
        "unsorted": unsorted,
    }
    with write_errors(out):
        out.parent.mkdir(parents=True, exist_ok=True)
    with write_errors(out), tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as scratch:
        scratch_path = Path(scratch)
        fileset = ["--bfile", str(prefix)]
        codes, changed = plink_chromosome_codes(bim["chrom"])
        if changed:  # the same genotypes with chromosome codes PLINK accepts
            bim.assign(chrom=codes).to_csv(scratch_path / "codes.bim", sep="\t", header=False, index=False)
            fileset = ["--bed", f"{prefix}.bed", "--bim", str(scratch_path / "codes.bim"), "--fam", f"{prefix}.fam"]
        exclude = []
        if len(excluded):
            excluded["SNP"].to_csv(scratch_path / "excluded.txt", header=False, index=False)
            exclude = ["--exclude", "excluded.txt"]
        run_logged(
            [
                plink,
                *fileset,
                *exclude,
                "--make-bed",
                "--keep-allele-order",
                "--allow-extra-chr",
                "--allow-no-sex",
                "--out",
                "sorted",
            ],
            scratch_path / "plink.out",
            cwd=scratch_path,
        )
        written = read_bim(scratch_path / "sorted.bim")
        names = written["snp"].map(bim.set_index("snp")["chrom"])
        if len(written) != len(kept) or names.isna().any():
            raise FlowphenoError(
                f"plink1.9 --make-bed wrote {len(written)} SNPs where {len(kept)} of {bim_path} have a place "
                "on the genome; check that fileset with plink1.9 --bfile PREFIX --make-bed"
            )
        aliases = names.groupby(written["chrom"]).unique()
        aliases = aliases[aliases.map(len) > 1]
        if len(aliases):
            spelled = " and ".join(repr(name) for name in aliases.iloc[0])
            raise FlowphenoError(
                f"{bim_path}: chromosome names {spelled} are one chromosome for PLINK "
                f"({aliases.index[0]}); spell each chromosome one way"
            )
        written["chrom"] = names.to_numpy()
        written.to_csv(scratch_path / "sorted.bim", sep="\t", header=False, index=False)
        if len(read_fam(scratch_path / "sorted.fam")) != n:
            raise FlowphenoError(f"plink1.9 --make-bed changed the individuals of {prefix}.fam; check that fileset")
        check_bed(scratch_path / "sorted")
        excluded.to_csv(scratch_path / "sorted.excluded.tsv", sep="\t", index=False)
        (scratch_path / "sorted.log").write_text(
            describe_fileset(summary, bfile, out) + "\n\n" + (scratch_path / "sorted.log").read_text(errors="replace")
        )
        for suffix in (".log", ".excluded.tsv", ".fam", ".bim", ".bed"):  # the .bed last: it completes the fileset
            with atomic_path(f"{out}{suffix}") as tmp:
                os.replace(scratch_path / f"sorted{suffix}", tmp)
    return summary


def describe_fileset(summary: dict[str, Any], bfile: str | Path, out: str | Path) -> str:
    """What :func:`prepare_fileset` did, in words (for its log and the command's output)."""
    left_out = summary["snps_in"] - summary["snps_out"]
    text = (
        f"{out}: {summary['snps_out']} of the {summary['snps_in']} SNPs of {bfile}, {summary['individuals']} "
        f"individuals; {left_out} SNPs left out of the GRM, association, clumping and counts "
        f"({summary['negative_position']} at a negative position such as -9, {summary['chromosome_0']} on chromosome "
        f"0; listed in {out}.excluded.tsv)"
    )
    if summary["was_sorted"]:
        return text + "; already sorted"
    return text + f"; sorted by PLINK (the .bim was not: {summary['unsorted']})"
