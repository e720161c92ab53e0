"""Manhattan and QQ plots of association results."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from flowpheno.gwas.evaluate import lambda_gc, same_chromosome_names  # noqa: E402

_NAMED_CHROMOSOMES = {"X": 23, "Y": 24, "XY": 25, "MT": 26, "M": 26}


def chromosome_order(values: pd.Series) -> pd.Series:
    """A sort key for chromosome names as they appear in a ``.bim``: ``1``..``22`` (or
    ``chr1``..), then ``X``, ``Y``, ``XY``, ``MT`` (PLINK's 23-26), then numbers beyond
    (``27`` of a cattle map), then any other name (``scaffold_12``) in natural order.

    Example:
        >>> names = pd.Series(["2", "chr1", "X", "scaffold_10", "scaffold_9", "27", "MT"])
        >>> names.iloc[np.argsort(chromosome_order(names).to_numpy(), kind="stable")].tolist()
        ['chr1', '2', 'X', 'MT', '27', 'scaffold_9', 'scaffold_10']
    """
    names = values.astype(str)
    bare = names.str.replace(r"^chr", "", case=False, regex=True)
    key = pd.to_numeric(bare, errors="coerce")
    key = key.fillna(bare.str.upper().map(_NAMED_CHROMOSOMES))
    others = names[key.isna()].unique()
    natural = sorted(
        others, key=lambda name: [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
    )
    rank = {name: 100_000 + i for i, name in enumerate(natural)}
    return key.fillna(names.map(rank)).astype(float)


def manhattan(assoc: pd.DataFrame, threshold: float, title: str, truth: pd.DataFrame | None = None) -> Figure:
    """-log10 p along the genome, causal SNPs (``truth["snp"]``) circled.

    ``assoc`` has columns SNP, CHR, BP, P. The x axis is the cumulative position: chromosomes
    in :func:`chromosome_order`, each one's span (first to last SNP) after the previous one's,
    labelled at its centre and drawn in alternating colours. The legend sits above the axes,
    never over the points or the ``threshold`` line."""
    table = assoc.dropna(subset=["P"]).assign(order=lambda t: chromosome_order(t["CHR"])).sort_values(["order", "BP"])
    offsets, ticks, labels, start = {}, [], [], 0
    groups = table.groupby("order", sort=True)
    for chrom, group in groups:
        offsets[chrom] = start - group["BP"].min()
        if groups.ngroups <= 40 or chrom < 100_000:  # many scaffolds: label only the numbered chromosomes
            ticks.append(start + (group["BP"].max() - group["BP"].min()) / 2)
            labels.append(str(group["CHR"].iloc[0]))
        start += group["BP"].max() - group["BP"].min() + 1
    x = table["BP"] + table["order"].map(offsets)
    figure, axis = plt.subplots(figsize=(10, 3.2))
    colours = np.where(table["order"].rank(method="dense") % 2 == 0, "#4c72b0", "#8fa8d4")
    axis.scatter(x, -np.log10(table["P"].clip(lower=1e-300)), s=3, c=colours, rasterized=True)
    axis.axhline(-np.log10(threshold), color="#c44e52", lw=0.8, ls="--", label=f"threshold {threshold:.2g}")
    if truth is not None and len(truth):
        causal = table[table["SNP"].isin(truth["snp"])]
        axis.scatter(
            x[causal.index],
            -np.log10(causal["P"].clip(lower=1e-300)),
            s=18,
            facecolors="none",
            edgecolors="#dd8452",
            label="causal SNP",
        )
    axis.set_xticks(ticks, labels, fontsize=7)
    axis.set_xlabel("chromosome")
    axis.set_ylabel("-log10 p")
    axis.set_title(title, fontsize=10, loc="left")
    axis.legend(fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, frameon=False, borderaxespad=0.2)
    figure.tight_layout()
    return figure


def qq(assoc: pd.DataFrame, title: str, calibration: dict | None = None) -> Figure:
    """Observed against expected -log10 p of ``assoc["P"]``, with lambda GC in the title.

    ``calibration``: the evaluation's ``lambda_gc`` and ``lambda_gc_df`` (each test's own scale,
    :func:`~flowpheno.gwas.evaluate.calibration`), shown as they are in ``summary.json``; without
    it, P is read as a 1-df chi-square test (:func:`~flowpheno.gwas.evaluate.lambda_gc`). When it
    holds ``null_chromosomes`` and ``lambda_gc_null_snps`` (:func:`~flowpheno.gwas.evaluate.summarise`),
    the SNPs of those chromosomes (which carry no effect) are drawn as a second series with their
    own lambda GC in the legend.
    """
    figure, axis = plt.subplots(figsize=(3.6, 3.6))
    null = (calibration or {}).get("null_chromosomes")
    series = [("all SNPs", assoc["P"])]
    if null and isinstance((calibration or {}).get("lambda_gc_null_snps"), (int, float)):
        on_null = same_chromosome_names(assoc["CHR"]).isin(set(null)).to_numpy()
        label = f"null chromosomes (lambda GC {calibration['lambda_gc_null_snps']:.3f})"
        series.append((label, assoc.loc[on_null, "P"]))
    limit = 1.0
    for label, values in series:
        p = np.sort(values.dropna().clip(lower=1e-300).to_numpy())
        expected = -np.log10((np.arange(1, p.size + 1) - 0.5) / p.size)
        axis.scatter(expected, -np.log10(p), s=3, rasterized=True, label=label)
        limit = max(limit, expected.max(initial=1.0))
    axis.plot([0, limit], [0, limit], color="#c44e52", lw=0.8)
    if len(series) > 1:
        axis.legend(fontsize=6, loc="upper left", markerscale=3)
    axis.set_xlabel("expected -log10 p")
    axis.set_ylabel("observed -log10 p")
    all_p = assoc["P"].dropna().clip(lower=1e-300).to_numpy()
    value, df = (calibration["lambda_gc"], calibration.get("lambda_gc_df", 1)) if calibration else (lambda_gc(all_p), 1)
    axis.set_title(f"{title}\nlambda GC = {value:.3f} ({df} df)", fontsize=9)
    figure.tight_layout()
    return figure
