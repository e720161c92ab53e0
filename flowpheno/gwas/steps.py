"""The workflow's steps as library calls (the Snakefile runs them through ``flowpheno gwas``)."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flowpheno.errors import FlowphenoError, warn
from flowpheno.gwas.baseline import rint_table
from flowpheno.gwas.clump import clump
from flowpheno.gwas.evaluate import (
    TESTS,
    TRUTH_WINDOW_KB,
    genome_spans,
    genome_wide_threshold,
    same_chromosome_names,
    summarise,
)
from flowpheno.gwas.gemma import (
    MIN_PHENOTYPED,
    check_covariate_design,
    check_gemma_kinship,
    check_gemma_phenotypes,
    gemma_covariate_design,
    gemma_lmm,
    min_p_over_traits,
    write_gemma_covariates,
)
from flowpheno.gwas.plots import manhattan, qq
from flowpheno.io.atomic import StagedDirectory, atomic_path, check_no_clobber, write_errors
from flowpheno.io.ids import FID_GIVEN
from flowpheno.io.outputs import write_phenotypes
from flowpheno.io.phenotypes import Phenotypes, read_phenotypes
from flowpheno.io.plink import check_snp_ids, plink_prefix, read_bim, read_fam


def write_rint_phenotypes(
    pheno: str | Path,
    out: str | Path,
    fam: str | Path,
    covar: str | Path | None = None,
    traits: list[str] | None = None,
    rank: bool = True,
) -> pd.DataFrame:
    """Rank-inverse-normal traits after covariates, as a GEMMA ``-p`` file in ``.fam`` order.

    With ``rank=False`` the covariate residuals are written as they are (no rank step:
    for traits already on a Gaussian scale, e.g. the simulator's ``oracle.tsv``). Rows are
    matched to the ``.fam`` on (FID, IID) (IID alone when ``pheno`` has no FID). Returns
    the table as written: the ``.fam``'s FID, IID and the traits (NaN where the individual
    has no value or a missing covariate).
    """
    phenotypes = read_phenotypes(pheno, traits, covar)
    check_rint_traits(phenotypes, pheno, covar)
    table = rint_table(phenotypes.id_table(), phenotypes.values, phenotypes.covariates, phenotypes.traits, rank)
    table.attrs[FID_GIVEN] = phenotypes.fid_given
    return write_phenotypes(table, out, "gemma", fam, source=str(pheno))


def check_rint_traits(phenotypes: Phenotypes, pheno: str | Path, covar: str | Path | None) -> None:
    """Every trait has at least :data:`~flowpheno.gwas.gemma.MIN_PHENOTYPED` values (with
    every covariate present) and is not constant there; otherwise the rank-inverse-normal
    column would be empty, or spread rounding noise, and GEMMA would test nothing.
    Raises :class:`~flowpheno.errors.FlowphenoError` naming the trait and the file."""
    usable = np.ones(len(phenotypes.values), dtype=bool)
    if phenotypes.covariates is not None:
        usable &= np.isfinite(phenotypes.covariates).all(axis=1)
    where = f" with every covariate of {covar} present" if covar else ""
    for j, trait in enumerate(phenotypes.traits):
        present = phenotypes.values[usable & np.isfinite(phenotypes.values[:, j]), j]
        if present.size < MIN_PHENOTYPED:
            raise FlowphenoError(
                f"{pheno}: trait {trait!r} has {present.size} value(s){where}; GEMMA needs at least "
                f"{MIN_PHENOTYPED}: leave it out of --traits"
            )
        if np.ptp(present) == 0:
            raise FlowphenoError(
                f"{pheno}: trait {trait!r} is {present[0]:g} for all {present.size} individuals{where}; "
                "it carries no association: leave it out of --traits"
            )


def covariates_path(out: str | Path) -> Path:
    """Where :func:`association` writes GEMMA's ``-c`` file for the table ``out``: ``{stem}.covariates.txt``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.covariates.txt")


