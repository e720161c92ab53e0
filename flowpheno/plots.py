"""Diagnostics figure: traits before and after Gaussianization (pairwise, per trait, jointly),
training curves with their stage boundaries, and where the final ``s2`` comes from."""

from __future__ import annotations

import textwrap
from itertools import combinations
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402
from scipy import stats  # noqa: E402

from flowpheno.diagnostics import final_state_note, gaussianity_report, whitened  # noqa: E402
from flowpheno.report import FitReport  # noqa: E402

MAX_PAIRS = 6
MAX_QQ = 8
QQ_POINTS = 2000
"""Quantiles drawn per QQ curve: every order statistic up to this many rows, evenly spaced ones beyond."""
BEFORE, AFTER = "C0", "C2"


def diagnostics_figure(
    before: np.ndarray, after: np.ndarray, traits: list[str], report: FitReport, iids: np.ndarray | None = None
) -> Figure:
    """The fit's diagnostics, in rows: pairwise scatter of the flow's input (``before``) and of
    the Gaussianized traits (``after``); a QQ plot per trait against N(0, 1); the training and
    validation NLL per epoch with stage boundaries and the kept epoch, ``s2`` per epoch (or the
    grid's validation NLL per ``s2``), and the squared Mahalanobis distances against their
    chi-square quantiles with Mardia's tests (``report.gaussianity``, computed here when
    empty); a caption saying what the panels show and where the final ``s2`` comes from.

    ``before`` (covariate residuals, standardised, as :meth:`PhenotypeModel.standardise`
    returns them) and ``after`` are ``n x d`` with columns in ``traits`` order; rows listed in
    ``report.outliers`` are marked with a red cross in every scatter panel: ``iids`` holds
    each row's IID (length ``n``) or its (FID, IID) (``n x 2``); an entry with a ``fid`` marks
    only that family's individual (IIDs may repeat across families). ``report`` is the fit's
    :class:`~flowpheno.report.FitReport` (a partial one draws what it has; a ``fit.json``
    file: ``FitReport.from_json(json.loads(text))``).
    """
    marked = _flagged_rows(report.outliers, iids, len(before))
    d = len(traits)
    pairs = list(combinations(range(d), 2))[:MAX_PAIRS]
    shown = list(range(min(d, MAX_QQ)))
    side_by_side = 0 < 2 * len(pairs) <= max(len(shown), 3)  # before and after scatter in one row
    width = max(len(shown), 3, 2 * len(pairs) if side_by_side else len(pairs))
    scatter_rows = 0 if not pairs else 1 if side_by_side else 2
    heights = [1.0] * scatter_rows + [1.0, 1.35, 0.45]
    size = (max(3.0 * width, 12.0), 2.9 * sum(heights))
    figure = plt.figure(figsize=size)
    # fixed margins in inches, no layout engine: a layout pass costs more than drawing the figure
    rows = iter(
        figure.add_gridspec(
            len(heights),
            1,
            height_ratios=heights,
            hspace=0.5,
            left=0.6 / size[0],
            right=1 - 0.15 / size[0],
            top=1 - 0.75 / size[1],
            bottom=0.05 / size[1],
        )
    )
    covariates = report.covariates
    input_label = "covariate residuals, standardised" if covariates else "traits standardised, no covariates"
    cells, start = None, 0
    for data, label, colour in ((before, f"before ({input_label})", BEFORE), (after, "Gaussianized", AFTER)):
        if not pairs:
            break
        if cells is None or not side_by_side:
            cells, start = next(rows).subgridspec(1, width, wspace=0.3), 0
        else:
            start = len(pairs)
        for column, (i, j) in enumerate(pairs):
            axis = figure.add_subplot(cells[0, start + column])
            axis.scatter(data[:, i], data[:, j], s=2, alpha=0.35, color=colour, rasterized=True)
            if marked.any():
                axis.scatter(
                    data[marked, i], data[marked, j], s=30, marker="x", color="red", label="outlier (robust z)"
                )
                axis.legend(fontsize=6, loc="best")
            axis.set_xlabel(traits[i], fontsize=8)
            axis.set_ylabel(traits[j], fontsize=8)
            axis.tick_params(labelsize=7)
            if column == 0:
                axis.set_title(label, fontsize=9, loc="left")
    cells = next(rows).subgridspec(1, width, wspace=0.3)
    for column in shown:
        _qq_panel(
            figure.add_subplot(cells[0, column]), before[:, column], after[:, column], traits[column], first=column == 0
        )
    gaussianity = report.gaussianity or gaussianity_report(before, after)
    _training_row(figure, next(rows), report, before, after, gaussianity)
    caption = figure.add_subplot(next(rows))
    caption.axis("off")
    caption.set_gid("caption")
    characters = int(max(3.0 * width, 12.0) * 15)  # about what a line of 8-point text holds
    lines = [textwrap.fill(line, characters) for line in _caption(report, covariates, input_label, d, len(pairs))]
    caption.text(0.0, 1.0, "\n".join(lines), fontsize=8, va="top", transform=caption.transAxes)
    mode = report.mode or "?"
    figure.suptitle(
        f"flowpheno fit --mode {mode}: n = {report.n_used or len(before)}, d = {d}", y=1 - 0.1 / size[1], va="top"
    )
    return figure


