"""What a statistician reads from a fit: joint Gaussianity tests and which trained state was kept.

Arrays and reports (:class:`~flowpheno.report.FitReport`) in, numbers and sentences out: no
plotting, no files.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import linalg, stats

if TYPE_CHECKING:
    from flowpheno.report import FitReport


@dataclass(frozen=True)
class MardiaTest:
    """Mardia's multivariate skewness and kurtosis of ``n`` rows in ``d`` dimensions, with
    their large-sample tests of joint Gaussianity (Mardia 1970, Biometrika 57:519-530, section 3).

    ``skewness`` is ``b_{1,d}``; under Gaussianity ``n b_{1,d} / 6`` (``skewness_statistic``)
    is asymptotically chi-square with ``d(d+1)(d+2)/6`` degrees of freedom. ``kurtosis`` is
    ``b_{2,d}``, whose Gaussian value is ``d(d+2)``; ``kurtosis_z = (b_{2,d} - d(d+2)) /
    sqrt(8 d (d+2) / n)`` is asymptotically N(0, 1) (``kurtosis_p`` two-sided).
    """

    n: int
    d: int
    skewness: float
    skewness_statistic: float
    skewness_df: float
    skewness_p: float
    kurtosis: float
    kurtosis_z: float
    kurtosis_p: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def whitened(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (``n x d``) centred and whitened by the maximum-likelihood covariance
    ``S = (1/n) sum (x_i - mean)(x_i - mean)^T``, so that ``y_i . y_j = (x_i - mean)^T S^-1 (x_j - mean)``.

    Raises:
        ValueError: fewer than ``d + 1`` rows, a non-finite value, or a singular ``S``
            (a column constant or a linear combination of others).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] <= x.shape[1]:
        raise ValueError(f"need an n x d array with n > d rows, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("the array holds a non-finite value")
    centred = x - x.mean(axis=0)
    covariance = centred.T @ centred / x.shape[0]
    try:
        factor = linalg.cholesky(covariance, lower=True)
    except linalg.LinAlgError:
        raise ValueError("the covariance is singular: a column is constant or a combination of others") from None
    return linalg.solve_triangular(factor, centred.T, lower=True).T


def mardia_test(x: np.ndarray) -> MardiaTest:
    """Mardia's skewness and kurtosis tests of ``x`` (``n x d``, rows independent).

    ``b_{1,d} = (1/n^2) sum_{i,j} (y_i . y_j)^3`` is computed without the ``n x n`` matrix as
    the squared Frobenius norm of the whitened third-moment tensor, ``sum_{a,b,c} (mean_i
    y_ia y_ib y_ic)^2`` (``O(n d^3)`` time, ``O(n d)`` memory); ``b_{2,d} = (1/n) sum_i |y_i|^4``.
    ``y`` is :func:`whitened`. Rows of related individuals are not independent: the p-values
    are then approximate (relatedness inflates the statistics' variance).

    Raises:
        ValueError: as :func:`whitened`.

    Example:
        >>> gaussian = np.random.default_rng(1).normal(size=(2000, 3))
        >>> test = mardia_test(gaussian)
        >>> test.skewness_df, round(test.kurtosis, 1)  # d(d+1)(d+2)/6 = 10; Gaussian kurtosis d(d+2) = 15
        (10.0, 15.1)
        >>> test.skewness_p > 0.05, mardia_test(np.exp(gaussian)).skewness_p < 1e-10  # log-normal: skewed
        (True, True)
    """
    y = whitened(x)
    n, d = y.shape
    skewness = 0.0
    for a in range(d):
        moments = (y * y[:, [a]]).T @ y / n  # mean_i y_ia y_ib y_ic for every b, c
        skewness += float(np.square(moments).sum())
    kurtosis = float(np.mean(np.square(np.square(y).sum(axis=1))))
    statistic = n * skewness / 6.0
    df = d * (d + 1) * (d + 2) / 6.0
    z = (kurtosis - d * (d + 2)) / math.sqrt(8.0 * d * (d + 2) / n)
    return MardiaTest(
        n=n,
        d=d,
        skewness=skewness,
        skewness_statistic=statistic,
        skewness_df=df,
        skewness_p=float(stats.chi2.sf(statistic, df)),
        kurtosis=kurtosis,
        kurtosis_z=z,
        kurtosis_p=float(2.0 * stats.norm.sf(abs(z))),
    )


def gaussianity_report(before: np.ndarray, after: np.ndarray) -> dict[str, Any]:
    """Mardia's tests of the flow's input (``before``: covariate residuals, standardised) and
    of its output (``after``: the Gaussianized traits), both ``n x d`` over the same rows, for ``fit.json``.
    A side that cannot be tested (singular covariance) holds ``{"untestable": reason}``."""

    def test(x: np.ndarray) -> dict[str, Any]:
        try:
            return mardia_test(x).as_dict()
        except ValueError as error:
            return {"untestable": str(error)}

    return {
        "test": "Mardia (1970) multivariate skewness (chi-square) and kurtosis (normal) tests",
        "rows": "individuals used by the fit; before = covariate residuals, standardised (the flow's input)",
        "note": "rows of related individuals are not independent: p-values are approximate",
        "before": test(before),
        "after": test(after),
    }


def kept_state(report: FitReport) -> str:
    """Which trained state the fit returned, in a few words (``report``: the fit's
    :class:`~flowpheno.report.FitReport`).

    Example:
        >>> from flowpheno.report import FitReport
        >>> kept_state(FitReport(best_epoch=12, best_stage=2, best_validation_nll=2.8134))
        'kept the flow of stage 2, epoch 12 (best validation NLL 2.813)'
    """
    epoch, stage = report.best_epoch, report.best_stage
    if epoch is None:
        return "no validation rows: the last epoch's flow was kept"
    value = report.best_validation_nll
    score = f" {value:.4g}" if isinstance(value, (int, float)) else ""
    return f"kept the flow of stage {stage}, epoch {epoch} (best validation NLL{score})"


def final_state_note(report: FitReport) -> str:
    """One sentence on where the returned flow and its ``s2`` come from, for the command's
    summary line and ``diagnostics.png``; the schedules are in :mod:`flowpheno.train.schedules`.

    ``alternating``: the best held-out state (flow and the ``s2`` it was trained with) is
    restored, then ``s2`` (with the scale step, jointly with each trait's latent scale, which
    is then folded into the returned flow) is refitted exactly on that flow's training latents.
    ``joint``: ``s2`` is the value learned with the flow at the kept epoch, or with the scale
    step refitted as for ``alternating`` (the ``"final"`` stage record). ``grid``: the grid
    value whose run had the lowest validation NLL. ``iid``: no ``s2``.
    """
    mode = report.mode
    kept = kept_state(report)
    if report.stopped_early:
        planned = ""
        if report.config is not None:
            train = report.config.train
            planned = f" of {train.epochs * train.stages}"
        kept = (
            f"stopped early after epoch {report.stopped_early['epoch']}{planned} (no better validation NLL in "
            f"{report.stopped_early['patience']} epochs, --patience); {kept}"
        )
    s2 = report.covariance.get("s2")
    if s2 is None:
        return f"{kept}; iid model: no s2" if mode == "iid" else kept
    if mode == "alternating":
        final = next((s for s in report.stages if s.get("stage") == "final"), {})
        trained = final.get("s2_before_refit")
        during = f" (it was trained at s2 = {trained:.3f})" if trained is not None else ""
        scaled = report.config is not None and report.config.train.profile_scale is True
        how = " with each trait's latent scale, folded into the flow (--scale-step)," if scaled else ""
        return f"{kept}; s2 = {s2:.3f} refitted exactly{how} on that flow's latents{during}"
    if mode == "joint":
        final = next((s for s in report.stages if s.get("stage") == "final"), None)
        if final is None:
            return f"{kept}; s2 = {s2:.3f}, learned jointly with the flow, as at that epoch"
        return (
            f"{kept}; s2 = {s2:.3f} refitted exactly with each trait's latent scale, folded into the flow "
            f"(--scale-step), on that flow's latents (learned jointly with it: {final['s2_before_refit']:.3f})"
        )
    if mode == "grid":
        return f"{kept}; s2 = {s2:.3f}, the grid value with the lowest validation NLL"
    return f"{kept}; s2 = {s2:.3f}"
