"""Known kinship, one variance component: ``Sigma(s2) = s2 K + (1 - s2) I``.

One spectral decomposition ``K = U diag(k) U^T`` makes every term cheap:
``D = s2 k + (1 - s2)``, ``log det Sigma = sum log D`` and
``tr(Z^T Sigma^-1 Z) = sum_j |(U^T Z)_j|^2 / D_j``. ``s2 = sigmoid(t)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import Tensor, nn

from flowpheno.dependence.base import DependenceModel

S2_MAX = 1.0 - 1e-4
"""Largest s2 allowed: keeps ``Sigma`` well conditioned when ``K`` is singular."""


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), S2_MAX)
    return math.log(p / (1 - p))


class KinshipCovariance(DependenceModel):
    """``s2 K + (1 - s2) I`` from the eigenvalues and eigenvectors of ``K``.

    ``K`` is rescaled to unit mean diagonal (``n / trace K``) so that ``s2`` is the
    share of latent variance explained by relatedness; ``scale`` records the factor.
    For a fixed ``s2`` (flow stages) the dense precision is computed once and batch
    entries are gathered from it; with ``learn_s2=True`` the batch precision is
    rebuilt from ``U[idx]`` so gradients reach ``s2`` (joint training).

    Example:
        >>> K = torch.eye(4) + 0.5 * (torch.ones(4, 4) - torch.eye(4)) * (torch.arange(4)[:, None] // 2 == torch.arange(4) // 2)
        >>> model = KinshipCovariance.from_matrix(K, s2=0.3)
        >>> round(float(model.s2), 3)
        0.3
    """

    def __init__(
        self,
        eigenvalues: Tensor,
        eigenvectors: Tensor,
        s2: float = 0.0,
        learn_s2: bool = False,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        n = eigenvalues.shape[0]
        if scale is None:
            scale = n / float(eigenvalues.sum())
        self.n = n
        self.scale = scale
        self.register_buffer("eigenvalues", eigenvalues * scale)
        self.register_buffer("eigenvectors", eigenvectors)
        self.logit_s2 = nn.Parameter(
            torch.tensor(_logit(s2), dtype=eigenvalues.dtype, device=eigenvalues.device), requires_grad=learn_s2
        )
        self._cached_precision: Tensor | None = None
        self._cached_for: float | None = None

    @classmethod
    def from_matrix(cls, kinship: Tensor, **kwargs: object) -> KinshipCovariance:
        """Decompose a dense symmetric ``K`` (``torch.linalg.eigh``) and build the model."""
        eigenvalues, eigenvectors = torch.linalg.eigh(kinship)
        return cls(eigenvalues.clamp_min(0.0), eigenvectors, **kwargs)

    def with_s2(self, s2: float) -> KinshipCovariance:
        """A separate model over the same decomposition (eigenvectors shared, not copied)."""
        twin = KinshipCovariance(self.eigenvalues, self.eigenvectors, s2=s2, scale=1.0)
        twin.scale = self.scale
        return twin

    @property
    def learn_s2(self) -> bool:
        return self.logit_s2.requires_grad

    @property
    def s2(self) -> Tensor:
        return torch.sigmoid(self.logit_s2)

    def set_s2(self, s2: float) -> None:
        """Fix ``s2`` (the cached precision is rebuilt on next use)."""
        with torch.no_grad():
            self.logit_s2.fill_(_logit(s2))

    def spectrum(self) -> Tensor:
        """``D = s2 k + (1 - s2)``, the eigenvalues of ``Sigma``."""
        s2 = self.s2
        return s2 * self.eigenvalues + (1 - s2)

    def log_det(self) -> Tensor:
        return torch.log(self.spectrum()).sum()

    def rotate(self, z: Tensor) -> Tensor:
        """``U^T Z``: the latent in the eigenbasis, where rows are independent."""
        return self.eigenvectors.T @ z.to(self.eigenvectors.dtype)

    def quad_form(self, z: Tensor) -> Tensor:
        rotated = self.rotate(z)
        return (rotated.square().sum(dim=1) / self.spectrum()).sum()

    def precision(self) -> Tensor:
        """Dense ``Sigma^-1 = U diag(1/D) U^T`` for the current ``s2``."""
        u = self.eigenvectors
        return (u / self.spectrum()) @ u.T

    def precision_block(self, idx: Tensor) -> Tensor:
        if self.learn_s2:
            u_batch = self.eigenvectors[idx]
            return (u_batch / self.spectrum()) @ u_batch.T
        current = float(self.s2)
        if self._cached_precision is None or self._cached_for != current:
            with torch.no_grad():
                self._cached_precision = self.precision()
            self._cached_for = current
        return self._cached_precision[idx[:, None], idx[None, :]]

    def release_cache(self) -> None:
        """Free the dense precision (n x n) once a flow stage is over."""
        self._cached_precision = None
        self._cached_for = None

    @torch.no_grad()
    def fit_s2(self, z: Tensor) -> float:
        """Set ``s2`` to the exact maximiser of the full Gaussian likelihood of ``z``.

        Rotates once (``O(n^2 d)``), then a bounded Brent search on the 1-D
        objective (``O(n d)`` per evaluation). Returns the new ``s2``.
        """
        rotated = self.rotate(z)
        s2 = optimise_s2(
            rotated.square().sum(dim=1).double().cpu().numpy(),
            self.eigenvalues.double().cpu().numpy(),
            z.shape[1],
        )
        self.set_s2(s2)
        return s2

    def describe(self) -> dict[str, float | list[float]]:
        return {"s2": float(self.s2.detach()), "kinship_scale": float(self.scale)}


def s2_objective(s2: float, rotated_sq: np.ndarray, eigenvalues: np.ndarray, d: int) -> float:
    """``(d/2) sum log D + (1/2) sum r_j / D_j``: the s2-dependent part of the NLL."""
    spectrum = s2 * eigenvalues + (1.0 - s2)
    return 0.5 * (d * np.log(spectrum).sum() + (rotated_sq / spectrum).sum())


def optimise_s2(rotated_sq: np.ndarray, eigenvalues: np.ndarray, d: int) -> float:
    """Exact 1-D minimisation of :func:`s2_objective` over ``[0, S2_MAX]``.

    The objective is smooth in ``s2``; bounded Brent finds the interior optimum and
    the two end points are checked explicitly so a boundary optimum (s2 = 0) is exact.
    """
    args = (rotated_sq, eigenvalues, d)
    result = minimize_scalar(s2_objective, bounds=(0.0, S2_MAX), args=args, method="bounded", options={"xatol": 1e-6})
    candidates = [float(result.x), 0.0, S2_MAX]
    return min(candidates, key=lambda s: s2_objective(s, *args))