def _flagged_rows(outliers: list[dict[str, Any]], ids: np.ndarray | None, n: int) -> np.ndarray:
    """Rows of the outlier entries, matched on (FID, IID) where both are known, else on IID."""
    marked = np.zeros(n, dtype=bool)
    if ids is None or not outliers:
        return marked
    ids = np.asarray(ids, dtype=str)
    fids, iids = (ids[:, 0], ids[:, 1]) if ids.ndim == 2 else (None, ids)
    for entry in outliers:
        hit = iids == str(entry["iid"])
        if fids is not None and entry.get("fid") is not None:
            hit &= fids == str(entry["fid"])
        marked |= hit
    return marked


def _qq_panel(axis: Axes, before: np.ndarray, after: np.ndarray, trait: str, first: bool) -> None:
    """Sample quantiles of one trait before and after against N(0, 1) quantiles."""
    axis.set_gid("qq")
    for values, label, colour in ((before, "before", BEFORE), (after, "Gaussianized", AFTER)):
        theoretical, sample = _quantiles(values, stats.norm.ppf)
        axis.plot(theoretical, sample, ls="", marker=".", ms=2, color=colour, label=label, rasterized=True)
    low, high = axis.get_xlim()
    axis.plot([low, high], [low, high], color="0.3", lw=0.8, ls="--", label="N(0, 1)")
    axis.set_title(f"{trait}: QQ against N(0, 1)", fontsize=9)
    axis.set_xlabel("N(0, 1) quantile", fontsize=8)
    axis.set_ylabel("sample quantile", fontsize=8)
    axis.tick_params(labelsize=7)
    if first:
        axis.legend(fontsize=7, loc="upper left", markerscale=4)


def _quantiles(values: np.ndarray, ppf: Any) -> tuple[np.ndarray, np.ndarray]:
    """(theoretical, sample) quantiles at ``(k - 1/2) / n`` (every order statistic, or
    :data:`QQ_POINTS` of them evenly spread, extremes included, for large ``n``)."""
    ordered = np.sort(np.asarray(values, dtype=float))
    n = ordered.size
    keep = np.unique(np.linspace(0, n - 1, min(n, QQ_POINTS)).round().astype(int))
    return ppf((keep + 0.5) / n), ordered[keep]


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and value is not None else np.nan


def _training_row(
    figure: Figure,
    row: Any,
    report: FitReport,
    before: np.ndarray,
    after: np.ndarray,
    gaussianity: dict[str, Any],
) -> None:
    """Loss curves (wide), s2 (kinship modes), joint Gaussianity."""
    epochs = report.epochs
    grid = report.grid
    has_s2 = bool(grid) or any("s2" in record for record in epochs)
    cells = row.subgridspec(1, 3 if has_s2 else 2, width_ratios=[2.4, 1, 1] if has_s2 else [3.4, 1], wspace=0.25)
    _loss_panel(figure.add_subplot(cells[0, 0]), epochs, report, has_s2)
    if has_s2:
        _s2_panel(figure.add_subplot(cells[0, 1]), epochs, grid, report)
    _mahalanobis_panel(figure.add_subplot(cells[0, -1]), before, after, gaussianity)


