"""The workflow's steps as library calls (the Snakefile runs them through ``flowpheno gwas``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flowpheno.errors import FlowphenoError
from flowpheno.gwas.baseline import rint_table
from flowpheno.gwas.clump import clump
from flowpheno.gwas.evaluate import genome_wide_threshold, summarise
from flowpheno.gwas.gemma import MIN_PHENOTYPED, check_gemma_kinship, check_gemma_phenotypes, gemma_lmm, min_p_over_traits
from flowpheno.gwas.plots import manhattan, qq
from flowpheno.io.atomic import StagedDirectory, atomic_path, check_no_clobber, write_errors
from flowpheno.io.ids import FID_GIVEN
from flowpheno.io.outputs import write_phenotypes
from flowpheno.io.plink import plink_prefix, read_bim, read_fam
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
                per_trait: bool = False, chromosome: str | None = None) -> pd.DataFrame:
    """One mvLMM over ``columns``, or (``per_trait``) one LMM per column combined by min p x d;
    over every SNP, or only those on ``chromosome`` (a ``.bim`` code: LOCO runs).

    The ``-p`` file is checked first (:func:`check_gemma_phenotypes`). Writes ``out``
    (SNP, CHR, BP, P) and GEMMA's own tables beside it: ``{stem}.gemma.assoc.txt``, or
    ``{stem}.trait{k}.assoc.txt`` per column, all removed again when a later column fails.
    Raises :class:`~flowpheno.errors.FlowphenoError`.
    """
    out = Path(out)
    n_fam = len(read_fam(f"{plink_prefix(bfile)}.fam"))
    check_gemma_phenotypes(pheno, columns, n_fam)
    check_gemma_kinship(kinship, n_fam)
    if per_trait:
        tables, written = [], []
        try:
            for column in columns:
                written.append(out.with_name(f"{out.stem}.trait{column}.assoc.txt"))
                tables.append(gemma_lmm(bfile, kinship, pheno, [column], written[-1], chromosome))
        except BaseException:  # no set of per-trait files that a later trait failed to join
            for path in written:
                path.unlink(missing_ok=True)
            raise
        result = min_p_over_traits(tables, read_bim(f"{plink_prefix(bfile)}.bim")["snp"].tolist())
    else:
        result = gemma_lmm(bfile, kinship, pheno, columns, out.with_name(f"{out.stem}.gemma.assoc.txt"), chromosome)
    with atomic_path(out) as tmp:
        result.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    return result


EVALUATION_FILES = ("summary.json", "loci.tsv", "manhattan.png", "qq.png", "clump.log")
"""What :func:`evaluate_method` writes into its folder (``summary.json`` first)."""
ASSOC_COLUMNS = ("SNP", "CHR", "BP", "P")


def read_assoc(path: str | Path) -> pd.DataFrame:
    """An association table (SNP, CHR, BP, P, as ``flowpheno gwas assoc`` writes it), checked.

    Raises :class:`~flowpheno.errors.FlowphenoError` naming the file and the line when a
    column is missing, a line is cut short (a truncated file), P is not a number in [0, 1]
    or NA, or no SNP has a p-value.
    """
    path = Path(path)
    if not path.is_file():
        raise FlowphenoError(f"{path}: file not found; give the table written by flowpheno gwas assoc")
    with path.open("rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(size - 1, 0))
        if size and handle.read(1) != b"\n":
            raise FlowphenoError(f"{path}: the last line is cut (no newline at the end: a truncated file?); rerun flowpheno gwas assoc")
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise FlowphenoError(f"{path}: not a tab-separated association table ({' '.join(str(error).split())})") from None
    missing = [column for column in ASSOC_COLUMNS if column not in table.columns]
    if missing:
        raise FlowphenoError(
            f"{path}: no column {', '.join(missing)} (found: {', '.join(map(str, table.columns[:8]))}); give the table written "
            "by flowpheno gwas assoc (SNP, CHR, BP, P), not GEMMA's own assoc.txt or a phenotype file"
        )
    short = (table[list(ASSOC_COLUMNS)] == "").any(axis=1).to_numpy()
    if short.any():
        line = int(np.flatnonzero(short)[0]) + 2
        raise FlowphenoError(f"{path}, line {line}: a field is empty (a truncated or edited file?); rerun flowpheno gwas assoc")
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
    if p_values.notna().sum() == 0:
        raise FlowphenoError(f"{path}: no SNP has a p-value (every P is NA); check the GEMMA log of that run")
    out = table.copy()
    out["BP"] = bp.astype(np.int64)
    out["P"] = p_values.astype(float)
    for column in out.columns:
        if column.startswith("P_") or column == "TRAITS_TESTED":
            out[column] = pd.to_numeric(out[column].replace({"NA": np.nan, "": np.nan}), errors="coerce")
    return out


def read_truth(path: str | Path) -> pd.DataFrame:
    """A truth table (``snp``, ``chrom``, ``pos`` per causal SNP, as ``flowpheno simulate`` writes it)."""
    path = Path(path)
    if not path.is_file():
        raise FlowphenoError(f"{path}: file not found; give the truth.tsv written by flowpheno simulate")
    truth = pd.read_csv(path, sep="\t", dtype={"snp": str, "chrom": str})
    missing = [column for column in ("snp", "chrom", "pos") if column not in truth.columns]
    if missing:
        raise FlowphenoError(f"{path}: no column {', '.join(missing)}; give the truth.tsv written by flowpheno simulate")
    return truth


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
    overwrite: bool = False,
) -> dict[str, Any]:
    """Clump, count (true/false) loci, lambda GC, Manhattan and QQ plots for one method.

    ``out_dir`` is written as a whole (:class:`~flowpheno.io.atomic.StagedDirectory`): it
    must be new, empty or (with ``overwrite``) an earlier evaluation; the inputs are
    checked (:func:`read_assoc`, :func:`read_truth`) before PLINK runs.
    """
    staged = StagedDirectory(out_dir, "gwas evaluate", {"--assoc": assoc_path, "--truth": truth_path,
                                                         "--bfile": [f"{plink_prefix(bfile)}{s}" for s in (".bed", ".bim", ".fam")]},
                             overwrite=overwrite, legacy=EVALUATION_FILES, option="--out-dir")
    with staged:
        assoc = read_assoc(assoc_path)
        truth = read_truth(truth_path) if truth_path else None
        tmp = staged.path
        p1 = genome_wide_threshold(threshold, int(assoc["P"].notna().sum()), alpha)
        loci = clump(bfile, assoc, p1, r2=r2, kb=kb, log=tmp / "clump.log")
        counts, is_true = summarise(loci, assoc, truth, window_kb)
        summary: dict[str, Any] = {"method": name, "threshold": p1, "snps_tested": int(assoc["P"].notna().sum()), **counts}
        if is_true is not None:
            loci = loci.assign(true_locus=is_true.to_numpy())
        with write_errors(out_dir, "--out-dir"):
            loci.assign(method=name).to_csv(tmp / "loci.tsv", sep="\t", index=False)
            for figure, file in ((manhattan(assoc, p1, name, truth), "manhattan.png"), (qq(assoc, name), "qq.png")):
                figure.savefig(tmp / file, dpi=110, format="png")
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        staged.commit()
    return summary


SUMMARY_KEYS = ("method", "loci", "lambda_gc", "threshold", "snps_tested")
REPORT_MARK = "<!-- written by flowpheno gwas report -->"
"""Last line of every ``report.md``: an existing report without it is not replaced."""


def _read_loci(path: Path, expected: int) -> pd.DataFrame:
    """A ``loci.tsv`` of ``gwas evaluate``: whole lines, the columns it writes, ``expected`` rows."""
    if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        raise FlowphenoError(f"{path}: the last line is cut (a truncated file?); rerun flowpheno gwas evaluate for that folder")
    table = pd.read_csv(path, sep="\t", dtype={"CHR": str, "SNP": str})
    missing = [column for column in ("CHR", "SNP", "BP", "P", "method") if column not in table.columns]
    if missing or len(table) != expected or table[["CHR", "SNP", "BP", "P"]].isna().any().any():
        raise FlowphenoError(
            f"{path}: not the loci table its summary.json describes ({expected} loci; found {len(table)} rows"
            f"{', no column ' + ', '.join(missing) if missing else ''}); rerun flowpheno gwas evaluate for that folder"
        )
    return table


def write_report(method_dirs: list[str | Path], out_dir: str | Path, title: str = "flowpheno GWAS comparison",
                 overwrite: bool = False) -> pd.DataFrame:
    """``loci.tsv`` (every locus of every method) and ``report.md`` (one row per method).

    An existing ``report.md`` or ``loci.tsv`` in ``out_dir`` is replaced only with
    ``overwrite``; every method folder must hold what ``gwas evaluate`` writes.
    Raises :class:`~flowpheno.errors.FlowphenoError`.
    """
    out_dir = Path(out_dir)
    check_no_clobber([out_dir / "report.md", out_dir / "loci.tsv"], overwrite)
    report_path = out_dir / "report.md"
    if report_path.is_file() and REPORT_MARK not in report_path.read_text(errors="replace"):
        raise FlowphenoError(f"--out-dir: {report_path} was not written by flowpheno gwas report; it is never replaced: choose another folder")
    seen: set[Path] = set()
    for directory in map(Path, method_dirs):
        if directory.resolve() in seen:
            raise FlowphenoError(f"{directory} is given twice; name each method's evaluation folder once")
        seen.add(directory.resolve())
        for name in ("summary.json", "loci.tsv"):
            if not (directory / name).is_file():
                raise FlowphenoError(f"{directory}: no {name}; give folders written by flowpheno gwas evaluate --out-dir")
    summaries, loci = [], []
    for directory in map(Path, method_dirs):
        try:
            summary = json.loads((directory / "summary.json").read_text())
        except ValueError:
            raise FlowphenoError(f"{directory}/summary.json: not valid JSON (a truncated file?); rerun flowpheno gwas evaluate") from None
        missing = [key for key in SUMMARY_KEYS if not isinstance(summary, dict) or key not in summary]
        if missing:
            raise FlowphenoError(f"{directory}/summary.json: no {', '.join(missing)}; rerun flowpheno gwas evaluate for that folder")
        summaries.append(summary | {"dir": directory})
        loci.append(_read_loci(directory / "loci.tsv", int(summary["loci"])))
    table = pd.DataFrame(summaries)
    has_truth = "true_loci" in table.columns
    header = ("| method | loci | " + ("true | false | power | FDP | " if has_truth else "")
              + "lambda GC | threshold | SNPs tested | plots |")
    lines = [f"# {title}", "", "Loci are PLINK 1.9 clumps of SNPs below each method's threshold.", "",
             header, "|" + "---|" * (header.count("|") - 1)]
    for row in table.itertuples():
        cells = [row.method, str(row.loci)]
        if has_truth:
            cells += [str(row.true_loci), str(row.false_loci), f"{row.power:.2f}" if row.power is not None else "-", f"{row.fdp:.2f}"]
        relative = Path(os.path.relpath(Path(row.dir).resolve(), out_dir.resolve()))  # links work from report.md's folder
        cells += [f"{row.lambda_gc:.3f}", f"{row.threshold:.2g}", str(row.snps_tested),
                  f"[Manhattan]({relative}/manhattan.png), [QQ]({relative}/qq.png)"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "lambda GC: median 1-df chi-square of the p-values / 0.455; for `single` the mean over its per-trait "
              "tests (its min p x d combination is conservative by construction)."]
    if has_truth:
        lines += ["", "True locus: index SNP within the truth window of a causal SNP. Power: share of causal SNPs with a locus nearby. "
                  "FDP: false loci / loci."]
    lines += ["", REPORT_MARK]
    found = [frame for frame in loci if len(frame)]
    combined = pd.concat(found, ignore_index=True) if found else loci[0].iloc[:0]
    with atomic_path(out_dir / "loci.tsv") as loci_tmp, atomic_path(out_dir / "report.md") as report_tmp:
        combined.to_csv(loci_tmp, sep="\t", index=False)  # both renamed only when both are written
        report_tmp.write_text("\n".join(lines) + "\n")
    return table
