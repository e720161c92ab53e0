"""``Sigma = I``: the ordinary iid flow likelihood (the baseline)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from flowpheno.dependence.base import DependenceModel


class IIDCovariance(DependenceModel):
    """Independent rows, ``Sigma = I_n``; the batch estimate is the usual ``(n/b) sum |z_i|^2``.

    No parameters: :meth:`refit` has nothing to fit.

    Args:
        n: number of rows.
    """

    identity: ClassVar[bool] = True

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.register_buffer("_anchor", torch.zeros(()))  # carries the model's dtype and device

    def log_det(self) -> Tensor:
        return self._anchor

    def quad_form(self, z: Tensor) -> Tensor:
        return z.square().sum()

    def precision_times(self, z: Tensor) -> Tensor:
        return z

    def precision_block(self, idx: Tensor) -> Tensor:
        return torch.eye(len(idx), dtype=self._anchor.dtype, device=self._anchor.device)

    def minibatch_quad_form(self, z_batch: Tensor, idx: Tensor) -> Tensor:
        return (self.n / z_batch.shape[0]) * z_batch.square().sum()

    def refit(self, z: Tensor, profile_scale: bool = False) -> Tensor | None:
        """Nothing to fit (``Sigma = I``); ``profile_scale`` is not offered."""
        return super().refit(z, profile_scale) if profile_scale else None
