"""Calibration and power: genomic inflation on each test's own scale, and loci matched to
the simulated truth with the share of the genome the truth windows cover."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import chi2

from flowpheno.gwas import TRUTH_WINDOW_KB

TESTS = ("mvlmm", "per-trait")
"""What a GEMMA association table holds: one mvLMM over d traits (a d-df chi-square test),
or one univariate LMM per trait (1-df tests) combined by min p x d."""


def lambda_gc(p_values: np.ndarray, df: int = 1) -> float:
    """Genomic inflation on the test's own scale: ``median(chi2_df.isf(p)) / chi2_df.median``.

    ``p_values``: (m,) p-values of one test (non-finite or out-of-range values are
    ignored); ``df``: the degrees of freedom of its chi-square null (1 for a univariate
    test, d for GEMMA's d-trait mvLMM score test, Zhou & Stephens 2014). A d-df test
    read as 1-df exaggerates any deviation from 1 (a d-df lambda of 0.95 reads as about
    0.88 on the 1-df scale for d = 4). Returns NaN when no p-value is usable
    (Devlin & Roeder 1999, Biometrics 55:997).

    Example:
        >>> from scipy.stats import chi2
        >>> null = np.random.default_rng(0).uniform(size=10_000)  # p-values of a calibrated test
        >>> round(lambda_gc(null), 2), round(lambda_gc(null, df=4), 2)
        (1.0, 1.0)
        >>> inflated = chi2.sf(1.1 * chi2.isf(null, 1), 1)  # every 1-df statistic 10% too large
        >>> round(lambda_gc(inflated), 2)
        1.1
    """
    p = np.asarray(p_values, dtype=float)
    p = p[np.isfinite(p) & (p > 0) & (p <= 1)]
    if p.size == 0:
        return float("nan")
    return float(np.median(chi2.isf(p, df)) / chi2.ppf(0.5, df))


def lambda_gc_standard_error(m: int, df: int = 1) -> float:
    """Sampling SD of :func:`lambda_gc` for ``m`` null p-values: the asymptotic SD of a
    sample median, ``1 / (2 f(q) sqrt(m))`` with ``f`` the chi2_df density at its median ``q``,
    divided by ``q``.

    Example:
        >>> round(lambda_gc_standard_error(100_000), 4)  # 100k null SNPs: lambda 1 +- 0.007
        0.0074
    """
    median = chi2.ppf(0.5, df)
    return float(1.0 / (2.0 * chi2.pdf(median, df) * np.sqrt(m)) / median)


def genome_wide_threshold(setting: float | str, n_snps: int, alpha: float = 0.05) -> float:
    """A number as given, or ``"bonferroni"``: ``alpha / n_snps`` (5e-8 is this for 1M SNPs).

    ``setting``: a p-value threshold, as a number or its text, or ``"bonferroni"`` (any case).
    Raises ``ValueError`` when ``setting`` is other text.

    Example:
        >>> genome_wide_threshold("bonferroni", 1_000_000)
        5e-08
        >>> genome_wide_threshold("1e-6", 10)
        1e-06
    """
    if isinstance(setting, str):
        if setting.lower() != "bonferroni":
            return float(setting)
        return alpha / n_snps
    return float(setting)


def same_chromosome_names(names: pd.Series) -> pd.Series:
    """Chromosome names compared without case or a ``chr`` prefix: ``chr1`` is ``1``, ``chrX`` is ``X``.

    Example:
        >>> same_chromosome_names(pd.Series(["chr1", "X", "chrx", "1"])).tolist()
        ['1', 'X', 'X', '1']
    """
    return names.astype(str).str.replace(r"^chr", "", case=False, regex=True).str.upper()


def match_truth(loci: pd.DataFrame, truth: pd.DataFrame, window_kb: float) -> tuple[pd.Series, int]:
    """Which loci lie within ``window_kb`` of a causal SNP, and how many causal SNPs were hit.

    A locus is true when its index SNP is on the chromosome of a causal SNP (``chr1`` and ``1`` alike) and within
    the window of it; a causal SNP is found when some locus is within its window.

    ``loci``: columns ``CHR``, ``BP`` (bp), one row per locus (:func:`flowpheno.gwas.clump.clump`);
    ``truth``: columns ``chrom``, ``pos`` (bp), one row per causal SNP; ``window_kb``: kb either
    side. Returns ``(is_true, found)``: a boolean Series over ``loci.index`` and the number of
    causal SNPs with a locus in their window.

    Example:
        >>> loci = pd.DataFrame({"CHR": ["1", "chr2", "2"], "BP": [1_000_000, 5_020_000, 9_000_000]})
        >>> truth = pd.DataFrame({"chrom": ["1", "2", "3"], "pos": [1_030_000, 5_000_000, 100]})
        >>> is_true, found = match_truth(loci, truth, window_kb=40.0)
        >>> is_true.tolist(), found
        ([True, True, False], 2)
    """
    window = window_kb * 1000
    is_true = pd.Series(False, index=loci.index)
    found = 0
    causal_chr = same_chromosome_names(truth["chrom"]).to_numpy()
    causal_pos = truth["pos"].to_numpy()
    locus_chr = same_chromosome_names(loci["CHR"]).to_numpy()
    locus_pos = loci["BP"].to_numpy()
    for chrom, pos in zip(causal_chr, causal_pos, strict=True):
        near = (locus_chr == chrom) & (np.abs(locus_pos - pos) <= window)
        is_true |= near
        found += bool(near.any())
    return is_true, found


def genome_spans(bim: pd.DataFrame) -> pd.DataFrame:
    """First and last position of each chromosome of a ``.bim`` (columns ``chrom``, ``pos``):
    a DataFrame indexed by :func:`same_chromosome_names`, columns ``start``, ``end`` (bp)."""
    chrom = same_chromosome_names(bim["chrom"])
    return bim.assign(chrom=chrom).groupby("chrom", sort=False)["pos"].agg(start="min", end="max")


def truth_window_share(truth: pd.DataFrame, spans: pd.DataFrame, window_kb: float) -> float:
    """Share of the genome (the sum of the chromosome spans of ``spans``) that the union of
    the truth windows ``[pos - window, pos + window]`` covers, each clipped to its
    chromosome's span: the chance that a locus placed at random is called true.

    ``truth``: columns ``chrom``, ``pos`` (bp); ``spans``: :func:`genome_spans`; ``window_kb``:
    kb either side. Returns a share in [0, 1], NaN when the spans cover no base pair.

    Example:
        >>> bim = pd.DataFrame({"chrom": ["1", "1", "2", "2"], "pos": [0, 10_000_000, 0, 10_000_000]})
        >>> truth = pd.DataFrame({"chrom": ["1", "2"], "pos": [1_030_000, 5_000_000]})
        >>> truth_window_share(truth, genome_spans(bim), window_kb=40.0)  # 2 x 80 kb of 20 Mb
        0.008
    """
    window = window_kb * 1000
    total = float((spans["end"] - spans["start"]).clip(lower=0).sum())
    if total <= 0:
        return float("nan")
    covered = 0.0
    causal_chr = same_chromosome_names(truth["chrom"])
    for chrom, positions in truth.groupby(causal_chr.to_numpy())["pos"]:
        if chrom not in spans.index:
            continue
        start, end = spans.loc[chrom, "start"], spans.loc[chrom, "end"]
        intervals = sorted((max(p - window, start), min(p + window, end)) for p in positions.to_numpy())
        reach = -np.inf
        for low, high in intervals:  # union of sorted intervals
            if high <= low:
                continue
            low = max(low, reach)
            if high > low:
                covered += high - low
            reach = max(reach, high)
    return float(covered / total)


def calibration(assoc: pd.DataFrame, test: str | None, d: int | None) -> dict[str, object]:
    """lambda GC of an association table on its test's scale, and which scale that is.

    ``test`` ``"mvlmm"``: the P column is a d-df chi-square test (``lambda_gc_df`` = d; the
    1-df reading is kept as ``lambda_gc_1df`` for comparison with older reports).
    ``"per-trait"``: the table's ``P_1 .. P_d`` columns are univariate LMM score tests,
    each a 1-df chi-square: ``lambda_gc_per_trait`` holds each trait's own lambda and
    ``lambda_gc`` their mean. The combined min p x d column has no chi-square null of its
    own (its distribution depends on the correlation between the traits' tests, and
    Bonferroni makes it conservative by construction); its 1-df reading is kept as
    ``lambda_gc_combined`` only to show that. ``None`` (the test is not known): P read
    as 1-df, per-trait columns as above when present.
    """
    per_trait = [column for column in assoc.columns if column.startswith("P_")]
    if test == "mvlmm":
        df = int(d or 1)
        return {
            "lambda_gc": lambda_gc(assoc["P"].to_numpy(), df),
            "lambda_gc_df": df,
            "lambda_gc_1df": lambda_gc(assoc["P"].to_numpy()),
            "lambda_gc_scale": f"GEMMA mvLMM score test over {df} traits: chi-square with {df} df",
        }
    if per_trait:
        lambdas = [lambda_gc(assoc[column].to_numpy()) for column in per_trait]
        return {
            "lambda_gc": float(np.mean(lambdas)),
            "lambda_gc_df": 1,
            "lambda_gc_per_trait": lambdas,
            "lambda_gc_combined": lambda_gc(assoc["P"].to_numpy()),
            "lambda_gc_scale": "mean of the per-trait univariate LMM score tests, each chi-square with 1 df",
        }
    return {
        "lambda_gc": lambda_gc(assoc["P"].to_numpy()),
        "lambda_gc_df": 1,
        "lambda_gc_scale": "P read as chi-square with 1 df (test not given)",
    }


def summarise(
    loci: pd.DataFrame,
    assoc: pd.DataFrame,
    truth: pd.DataFrame | None,
    window_kb: float = TRUTH_WINDOW_KB,
    test: str | None = None,
    d: int | None = None,
    spans: pd.DataFrame | None = None,
    near_kb: float | None = None,
    null_chromosomes: list[str] | None = None,
) -> tuple[dict[str, object], pd.Series | None]:
    """Loci found, true and false loci, power, false discovery proportion and lambda GC
    (:func:`calibration`); with the per-locus true/false flags when the truth is known.

    With ``spans`` (:func:`genome_spans` of the ``.bim``) the share of the genome the truth
    windows cover is recorded (``truth_window_genome_share``); with ``near_kb`` the false
    loci within that distance of a causal SNP (secondary clumps of a true signal) are
    counted as ``false_loci_near``.

    With ``null_chromosomes`` (chromosomes known to carry no effect, e.g. ``flowpheno simulate
    --null-chromosomes``): ``lambda_gc_null_snps``, lambda GC over their SNPs alone on the same
    scale (calibration without polygenic signal), ``lambda_gc_null_per_chromosome`` (the same per
    chromosome: their spread shows how noisy the pooled value is where LD is long, as in families),
    ``null_snps`` (how many P values it read) and ``loci_null_chromosomes``, the loci found there
    (all false by construction).
    """
    summary: dict[str, object] = {"loci": int(len(loci)), **calibration(assoc, test, d)}
    if null_chromosomes:
        wanted = set(same_chromosome_names(pd.Series(null_chromosomes, dtype=str)))
        on_null = same_chromosome_names(assoc["CHR"]).isin(wanted).to_numpy()
        summary["null_chromosomes"] = list(dict.fromkeys(assoc.loc[on_null, "CHR"].astype(str)))  # the table's names
        summary["null_snps"] = int(assoc.loc[on_null, "P"].notna().sum())
        summary["lambda_gc_null_snps"] = calibration(assoc[on_null], test, d)["lambda_gc"] if on_null.any() else None
        # per chromosome: in related samples LD spans whole chromosomes, and the spread between these is the honest
        # measure of how noisy the pooled value is
        summary["lambda_gc_null_per_chromosome"] = {
            str(name): calibration(part, test, d)["lambda_gc"]
            for name, part in assoc[on_null].groupby(assoc.loc[on_null, "CHR"].astype(str), sort=False)
        }
        summary["loci_null_chromosomes"] = int(same_chromosome_names(loci["CHR"]).isin(wanted).sum())
    if truth is None:
        return summary, None
    is_true, found = match_truth(loci, truth, window_kb)
    summary.update(
        {
            "true_loci": int(is_true.sum()),
            "false_loci": int((~is_true).sum()),
            "causal_snps": int(len(truth)),
            "causal_found": found,
            "power": found / len(truth) if len(truth) else None,
            "fdp": float((~is_true).sum() / len(loci)) if len(loci) else 0.0,
            "truth_window_kb": float(window_kb),
        }
    )
    if spans is not None:
        summary["truth_window_genome_share"] = truth_window_share(truth, spans, window_kb)
    if near_kb is not None and near_kb > window_kb:
        near, _ = match_truth(loci, truth, near_kb)
        summary.update({"false_loci_near": int((near & ~is_true).sum()), "near_kb": float(near_kb)})
    return summary, is_true
