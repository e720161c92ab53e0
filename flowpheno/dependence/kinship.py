"""Known kinship, one variance component: ``Sigma(s2) = s2 K + (1 - s2) I``.

One spectral decomposition ``K = U diag(k) U^T`` makes every term cheap. ``U`` is
``n x r``: ``r = n`` for a dense kinship, ``r << n`` for a low-rank one (``K = W W^T``
from ``r`` principal components or ``M < n`` SNPs), whose other ``n - r`` eigenvalues
are 0. With ``D = s2 k + (1 - s2)`` and ``R = U^T Z`` (``O(n r d)``)::

    log det Sigma      = sum_j log D_j + (n - r) log(1 - s2)
    tr(Z^T Sigma^-1 Z) = sum_j |R_j|^2 / D_j + (|Z|^2 - |R|^2) / (1 - s2)
    Sigma^-1           = I / (1 - s2) + U diag(1/D - 1/(1 - s2)) U^T

No ``n x n`` matrix is formed on the low-rank path. ``s2 = sigmoid(t)``.

Held-out rows ``v`` (relatives of the training rows ``t``) are scored by their conditional
density given the training latents, ``Z_v | Z_t ~ MN(Sigma_vt Sigma_tt^-1 Z_t, Sigma_vv|t, I_d)``
(:class:`HeldOutKinship`, :meth:`KinshipCovariance.conditional_gaussian_nll`).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import Tensor, nn

from flowpheno.dependence.base import DependenceModel

S2_MAX = 1.0 - 1e-4
"""Largest s2 allowed: keeps ``Sigma`` well conditioned when ``K`` is singular."""

DENSE_PRECISION_MAX_N = 30_000
"""Above this n the dense precision (n^2 floats) is never cached."""

DENSE_PRECISION_MIN_RANK = 256
"""From this rank on (with ``s2`` fixed, on the CPU) batch precision entries are gathered from a
cached dense precision; below it the ``O(b^2 r)`` product from ``U[idx]`` is as cheap."""


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), S2_MAX)
    return math.log(p / (1 - p))


RANK_TOLERANCE = 1e-8
"""Eigenvalues below this share of the largest count as round-off in
:attr:`KinshipCovariance.numerical_rank` (a kinship's own small eigenvalues are far larger)."""


class KinshipCovariance(DependenceModel):
    """``Sigma = s2 c K + (1 - s2) I`` from the (possibly truncated) eigendecomposition of ``K``
    (DESIGN.md). Up to scale this is the row covariance ``lambda c K + I`` of GEMMA's linear
    mixed model (GEMMA manual, the univariate LMM), with ``lambda = s2 / (1 - s2)``.

    ``K`` is rescaled by ``c = scale`` to unit mean diagonal (``n / trace K``) so that ``s2``
    (unitless, in ``[0, 1)``) is the share of latent variance explained by relatedness.
    Batch precision entries come from a cached dense precision when the kinship is dense
    (rank >= :data:`DENSE_PRECISION_MIN_RANK`, ``n <=`` :data:`DENSE_PRECISION_MAX_N`), ``s2``
    fixed and the model on the CPU (one ``O(n^2 r)`` product per value of ``s2``, gathers per
    batch); the cache is keyed on the value of ``s2`` it was built for, so no way of writing
    ``s2`` (``set_s2``, an optimiser step, ``load_state_dict``, ``logit_s2.data``, a new
    Parameter) can leave it stale. Otherwise the entries come from ``U[idx]`` (``O(b^2 r)``
    per batch, differentiable in ``s2`` for joint training); off the CPU that is always so,
    because checking the key there would make every batch wait for the device.

    Args:
        eigenvalues: ``(r,)``, the eigenvalues of ``K`` that are not known to be zero (``>= 0``).
        eigenvectors: ``(n, r)`` orthonormal columns ``U``; ``r = n`` for a dense kinship,
            ``r < n`` for a low-rank one (the other ``n - r`` eigenvalues are 0).
        s2: initial ``s2`` in ``[0, 1)`` (clipped to ``[1e-6,`` :data:`S2_MAX` ``]`` on the logit scale).
        learn_s2: whether ``s2`` receives gradients (``joint`` training).
        scale: the factor ``c`` applied to ``eigenvalues``; default ``n / sum(eigenvalues)``
            (unit mean diagonal). Pass ``1.0`` for eigenvalues already on that scale.
    """

    refit_name: ClassVar[str] = "s2"
    conditional_scoring: ClassVar[bool] = True
    profiles_scale: ClassVar[bool] = True

    def __init__(
        self,
        eigenvalues: Tensor,
        eigenvectors: Tensor,
        s2: float = 0.0,
        learn_s2: bool = False,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        n, rank = eigenvectors.shape
        if scale is None:
            scale = n / float(eigenvalues.sum())
        self.n = n
        self.rank = rank
        self.scale = scale
        self.register_buffer("eigenvalues", eigenvalues * scale)
        self.register_buffer("eigenvectors", eigenvectors)
        self.logit_s2 = nn.Parameter(
            torch.tensor(_logit(s2), dtype=eigenvalues.dtype, device=eigenvalues.device), requires_grad=learn_s2
        )
        self._cached_precision: Tensor | None = None
        self._cached_for: float | None = None
        """The value of ``logit_s2`` the cached precision was built for."""
        self.register_buffer("factor_basis", None)
        """``V`` (``p x r``) of the thin SVD ``W_t = U S V^T`` when built by :meth:`from_factor`, else None:
        how held-out factor rows enter the training eigenbasis (:meth:`held_out_factor`)."""

    @classmethod
    def from_matrix(cls, kinship: Tensor, **kwargs: object) -> KinshipCovariance:
        """Decompose a dense symmetric ``K`` (``(n, n)``, ``torch.linalg.eigh``; negative eigenvalues
        clipped to 0) and build the model; ``kwargs`` as for the constructor."""
        eigenvalues, eigenvectors = torch.linalg.eigh(kinship)
        return cls(eigenvalues.clamp_min(0.0), eigenvectors, **kwargs)

    @classmethod
    def from_factor(cls, factor: Tensor, tolerance: float = 1e-10, **kwargs: object) -> KinshipCovariance:
        """``K = W W^T`` from an ``(n, p)`` factor ``W`` (standardised genotypes of ``p < n`` SNPs,
        or ``p`` principal components) by its thin SVD (``O(n p^2)``; no ``n x n`` matrix).

        Singular values below ``tolerance`` times the largest are dropped (their
        eigenvalues are 0 and join the complement); ``kwargs`` as for the constructor.
        """
        left, singular, right_t = torch.linalg.svd(factor, full_matrices=False)
        keep = singular > tolerance * singular.max()
        model = cls(singular[keep].square(), left[:, keep], **kwargs)
        model.factor_basis = right_t[keep].T.contiguous()
        return model

    def with_s2(self, s2: float) -> KinshipCovariance:
        """A separate model with ``s2`` fixed, over the same decomposition (eigenvectors
        shared, not copied). ``s2 = 0`` is exact (``logit = -inf``): the iid baseline itself."""
        twin = KinshipCovariance(self.eigenvalues, self.eigenvectors, s2=s2, scale=1.0)
        twin.scale = self.scale
        twin.factor_basis = self.factor_basis
        if s2 == 0:
            with torch.no_grad():
                twin.logit_s2.fill_(-math.inf)
        return twin

    @property
    def learn_s2(self) -> bool:
        """Whether ``s2`` receives gradients (``logit_s2.requires_grad``)."""
        return self.logit_s2.requires_grad

    @property
    def s2(self) -> Tensor:
        """``sigmoid(logit_s2)``: 0-d, unitless, in ``[0, 1)``."""
        return torch.sigmoid(self.logit_s2)

    @property
    def numerical_rank(self) -> int:
        """The rank of ``K``: stored eigenvalues above :data:`RANK_TOLERANCE` times the largest
        (or above numpy's ``matrix_rank`` bound ``n * eps * max`` where that is larger), so the
        round-off eigenvalues of a rank-deficient GRM (centred genotypes: at most ``n - 1``, and
        at most the number of SNPs) are not counted, also when it was read from GEMMA's text
        ``.cXX.txt`` (10 significant digits: round-off of about 1e-10 of the largest)."""
        largest = float(self.eigenvalues.max()) if self.rank else 0.0
        tolerance = max(RANK_TOLERANCE, self.n * float(torch.finfo(torch.float64).eps)) * largest
        return int((self.eigenvalues.double() > tolerance).sum())

    @property
    def complement(self) -> int:
        """Number of eigenvalues of ``K`` that are exactly 0 and not stored (``n - r``)."""
        return self.n - self.rank

    def set_s2(self, s2: float) -> None:
        """Set ``s2`` (in ``[0, 1)``; the cached precision follows on next use)."""
        with torch.no_grad():
            self.logit_s2.fill_(_logit(s2))

    def spectrum(self) -> Tensor:
        """``D = s2 k + (1 - s2)`` (``(r,)``) for the stored eigenvalues ``k``."""
        s2 = self.s2
        return s2 * self.eigenvalues + (1 - s2)

    def log_det(self) -> Tensor:
        """``sum_j log D_j + (n - r) log(1 - s2)``."""
        return torch.log(self.spectrum()).sum() + self.complement * torch.log1p(-self.s2)

    def rotate(self, z: Tensor) -> Tensor:
        """``U^T Z`` (``(r, d)``) for ``z``: ``(n, d)``: the latent in the eigenbasis, where rows are independent."""
        return self.eigenvectors.T @ z.to(self.eigenvectors.dtype)

    def quad_form(self, z: Tensor) -> Tensor:
        """``sum_j |R_j|^2 / D_j + (|Z|^2 - |R|^2) / (1 - s2)`` with ``R = U^T Z``: ``O(n r d)``."""
        rotated = self.rotate(z)
        rotated_sq = rotated.square().sum(dim=1)
        total = (rotated_sq / self.spectrum()).sum()
        if self.complement:
            total = total + (z.square().sum() - rotated_sq.sum()) / (1 - self.s2)
        return total

    def _precision_from_rows(self, u_rows: Tensor, u_cols: Tensor) -> Tensor:
        weights = 1 / self.spectrum()
        if not self.complement:
            return (u_rows * weights) @ u_cols.T
        inside = 1 / (1 - self.s2)
        block = (u_rows * (weights - inside)) @ u_cols.T
        if u_rows is u_cols:
            block = block + inside * torch.eye(u_rows.shape[0], dtype=block.dtype, device=block.device)
        return block

    def precision_times(self, z: Tensor) -> Tensor:
        """``Sigma^-1 Z`` (``(n, d)``) through the spectrum: ``O(n r d)``."""
        z = z.to(self.eigenvectors.dtype)
        rotated = self.rotate(z)
        if not self.complement:
            return self.eigenvectors @ (rotated / self.spectrum()[:, None])
        inside = 1 / (1 - self.s2)
        return inside * z + self.eigenvectors @ (rotated * (1 / self.spectrum() - inside)[:, None])

    def precision_columns_times(self, idx: Tensor, values: Tensor) -> Tensor:
        """``Sigma^-1[:, idx] @ values``: from the cached dense precision when there is one
        (``O(n b d)``), else through the spectrum (``O(n r d)``)."""
        if self._cached_precision is not None and self._cached_for == self._s2_key():
            return self._cached_precision[:, idx] @ values.to(self._cached_precision.dtype)
        values = values.to(self.eigenvectors.dtype)
        rows = self.eigenvectors[idx]
        inside = 1 / (1 - self.s2) if self.complement else 0.0
        weights = 1 / self.spectrum() - inside
        out = self.eigenvectors @ ((rows.T @ values) * weights[:, None])
        if self.complement:
            out[idx] += inside * values
        return out

    def precision(self) -> Tensor:
        """Dense ``Sigma^-1`` (``(n, n)``) for the current ``s2``: only for moderate n."""
        return self._precision_from_rows(self.eigenvectors, self.eigenvectors)

    def precision_block(self, idx: Tensor) -> Tensor:
        """``Sigma^-1[idx][:, idx]`` (``(b, b)``): gathered from the cached dense precision where
        it is used (see the class docstring), else ``U[idx] diag(w) U[idx]^T`` (``O(b^2 r)``)."""
        if not self._dense_cache_used():
            rows = self.eigenvectors[idx]
            return self._precision_from_rows(rows, rows)
        current = self._s2_key()
        if self._cached_precision is None or self._cached_for != current:
            with torch.no_grad():
                self._cached_precision = self.precision()
            self._cached_for = current
        return self._cached_precision.index_select(0, idx).index_select(1, idx)  # faster than P[idx[:, None], idx]

    def minibatch_quad_form(self, z_batch: Tensor, idx: Tensor) -> Tensor:
        """Unbiased estimate of ``tr(Z^T Sigma^-1 Z)`` from the batch rows ``idx`` (``(b,)``,
        distinct, uniform, ``b >= 2``; ``z_batch``: ``(b, d)``): the same estimate as :func:`trace_estimate` on
        :meth:`precision_block`, without the ``(b, b)`` block where no cached dense precision
        is used: the batch's whole sum is ``sum_k w_k |U[idx]_k^T Z_B|^2 + c |Z_B|^2`` and its
        diagonal ``sum_i P_ii |z_i|^2``, ``O(b r d)`` time and ``O(b r)`` memory instead of
        ``O(b^2 r)`` and ``O(b^2)`` (``w = 1/D - c``, ``c = 1/(1 - s2)`` if ``n > r`` else 0)."""
        if self._dense_cache_used():
            return super().minibatch_quad_form(z_batch, idx)
        rows = self.eigenvectors[idx]
        z = z_batch.to(rows.dtype)
        inside = 1 / (1 - self.s2) if self.complement else 0.0
        weights = 1 / self.spectrum() - inside
        squared_norms = z.square().sum(dim=1)
        whole = ((rows.T @ z).square().sum(dim=1) * weights).sum() + inside * squared_norms.sum()
        diagonal = ((rows.square() @ weights + inside) * squared_norms).sum()
        n, b = self.n, z.shape[0]
        estimate = (n / b) * diagonal
        if b > 1:
            estimate = estimate + (n * (n - 1) / (b * (b - 1))) * (whole - diagonal)
        return estimate

    def _dense_cache_used(self) -> bool:
        """Whether batch entries come from a cached dense precision: ``s2`` fixed, a dense enough
        kinship of moderate ``n``, on the CPU (where reading the key costs nothing)."""
        return (
            not self.learn_s2
            and self.rank >= DENSE_PRECISION_MIN_RANK
            and self.n <= DENSE_PRECISION_MAX_N
            and self.logit_s2.device.type == "cpu"
        )

    def _s2_key(self) -> float:
        """The current value of ``logit_s2``: the cache key. A version counter would not do:
        ``logit_s2.data`` writes do not bump it and a new Parameter restarts it at 0."""
        return float(self.logit_s2.detach())

    def release_caches(self) -> None:
        """Free the dense precision (``n x n``) once a flow stage is over."""
        self._cached_precision = None
        self._cached_for = None

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.release_caches()  # moved or cast: the cached precision would be on the old device or dtype
        return super()._apply(fn, *args, **kwargs)

    def refit(self, z: Tensor, profile_scale: bool = False) -> Tensor | None:
        """The exact ``s2`` step: :meth:`fit_s2`, or with ``profile_scale`` :meth:`fit_s2_and_scale`
        (returns the per-trait latent standard deviations, ``(d,)``)."""
        if profile_scale:
            return self.fit_s2_and_scale(z)[1]
        self.fit_s2(z)
        return None

    def start_joint(self, z: Tensor) -> None:
        """``s2`` starts at the exact optimum for the initial latents ``z`` (``(n, d)``), then learns."""
        self.fit_s2(z)
        self.logit_s2.requires_grad_(True)

    @torch.no_grad()
    def _spectrum_sums(self, z: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per trait, ``r_jt = (U^T z_t)_j^2`` for each stored eigenvalue, plus one entry for the
        ``n - r`` zero eigenvalues of a low-rank kinship (their summed ``r``, with multiplicity)."""
        rotated_sq = self.rotate(z).square().double().cpu().numpy()
        eigenvalues = self.eigenvalues.double().cpu().numpy()
        multiplicity = np.ones_like(eigenvalues)
        if self.complement:
            rest = z.double().square().sum(dim=0).cpu().numpy() - rotated_sq.sum(axis=0)
            rotated_sq = np.vstack([rotated_sq, np.clip(rest, 0.0, None)])
            eigenvalues = np.append(eigenvalues, 0.0)
            multiplicity = np.append(multiplicity, self.complement)
        return rotated_sq, eigenvalues, multiplicity

    def fit_s2(self, z: Tensor) -> float:
        """Set ``s2`` to the exact maximiser of the full Gaussian likelihood of ``z``.

        Rotates once (``O(n r d)``), then a bounded Brent search on the 1-D
        objective (``O(r)`` per evaluation). Returns the new ``s2``.
        """
        rotated_sq, eigenvalues, multiplicity = self._spectrum_sums(z)
        s2 = optimise_s2(rotated_sq.sum(axis=1), eigenvalues, z.shape[1], multiplicity)
        self.set_s2(s2)
        return s2

    def fit_s2_and_scale(self, z: Tensor) -> tuple[float, Tensor]:
        """Set ``s2`` to its maximum-likelihood value when each trait's latent variance is
        free too (profiled out), and return it with those standard deviations.

        Why: a flow's first ActNorm standardises each trait by its sample standard
        deviation, which for related rows is well below the marginal one (shared
        components do not vary within the sample). With the latent scale fixed, the exact
        ``s2`` step then sees too little variance along the top eigenvectors and
        underestimates ``s2`` badly; letting the scale move with ``s2`` removes that bias.
        Dividing the latent by the returned scales (:meth:`LatentFlow.rescale_latent`)
        puts the flow at the joint optimum.
        """
        rotated_sq, eigenvalues, multiplicity = self._spectrum_sums(z)
        s2 = optimise_profiled_s2(rotated_sq, eigenvalues, multiplicity)
        self.set_s2(s2)
        spectrum = s2 * eigenvalues + (1.0 - s2)
        variance = (rotated_sq / spectrum[:, None]).sum(axis=0) / multiplicity.sum()
        return s2, torch.as_tensor(np.sqrt(variance), dtype=z.dtype, device=z.device)

    def describe(self) -> dict[str, float | list[float]]:
        """``{"s2": ..., "kinship_scale": c}``."""
        return {"s2": float(self.s2.detach()), "kinship_scale": float(self.scale)}

    def held_out(self, cross: Tensor, within: Tensor) -> HeldOutKinship:
        """Held-out rows of a dense kinship, for :meth:`conditional_gaussian_nll`.

        Args:
            cross: ``K_vt`` (``m x n``), kinship of the ``m`` held-out rows with the training
                rows in this model's order, on the scale of the matrix this model was built from.
            within: ``K_vv`` (``m x m``), kinship among the held-out rows.

        Precomputes ``A = c K_vt U`` (``O(m n r)``, once) in the dtype of ``cross``; ``c`` is
        :attr:`scale`. Use float64 for a float32 model: the conditional covariance subtracts
        two close matrices when relatives are close.
        """
        if cross.shape != (within.shape[0], self.n) or within.shape[0] != within.shape[1]:
            shapes = f"{tuple(cross.shape)} and {tuple(within.shape)}"
            raise ValueError(f"held-out kinship blocks of shapes {shapes} do not fit n = {self.n}")
        dtype = cross.dtype
        cross_rotated = self.scale * (cross @ self.eigenvectors.to(dtype))
        return HeldOutKinship(cross_rotated, self.eigenvalues.to(dtype), within=self.scale * within)

    def held_out_factor(self, factor_rows: Tensor) -> HeldOutKinship:
        """Held-out rows of a low-rank kinship ``K = W W^T``, for :meth:`conditional_gaussian_nll`.

        Args:
            factor_rows: ``W_v`` (``m x p``), the held-out rows of the factor whose training rows
                built this model (:meth:`from_factor`).

        With ``G = sqrt(c) W_v`` and ``W_t = U S V^T``: ``c K_vt U = (G V) diag(sqrt(k))`` and
        ``c K_vv = G G^T``, never formed (``O(m p r)`` once; no ``m x m`` or ``n x n`` matrix).

        Raises:
            ValueError: the model was not built from a factor.
        """
        if self.factor_basis is None:
            raise ValueError("held_out_factor needs a model built by KinshipCovariance.from_factor")
        dtype = factor_rows.dtype
        basis = self.factor_basis.to(dtype)
        if factor_rows.shape[1] != basis.shape[0]:
            raise ValueError(
                f"held-out factor rows have {factor_rows.shape[1]} columns, the training factor {basis.shape[0]}"
            )
        scaled = math.sqrt(self.scale) * factor_rows
        eigenvalues = self.eigenvalues.to(dtype)
        return HeldOutKinship((scaled @ basis) * eigenvalues.sqrt(), eigenvalues, factor=scaled, basis=basis)

    def conditional_mean(self, z_train: Tensor, held_out: HeldOutKinship) -> Tensor:
        """``Sigma_vt Sigma_tt^-1 Z_t = s2 A diag(1/D) U^T Z_t`` (``m x d``), in the held-out dtype.

        ``z_train``: ``(n, d)`` training latents in model order. ``O(n r d + m r d)``: the
        ``n - r`` zero eigenvalues of a low-rank kinship do not enter (``K_vt`` has no
        component there).
        """
        dtype = held_out.cross_rotated.dtype
        s2 = self.s2.detach().to(dtype)
        rotated = self.rotate(z_train).detach().to(dtype)
        spectrum = s2 * held_out.eigenvalues + (1 - s2)
        return s2 * (held_out.cross_rotated @ (rotated / spectrum[:, None]))

    def conditional_gaussian_nll(self, z_train: Tensor, z_val: Tensor, held_out: HeldOutKinship) -> Tensor:
        """``-log N(Z_v; Sigma_vt Sigma_tt^-1 Z_t, Sigma_vv|t (x) I_d) / m``: nats per held-out row.

        The Gaussian term of the held-out rows' density given the training rows (each of the
        ``d`` latent columns independently), ``Sigma_vv|t = Sigma_vv - Sigma_vt Sigma_tt^-1 Sigma_tv``
        for the current ``s2``. At ``s2 = 0`` it is exactly the iid term
        ``(1/2m) (m d log 2 pi + |Z_v|^2)`` (bitwise: ``mu = 0`` and ``Sigma_vv|t = I`` exactly).

        Args:
            z_train: ``(n, d)`` latents of the training rows, in model order.
            z_val: ``(m, d)`` latents of the held-out rows, in the order of ``held_out``.
            held_out: from :meth:`held_out` (dense: ``O(m^2 r + m^3)`` per new ``s2``, cached,
                then ``O(m^2 d)``) or :meth:`held_out_factor` (``O(p^2 r + p^3)`` per new ``s2``,
                then ``O(m p d)``; no ``m x m`` matrix).

        Returns:
            A 0-d tensor in the held-out dtype (no gradient).
        """
        m, d = z_val.shape
        dtype = held_out.cross_rotated.dtype
        with torch.no_grad():
            residual = z_val.detach().to(dtype) - self.conditional_mean(z_train, held_out)
            log_det, quad = held_out.log_det_and_quad_form(float(self.s2), residual)
        return gaussian_nll_from_terms(m, d, log_det, quad)


def gaussian_nll_from_terms(m: int, d: int, log_det: Tensor | float, quad: Tensor) -> Tensor:
    """``(m d log 2 pi + d log det Sigma + tr(Z^T Sigma^-1 Z)) / (2 m)`` for ``m`` rows of ``d`` columns."""
    return 0.5 * (m * d * math.log(2 * math.pi) + d * log_det + quad) / m


class HeldOutKinship(nn.Module):
    """Kinship of ``m`` held-out rows with the training rows of a :class:`KinshipCovariance`
    (in its eigenbasis) and among themselves: what their conditional density given the
    training latents needs. Built by :meth:`KinshipCovariance.held_out` (dense) or
    :meth:`KinshipCovariance.held_out_factor` (low rank); shared by every ``s2`` of a grid.

    With ``c K'_tt = U diag(k) U^T`` (``c``: the model's scale), ``D = s2 k + 1 - s2`` and
    ``A = c K_vt U`` (``m x r``)::

        Sigma_vv|t = s2 c K_vv + (1 - s2) I - s2^2 A diag(1/D) A^T                 (dense)
                   = (1 - s2) I + G M G^T,  G = sqrt(c) W_v,
                     M = s2 [(I - V V^T) + V diag((1 - s2)/D) V^T]  (p x p)        (K = W W^T)

    The low-rank form follows from ``A = (G V) diag(sqrt(k))``; its log-det and inverse come
    from the ``p x p`` core ``C = (1 - s2) I + M^1/2 G^T G M^1/2`` (matrix determinant lemma,
    Woodbury), ``p x p`` being ``r x r`` when the training factor has full column rank.
    Source: the Gaussian conditional (e.g. Rasmussen & Williams 2006, eq. A.6).
    """

    def __init__(
        self,
        cross_rotated: Tensor,
        eigenvalues: Tensor,
        within: Tensor | None = None,
        factor: Tensor | None = None,
        basis: Tensor | None = None,
    ) -> None:
        super().__init__()
        if (within is None) == (factor is None):
            raise ValueError("give either the dense within-block kinship or the held-out factor rows")
        self.m = cross_rotated.shape[0]
        self.register_buffer("cross_rotated", cross_rotated)
        self.register_buffer("eigenvalues", eigenvalues)
        self.register_buffer("within", within)
        self.register_buffer("factor", factor)
        self.register_buffer("basis", basis)
        self.register_buffer("gram", None if factor is None else factor.T @ factor)
        self._cache: tuple[float, Tensor, Tensor, Tensor | None] | None = None

    @property
    def low_rank(self) -> bool:
        return self.factor is not None

    def _apply(self, fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        self._cache = None  # moved or cast: the cached factor would be stale
        return super()._apply(fn, *args, **kwargs)

    def _core(self, s2: float) -> tuple[Tensor, Tensor, Tensor | None]:
        """For this ``s2``: the Cholesky factor ``L`` and ``log det Sigma_vv|t``; on the
        low-rank path ``L`` is that of the core ``C`` and the third item is ``M^1/2``."""
        if self._cache is not None and self._cache[0] == s2:
            return self._cache[1], self._cache[2], self._cache[3]
        sigma = 1.0 - s2
        spectrum = s2 * self.eigenvalues + sigma
        if not self.low_rank:
            assert self.within is not None
            covariance = s2 * self.within - (s2 * s2) * (self.cross_rotated / spectrum) @ self.cross_rotated.T
            covariance.diagonal().add_(sigma)
            cholesky = torch.linalg.cholesky(covariance)
            log_det = 2.0 * torch.log(cholesky.diagonal()).sum()
            root = None
        else:
            assert self.basis is not None and self.gram is not None
            p = self.basis.shape[0]
            eye = torch.eye(p, dtype=self.gram.dtype, device=self.gram.device)
            shrink = 1.0 - torch.sqrt(sigma / spectrum)
            root = math.sqrt(s2) * (eye - (self.basis * shrink) @ self.basis.T)
            core = root @ self.gram @ root
            core = (core + core.T) / 2
            core.diagonal().add_(sigma)
            cholesky = torch.linalg.cholesky(core)
            log_det = 2.0 * torch.log(cholesky.diagonal()).sum() + (self.m - p) * math.log(sigma)
        self._cache = (s2, cholesky, log_det, root)
        return cholesky, log_det, root

    def log_det_and_quad_form(self, s2: float, residual: Tensor) -> tuple[Tensor, Tensor]:
        """``log det Sigma_vv|t`` and ``tr(E^T Sigma_vv|t^-1 E)`` for ``E = Z_v - mean`` (``m x d``)."""
        cholesky, log_det, root = self._core(s2)
        if root is None:
            whitened = torch.linalg.solve_triangular(cholesky, residual, upper=False).contiguous()  # row-major like
            return log_det, whitened.square().sum()  # the residual: at s2 = 0 the sum is the iid one to the last bit
        assert self.factor is not None
        projected = torch.linalg.solve_triangular(cholesky, root @ (self.factor.T @ residual), upper=False)
        return log_det, (residual.square().sum() - projected.square().sum()) / (1.0 - s2)


def s2_objective(
    s2: float, rotated_sq: np.ndarray, eigenvalues: np.ndarray, d: int, multiplicity: np.ndarray | None = None
) -> float:
    """``(d/2) sum m_j log D_j + (1/2) sum r_j / D_j``: the s2-dependent part of the NLL.

    ``multiplicity`` lets one entry stand for many equal eigenvalues (the zero
    eigenvalues of a low-rank kinship, with their summed ``r_j``).
    """
    spectrum = s2 * eigenvalues + (1.0 - s2)
    weights = 1.0 if multiplicity is None else multiplicity
    return 0.5 * (d * (weights * np.log(spectrum)).sum() + (rotated_sq / spectrum).sum())


def optimise_s2(
    rotated_sq: np.ndarray, eigenvalues: np.ndarray, d: int, multiplicity: np.ndarray | None = None
) -> float:
    """Exact 1-D minimisation of :func:`s2_objective` over ``[0, S2_MAX]``.

    The objective is smooth in ``s2``; bounded Brent finds the interior optimum and
    the two end points are checked explicitly so a boundary optimum (s2 = 0) is exact.
    """
    args = (rotated_sq, eigenvalues, d, multiplicity)
    result = minimize_scalar(s2_objective, bounds=(0.0, S2_MAX), args=args, method="bounded", options={"xatol": 1e-6})
    candidates = [float(result.x), 0.0, S2_MAX]
    return min(candidates, key=lambda s: s2_objective(s, *args))


def profiled_s2_objective(
    s2: float, rotated_sq: np.ndarray, eigenvalues: np.ndarray, multiplicity: np.ndarray
) -> float:
    """``(d/2) sum m_j log D_j + (n/2) sum_t log(sum_j r_jt / D_j / n)``: the NLL in ``s2`` once each
    trait's latent variance is set to its optimum for that ``s2`` (``rotated_sq`` is eigenvalues x traits)."""
    spectrum = s2 * eigenvalues + (1.0 - s2)
    n = multiplicity.sum()
    variance = (rotated_sq / spectrum[:, None]).sum(axis=0) / n
    return 0.5 * (rotated_sq.shape[1] * (multiplicity * np.log(spectrum)).sum() + n * np.log(variance).sum())


def optimise_profiled_s2(rotated_sq: np.ndarray, eigenvalues: np.ndarray, multiplicity: np.ndarray) -> float:
    """Exact 1-D minimisation of :func:`profiled_s2_objective` over ``[0, S2_MAX]``, end points checked."""
    args = (rotated_sq, eigenvalues, multiplicity)
    result = minimize_scalar(
        profiled_s2_objective, bounds=(0.0, S2_MAX), args=args, method="bounded", options={"xatol": 1e-6}
    )
    candidates = [float(result.x), 0.0, S2_MAX]
    return min(candidates, key=lambda s: profiled_s2_objective(s, *args))
