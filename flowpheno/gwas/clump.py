"""Independent loci from association results with PLINK 1.9 ``--clump``."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pandas as pd

from flowpheno.errors import FlowphenoError
from flowpheno.gwas.tools import require, run_logged
from flowpheno.io.plink import check_snp_ids, plink_prefix, plink_unsorted, read_bim

LOCUS_COLUMNS = ["CHR", "SNP", "BP", "P", "TOTAL"]

_HUMAN_CODE = re.compile(r"^(?:chr)?(?:[0-9]|1[0-9]|2[0-6]|x|y|xy|mt?)$", re.IGNORECASE)


_SEX_OR_MITO_CODE = re.compile(r"^(?:chr)?(?:2[3-6]|x|y|xy|mt?)$", re.IGNORECASE)


def clump_chromosome_codes(codes: pd.Series) -> tuple[pd.Series, bool]:
    """:func:`plink_chromosome_codes`, with PLINK's human sex and mitochondrial codes (``X``,
    ``Y``, ``XY``, ``MT``, ``23``-``26``) also given the prefix ``contig_``, for clumping.

    PLINK 1.9 treats those codes as haploid in males (heterozygous calls set missing) and
    warns about "het. haploid genotypes" otherwise. flowpheno does not know the species: in a
    cattle, dog or chicken fileset ``23``-``26`` are autosomes, and treating them as human sex
    chromosomes changes their LD and so the loci. As extra contigs every chromosome is clumped
    as an autosome, and the loci are the same whatever the chromosomes are called.

    Example:
        >>> codes, changed = clump_chromosome_codes(pd.Series(["1", "X", "chr23", "26", "27"]))
        >>> codes.tolist(), changed
        (['1', 'contig_X', 'contig_chr23', 'contig_26', 'contig_27'], True)
    """
    codes, changed = plink_chromosome_codes(codes)
    sex = codes.str.match(_SEX_OR_MITO_CODE)
    return codes.where(~sex, "contig_" + codes), changed or bool(sex.any())


def plink_chromosome_codes(codes: pd.Series) -> tuple[pd.Series, bool]:
    """Chromosome codes PLINK 1.9 accepts with ``--allow-extra-chr``, and whether any changed.

    PLINK 1.9 knows the human codes (``1``-``26``, ``X``, ``Y``, ``XY``, ``MT``, each with
    an optional ``chr`` prefix) and, with ``--allow-extra-chr``, any other name that does
    not start with a digit (``scaffold_12``, ``chrUn_gl000220``). A code that starts
    with a digit but is not human (``27`` of a cattle map, ``1_random``) is an error
    ("Invalid chromosome code") even with that flag: such codes get the prefix
    ``contig_`` here. Clumping only pairs SNPs on the same chromosome, so the names
    themselves do not change the loci (PLINK 1.9 manual, ``--allow-extra-chr``).

    Example:
        >>> codes, changed = plink_chromosome_codes(pd.Series(["1", "chrX", "27", "scaffold_12", "1_random"]))
        >>> codes.tolist(), changed
        (['1', 'chrX', 'contig_27', 'scaffold_12', 'contig_1_random'], True)
    """
    codes = codes.astype(str)
    rejected = codes.str.match(r"^(?:chr)?[0-9]", case=False) & ~codes.str.match(_HUMAN_CODE)
    return codes.where(~rejected, "contig_" + codes), bool(rejected.any())


def clump(
    bfile: str | Path,
    assoc: pd.DataFrame,
    p1: float,
    r2: float = 0.1,
    kb: int = 250,
    p2: float = 0.01,
    log: str | Path | None = None,
    log_kept: bool = True,
) -> pd.DataFrame:
    """Clump ``assoc`` (SNP, CHR, BP, P) on the LD of ``bfile``: one row per locus (index SNP).

    PLINK 1.9 ``--clump`` (manual, "LD-based result clumping"): ``p1`` is the index-SNP
    threshold, ``p2`` (raised to ``p1`` when smaller) the threshold of the SNPs it absorbs,
    ``r2`` the LD (r squared) above which they are absorbed, ``kb`` the window (kb) either
    side. ``log``: where PLINK's output goes (default: a scratch file, removed); ``log_kept``:
    False when ``log`` is in a folder a failure removes, so the error does not name it.

    ``--make-founders`` lets PLINK use every individual for LD even when the ``.fam``
    lists parents (otherwise it skips clumping: "no founders"). ``--allow-extra-chr``
    accepts the chromosome names of non-human or unplaced sequence (``scaffold_12``);
    see :func:`plink_chromosome_codes` for those PLINK rejects even then, and
    :func:`clump_chromosome_codes` for sex chromosomes (clumped as autosomes). PLINK writes
    its own codes (``chrX`` becomes ``23``), so a locus keeps the CHR and BP of its
    index SNP in ``assoc`` (the ``.bim`` names). Returns columns :data:`LOCUS_COLUMNS`.

    PLINK 1.9 clumps only a sorted ``.bim`` (positions never decreasing within a
    chromosome, each chromosome in one block; variants at a negative position are
    skipped): an unsorted one is refused here, before PLINK runs, naming the first
    offending line (``flowpheno gwas prepare`` writes a sorted copy); so is a SNP ID given twice.
    Raises :class:`~flowpheno.errors.FlowphenoError` for those, or when PLINK fails (log tail shown).
    """
    plink = require("plink1.9")
    prefix = plink_prefix(bfile).resolve()
    bim = read_bim(f"{prefix}.bim")
    check_snp_ids(bim, f"{prefix}.bim")  # PLINK stops on a repeated ID; the tables join loci by ID
    unsorted = plink_unsorted(bim)
    if unsorted:
        raise FlowphenoError(
            f"{prefix}.bim is not sorted ({unsorted}); PLINK 1.9 clumps only a sorted .bim: write a "
            "sorted copy with flowpheno gwas prepare --bfile PREFIX --out NEW and use NEW"
        )
    with tempfile.TemporaryDirectory() as scratch:
        scratch_path = Path(scratch)
        assoc[["SNP", "P"]].dropna().to_csv(scratch_path / "assoc.tsv", sep="\t", index=False)
        fileset = ["--bfile", str(prefix)]
        codes, changed = clump_chromosome_codes(bim["chrom"])  # the .bim's codes as read above, as text
        if changed:  # the same genotypes with codes PLINK accepts, all autosomal
            bim.assign(chrom=codes).to_csv(scratch_path / "codes.bim", sep="\t", header=False, index=False)
            fileset = ["--bed", f"{prefix}.bed", "--bim", str(scratch_path / "codes.bim"), "--fam", f"{prefix}.fam"]
        command = [
            plink,
            *fileset,
            "--clump",
            "assoc.tsv",
            "--clump-p1",
            f"{p1:.6g}",
            "--clump-p2",
            f"{max(p2, p1):.6g}",
            "--clump-r2",
            f"{r2:g}",
            "--clump-kb",
            str(kb),
            "--clump-snp-field",
            "SNP",
            "--clump-field",
            "P",
            "--allow-no-sex",
            "--allow-extra-chr",
            "--make-founders",
            "--out",
            "clumped",
        ]
        run_logged(
            command,
            Path(log) if log else scratch_path / "plink.log",
            cwd=scratch_path,
            log_kept=log_kept and log is not None,
        )
        result = scratch_path / "clumped.clumped"
        if not result.exists() or not result.read_text().strip():
            return pd.DataFrame(columns=LOCUS_COLUMNS)
        table = pd.read_csv(result, sep=r"\s+", dtype={"CHR": str, "SNP": str})
    if {"CHR", "BP"} <= set(assoc.columns):
        position = assoc.drop_duplicates("SNP").set_index("SNP")
        table["CHR"] = table["SNP"].map(position["CHR"].astype(str)).fillna(table["CHR"])
        table["BP"] = table["SNP"].map(position["BP"]).fillna(table["BP"]).astype(table["BP"].dtype)
    return table[LOCUS_COLUMNS].sort_values("P", kind="stable").reset_index(drop=True)
