"""Diagnostics figure: traits before and after Gaussianization, losses, s2 per stage."""

from __future__ import annotations

from itertools import combinations
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

MAX_PAIRS = 6


def diagnostics_figure(
    before: np.ndarray, after: np.ndarray, traits: list[str], report: dict[str, Any], iids: np.ndarray | None = None
) -> Figure:
    """Pairwise scatter of raw traits (top row) and Gaussianized ones (middle row),
    train/validation NLL per epoch and s2 per stage (bottom row).

    ``before`` and ``after`` are ``n x d`` with columns in ``traits`` order (the flow's
    output column ``j`` is trait ``j``); rows whose IID (``iids``, length ``n``) is listed
    in ``report["outliers"]`` are marked with a red cross in every panel."""
    flagged = {entry["iid"] for entry in report.get("outliers", [])}
    marked = np.isin(np.asarray(iids, dtype=str), list(flagged)) if iids is not None and flagged else np.zeros(len(before), bool)
    pairs = list(combinations(range(len(traits)), 2))[:MAX_PAIRS] or [(0, 0)]
    columns = max(len(pairs), 2)
    figure, axes = plt.subplots(3, columns, figsize=(3.0 * columns, 8.4), squeeze=False)
    for column, (i, j) in enumerate(pairs):
        for row, (data, label) in enumerate(((before, "raw"), (after, "Gaussianized"))):
            axis = axes[row][column]
            axis.scatter(data[:, i], data[:, j], s=2, alpha=0.35, color="C0" if row == 0 else "C2", rasterized=True)
            if marked.any():
                axis.scatter(data[marked, i], data[marked, j], s=30, marker="x", color="red", label="outlier (robust z)")
                axis.legend(fontsize=6, loc="best")
            axis.set_xlabel(f"{traits[i]} ({label})", fontsize=8)
            axis.set_ylabel(traits[j], fontsize=8)
            axis.tick_params(labelsize=7)
    for column in range(len(pairs), columns):
        axes[0][column].axis("off")
        axes[1][column].axis("off")
    epochs = report.get("epochs", [])
    loss_axis = axes[2][0]
    if epochs:
        x = [record["epoch"] for record in epochs]
        loss_axis.plot(x, [record["train_nll"] for record in epochs], label="train (estimator)", lw=1)
        val = [record["val_nll"] for record in epochs]
        if any(v is not None for v in val):
            score = "conditional" if report.get("validation_score") == "val_nll_conditional" else "iid"
            loss_axis.plot(x, [np.nan if v is None else v for v in val], label=f"validation ({score})", lw=1)
        loss_axis.legend(fontsize=7)
    loss_axis.set_xlabel("epoch", fontsize=8)
    loss_axis.set_ylabel("NLL (nats / individual)", fontsize=8)
    s2_axis = axes[2][1]
    stages = [s for s in report.get("stages", []) if "s2" in s]
    if stages:
        s2_axis.plot(range(len(stages)), [s["s2"] for s in stages], marker="o")
        s2_axis.set_xticks(range(len(stages)), [str(s["stage"]) for s in stages], fontsize=7)
    grid = report.get("grid", [])
    if grid:
        s2_axis.plot([g["value"] for g in grid], [g["val_nll"] for g in grid], marker="o")
        s2_axis.set_xlabel("s2 (grid)", fontsize=8)
        s2_axis.set_ylabel("validation NLL", fontsize=8)
    else:
        s2_axis.set_xlabel("stage", fontsize=8)
        s2_axis.set_ylabel("s2 (kinship share of latent variance)", fontsize=8)
    if not stages and not grid:
        s2_axis.text(0.5, 0.5, "iid model: no s2", ha="center", va="center", transform=s2_axis.transAxes)
    for column in range(2, columns):
        axes[2][column].axis("off")
    figure.suptitle(f"flowpheno fit --mode {report.get('config', {}).get('mode', '?')}: n = {report.get('n_used')}, d = {len(traits)}")
    figure.tight_layout()
    return figure
