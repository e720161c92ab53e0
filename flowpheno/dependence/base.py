"""The interface every dependence model implements, and the batch trace estimator."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from flowpheno.errors import FlowphenoError

if TYPE_CHECKING:
    from flowpheno.dependence.kinship import HeldOutKinship


def trace_estimate(z_batch: Tensor, precision_batch: Tensor, n: int) -> Tensor:
    """Unbiased estimate of ``tr(Z^T P Z)`` from a uniform batch (Proposition 2.2).

    ``T = (n/b) sum_i P_ii |z_i|^2 + n(n-1)/(b(b-1)) sum_{i != j} P_ij <z_i, z_j>``

    Args:
        z_batch: ``(b, d)`` latents of the batch rows.
        precision_batch: ``(b, b)``, ``P[idx][:, idx]`` for those rows.
        n: number of rows the batch was drawn from (uniformly, without replacement: the
            rows must be distinct, and a repeated row makes the estimate wrong).

    Returns:
        A 0-d tensor, unbiased for ``tr(Z^T P Z)`` over all ``n`` rows when ``b >= 2``; a
        single row (``b = 1``) has no pair and estimates only the diagonal part
        (training never makes such a batch: ``flowpheno.train.objective.uniform_batches``).
    """
    b = z_batch.shape[0]
    gram = z_batch @ z_batch.T
    weighted = precision_batch * gram
    diagonal = torch.diagonal(weighted).sum()
    estimate = (n / b) * diagonal
    if b > 1:
        off_diagonal = weighted.sum() - diagonal
        estimate = estimate + (n * (n - 1) / (b * (b - 1))) * off_diagonal
    return estimate


class DependenceModel(nn.Module, ABC):
    """Row covariance ``Sigma`` (``n x n``) of the latent ``Z`` (``n x d``); columns independent:
    ``vec(Z) ~ N(0, I_d (x) Sigma)`` (DESIGN.md, the matrix-normal likelihood).

    The contract the training schedules rely on (``flowpheno.train.schedules`` never asks
    which model it holds):

    * the Gaussian terms: :meth:`log_det`, :meth:`quad_form`, :meth:`precision_block`,
      :meth:`precision_times` (abstract), and the shared helpers built on them;
    * :meth:`refit`: the exact covariance step of ``alternating`` training, from the latents;
    * :meth:`start_joint`: what ``joint`` training does before its first step;
    * :meth:`release_caches`: free what a stretch of training at a fixed covariance built;
    * :attr:`conditional_scoring` and :meth:`conditional_gaussian_nll`: held-out rows scored
      given the training rows (relatives), where the model can;
    * :attr:`batchings`, :meth:`batches` and :meth:`batch_gaussian_nll`: batch layouts other
      than uniform random rows, where the model has them.

    Rows are in the model's order throughout; every method keeps tensors on the device and
    dtype of the model and its inputs.
    """

    n: int
    """Number of rows (individuals)."""
    refit_name: ClassVar[str] = "covariance"
    """Prefix of the timing key of :meth:`refit` in stage records (``"<refit_name>_seconds"``)."""
    identity: ClassVar[bool] = False
    """``Sigma = I`` whatever the parameters: the plain batch estimate is already exact in
    expectation with the least variance, so a control variate has nothing to remove."""
    conditional_scoring: ClassVar[bool] = False
    """Whether :meth:`conditional_gaussian_nll` is implemented (held-out rows given training rows)."""
    profiles_scale: ClassVar[bool] = False
    """Whether :meth:`refit` can also fit each trait's latent scale (``profile_scale=True``)."""
    batchings: ClassVar[tuple[str, ...]] = ("uniform",)
    """The batch layouts this model supports (``TrainConfig.batching``); ``uniform`` always."""

    @abstractmethod
    def log_det(self) -> Tensor:
        """``log det Sigma`` (0-d tensor)."""

    @abstractmethod
    def quad_form(self, z: Tensor) -> Tensor:
        """Exact ``tr(Z^T Sigma^-1 Z)`` (0-d) for ``z``: ``(n, d)``, all rows in model order."""

    @abstractmethod
    def precision_block(self, idx: Tensor) -> Tensor:
        """``Sigma^-1[idx][:, idx]`` (``(b, b)``), the precision entries a batch of rows ``idx`` (``(b,)``) needs."""

    @abstractmethod
    def precision_times(self, z: Tensor) -> Tensor:
        """``Sigma^-1 Z`` (``(n, d)``) for ``z``: ``(n, d)``, all rows."""

    def precision_columns_times(self, idx: Tensor, values: Tensor) -> Tensor:
        """``Sigma^-1[:, idx] @ values`` (``(n, d)``; ``values``: ``(b, d)``): how ``Sigma^-1 Z``
        changes when rows ``idx`` do."""
        scattered = torch.zeros(self.n, values.shape[1], dtype=values.dtype, device=values.device)
        scattered[idx] = values
        return self.precision_times(scattered)

    def minibatch_quad_form(self, z_batch: Tensor, idx: Tensor) -> Tensor:
        """Unbiased estimate of ``tr(Z^T Sigma^-1 Z)`` from the batch rows ``idx`` (``z_batch``: ``(b, d)``)."""
        return trace_estimate(z_batch, self.precision_block(idx), self.n)

    def gaussian_nll(self, z: Tensor) -> Tensor:
        """Exact ``-log N(vec Z; 0, I (x) Sigma)`` divided by ``n`` (nats per row); ``z``: ``(n, d)``."""
        d = z.shape[1]
        total = 0.5 * (self.n * d * math.log(2 * math.pi) + d * self.log_det() + self.quad_form(z))
        return total / self.n

    def minibatch_gaussian_nll(self, z_batch: Tensor, idx: Tensor) -> Tensor:
        """Unbiased estimate of :meth:`gaussian_nll` from one uniform batch (``z_batch``: ``(b, d)``)."""
        return self.gaussian_nll_from_trace(self.minibatch_quad_form(z_batch, idx), z_batch.shape[1])

    def gaussian_nll_from_trace(self, trace: Tensor, d: int) -> Tensor:
        """:meth:`gaussian_nll` given (an estimate of) ``tr(Z^T Sigma^-1 Z)`` for ``d`` latent columns."""
        return 0.5 * (self.n * d * math.log(2 * math.pi) + d * self.log_det() + trace) / self.n

    def describe(self) -> dict[str, float | list[float]]:
        """The fitted covariance parameters, for logs and ``fit.json``."""
        return {}

    # hooks of the training schedules

    def refit(self, z: Tensor, profile_scale: bool = False) -> Tensor | None:
        """Set the covariance parameters to the exact maximiser of the Gaussian likelihood of
        the latents ``z`` (``(n, d)``): the covariance step of ``alternating`` training.

        With ``profile_scale`` (only where :attr:`profiles_scale`), each trait's latent
        variance is free too and the fitted standard deviations (``(d,)``) are returned, for
        the flow to divide its latent by; otherwise returns None.

        Raises:
            FlowphenoError: the model has no exact step, or cannot profile the scale.
        """
        raise FlowphenoError(f"{type(self).__name__} has no exact covariance step for alternating training")

    def start_joint(self, z: Tensor) -> None:
        """Before ``joint`` training: make the covariance parameters trainable. ``z`` (``(n, d)``)
        are the latents of the initialised flow, for a model that starts from their exact optimum
        (the default starts from the current parameters and ignores them)."""
        for parameter in self.parameters():
            parameter.requires_grad_(True)

    def release_caches(self) -> None:
        """Free what was cached for a fixed covariance (e.g. a dense ``n x n`` precision) once a
        stretch of training at that covariance is over. Never needed for correctness."""

    def conditional_gaussian_nll(self, z_train: Tensor, z_val: Tensor, held_out: HeldOutKinship) -> Tensor:
        """Gaussian term of held-out rows given the training rows, nats per held-out row
        (only where :attr:`conditional_scoring`).

        Args:
            z_train: ``(n, d)`` training latents in model order.
            z_val: ``(m, d)`` held-out latents.
            held_out: the held-out rows' relatedness to the training rows.

        Raises:
            FlowphenoError: the model cannot score held-out rows conditionally.
        """
        raise FlowphenoError(f"{type(self).__name__} cannot score held-out rows given the training rows")

    def batches(self, batching: str, batch_size: int, generator: torch.Generator) -> list[Tensor]:
        """One epoch's batches of row indices for a layout in :attr:`batchings` other than ``uniform``.

        Raises:
            FlowphenoError: the model has no such layout.
        """
        raise FlowphenoError(f"{type(self).__name__} has no '{batching}' batches")

    def batch_gaussian_nll(self, z_batch: Tensor, idx: Tensor, batching: str, n_batches: int) -> Tensor:
        """Gaussian term of one batch from :meth:`batches` (``z_batch``: ``(b, d)``), scaled so that
        its mean over the epoch's ``n_batches`` batches is (in expectation) :meth:`gaussian_nll`.

        Raises:
            FlowphenoError: the model has no such layout.
        """
        raise FlowphenoError(f"{type(self).__name__} has no '{batching}' batches")
