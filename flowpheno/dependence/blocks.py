"""Equicorrelated blocks (repeated measurements): ``Sigma_k = (1 - rho_k) I + rho_k 1 1^T``.

Closed forms, no matrices: ``log det Sigma_k = (m-1) log(1-rho) + log(1+(m-1) rho)``,
``tr(Z_k^T Sigma_k^-1 Z_k) = (sum |z_i|^2 - rho/(1+(m-1) rho) |sum z_i|^2) / (1-rho)``,
precision diagonal ``(1+(m-2) rho)/((1-rho)(1+(m-1) rho))``, off-diagonal
``-rho/((1-rho)(1+(m-1) rho))``. ``rho_k = sigmoid(t_k)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from flowpheno.dependence.base import DependenceModel


class EquicorrelatedBlocks(DependenceModel):
    """Block-diagonal ``Sigma`` with one ``rho`` shared by all blocks or one per block.

    Args:
        block_ids: length-n integer labels (0..B-1) of each row's block.
        rho: initial correlation(s) in [0, 1).
        shared: one ``rho`` for every block (grid search) instead of one per block.
        learn_rho: whether ``rho`` receives gradients (joint training).
    """

    def __init__(
        self,
        block_ids: Tensor,
        rho: float | Tensor = 0.0,
        shared: bool = False,
        learn_rho: bool = False,
    ) -> None:
        super().__init__()
        block_ids = torch.as_tensor(block_ids, dtype=torch.long)
        _, block_ids = torch.unique(block_ids, return_inverse=True)
        self.n = int(block_ids.shape[0])
        self.shared = shared
        self.register_buffer("block_ids", block_ids)
        rho_init = torch.as_tensor(rho)
        dtype = rho_init.dtype if rho_init.is_floating_point() else torch.get_default_dtype()
        self.register_buffer("sizes", torch.bincount(block_ids).to(dtype))
        n_params = 1 if shared else int(self.sizes.shape[0])
        rho_init = rho_init.to(dtype).clamp(1e-6, 1 - 1e-6)
        logits = torch.logit(rho_init.expand(n_params).clone())
        self.logit_rho = nn.Parameter(logits, requires_grad=learn_rho)
        self._block_rows: tuple[Tensor, list[int], list[int]] | None = None

    @property
    def n_blocks(self) -> int:
        return int(self.sizes.shape[0])

    @property
    def rho(self) -> Tensor:
        """Correlation per block (length B, repeated when shared)."""
        return torch.sigmoid(self.logit_rho).expand(self.n_blocks)

    def set_rho(self, rho: float | Tensor) -> None:
        with torch.no_grad():
            value = torch.as_tensor(rho, dtype=self.logit_rho.dtype).clamp(1e-6, 1 - 1e-6)
            self.logit_rho.copy_(torch.logit(value).expand_as(self.logit_rho))

    def log_det(self) -> Tensor:
        rho, m = self.rho, self.sizes
        return ((m - 1) * torch.log1p(-rho) + torch.log1p((m - 1) * rho)).sum()

    def quad_form(self, z: Tensor) -> Tensor:
        rho, m = self.rho, self.sizes
        sum_sq = torch.zeros(self.n_blocks, dtype=z.dtype, device=z.device).index_add_(
            0, self.block_ids, z.square().sum(dim=1)
        )
        block_sums = torch.zeros(self.n_blocks, z.shape[1], dtype=z.dtype, device=z.device).index_add_(
            0, self.block_ids, z
        )
        shrink = rho / (1 + (m - 1) * rho)
        return ((sum_sq - shrink * block_sums.square().sum(dim=1)) / (1 - rho)).sum()

    def precision_times(self, z: Tensor) -> Tensor:
        """Per block: ``diag_k z_i + off_k (sum_block z - z_i)``; ``O(n d)``."""
        diagonal, off_diagonal = self.precision_entries()
        block_sums = torch.zeros(self.n_blocks, z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, self.block_ids, z)
        own_diag, own_off = diagonal[self.block_ids][:, None], off_diagonal[self.block_ids][:, None]
        return own_diag * z + own_off * (block_sums[self.block_ids] - z)

    def precision_entries(self) -> tuple[Tensor, Tensor]:
        """Per-block diagonal and off-diagonal entries of ``Sigma_k^-1``."""
        rho, m = self.rho, self.sizes
        denom = (1 - rho) * (1 + (m - 1) * rho)
        return (1 + (m - 2) * rho) / denom, -rho / denom

    def precision_block(self, idx: Tensor) -> Tensor:
        diagonal, off_diagonal = self.precision_entries()
        blocks = self.block_ids[idx]
        same_block = blocks[:, None] == blocks[None, :]
        block_off = off_diagonal[blocks]
        entries = torch.where(same_block, block_off[:, None].expand(-1, len(idx)), torch.zeros((), dtype=block_off.dtype, device=block_off.device))
        eye = torch.eye(len(idx), dtype=torch.bool, device=entries.device)
        return torch.where(eye, diagonal[blocks][:, None].expand(-1, len(idx)), entries)

    def block_batches(self, batch_size: int, generator: torch.Generator) -> list[Tensor]:
        """Batches of whole blocks in a random order, packed to about ``batch_size`` rows.

        A block larger than ``batch_size`` is a batch of its own. With such batches the
        Gaussian term of every batch is exact (:meth:`whole_blocks_gaussian_nll`): no
        estimator, and every within-block pair informs ``rho``.
        """
        if self._block_rows is None:  # once per model: rows grouped by block, on the host
            sizes = self.sizes.cpu().long()
            self._block_rows = (torch.argsort(self.block_ids.cpu(), stable=True),
                                (torch.cumsum(sizes, 0) - sizes).tolist(), sizes.tolist())
        rows_by_block, starts, sizes_list = self._block_rows
        batches: list[Tensor] = []
        current: list[Tensor] = []
        filled = 0
        for block in torch.randperm(self.n_blocks, generator=generator).tolist():
            start, size = starts[block], sizes_list[block]
            current.append(rows_by_block[start : start + size])
            filled += size
            if filled >= batch_size:
                batches.append(torch.cat(current))
                current, filled = [], 0
        if current:
            batches.append(torch.cat(current))
        return [batch.to(self.block_ids.device) for batch in batches]

    def whole_blocks_gaussian_nll(self, z_batch: Tensor, idx: Tensor, n_batches: int) -> Tensor:
        """Exact Gaussian term of the blocks that ``idx`` holds completely, scaled so that
        the mean over an epoch's ``n_batches`` batches is :meth:`gaussian_nll`."""
        rho, m = self.rho, self.sizes
        blocks = self.block_ids[idx]
        present = torch.zeros(self.n_blocks, dtype=z_batch.dtype, device=z_batch.device).index_fill_(0, blocks, 1.0)
        sum_sq = torch.zeros(self.n_blocks, dtype=z_batch.dtype, device=z_batch.device).index_add_(
            0, blocks, z_batch.square().sum(dim=1)
        )
        block_sums = torch.zeros(self.n_blocks, z_batch.shape[1], dtype=z_batch.dtype, device=z_batch.device).index_add_(
            0, blocks, z_batch
        )
        shrink = rho / (1 + (m - 1) * rho)
        quad = ((sum_sq - shrink * block_sums.square().sum(dim=1)) / (1 - rho)).sum()
        log_det = (present * ((m - 1) * torch.log1p(-rho) + torch.log1p((m - 1) * rho))).sum()
        d = z_batch.shape[1]
        total = 0.5 * (z_batch.shape[0] * d * math.log(2 * math.pi) + d * log_det + quad)
        return total * n_batches / self.n

    def describe(self) -> dict[str, float | list[float]]:
        rho = torch.sigmoid(self.logit_rho).detach().cpu()
        if self.shared:
            return {"rho": float(rho[0])}
        return {"rho": [float(r) for r in rho], "block_sizes": [int(m) for m in self.sizes.cpu()]}

