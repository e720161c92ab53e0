"""``Sigma = I``: the ordinary iid flow likelihood (the baseline)."""

from __future__ import annotations

import torch
from torch import Tensor

from flowpheno.dependence.base import DependenceModel


class IIDCovariance(DependenceModel):
    """Independent rows; the batch estimate is the usual ``(n/b) sum |z_i|^2``."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.register_buffer("_anchor", torch.zeros(()))

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