def _stage_boundaries(axis: Axes, epochs: list[dict[str, Any]], gid: str, labels: bool) -> None:
    """A dashed vertical line between the last epoch of a stage and the first of the next;
    with ``labels``, the stage numbers along the top."""
    top = blended_transform_factory(axis.transData, axis.transAxes)
    start = 0
    for k in range(1, len(epochs) + 1):
        if k == len(epochs) or epochs[k].get("stage") != epochs[k - 1].get("stage"):
            first, last = epochs[start].get("epoch"), epochs[k - 1].get("epoch")
            if labels:
                axis.text(
                    (first + last) / 2,
                    0.98,
                    f"stage {epochs[start].get('stage')}",
                    transform=top,
                    ha="center",
                    va="top",
                    fontsize=7,
                    color="0.35",
                )
            if k < len(epochs):
                axis.axvline((last + epochs[k].get("epoch")) / 2, color="0.6", ls="--", lw=0.8, gid=gid)
            start = k


def _loss_panel(axis: Axes, epochs: list[dict[str, Any]], report: FitReport, dependent: bool) -> None:
    axis.set_title("training curves (per individual; different quantities, see caption)", fontsize=9, loc="left")
    axis.set_xlabel("epoch (over all stages)", fontsize=8)
    axis.set_ylabel("NLL (nats / individual)", fontsize=8)
    axis.tick_params(labelsize=7)
    if not epochs:
        axis.text(0.5, 0.5, "no training history in the report", ha="center", va="center", transform=axis.transAxes)
        return
    x = [record.get("epoch") for record in epochs]
    model = "kinship" if dependent else "iid"
    axis.plot(
        x,
        [_number(record.get("train_nll")) for record in epochs],
        lw=1,
        color="C0",
        label=f"training objective ({model} model, training rows)",
    )
    val = [_number(record.get("val_nll")) for record in epochs]
    if not np.isnan(val).all():
        score = "conditional on the training rows" if report.validation_score == "val_nll_conditional" else "iid"
        axis.plot(x, val, lw=1, color="C1", label=f"validation (held-out rows, {score})")
    _stage_boundaries(axis, epochs, "stage-boundary", labels=True)
    best_epoch = report.best_epoch
    if best_epoch is not None:
        axis.axvline(
            best_epoch,
            color="C3",
            ls=":",
            lw=1.2,
            gid="kept-epoch",
            label=f"kept: stage {report.best_stage}, epoch {best_epoch}",
        )
    axis.legend(fontsize=7, loc="upper right", bbox_to_anchor=(1.0, 0.92), framealpha=0.8)


def _s2_panel(axis: Axes, epochs: list[dict[str, Any]], grid: list[dict[str, Any]], report: FitReport) -> None:
    axis.tick_params(labelsize=7)
    final = report.covariance.get("s2")
    if grid:
        values = [g.get("value") for g in grid]
        axis.plot(
            values,
            [_number(g.get("val_nll")) for g in grid],
            marker="o",
            lw=1,
            color="C1",
            label="run's best validation NLL",
        )
        scores = [_number(g.get("val_nll")) if not g.get("diverged") else np.nan for g in grid]
        if not np.isnan(scores).all():  # the winner: fit_grid's rule (a diverged run never wins)
            best = int(np.nanargmin(scores))
            axis.plot(
                [values[best]],
                [scores[best]],
                marker="*",
                ms=12,
                ls="",
                color="C3",
                label=f"kept: s2 = {values[best]:g}",
            )
        axis.set_title("s2 grid search", fontsize=9, loc="left")
        axis.set_xlabel("s2 (fixed per run)", fontsize=8)
        axis.set_ylabel("validation NLL", fontsize=8)
        axis.legend(fontsize=7)
        return
    x = [record.get("epoch") for record in epochs]
    axis.step(
        x, [_number(record.get("s2")) for record in epochs], where="mid", lw=1, color="C0", label="s2 used in the epoch"
    )
    _stage_boundaries(axis, epochs, "stage-boundary-s2", labels=False)
    best_epoch = report.best_epoch
    kept = next((r for r in epochs if r.get("epoch") == best_epoch), None)
    if kept is not None:
        axis.plot([best_epoch], [_number(kept.get("s2"))], marker="o", ls="", color="C3", label="kept state's s2")
    if final is not None and x:
        refitted = report.mode == "alternating"
        where = (x[-1] + 1) if refitted else (best_epoch or x[-1])
        axis.plot(
            [where],
            [final],
            marker="*",
            ms=12,
            ls="",
            color="C3",
            label=f"final s2 = {final:.3f}" + (" (refitted on the kept flow)" if refitted else ""),
        )
    axis.set_title("s2 (kinship share of latent variance)", fontsize=9, loc="left")
    axis.set_xlabel("epoch", fontsize=8)
    axis.set_ylabel("s2", fontsize=8)
    axis.legend(fontsize=7, loc="best")