def association(
    bfile: str | Path,
    kinship: str | Path,
    pheno: str | Path,
    columns: list[int],
    out: str | Path,
    per_trait: bool = False,
    covar: str | Path | None = None,
    chromosome: str | None = None,
) -> pd.DataFrame:
    """One mvLMM over ``columns``, or (``per_trait``) one LMM per column combined by min p x d;
    over every SNP, or only those on ``chromosome`` (a ``.bim`` code: LOCO runs).

    The ``-p`` file is checked first (:func:`check_gemma_phenotypes`). With ``covar``
    (FID, IID and covariates, read like ``fit --covar``) GEMMA adjusts every test for them
    (``-c``, with an intercept column): residualising the phenotypes alone (RINT or flow
    after covariates) leaves the SNP unadjusted, and a covariate that correlates with
    genotype (principal components, batch confounded with ancestry) then still confounds
    the test. The ``-c`` file, in ``.fam`` order, is kept as :func:`covariates_path`;
    individuals with a missing covariate are left out by GEMMA, as the attrs ``n_analysed``
    (mvLMM) or ``n_per_trait`` of the returned table say.
    Writes ``out`` (SNP, CHR, BP, P) and GEMMA's own tables beside it: ``{stem}.gemma.assoc.txt``, or
    ``{stem}.trait{k}.assoc.txt`` per column, all removed again when a later column fails.
    Raises :class:`~flowpheno.errors.FlowphenoError`.
    """
    out = Path(out)
    fam = f"{plink_prefix(bfile)}.fam"
    n_fam = len(read_fam(fam))
    values = check_gemma_phenotypes(pheno, columns, n_fam)
    check_gemma_kinship(kinship, n_fam)
    covariate_file, counts = None, []
    design = gemma_covariate_design(covar, fam) if covar is not None else None
    groups = [[j] for j in range(len(columns))] if per_trait else [list(range(len(columns)))]
    for group in groups:
        usable = np.isfinite(values[:, group]).all(axis=1)
        what = f"column {columns[group[0]]}" if per_trait else f"every one of columns {','.join(map(str, columns))}"
        counts.append(check_covariate_design(design, usable, covar, what) if design is not None else int(usable.sum()))
    if design is not None:
        covariate_file = write_gemma_covariates(design, covariates_path(out))
    adjust = {"covariates": covariate_file} if covariate_file is not None else {}
    try:
        if per_trait:
            tables, written = [], []
            try:
                for column in columns:
                    written.append(out.with_name(f"{out.stem}.trait{column}.assoc.txt"))
                    tables.append(
                        gemma_lmm(bfile, kinship, pheno, [column], written[-1], chromosome=chromosome, **adjust)
                    )
            except BaseException:  # no set of per-trait files that a later trait failed to join
                for path in written:
                    path.unlink(missing_ok=True)
                raise
            result = min_p_over_traits(tables, read_bim(f"{plink_prefix(bfile)}.bim")["snp"].tolist())
            result.attrs["n_per_trait"] = counts
        else:
            result = gemma_lmm(
                bfile,
                kinship,
                pheno,
                columns,
                out.with_name(f"{out.stem}.gemma.assoc.txt"),
                chromosome=chromosome,
                **adjust,
            )
            result.attrs["n_analysed"] = counts[0]
    except BaseException:  # GEMMA failed: no -c file without the table it was written for
        if covariate_file is not None:
            covariate_file.unlink(missing_ok=True)
        raise
    with atomic_path(out) as tmp:
        result.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    return result


EVALUATION_FILES = ("summary.json", "loci.tsv", "manhattan.png", "qq.png", "clump.log")
"""What :func:`evaluate_method` writes into its folder (``summary.json`` first)."""
ASSOC_COLUMNS = ("SNP", "CHR", "BP", "P")


GEMMA_ASSOC = {"rs": "SNP", "chr": "CHR", "ps": "BP"}
"""GEMMA's ``assoc.txt`` columns and their names here (GEMMA manual, section 4.4 "Output Files")."""
GEMMA_P_COLUMNS = ("p_wald", "p_lrt", "p_score")
"""GEMMA's p-value columns: ``-lmm 1``, ``2``, ``3`` write one of them, ``-lmm 4`` all three."""


