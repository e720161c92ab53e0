"""The workflow's steps as library calls (the Snakefile runs them through ``flowpheno gwas``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flowpheno.errors import FlowphenoError
from flowpheno.gwas.baseline import rint_table
from flowpheno.gwas.clump import clump
from flowpheno.gwas.evaluate import genome_wide_threshold, summarise
from flowpheno.gwas.gemma import MIN_PHENOTYPED, check_gemma_phenotypes, gemma_lmm, min_p_over_traits
from flowpheno.gwas.plots import manhattan, qq
from flowpheno.io.atomic import atomic_path
from flowpheno.io.ids import FID_GIVEN
from flowpheno.io.outputs import write_phenotypes
from flowpheno.io.plink import plink_prefix, read_fam
from flowpheno.pipeline import Phenotypes, read_phenotypes


def write_rint_phenotypes(pheno: str | Path, out: str | Path, fam: str | Path, covar: str | Path | None = None,
                          traits: list[str] | None = None) -> pd.DataFrame:
    """Rank-inverse-normal traits after covariates, as a GEMMA ``-p`` file in ``.fam`` order.

    Rows are matched to the ``.fam`` on (FID, IID) (IID alone when ``pheno`` has no
    FID). Returns the table as written: the ``.fam``'s FID, IID and the traits (NaN
    where the individual has no complete row).
    """
    phenotypes = read_phenotypes(pheno, traits, covar)
    check_rint_traits(phenotypes, pheno, covar)
    table = rint_table(phenotypes.id_table(), phenotypes.values, phenotypes.covariates, phenotypes.traits)
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
            raise FlowphenoError(f"{pheno}: trait {trait!r} has {present.size} value(s){where}; GEMMA needs at least "
                                 f"{MIN_PHENOTYPED}: leave it out of --traits")
        if np.ptp(present) == 0:
            raise FlowphenoError(f"{pheno}: trait {trait!r} is {present[0]:g} for all {present.size} individuals{where}; "
                                 "it carries no association: leave it out of --traits")


def association(bfile: str | Path, kinship: str | Path, pheno: str | Path, columns: list[int], out: str | Path,
                per_trait: bool = False) -> pd.DataFrame:
    """One mvLMM over ``columns``, or (``per_trait``) one LMM per column combined by min p x d.

    The ``-p`` file is checked first (:func:`check_gemma_phenotypes`). Writes ``out``
    (SNP, CHR, BP, P) and GEMMA's own tables beside it: ``{stem}.gemma.assoc.txt``, or
    ``{stem}.trait{k}.assoc.txt`` per column, all removed again when a later column fails.
    Raises :class:`~flowpheno.errors.FlowphenoError`.
    """
    out = Path(out)
    check_gemma_phenotypes(pheno, columns, len(read_fam(f"{plink_prefix(bfile)}.fam")))
    if per_trait:
        tables, written = [], []
        try:
            for column in columns:
                written.append(out.with_name(f"{out.stem}.trait{column}.assoc.txt"))
                tables.append(gemma_lmm(bfile, kinship, pheno, [column], written[-1]))
        except BaseException:  # no set of per-trait files that a later trait failed to join
            for path in written:
                path.unlink(missing_ok=True)
            raise
        result = min_p_over_traits(tables)
    else:
        result = gemma_lmm(bfile, kinship, pheno, columns, out.with_name(f"{out.stem}.gemma.assoc.txt"))
    with atomic_path(out) as tmp:
        result.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    return result


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
    window_kb: float = 250,
) -> dict[str, Any]:
    """Clump, count (true/false) loci, lambda GC, Manhattan and QQ plots for one method."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    assoc = pd.read_csv(assoc_path, sep="\t", dtype={"SNP": str, "CHR": str})
    truth = pd.read_csv(truth_path, sep="\t", dtype={"snp": str, "chrom": str}) if truth_path else None
    p1 = genome_wide_threshold(threshold, int(assoc["P"].notna().sum()), alpha)
    loci = clump(bfile, assoc, p1, r2=r2, kb=kb, log=out_dir / "clump.log")
    counts, is_true = summarise(loci, assoc, truth, window_kb)
    summary: dict[str, Any] = {"method": name, "threshold": p1, "snps_tested": int(assoc["P"].notna().sum()), **counts}
    if is_true is not None:
        loci = loci.assign(true_locus=is_true.to_numpy())
    with atomic_path(out_dir / "loci.tsv") as tmp:
        loci.assign(method=name).to_csv(tmp, sep="\t", index=False)
    for figure, file in ((manhattan(assoc, p1, name, truth), "manhattan.png"), (qq(assoc, name), "qq.png")):
        with atomic_path(out_dir / file) as tmp:
            figure.savefig(tmp, dpi=110, format="png")
    with atomic_path(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return summary


def write_report(method_dirs: list[str | Path], out_dir: str | Path, title: str = "flowpheno GWAS comparison") -> pd.DataFrame:
    """``loci.tsv`` (every locus of every method) and ``report.md`` (one row per method)."""
    out_dir = Path(out_dir)
    summaries, loci = [], []
    for directory in map(Path, method_dirs):
        summaries.append(json.loads((directory / "summary.json").read_text()) | {"dir": directory})
        loci.append(pd.read_csv(directory / "loci.tsv", sep="\t", dtype={"CHR": str, "SNP": str}))
    table = pd.DataFrame(summaries)
    with atomic_path(out_dir / "loci.tsv") as tmp:
        pd.concat(loci, ignore_index=True).to_csv(tmp, sep="\t", index=False)
    has_truth = "true_loci" in table.columns
    header = "| method | loci | " + ("true | false | power | FDP | " if has_truth else "") + "lambda GC | threshold | plots |"
    lines = [f"# {title}", "", f"SNPs tested: {int(table['snps_tested'].max())}; loci are PLINK 1.9 clumps of SNPs below the threshold.", "",
             header, "|" + "---|" * (header.count("|") - 1)]
    for row in table.itertuples():
        cells = [row.method, str(row.loci)]
        if has_truth:
            cells += [str(row.true_loci), str(row.false_loci), f"{row.power:.2f}" if row.power is not None else "-", f"{row.fdp:.2f}"]
        relative = Path(row.dir).resolve().relative_to(out_dir.resolve()) if Path(row.dir).resolve().is_relative_to(out_dir.resolve()) else Path(row.dir)
        cells += [f"{row.lambda_gc:.3f}", f"{row.threshold:.2g}", f"[Manhattan]({relative}/manhattan.png), [QQ]({relative}/qq.png)"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "lambda GC: median 1-df chi-square of the p-values / 0.455; for `single` the mean over its per-trait "
              "tests (its min p x d combination is conservative by construction)."]
    if has_truth:
        lines += ["", "True locus: index SNP within the truth window of a causal SNP. Power: share of causal SNPs with a locus nearby. "
                  "FDP: false loci / loci."]
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return table
