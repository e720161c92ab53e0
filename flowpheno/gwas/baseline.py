"""The standard approach: covariates out, then a rank-based inverse normal transform per trait
(or, for traits already on a Gaussian scale, the covariate residuals alone)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata

from flowpheno.model import least_squares_residuals


def rank_inverse_normal(values: np.ndarray, offset: float = 3.0 / 8.0) -> np.ndarray:
    """Blom's rank-inverse-normal transform (RINT) of one column; NaN stays NaN.

    ``values``: (n,). The present values' ranks ``r`` (ties get their mean rank) map to
    ``Phi^-1((r - c) / (m - 2c + 1))`` with ``m`` present values and ``c = offset``
    (Blom 1958: ``c = 3/8``; Beasley, Erickson & Allison 2009, Behav. Genet. 39:580).
    Returns (n,) floats.

    Example:
        >>> rank_inverse_normal(np.array([3.0, np.nan, 10.0, 1.0])).round(3)
        array([ 0.   ,    nan,  0.869, -0.869])
    """
    out = np.full(values.shape, np.nan)
    present = np.isfinite(values)
    ranks = rankdata(values[present])
    out[present] = norm.ppf((ranks - offset) / (present.sum() - 2 * offset + 1))
    return out


def rint_after_covariates(values: np.ndarray, covariates: np.ndarray | None, rank: bool = True) -> np.ndarray:
    """Per trait: least-squares residuals on ``[1, covariates]``, then :func:`rank_inverse_normal`
    (``rank=False``: the residuals as they are, for traits already Gaussian, such as the
    simulator's own inverse map of the ``oracle`` arm).

    ``values``: (n, d), NaN for missing; ``covariates``: (n, c) or None. Each trait uses
    every individual with that trait and all covariates present; the others are NaN.
    Returns (n, d).

    Example:
        >>> values = np.array([[1.0, 2.0], [2.0, np.nan], [4.0, 1.0], [8.0, 0.0]])
        >>> rint_after_covariates(values, covariates=np.array([[0.0], [1.0], [0.0], [1.0]])).round(3)
        array([[-0.299,  0.869],
               [-1.049,    nan],
               [ 0.299, -0.869],
               [ 1.049,  0.   ]])
    """
    out = np.full(values.shape, np.nan)
    for j in range(values.shape[1]):
        usable = np.isfinite(values[:, j])
        if covariates is not None:
            usable &= np.isfinite(covariates).all(axis=1)
        residuals, _ = least_squares_residuals(
            values[usable, j : j + 1], None if covariates is None else covariates[usable]
        )
        column = np.full(values.shape[0], np.nan)
        column[usable] = residuals[:, 0]
        out[:, j] = rank_inverse_normal(column) if rank else column
    return out


def rint_table(
    ids: pd.DataFrame, values: np.ndarray, covariates: np.ndarray | None, traits: list[str], rank: bool = True
) -> pd.DataFrame:
    """FID, IID and the transformed traits (:func:`rint_after_covariates`), in input order.

    ``ids``: (n, 2) FID and IID columns; ``values``: (n, d) in the order of ``traits``;
    ``covariates``: (n, c) or None. Returns an (n, 2 + d) table.
    """
    transformed = pd.DataFrame(rint_after_covariates(values, covariates, rank), columns=traits)
    return pd.concat([ids.reset_index(drop=True), transformed], axis=1)