def _from_gemma_columns(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """``table`` with GEMMA's own ``assoc.txt`` columns renamed (rs -> SNP, chr -> CHR, ps -> BP,
    its one p-value column -> P); any other table (one with a column SNP, CHR, BP or P among
    them) as it is.

    Raises:
        FlowphenoError: GEMMA's table holds several p-value columns (``-lmm 4``), so which
            test to count is the user's choice; the message gives the command that keeps one.
    """
    if not set(GEMMA_ASSOC) <= set(table.columns) or set(ASSOC_COLUMNS) & set(table.columns):
        return table
    tests = [column for column in GEMMA_P_COLUMNS if column in table.columns]
    if len(tests) > 1:
        names = {**GEMMA_ASSOC, tests[-1]: "P"}
        kept = sorted(names, key=table.columns.get_loc)  # cut keeps the file's column order
        header = "\\t".join(names[name] for name in kept)
        columns = ",".join(str(table.columns.get_loc(name) + 1) for name in kept)
        stem = path.name.removesuffix(".txt").removesuffix(".assoc")
        target = path.with_name(f"{stem}.{tests[-1]}.tsv")  # never the input's name; noclobber: no other file's
        raise FlowphenoError(
            f"{path}: GEMMA's assoc.txt with {len(tests)} tests ({', '.join(tests)}; -lmm 4): keep one p-value column "
            f"(rs -> SNP, chr -> CHR, ps -> BP, the test's p -> P), e.g. {tests[-1]}: "
            f"(set -o noclobber; cut -f {columns} {shlex.quote(str(path))} | sed '1s/.*/{header}/' "
            f"> {shlex.quote(str(target))})"
        )
    if not tests:
        return table
    return table.rename(columns={**GEMMA_ASSOC, tests[0]: "P"})


def read_assoc(path: str | Path) -> pd.DataFrame:
    """An association table (SNP, CHR, BP, P, as ``flowpheno gwas assoc`` writes it), checked.

    Tab-separated, or whitespace-separated when the header holds no tab (PLINK 1.9's own
    ``.assoc.linear`` / ``.qassoc`` tables, whose columns include SNP, CHR, BP and P). GEMMA's
    own ``assoc.txt`` is read as such (rs, chr, ps and its one p-value column: p_wald, p_lrt
    or p_score); one of ``-lmm 4``, with all three, is refused with the command that keeps one.

    Raises :class:`~flowpheno.errors.FlowphenoError` naming the file and the line when a
    column is missing, a line is cut short (a truncated file), P is not a number in [0, 1]
    or NA, a SNP is listed twice, or no SNP has a p-value.
    """
    path = Path(path)
    if not path.is_file():
        raise FlowphenoError(f"{path}: file not found; give the table written by flowpheno gwas assoc")
    with path.open("rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(size - 1, 0))
        if size and handle.read(1) != b"\n":
            raise FlowphenoError(
                f"{path}: the last line is cut (no newline at the end: a truncated file?); rerun the association, "
                "or end the file with a newline if it is complete"
            )
    with path.open("rb") as handle:
        tabs = b"\t" in handle.readline()
    try:
        table = pd.read_csv(path, sep="\t" if tabs else r"\s+", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise FlowphenoError(
            f"{path}: not a tab- or whitespace-separated association table ({' '.join(str(error).split())})"
        ) from None
    table = _from_gemma_columns(table, path)
    missing = [column for column in ASSOC_COLUMNS if column not in table.columns]
    if missing and len(table.columns) == 1 and any(mark in str(table.columns[0]) for mark in ",;"):
        raise FlowphenoError(
            f"{path}: comma- or semicolon-separated; give a tab- or whitespace-separated table with columns SNP, CHR, "
            "BP, P"
        )
    if missing:
        raise FlowphenoError(
            f"{path}: no column {', '.join(missing)} (found: {', '.join(map(str, table.columns[:8]))}); give the table "
            "written by flowpheno gwas assoc (SNP, CHR, BP, P), GEMMA's assoc.txt or PLINK's .assoc.linear, not a "
            "phenotype file"
        )
    short = (table[list(ASSOC_COLUMNS)] == "").any(axis=1).to_numpy()
    if short.any():
        line = int(np.flatnonzero(short)[0]) + 2
        raise FlowphenoError(
            f"{path}, line {line}: a field is empty (a truncated or edited file?); rerun flowpheno gwas assoc"
        )
    p_text = table["P"].str.strip()
    is_missing = p_text.isin(["NA", "nan", "NaN"])
    p_values = pd.to_numeric(p_text.where(~is_missing), errors="coerce")
    bad = (~is_missing & ~((p_values >= 0) & (p_values <= 1))).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise FlowphenoError(f"{path}, line {row + 2}: P {table['P'].iloc[row]!r} is not a p-value in [0, 1] or NA")
    bp = pd.to_numeric(table["BP"], errors="coerce")
    if bp.isna().any():
        row = int(np.flatnonzero(bp.isna().to_numpy())[0])
        raise FlowphenoError(f"{path}, line {row + 2}: BP {table['BP'].iloc[row]!r} is not a position")
    if table.empty:
        raise FlowphenoError(f"{path}: a header and no SNP; give the table of a finished association run")
    if p_values.notna().sum() == 0:
        raise FlowphenoError(f"{path}: no SNP has a p-value (every P is NA); check the GEMMA log of that run")
    repeated = table["SNP"].duplicated(keep=False).to_numpy()
    if repeated.any():
        snp = table["SNP"].iloc[int(np.flatnonzero(repeated)[0])]
        lines = ", ".join(str(i + 2) for i in np.flatnonzero((table["SNP"] == snp).to_numpy())[:3])
        hint = (
            "a PLINK --linear/--logistic table lists one test per covariate: keep the ADD rows (plink --hide-covar)"
            if "TEST" in table.columns
            else "give one row per SNP"
        )
        raise FlowphenoError(f"{path}: SNP {snp!r} is on lines {lines}; {hint}")
    out = table.copy()
    out["BP"] = bp.astype(np.int64)
    out["P"] = p_values.astype(float)
    for column in out.columns:
        if column.startswith("P_") or column == "TRAITS_TESTED":
            out[column] = pd.to_numeric(out[column].replace({"NA": np.nan, "": np.nan}), errors="coerce")
    return out


def _chromosome_name(codes: pd.Series) -> pd.Series:
    """:func:`same_chromosome_names`, with leading zeros dropped and PLINK's numeric codes of the
    human X, Y, XY and MT (23-26, which PLINK writes in its own tables) read as those names."""
    names = same_chromosome_names(codes).str.replace(r"^0+(?=\d)", "", regex=True)
    return names.replace({"23": "X", "24": "Y", "25": "XY", "26": "MT", "M": "MT"})


def check_assoc_matches_bim(assoc: pd.DataFrame, assoc_path: str | Path, bfile: str | Path) -> None:
    """Every SNP of the association table is in the fileset's ``.bim``, on the same chromosome
    (``chr1`` = ``1``, ``X`` = ``23``) at the same position: clumping reads LD by SNP ID and the
    loci are reported at the table's positions, so a table of another fileset or build would
    give wrong loci without any error. Raises :class:`~flowpheno.errors.FlowphenoError` naming
    the first SNP that differs, its line and how many differ. Sets ``assoc["CHR"]`` to the
    ``.bim``'s spelling of each chromosome, which every output then uses."""
    bim_path = f"{plink_prefix(bfile)}.bim"
    bim = read_bim(bim_path)
    check_snp_ids(bim, bim_path)
    bim = bim.set_index("snp")
    absent = ~assoc["SNP"].isin(bim.index).to_numpy()
    if absent.any():
        row = int(np.flatnonzero(absent)[0])
        raise FlowphenoError(
            f"{assoc_path}, line {row + 2}: SNP {assoc['SNP'].iloc[row]!r} is not in {bim_path} ({int(absent.sum())} "
            f"of {len(assoc)} SNPs are not); give the association table of this fileset (--bfile)"
        )
    at = bim.loc[assoc["SNP"]]  # each table row's .bim entry, in table order
    chrom = _chromosome_name(assoc["CHR"]).to_numpy() != _chromosome_name(at["chrom"]).to_numpy()
    bp = assoc["BP"].to_numpy() != at["pos"].to_numpy()
    if chrom.any() and not bp[chrom].any():  # same positions, other chromosome names: a coding, not a build
        row = int(np.flatnonzero(chrom)[0])
        snp = assoc["SNP"].iloc[row]
        raise FlowphenoError(
            f"{assoc_path}, line {row + 2}: SNP {snp!r} is on chromosome {assoc['CHR'].iloc[row]}, but on "
            f"{bim.loc[snp, 'chrom']} in {bim_path} ({int(chrom.sum())} SNPs differ, at the same positions): the "
            "chromosomes are coded differently; give the table the .bim's chromosome codes"
        )
    moved = chrom | bp
    if moved.any():
        row = int(np.flatnonzero(moved)[0])
        snp = assoc["SNP"].iloc[row]
        raise FlowphenoError(
            f"{assoc_path}, line {row + 2}: SNP {snp!r} is at CHR {assoc['CHR'].iloc[row]} BP {assoc['BP'].iloc[row]}, "
            f"but at {bim.loc[snp, 'chrom']} {bim.loc[snp, 'pos']} in {bim_path} ({int(moved.sum())} SNPs differ); "
            "give the association table of this fileset and genome build (--bfile)"
        )
    assoc["CHR"] = at["chrom"].to_numpy()  # the .bim's spelling (chr1 or 1) in every output


def read_truth(path: str | Path) -> pd.DataFrame:
    """A truth table (``snp``, ``chrom``, ``pos`` per causal SNP, as ``flowpheno simulate`` writes it)."""
    path = Path(path)
    if not path.is_file():
        raise FlowphenoError(f"{path}: file not found; give the truth.tsv written by flowpheno simulate")
    truth = pd.read_csv(path, sep="\t", dtype={"snp": str, "chrom": str})
    missing = [column for column in ("snp", "chrom", "pos") if column not in truth.columns]
    if missing:
        raise FlowphenoError(
            f"{path}: no column {', '.join(missing)}; give the truth.tsv written by flowpheno simulate"
        )
    return truth


def analysed_individuals(
    bfile: str | Path, pheno: str | Path, columns: list[int], test: str, covar: str | Path | None = None
) -> dict[str, Any]:
    """How many individuals GEMMA analysed: those with every tested phenotype of the ``-p``
    file ``pheno`` (the mvLMM keeps complete rows over ``columns``; a per-trait LMM the
    rows with its own column) and, with ``covar`` (the file given to ``gwas assoc --covar``),
    every covariate present, as GEMMA drops the others (``PARAM::ProcessCvtPhen``).

    Returns ``{"n": int}`` for ``"mvlmm"``; ``{"n": individuals in at least one test,
    "n_per_trait": [int, ...]}`` for ``"per-trait"``. Raises
    :class:`~flowpheno.errors.FlowphenoError` (a bad ``-p`` file, ``test`` unknown).
    """
    if test not in TESTS:
        raise FlowphenoError(
            f"--test {test!r}: choose mvlmm (one mvLMM over --columns) or per-trait (gwas assoc --per-trait)"
        )
    fam = f"{plink_prefix(bfile)}.fam"
    values = check_gemma_phenotypes(pheno, columns, len(read_fam(fam)))
    present = np.isfinite(values)
    if covar is not None:
        present &= gemma_covariate_design(covar, fam).notna().all(axis=1).to_numpy()[:, None]
    if test == "mvlmm":
        return {"n": int(present.all(axis=1).sum())}
    return {"n": int(present.any(axis=1).sum()), "n_per_trait": [int(k) for k in present.sum(axis=0)]}


def _check_test_matches(
    assoc: pd.DataFrame, assoc_path: str | Path, test: str | None, columns: list[int] | None
) -> None:
    """A per-trait table (``P_1 .. P_d``) evaluated as one, with as many columns as tested; an mvLMM
    table without them; GEMMA's own mvLMM ``assoc.txt`` (``beta_1 .. beta_d``) with ``d``
    columns, and a warning when it is read without ``--test`` (1 df)."""
    traits = [column for column in assoc.columns if re.fullmatch(r"beta_\d+", str(column))]
    if len(traits) > 1 and test is None:
        warn(
            f"{assoc_path}: GEMMA's mvLMM table of {len(traits)} traits ({traits[0]} .. {traits[-1]}), evaluated "
            f"without --test: lambda GC is read as 1 df; give --pheno, --columns and --test mvlmm for its "
            f"{len(traits)}-df scale"
        )
    if len(traits) > 1 and test == "mvlmm" and len(columns or []) != len(traits):
        raise FlowphenoError(
            f"{assoc_path}: GEMMA's mvLMM table of {len(traits)} traits ({traits[0]} .. {traits[-1]}) for "
            f"{len(columns or [])} --columns; give the columns GEMMA's -n tested"
        )
    per_trait = [column for column in assoc.columns if column.startswith("P_")]
    if test == "mvlmm" and per_trait:
        raise FlowphenoError(
            f"{assoc_path}: a per-trait table (columns {', '.join(per_trait[:4])}); evaluate it with --test per-trait"
        )
    if test == "per-trait" and len(per_trait) != len(columns or []):
        raise FlowphenoError(
            f"{assoc_path}: {len(per_trait)} per-trait p-value column(s) (P_1 ..) for {len(columns or [])} "
            "--columns; give the table of flowpheno gwas assoc --per-trait over the same columns"
        )


MIN_NULL_SNPS = 100
"""Fewer tested SNPs than this on the null chromosomes give a lambda GC too noisy to read: a warning."""


def check_null_chromosomes(
    names: list[str],
    assoc: pd.DataFrame,
    assoc_path: str | Path,
    truth: pd.DataFrame | None = None,
    truth_path: str | Path | None = None,
) -> list[str]:
    """The chromosomes of ``--null-chromosomes`` as the association table names them (``chr3``
    and ``3`` alike; each once, in the table's order), checked: each has a tested SNP (a P
    value), at least one chromosome with a P value is left out, and none holds a causal SNP of
    ``truth``. Warns when they hold fewer than :data:`MIN_NULL_SNPS` tested SNPs.

    Raises:
        FlowphenoError: a chromosome absent from the table or without a P value, every chromosome
            named, or a named chromosome holding a causal SNP.
    """
    given_names = pd.Series(names, dtype=str)
    wanted = set(same_chromosome_names(given_names))
    table_names = assoc["CHR"].astype(str)
    normalised = same_chromosome_names(table_names)
    present, tested = set(normalised), set(normalised[assoc["P"].notna()])
    for given, name in zip(given_names, same_chromosome_names(given_names), strict=True):
        if name not in present:
            raise FlowphenoError(
                f"{assoc_path}: no SNP on chromosome {given} of --null-chromosomes; name chromosomes "
                "of the association table (its CHR column)"
            )
        if name not in tested:
            raise FlowphenoError(
                f"{assoc_path}: chromosome {given} of --null-chromosomes has no tested SNP (every P is NA); "
                "name chromosomes with association results"
            )
    if tested <= wanted:
        raise FlowphenoError(
            "--null-chromosomes names every chromosome with association results (a P value); name only "
            "chromosomes known to carry no effect, and leave the others out"
        )
    if truth is not None:
        causal = truth[same_chromosome_names(truth["chrom"]).isin(wanted).to_numpy()]
        if len(causal):
            first = causal.iloc[0]
            raise FlowphenoError(
                f"{truth_path}: causal SNP {first.get('snp', '?')} is on chromosome {first['chrom']}, named by "
                f"--null-chromosomes ({len(causal)} causal SNP(s) there); null chromosomes must carry no effect: "
                "leave that chromosome out"
            )
    count = int((normalised.isin(wanted) & assoc["P"].notna()).sum())
    if count < MIN_NULL_SNPS:
        warn(
            f"--null-chromosomes: only {count} tested SNP{'' if count == 1 else 's'} on those chromosomes; their "
            "lambda GC is too noisy to judge calibration"
        )
    return list(dict.fromkeys(table_names[normalised.isin(wanted).to_numpy()]))


def evaluate_method(
    bfile: str | Path,
    assoc_path: str | Path,
    out_dir: str | Path,
    name: str,
    truth_path: str | Path | None = None,
    threshold: float | str = "bonferroni",
    alpha: float = 0.05,
    r2: float = 0.1,
    kb: int = 250,
    window_kb: float = TRUTH_WINDOW_KB,
    overwrite: bool = False,
    pheno: str | Path | None = None,
    columns: list[int] | None = None,
    test: str | None = None,
    covar: str | Path | None = None,
    null_chromosomes: list[str] | None = None,
) -> dict[str, Any]:
    """Clump, count (true/false) loci, lambda GC, Manhattan and QQ plots for one method.

    With ``pheno``, ``columns`` and ``test`` (the GEMMA ``-p`` file, its 1-based columns
    and ``"mvlmm"`` or ``"per-trait"``) lambda GC is computed on the test's own scale (a
    d-df chi-square for the mvLMM) and the individuals analysed are counted
    (:func:`analysed_individuals`); without them P is read as a 1-df test and n is not
    recorded. ``summary.json`` says which (``lambda_gc_df``, ``lambda_gc_scale``). With a
    truth file, the share of the genome the truth windows cover (chromosome spans of the
    ``.bim``) is recorded beside the counts, and false loci within ``kb`` of a causal SNP
    are counted as ``false_loci_near``. ``null_chromosomes`` (chromosomes that carry no effect)
    adds lambda GC over their SNPs alone and the loci found there (:func:`summarise`).

    ``out_dir`` is written as a whole (:class:`~flowpheno.io.atomic.StagedDirectory`): it
    must be new, empty or (with ``overwrite``) an earlier evaluation; the inputs are
    checked (:func:`read_assoc`, :func:`read_truth`, the ``-p`` file) before PLINK runs.
    """
    given = {"--pheno": pheno, "--columns": columns, "--test": test}
    if any(value is not None for value in given.values()) and not all(value is not None for value in given.values()):
        missing = ", ".join(option for option, value in given.items() if value is None)
        raise FlowphenoError(
            f"{missing}: --pheno, --columns and --test go together (the GEMMA -p file, its tested columns "
            "and mvlmm or per-trait); give all three, or none for a 1-df lambda GC without n"
        )
    if covar is not None and test is None:
        raise FlowphenoError(
            "--covar counts the individuals GEMMA analysed: give it with --pheno, --columns and --test"
        )
    staged = StagedDirectory(
        out_dir,
        "gwas evaluate",
        {
            "--assoc": assoc_path,
            "--truth": truth_path,
            "--pheno": pheno,
            "--covar": covar,
            "--bfile": [f"{plink_prefix(bfile)}{s}" for s in (".bed", ".bim", ".fam")],
        },
        overwrite=overwrite,
        legacy=EVALUATION_FILES,
        option="--out-dir",
    )
    with staged:
        assoc = read_assoc(assoc_path)
        check_assoc_matches_bim(assoc, assoc_path, bfile)
        truth = read_truth(truth_path) if truth_path else None
        if null_chromosomes:
            null_chromosomes = check_null_chromosomes(null_chromosomes, assoc, assoc_path, truth, truth_path)
        counted: dict[str, Any] = {}
        _check_test_matches(assoc, assoc_path, test, columns)
        if test is not None:
            counted = {
                "test": test,
                "columns": list(columns or []),
                **analysed_individuals(bfile, pheno, columns, test, covar),
            }
        spans = None
        if truth is not None:
            bim = pd.read_csv(
                f"{plink_prefix(bfile)}.bim",
                sep=r"\s+",
                header=None,
                usecols=[0, 3],
                names=["chrom", "pos"],
                dtype={"chrom": str},
            )
            spans = genome_spans(bim)
        tmp = staged.path
        p1 = genome_wide_threshold(threshold, int(assoc["P"].notna().sum()), alpha)
        # the staging folder goes with a failure: the error shows PLINK's last lines instead
        loci = clump(bfile, assoc, p1, r2=r2, kb=kb, log=tmp / "clump.log", log_kept=False)
        counts, is_true = summarise(
            loci,
            assoc,
            truth,
            window_kb,
            test=test,
            d=len(columns) if columns else None,
            spans=spans,
            near_kb=kb,
            null_chromosomes=null_chromosomes,
        )
        summary: dict[str, Any] = {
            "method": name,
            "threshold": p1,
            "snps_tested": int(assoc["P"].notna().sum()),
            **counted,
            **counts,
        }
        if is_true is not None:
            loci = loci.assign(true_locus=is_true.to_numpy())
        with write_errors(out_dir, "--out-dir"):
            loci.assign(method=name).to_csv(tmp / "loci.tsv", sep="\t", index=False)
            for figure, file in (
                (manhattan(assoc, p1, name, truth), "manhattan.png"),
                (qq(assoc, name, counts), "qq.png"),
            ):
                figure.savefig(tmp / file, dpi=110, format="png")
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        staged.commit()
    return summary


SUMMARY_KEYS = ("method", "loci", "lambda_gc", "threshold", "snps_tested")


def _arm(summary: dict[str, Any]) -> tuple[str, str]:
    """(arm, trait group) of a method named ``arm:group`` (the workflow's names), or (name, "")."""
    arm, _, group = str(summary["method"]).partition(":")
    return arm, group


def _gap_shares(summaries: list[dict[str, Any]]) -> dict[int, tuple[int, int] | None]:
    """Per row: the share of the ``single`` -> ``oracle`` difference in true loci that the
    row's arm closes, within its trait group; empty when no group has both arms."""
    by_group: dict[str, dict[str, int]] = {}
    for summary in summaries:
        arm, group = _arm(summary)
        if arm in ("single", "oracle") and isinstance(summary.get("true_loci"), int):
            by_group.setdefault(group, {})[arm] = summary["true_loci"]
    shares: dict[int, tuple[int, int] | None] = {}
    for position, summary in enumerate(summaries):  # (true loci gained over single, the single -> oracle gap)
        ends = by_group.get(_arm(summary)[1], {})
        if len(ends) == 2 and isinstance(summary.get("true_loci"), int):
            gap = ends["oracle"] - ends["single"]
            shares[position] = (summary["true_loci"] - ends["single"], gap) if gap else None
    return shares if any(len(ends) == 2 for ends in by_group.values()) else {}


def _truth_line(summaries: list[dict[str, Any]]) -> str:
    """Causal SNPs, truth window and the share of the genome it covers (as the evaluations recorded them)."""
    causal = sorted({summary["causal_snps"] for summary in summaries if "causal_snps" in summary})
    windows = sorted({summary["truth_window_kb"] for summary in summaries if "truth_window_kb" in summary})
    shares = [summary["truth_window_genome_share"] for summary in summaries if "truth_window_genome_share" in summary]
    text = f"Causal SNPs: {', '.join(map(str, causal))}."
    if windows:
        text += f" A locus is true within {', '.join(f'{w:g}' for w in windows)} kb of one"
        text += f"; these windows cover {max(shares):.1%} of the genome (.bim span)." if shares else "."
    return text


def _n_cell(summary: dict[str, Any]) -> str:
    if "n" not in summary:
        return "-"
    per_trait = summary.get("n_per_trait")
    if per_trait:
        return f"{summary['n']} ({min(per_trait)}-{max(per_trait)})"
    return str(summary["n"])


def _lambda_cell(summary: dict[str, Any]) -> str:
    value = summary["lambda_gc"]
    text = f"{value:.3f}" if isinstance(value, (int, float)) else "-"
    per_trait = bool(summary.get("n_per_trait") or summary.get("lambda_gc_per_trait"))
    df = summary.get("lambda_gc_df")
    if df is None or (summary.get("test") is None and not per_trait):  # the test was not recorded: P read as 1 df
        text = f"{text} (1 df?)"
    else:
        text = f"{text} ({df} df{', per trait' if per_trait else ''})"
    null = summary.get("lambda_gc_null_snps")
    if isinstance(null, (int, float)):
        names = ",".join(map(str, summary.get("null_chromosomes") or []))
        snps = summary.get("null_snps")
        text += f"; null chromosomes {names}: {null:.3f}" + (f" ({snps} SNPs)" if isinstance(snps, int) else "")
    return text


def _fit_path(evaluation_dir: Path) -> Path:
    """The flow fit beside an evaluation folder (the workflow's ``{method}/run`` beside ``{method}/evaluation``)."""
    return (evaluation_dir / ".." / "run" / "fit.json").resolve()


def _fit_cell(evaluation_dir: Path, shared: set[Path]) -> str:
    """s2 and the kept epoch of the flow fitted for this method (``../run/fit.json``), or -;
    ``shared`` when that file is beside several of the evaluations: it cannot be told whose."""
    path = _fit_path(evaluation_dir)
    if path in shared:
        return "- (run/ shared)"
    if not path.is_file():
        return "-"
    try:
        fit = json.loads(path.read_text())
        s2 = (fit.get("covariance") or {}).get("s2")
        epochs = [record for record in fit.get("epochs") or [] if isinstance(record, dict)]
        scored = [record for record in epochs if isinstance(record.get("val_nll"), (int, float))]
        parts = [f"s2 {s2:.3f}" if isinstance(s2, (int, float)) else "iid"]
        if scored:
            best = min(scored, key=lambda record: record["val_nll"])
            stages = max(
                (record.get("stage") for record in epochs if isinstance(record.get("stage"), int)), default=None
            )
            where = f" (stage {best['stage']} of {stages})" if isinstance(best.get("stage"), int) and stages else ""
            parts.append(f"kept epoch {best['epoch']} of {len(epochs)}{where}")
        elif epochs:
            parts.append(f"{len(epochs)} epochs")
        return "; ".join(parts)
    except (ValueError, TypeError, AttributeError, KeyError):
        return "fit.json unreadable"


REPORT_MARK = "<!-- written by flowpheno gwas report -->"
"""Last line of every ``report.md``: an existing report without it is not replaced."""


def _read_loci(path: Path, expected: int, method: str) -> pd.DataFrame:
    """A ``loci.tsv`` of ``gwas evaluate``: whole lines, the columns it writes, ``expected`` rows,
    each of ``method`` (its summary.json's)."""
    if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        raise FlowphenoError(
            f"{path}: the last line is cut (a truncated file?); rerun flowpheno gwas evaluate for that folder"
        )
    table = pd.read_csv(path, sep="\t", dtype={"CHR": str, "SNP": str})
    missing = [column for column in ("CHR", "SNP", "BP", "P", "method") if column not in table.columns]
    if missing or len(table) != expected or table[["CHR", "SNP", "BP", "P"]].isna().any().any():
        raise FlowphenoError(
            f"{path}: not the loci table its summary.json describes ({expected} loci; found {len(table)} rows"
            f"{', no column ' + ', '.join(missing) if missing else ''}); rerun flowpheno gwas evaluate for that folder"
        )
    named = pd.read_csv(path, sep="\t", usecols=["method"], dtype=str, keep_default_na=False)["method"]
    other = named[named != method]  # read as text: a method named NA is a name
    if len(other):
        raise FlowphenoError(
            f"{path}: loci of method {str(other.iloc[0])!r}, but its summary.json is of {method!r} (an edited or "
            "copied file?); rerun flowpheno gwas evaluate for that folder"
        )
    return table


def write_report(
    method_dirs: list[str | Path],
    out_dir: str | Path,
    title: str = "flowpheno GWAS comparison",
    overwrite: bool = False,
) -> pd.DataFrame:
    """``loci.tsv`` (every locus of every method) and ``report.md`` (one row per method: n
    analysed, loci, true/false loci, power, FDP, lambda GC with its degrees of freedom, the
    flow's fit (s2, kept epoch) from ``run/fit.json`` beside each evaluation folder, and,
    when ``single`` and ``oracle`` arms of a trait group are both given, the share of the
    gap in true loci between them that each arm closes).

    An existing ``report.md`` or ``loci.tsv`` in ``out_dir`` is replaced only with
    ``overwrite``; every method folder must hold what ``gwas evaluate`` writes, each under its
    own method name (the rows and ``loci.tsv``'s ``method`` column tell them apart by it).
    Raises :class:`~flowpheno.errors.FlowphenoError`.
    """
    out_dir = Path(out_dir)
    check_no_clobber([out_dir / "report.md", out_dir / "loci.tsv"], overwrite)
    report_path = out_dir / "report.md"
    if report_path.is_file() and REPORT_MARK not in report_path.read_text(errors="replace"):
        raise FlowphenoError(
            f"--out-dir: {report_path} was not written by flowpheno "
            "gwas report; it is never replaced: choose another folder"
        )
    seen: set[Path] = set()
    for directory in map(Path, method_dirs):
        if directory.resolve() in seen:
            raise FlowphenoError(f"{directory} is given twice; name each method's evaluation folder once")
        seen.add(directory.resolve())
        if not directory.is_dir():
            raise FlowphenoError(
                f"{directory}: no such folder; give folders written by flowpheno gwas evaluate --out-dir"
            )
        for name in ("summary.json", "loci.tsv"):
            if not (directory / name).is_file():
                raise FlowphenoError(
                    f"{directory}: no {name}; give folders written by flowpheno gwas evaluate --out-dir"
                )
    summaries, loci = [], []
    for directory in map(Path, method_dirs):
        try:
            summary = json.loads((directory / "summary.json").read_text())
        except ValueError:
            raise FlowphenoError(
                f"{directory}/summary.json: not valid JSON (a truncated file?); rerun flowpheno gwas evaluate"
            ) from None
        missing = [key for key in SUMMARY_KEYS if not isinstance(summary, dict) or key not in summary]
        if missing:
            raise FlowphenoError(
                f"{directory}/summary.json: no {', '.join(missing)}; rerun flowpheno gwas evaluate for that folder"
            )
        same = next((earlier["dir"] for earlier in summaries if earlier["method"] == summary["method"]), None)
        if same is not None:  # rows and the combined loci.tsv are told apart by the method alone
            raise FlowphenoError(
                f"{directory}/summary.json: method {summary['method']!r} is also the method of {same}; evaluate "
                "each with its own name (flowpheno gwas evaluate --name)"
            )
        summaries.append(summary | {"dir": directory})
        loci.append(_read_loci(directory / "loci.tsv", int(summary["loci"]), str(summary["method"])))
    table = pd.DataFrame(summaries)
    fits = [_fit_path(Path(summary["dir"])) for summary in summaries]
    shared_fits = {path for path in fits if fits.count(path) > 1 and path.is_file()}
    has_truth = "true_loci" in table.columns
    gaps = _gap_shares(summaries) if has_truth else {}
    header = (
        "| method | n | loci | "
        + ("true | false | power | FDP | " if has_truth else "")
        + "lambda GC [1] | fit [2] | "
        + ("single -> oracle gap closed [3] | " if gaps else "")
        + "threshold | SNPs tested | plots |"
    )
    lines = [f"# {title}", "", "Loci are PLINK 1.9 clumps of SNPs below each method's threshold.", ""]
    if has_truth:
        lines += [_truth_line(summaries), ""]
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for position, summary in enumerate(summaries):
        row = table.iloc[position]
        cells = [str(summary["method"]).replace("|", "\\|"), _n_cell(summary), str(summary["loci"])]
        if has_truth:
            power = summary.get("power")
            cells += [
                str(summary.get("true_loci", "-")),
                str(summary.get("false_loci", "-")),
                f"{power:.2f}" if isinstance(power, (int, float)) else "-",
                f"{summary['fdp']:.2f}" if isinstance(summary.get("fdp"), (int, float)) else "-",
            ]
        cells += [_lambda_cell(summary), _fit_cell(Path(row["dir"]), shared_fits)]
        if gaps:
            share = gaps.get(position)
            cells.append("-" if share is None else f"{share[0] / share[1]:.0%} ({share[0]:+d} of {share[1]} loci)")
        relative = Path(
            os.path.relpath(Path(row["dir"]).resolve(), out_dir.resolve())
        )  # links work from report.md's folder
        cells += [
            f"{summary['threshold']:.2g}",
            str(summary["snps_tested"]),
            f"[Manhattan]({relative}/manhattan.png), [QQ]({relative}/qq.png)",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "n: individuals GEMMA analysed (the mvLMM keeps only individuals with every tested trait and covariate; "
        "`single`: individuals in at least one per-trait test, the per-trait range in brackets); - where the "
        "evaluation was not given the tested phenotype file (gwas evaluate --pheno --columns --test).",
        "",
        "[1] lambda GC: median of the chi-square quantiles of the p-values with the test's own degrees of freedom, "
        "over that distribution's median: for an mvLMM over d traits a chi-square with d df (written `d df`); for "
        "`single` the mean of the per-trait univariate tests' 1-df lambdas (its min p x d combination has no "
        "chi-square null of its own and is conservative by construction). `1 df?`: the test was not recorded and P was "
        "read as 1 df, which exaggerates any deviation of a d-df test from 1. `null chromosomes`: the same lambda "
        "over the SNPs of chromosomes that carry no effect (gwas evaluate --null-chromosomes), where it measures "
        "calibration alone; genome-wide it also grows with true polygenic signal, above all with LOCO.",
        "",
        "[2] fit: the flow's s2 (share of latent variance explained by kinship; `iid`: none) and the kept epoch "
        "(lowest validation NLL) of all epochs run, from `run/fit.json` beside the evaluation folder (left out when "
        "several of the evaluations have the same folder beside them: `run/ shared`).",
    ]
    if gaps:
        lines += [
            "",
            "[3] (true loci - true loci of `single`) / (true loci of `oracle` - true loci of `single`) in the same "
            "trait group: the share of the way from per-trait RINT to the simulator's own inverse map (in brackets: "
            "the true loci gained over `single` and the gap; a gap of a few loci makes the share coarse). True loci "
            "only: read it beside the false loci and FDP.",
        ]
    if has_truth:
        lines += [
            "",
            "True locus: index SNP within the truth window of a causal SNP. Power: share of causal SNPs with a locus "
            "nearby. FDP: false loci / loci.",
        ]
    lines += ["", REPORT_MARK]
    found = [frame for frame in loci if len(frame)]
    combined = pd.concat(found, ignore_index=True) if found else loci[0].iloc[:0]
    with atomic_path(out_dir / "loci.tsv") as loci_tmp, atomic_path(out_dir / "report.md") as report_tmp:
        combined.to_csv(loci_tmp, sep="\t", index=False)  # both renamed only when both are written
        report_tmp.write_text("\n".join(lines) + "\n")
    return table