def _mahalanobis_panel(axis: Axes, before: np.ndarray, after: np.ndarray, gaussianity: dict[str, Any]) -> None:
    """Sorted squared Mahalanobis distances against chi-square(d) quantiles: on the line when
    the rows are jointly Gaussian; the legend gives Mardia's tests."""
    axis.set_gid("mahalanobis")
    d = before.shape[1]
    for values, side, colour in ((before, "before", BEFORE), (after, "after", AFTER)):
        try:
            distances = np.square(whitened(values)).sum(axis=1)
        except ValueError:
            continue
        theoretical, sample = _quantiles(distances, lambda p: stats.chi2.ppf(p, d))
        axis.plot(
            theoretical,
            sample,
            ls="",
            marker=".",
            ms=2,
            color=colour,
            label=_mardia_label(side, gaussianity.get(side, {})),
            rasterized=True,
        )
    low, high = axis.get_xlim()
    axis.plot([0, high], [0, high], color="0.3", lw=0.8, ls="--")
    axis.set_title("joint Gaussianity", fontsize=9, loc="left")
    axis.set_xlabel(f"chi-square({d}) quantile", fontsize=8)
    axis.set_ylabel("squared Mahalanobis distance", fontsize=8)
    axis.tick_params(labelsize=7)
    axis.legend(fontsize=6.5, loc="upper left", markerscale=4)


def _mardia_label(side: str, test: dict[str, Any]) -> str:
    if "skewness_p" not in test:
        return f"{side}: Mardia untestable"
    return (
        f"{side}: Mardia skewness {test['skewness']:.3g}\n({_p(test['skewness_p'])}), "
        f"kurtosis z {test['kurtosis_z']:.1f}\n({_p(test['kurtosis_p'])})"
    )


def _p(value: float) -> str:
    return "p < 1e-300" if value < 1e-300 else f"p {value:.2g}"


def _caption(report: FitReport, covariates: list[str], input_label: str, d: int, pairs: int) -> list[str]:
    lines = []
    if covariates:
        named = ", ".join(covariates[:6]) + (", ..." if len(covariates) > 6 else "")
        lines.append(
            f"Before: trait residuals after the covariates ({named}), standardised: the flow's input; "
            "covariate effects are removed, not shown."
        )
    else:
        lines.append(f"Before: {input_label}: the flow's input.")
    if report.epochs:
        lines.append(f"Final state: {final_state_note(report)}.")
        lines.append(
            "Training curve: NLL per individual under the dependence model over the training rows; validation curve: "
            "held-out NLL per individual of other rows. Different "
            "quantities: their gap alone does not mean overfitting."
        )
    lines.append("Mardia's tests assume independent rows: with related individuals their p-values are approximate.")
    hidden = []
    if d > MAX_QQ:
        hidden.append(f"QQ plots of the first {MAX_QQ} of {d} traits")
    if pairs < d * (d - 1) // 2:
        hidden.append(f"scatter of the first {pairs} of {d * (d - 1) // 2} trait pairs")
    if hidden:
        lines.append("Shown: " + "; ".join(hidden) + ".")
    return lines
