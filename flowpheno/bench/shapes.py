"""The 2-D synthetic data of the paper (DESIGN.md section 4), dependent and iid.

Each shape maps a standard normal pair ``(a, b)`` to ``x``. Dependence between rows
enters through ``(a, b)``: both columns are drawn with the same row correlation
(equicorrelated blocks, or ``0.5 I + 0.5 C`` for a dense random correlation ``C``),
so the latent is exactly the matrix normal the model assumes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm


def _sign(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.column_stack([a, np.sign(a) + a + math.exp(-1.5) * b])


def _abs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.column_stack([a, np.abs(a) - 1 + math.exp(-1.5) * b])


def _crescent(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.column_stack([a, 0.5 * a**2 - 1 + math.exp(-1.0) * b])


def _sinewave(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.column_stack([a, np.sin(5 * a) + math.exp(-1.0) * b])


def _crescent_cubed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.column_stack([0.2 * a**3 + b, a])


SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "abs": _abs,
    "crescent": _crescent,
    "crescentcubed": _crescent_cubed,
    "sign": _sign,
    "sinewave": _sinewave,
}

_MEAN_AND_SCALE: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float]] = {
    "abs": (lambda a: np.abs(a) - 1, math.exp(-1.5)),
    "crescent": (lambda a: 0.5 * a**2 - 1, math.exp(-1.0)),
    "sign": (lambda a: np.sign(a) + a, math.exp(-1.5)),
    "sinewave": (lambda a: np.sin(5 * a), math.exp(-1.0)),
}


def true_log_density(shape: str, x: np.ndarray) -> np.ndarray:
    """Exact ``log p(x)`` of the iid shape (change of variables), for figures and checks."""
    if shape == "crescentcubed":
        return norm.logpdf(x[:, 1]) + norm.logpdf(x[:, 0] - 0.2 * x[:, 1] ** 3)
    mean, scale = _MEAN_AND_SCALE[shape]
    return norm.logpdf(x[:, 0]) + norm.logpdf((x[:, 1] - mean(x[:, 0])) / scale) - math.log(scale)


def pareto_block_sizes(n: int, rng: np.random.Generator, alpha: float = 0.5, max_size: int = 1000) -> np.ndarray:
    """Sizes ``1 + round(Pareto(alpha))``, clipped to ``max_size`` and to what is left, summing to ``n``."""
    sizes = []
    left = n
    while left > 0:
        size = int(min(1 + round(float(rng.pareto(alpha))), max_size, left))
        sizes.append(size)
        left -= size
    return np.array(sizes)


def sparse_spd_correlation(
    n: int, rng: np.random.Generator, smallest: float = 0.5, largest: float = 0.99
) -> np.ndarray:
    """A dense random correlation matrix, built as scikit-learn's
    ``make_sparse_spd_matrix(alpha=0, smallest_coef, largest_coef, norm_diag=True)``:
    a unit lower-triangular factor with off-diagonal entries uniform in
    ``[smallest, largest]`` (rows and columns permuted), ``C = L^T L`` scaled to unit diagonal.
    """
    factor = -np.eye(n)
    lower = np.tril(smallest + (largest - smallest) * rng.random((n, n)), k=-1)
    permutation = rng.permutation(n)
    factor += lower[permutation].T[permutation]
    matrix = factor.T @ factor
    scale = 1.0 / np.sqrt(np.diag(matrix))
    return matrix * scale * scale[:, None]


@dataclass
class DependentSample:
    """Training rows ``x`` and the truth of their dependence."""

    x: np.ndarray
    block_ids: np.ndarray | None = None
    rho: np.ndarray | None = None
    correlation: np.ndarray | None = None
    s2: float | None = None


def blocks_sample(shape: str, n: int, rng: np.random.Generator) -> DependentSample:
    """Equicorrelated blocks: Pareto sizes, ``rho_k ~ U(0.5, 0.99)``, rows of a block drawn jointly."""
    sizes = pareto_block_sizes(n, rng)
    rho = rng.uniform(0.5, 0.99, size=len(sizes))
    block_ids = np.repeat(np.arange(len(sizes)), sizes)
    shared = rng.normal(size=(len(sizes), 2))[block_ids]
    latent = np.sqrt(rho[block_ids])[:, None] * shared + np.sqrt(1 - rho[block_ids])[:, None] * rng.normal(size=(n, 2))
    return DependentSample(SHAPES[shape](latent[:, 0], latent[:, 1]), block_ids=block_ids, rho=rho)


def kinship_sample(shape: str, correlation: np.ndarray, rng: np.random.Generator, s2: float = 0.5) -> DependentSample:
    """Rows with ``Sigma = (1 - s2) I + s2 C``: ``(a, b) = Sigma^(1/2) eps`` column by column."""
    n = correlation.shape[0]
    sigma = s2 * correlation + (1 - s2) * np.eye(n)
    latent = np.linalg.cholesky(sigma) @ rng.normal(size=(n, 2))
    return DependentSample(SHAPES[shape](latent[:, 0], latent[:, 1]), correlation=correlation, s2=s2)


def iid_sample(shape: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Independent rows (validation and test sets)."""
    return SHAPES[shape](rng.normal(size=n), rng.normal(size=n))
