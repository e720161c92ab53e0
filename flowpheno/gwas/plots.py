"""Manhattan and QQ plots of association results."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from flowpheno.gwas.evaluate import lambda_gc  # noqa: E402


def _chromosome_order(values: pd.Series) -> pd.Series:
    numeric = pd.to_numeric(values, errors="coerce")
    return numeric.fillna(1000 + values.astype("category").cat.codes.astype(int))


def manhattan(assoc: pd.DataFrame, threshold: float, title: str, truth: pd.DataFrame | None = None) -> Figure:
    """-log10 p along the genome, chromosomes alternating colours; causal SNPs marked."""
    table = assoc.dropna(subset=["P"]).assign(order=lambda t: _chromosome_order(t["CHR"])).sort_values(["order", "BP"])
    offsets, ticks, labels, start = {}, [], [], 0
    for chrom, group in table.groupby("order", sort=True):
        offsets[chrom] = start - group["BP"].min()
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
        axis.scatter(x[causal.index], -np.log10(causal["P"].clip(lower=1e-300)), s=18, facecolors="none",
                     edgecolors="#dd8452", label="causal SNP")
    axis.set_xticks(ticks, labels, fontsize=7)
    axis.set_xlabel("chromosome")
    axis.set_ylabel("-log10 p")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    return figure


def qq(assoc: pd.DataFrame, title: str) -> Figure:
    """Observed against expected -log10 p, with lambda GC."""
    p = np.sort(assoc["P"].dropna().clip(lower=1e-300).to_numpy())
    expected = -np.log10((np.arange(1, p.size + 1) - 0.5) / p.size)
    figure, axis = plt.subplots(figsize=(3.6, 3.6))
    axis.scatter(expected, -np.log10(p), s=3, rasterized=True)
    limit = max(expected.max(), 1)
    axis.plot([0, limit], [0, limit], color="#c44e52", lw=0.8)
    axis.set_xlabel("expected -log10 p")
    axis.set_ylabel("observed -log10 p")
    axis.set_title(f"{title}\nlambda GC = {lambda_gc(p):.3f}", fontsize=9)
    figure.tight_layout()
    return figure
