"""Calibration and power: genomic inflation, and loci matched to the simulated truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import chi2

MEDIAN_CHI2_1DF = float(chi2.ppf(0.5, 1))


def lambda_gc(p_values: np.ndarray) -> float:
    """Genomic inflation: median 1-df chi-square of the p-values over its null median."""
    p = np.asarray(p_values, dtype=float)
    p = p[np.isfinite(p) & (p > 0) & (p <= 1)]
    if p.size == 0:
        return float("nan")
    return float(np.median(chi2.isf(p, 1)) / MEDIAN_CHI2_1DF)


def genome_wide_threshold(setting: float | str, n_snps: int, alpha: float = 0.05) -> float:
    """A number as given, or ``"bonferroni"``: ``alpha / n_snps`` (5e-8 is this for 1M SNPs)."""
    if isinstance(setting, str):
        if setting.lower() != "bonferroni":
            return float(setting)
        return alpha / n_snps
    return float(setting)


def same_chromosome_names(names: pd.Series) -> pd.Series:
    """Chromosome names compared without case or a ``chr`` prefix: ``chr1`` is ``1``, ``chrX`` is ``X``."""
    return names.astype(str).str.replace(r"^chr", "", case=False, regex=True).str.upper()


def match_truth(loci: pd.DataFrame, truth: pd.DataFrame, window_kb: float) -> tuple[pd.Series, int]:
    """Which loci lie within ``window_kb`` of a causal SNP, and how many causal SNPs were hit.

    A locus is true when its index SNP is on the chromosome of a causal SNP (``chr1`` and ``1`` alike) and within
    the window of it; a causal SNP is found when some locus is within its window.
    """
    window = window_kb * 1000
    is_true = pd.Series(False, index=loci.index)
    found = 0
    causal_chr = same_chromosome_names(truth["chrom"]).to_numpy()
    causal_pos = truth["pos"].to_numpy()
    locus_chr = same_chromosome_names(loci["CHR"]).to_numpy()
    locus_pos = loci["BP"].to_numpy()
    for chrom, pos in zip(causal_chr, causal_pos):
        near = (locus_chr == chrom) & (np.abs(locus_pos - pos) <= window)
        is_true |= near
        found += bool(near.any())
    return is_true, found


def summarise(
    loci: pd.DataFrame, assoc: pd.DataFrame, truth: pd.DataFrame | None, window_kb: float
) -> tuple[dict[str, float | int | None], pd.Series | None]:
    """Loci found, true and false loci, power, false discovery proportion and lambda GC;
    with the per-locus true/false flags when the truth is known."""
    summary: dict[str, float | int | None] = {"loci": int(len(loci)), "lambda_gc": lambda_gc(assoc["P"].to_numpy())}
    per_trait = [column for column in assoc.columns if column.startswith("P_")]
    if per_trait:  # min-p combinations are conservative: calibration is that of the per-trait tests
        summary["lambda_gc_combined"] = summary["lambda_gc"]
        summary["lambda_gc_per_trait"] = [lambda_gc(assoc[column].to_numpy()) for column in per_trait]
        summary["lambda_gc"] = float(np.mean(summary["lambda_gc_per_trait"]))
    if truth is None:
        return summary, None
    is_true, found = match_truth(loci, truth, window_kb)
    summary.update({
        "true_loci": int(is_true.sum()),
        "false_loci": int((~is_true).sum()),
        "causal_snps": int(len(truth)),
        "causal_found": found,
        "power": found / len(truth) if len(truth) else None,
        "fdp": float((~is_true).sum() / len(loci)) if len(loci) else 0.0,
    })
    return summary, is_true
