"""Equicorrelated blocks (repeated measurements): ``Sigma_k = (1 - rho_k) I + rho_k 1 1^T``.

Closed forms, no matrices: ``log det Sigma_k = (m-1) log(1-rho) + log(1+(m-1) rho)``,
``tr(Z_k^T Sigma_k^-1 Z_k) = (sum |z_i|^2 - rho/(1+(m-1) rho) |sum z_i|^2) / (1-rho)``,
precision diagonal ``(1+(m-2) rho)/((1-rho)(1+(m-1) rho))``, off-diagonal
``-rho/((1-rho)(1+(m-1) rho))``. ``rho_k = sigmoid(t_k)``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from flowpheno.dependence.base import DependenceModel

RHO_MAX = 0.9995
"""Upper end of the exact ``rho`` search (``rho -> 1`` makes ``Sigma_k`` singular)."""


class EquicorrelatedBlocks(DependenceModel):
    """Block-diagonal ``Sigma`` with one ``rho`` shared by all blocks or one per block
    (repeated measurements of one individual, or members of one family, as blocks).

    Args:
        block_ids: ``(n,)`` integer labels of each row's block (any integers; relabelled
            ``0..B-1`` in sorted order, which is the order of per-block ``rho``).
        rho: initial correlation (unitless, in ``[0, 1)``): a number, or ``(B,)`` per block
            (clipped to ``[1e-6, 1 - 1e-6]``).
        shared: one ``rho`` for every block (grid search) instead of one per block.
        learn_rho: whether ``rho`` receives gradients (joint training).
    """

    batchings: ClassVar[tuple[str, ...]] = ("uniform", "blocks", "stratified")

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
        """Set ``rho``: a number, or ``(B,)`` per block (clipped to ``[1e-6, 1 - 1e-6]``)."""
        with torch.no_grad():
            value = torch.as_tensor(rho, dtype=self.logit_rho.dtype).clamp(1e-6, 1 - 1e-6)
            self.logit_rho.copy_(torch.logit(value).expand_as(self.logit_rho))

    def log_det(self) -> Tensor:
        """``sum_k (m_k - 1) log(1 - rho_k) + log(1 + (m_k - 1) rho_k)``."""
        rho, m = self.rho, self.sizes
        return ((m - 1) * torch.log1p(-rho) + torch.log1p((m - 1) * rho)).sum()

    def quad_form(self, z: Tensor) -> Tensor:
        """Per block ``(sum |z_i|^2 - rho/(1 + (m-1) rho) |sum z_i|^2) / (1 - rho)``, summed: ``O(n d)``."""
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
        block_sums = torch.zeros(self.n_blocks, z.shape[1], dtype=z.dtype, device=z.device).index_add_(
            0, self.block_ids, z
        )
        own_diag, own_off = diagonal[self.block_ids][:, None], off_diagonal[self.block_ids][:, None]
        return own_diag * z + own_off * (block_sums[self.block_ids] - z)

    def precision_entries(self) -> tuple[Tensor, Tensor]:
        """Per-block diagonal and off-diagonal entries of ``Sigma_k^-1``."""
        rho, m = self.rho, self.sizes
        denom = (1 - rho) * (1 + (m - 1) * rho)
        return (1 + (m - 2) * rho) / denom, -rho / denom

    def precision_block(self, idx: Tensor) -> Tensor:
        """``Sigma^-1[idx][:, idx]`` (``(b, b)``) from the closed-form entries: ``O(b^2)``."""
        diagonal, off_diagonal = self.precision_entries()
        blocks = self.block_ids[idx]
        same_block = blocks[:, None] == blocks[None, :]
        block_off = off_diagonal[blocks]
        entries = torch.where(
            same_block,
            block_off[:, None].expand(-1, len(idx)),
            torch.zeros((), dtype=block_off.dtype, device=block_off.device),
        )
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
            self._block_rows = (
                torch.argsort(self.block_ids.cpu(), stable=True),
                (torch.cumsum(sizes, 0) - sizes).tolist(),
                sizes.tolist(),
            )
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

    def rho_objective(self, z: Tensor, rho: Tensor) -> Tensor:
        """Per block, the ``rho``-dependent NLL of the latents ``z`` at each candidate in ``rho``
        (a vector shared by all blocks, or one row of candidates per block).

        ``(d/2) [(m-1) log(1-rho) + log(1+(m-1) rho)] + (A - rho B / (1+(m-1) rho)) / (2 (1-rho))``
        with ``A`` the block's summed squared norms and ``B`` its squared sum: a
        ``(blocks, candidates)`` table, from one ``O(n d)`` pass over ``z``.
        """
        return self._rho_table(self._block_statistics(z), rho, z.shape[1])

    def _block_statistics(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Per block, ``A`` (summed squared norms) and ``B`` (squared norm of the sum), in float64."""
        z = z.detach().double()
        ids = self.block_ids.to(z.device)
        sum_sq = torch.zeros(self.n_blocks, dtype=z.dtype, device=z.device).index_add_(0, ids, z.square().sum(dim=1))
        sums = torch.zeros(self.n_blocks, z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, ids, z)
        return sum_sq.unsqueeze(1), sums.square().sum(dim=1, keepdim=True)

    def _rho_table(self, statistics: tuple[Tensor, Tensor], rho: Tensor, d: int) -> Tensor:
        sum_sq, squared_sum = statistics
        m = self.sizes.to(sum_sq).unsqueeze(1)
        rho = rho.to(sum_sq)
        spread = 1 + (m - 1) * rho
        log_det = (m - 1) * torch.log1p(-rho) + torch.log(spread)
        quad = (sum_sq - rho * squared_sum / spread) / (1 - rho)
        return 0.5 * (d * log_det + quad)

    @torch.no_grad()
    def fit_rho(self, z: Tensor) -> Tensor:
        """Set ``rho`` (shared, or per block) to the exact maximiser of the Gaussian
        likelihood of the latents ``z`` on ``[0, RHO_MAX]``; returns it.

        Each block's objective is 1-D and cheap, so a grid of 1,001 values followed by a
        second grid of 1,001 around the best point (resolution about ``1e-6``) finds the
        global optimum, end points included, for all blocks at once. A block of one row
        says nothing about its ``rho``, which is left as it was.
        """
        statistics = self._block_statistics(z)  # one pass over the latents for both grids
        step = RHO_MAX / 1000
        coarse = torch.linspace(0.0, RHO_MAX, 1001, dtype=torch.float64)
        table = self._rho_table(statistics, coarse, z.shape[1])
        if self.shared:
            table = table.sum(dim=0, keepdim=True)
        best = coarse[table.argmin(dim=1)]
        fine = (best.unsqueeze(1) + torch.linspace(-step, step, 1001, dtype=torch.float64)).clamp(0.0, RHO_MAX)
        fine_table = self._rho_table(statistics, fine, z.shape[1])  # one row of candidates per block
        if self.shared:
            fine_table = fine_table.sum(dim=0, keepdim=True)
        rho = fine.gather(1, fine_table.argmin(dim=1, keepdim=True)).squeeze(1)
        if not self.shared:
            singleton = (self.sizes <= 1).cpu()
            rho = torch.where(singleton, torch.sigmoid(self.logit_rho.detach()).double().cpu(), rho)
        self.set_rho(rho.to(self.logit_rho))
        return torch.sigmoid(self.logit_rho.detach())

    def refit(self, z: Tensor, profile_scale: bool = False) -> Tensor | None:
        """The exact ``rho`` step (:meth:`fit_rho`); ``profile_scale`` is not offered."""
        if profile_scale:
            return super().refit(z, profile_scale)
        self.fit_rho(z)
        return None

    def batches(self, batching: str, batch_size: int, generator: torch.Generator) -> list[Tensor]:
        """``blocks``: :meth:`block_batches`; ``stratified``: :meth:`stratified_batches`."""
        if batching == "blocks":
            return self.block_batches(batch_size, generator)
        if batching == "stratified":
            return self.stratified_batches(batch_size, generator)
        return super().batches(batching, batch_size, generator)

    def batch_gaussian_nll(self, z_batch: Tensor, idx: Tensor, batching: str, n_batches: int) -> Tensor:
        """``blocks``: :meth:`whole_blocks_gaussian_nll` (exact); ``stratified``:
        :meth:`stratified_gaussian_nll` (unbiased, bounded below)."""
        if batching == "blocks":
            return self.whole_blocks_gaussian_nll(z_batch, idx, n_batches)
        if batching == "stratified":
            return self.stratified_gaussian_nll(z_batch, idx, n_batches)
        return super().batch_gaussian_nll(z_batch, idx, batching, n_batches)

    def dealt_blocks(self, n_batches: int) -> Tensor:
        """Which blocks :meth:`stratified_batches` deals across batches (at least two rows per batch)."""
        return self.sizes >= 2 * n_batches

    def stratified_batches(self, batch_size: int, generator: torch.Generator) -> list[Tensor]:
        """About ``n / batch_size`` batches: large blocks dealt evenly, small blocks whole.

        A block of ``m >= 2 x n_batches`` rows is shuffled and dealt round-robin (from a
        random first batch), so every batch holds ``floor`` or ``ceil`` of
        ``m / n_batches`` of its rows; every other block goes whole into one batch,
        chosen to balance batch sizes. Unlike uniform batches, no batch can hold far more
        than its share of a large, strongly correlated block, which is what makes the
        Proposition 2.2 estimate unbounded below (:meth:`stratified_gaussian_nll`).
        """
        n_batches = max(1, math.ceil(self.n / batch_size))
        ids = self.block_ids.cpu()
        sizes = self.sizes.cpu().long()
        # rows in a random order within each block, then their position in the block
        shuffled = torch.randperm(self.n, generator=generator)
        by_block = shuffled[torch.argsort(ids[shuffled], stable=True)]
        starts = torch.cumsum(sizes, 0) - sizes
        position = torch.arange(self.n) - starts[ids[by_block]]
        dealt = self.dealt_blocks(n_batches).cpu()
        batch_of = torch.empty(self.n, dtype=torch.long)
        offset = torch.randint(n_batches, (self.n_blocks,), generator=generator)
        row_block = ids[by_block]
        batch_of[by_block] = (offset[row_block] + position) % n_batches
        # whole small blocks: shuffled, then cut into n_batches runs of about equal rows,
        # filling the room the dealt rows leave in each batch
        small = torch.nonzero(~dealt).flatten()
        if len(small):
            small = small[torch.randperm(len(small), generator=generator)]
            dealt_rows = (
                torch.bincount(batch_of[dealt[ids]], minlength=n_batches)
                if dealt.any()
                else torch.zeros(n_batches, dtype=torch.long)
            )
            room = (int(sizes[small].sum()) + int(dealt_rows.sum())) / n_batches - dealt_rows
            room = room.clamp(min=0)
            bounds = torch.cumsum(room, 0) / max(float(room.sum()), 1.0) * float(sizes[small].sum())
            middle = torch.cumsum(sizes[small], 0) - sizes[small] / 2
            block_batch = torch.full((self.n_blocks,), -1, dtype=torch.long)
            block_batch[small] = torch.searchsorted(bounds, middle.to(bounds.dtype)).clamp(max=n_batches - 1)
            small_rows = ~dealt[ids]
            batch_of[small_rows] = block_batch[ids[small_rows]]
        order = torch.argsort(batch_of, stable=True)
        counts = torch.bincount(batch_of, minlength=n_batches).tolist()
        return [batch.to(self.block_ids.device) for batch in order.split(counts) if len(batch)]

    def stratified_gaussian_nll(self, z_batch: Tensor, idx: Tensor, n_batches: int) -> Tensor:
        """Unbiased estimate of :meth:`gaussian_nll` from one :meth:`stratified_batches` batch.

        A dealt block with ``r`` of its ``m`` rows here enters with weights ``m/r`` on the
        squared norms and ``m(m-1)/(r(r-1))`` on the within-block pairs (the rows are a
        uniform subset of the block); a whole block enters exactly, times ``n_batches``
        (it is in one batch per epoch). Every block's estimate is ``>= 0`` for any
        latents, because ``m rho / (1 + (m-1) rho) <= 1``: a batch cannot drive the
        quadratic term to minus infinity, as the uniform-batch estimate can when a batch
        holds more than its share of a large block with ``rho`` near 1.
        """
        rho, m = self.rho, self.sizes
        blocks = self.block_ids[idx]
        # rows per block in this batch; index_add_ rather than bincount, which waits for the device
        r = torch.zeros(self.n_blocks, dtype=z_batch.dtype, device=z_batch.device).index_add_(
            0, blocks, torch.ones_like(blocks, dtype=z_batch.dtype)
        )
        sum_sq = torch.zeros(self.n_blocks, dtype=z_batch.dtype, device=z_batch.device).index_add_(
            0, blocks, z_batch.square().sum(dim=1)
        )
        block_sums = torch.zeros(
            self.n_blocks, z_batch.shape[1], dtype=z_batch.dtype, device=z_batch.device
        ).index_add_(0, blocks, z_batch)
        pairs = block_sums.square().sum(dim=1) - sum_sq
        one = torch.ones((), dtype=z_batch.dtype, device=z_batch.device)
        diagonal_weight = torch.where(r > 0, m / r.clamp(min=1), 0 * one)
        pair_weight = torch.where(r > 1, m * (m - 1) / (r * (r - 1)).clamp(min=1), 0 * one)
        per_epoch = torch.where(self.dealt_blocks(n_batches), one, n_batches * one)
        shrink = rho / (1 + (m - 1) * rho)
        quad = (per_epoch * ((1 - shrink) * diagonal_weight * sum_sq - shrink * pair_weight * pairs) / (1 - rho)).sum()
        return self.gaussian_nll_from_trace(quad, z_batch.shape[1])

    def whole_blocks_gaussian_nll(self, z_batch: Tensor, idx: Tensor, n_batches: int) -> Tensor:
        """Exact Gaussian term of the blocks that ``idx`` holds completely, scaled so that
        the mean over an epoch's ``n_batches`` batches is :meth:`gaussian_nll`."""
        rho, m = self.rho, self.sizes
        blocks = self.block_ids[idx]
        present = torch.zeros(self.n_blocks, dtype=z_batch.dtype, device=z_batch.device).index_fill_(0, blocks, 1.0)
        sum_sq = torch.zeros(self.n_blocks, dtype=z_batch.dtype, device=z_batch.device).index_add_(
            0, blocks, z_batch.square().sum(dim=1)
        )
        block_sums = torch.zeros(
            self.n_blocks, z_batch.shape[1], dtype=z_batch.dtype, device=z_batch.device
        ).index_add_(0, blocks, z_batch)
        shrink = rho / (1 + (m - 1) * rho)
        quad = ((sum_sq - shrink * block_sums.square().sum(dim=1)) / (1 - rho)).sum()
        log_det = (present * ((m - 1) * torch.log1p(-rho) + torch.log1p((m - 1) * rho))).sum()
        d = z_batch.shape[1]
        total = 0.5 * (z_batch.shape[0] * d * math.log(2 * math.pi) + d * log_det + quad)
        return total * n_batches / self.n

    def describe(self) -> dict[str, float | list[float]]:
        """``{"rho": r}`` (shared) or ``{"rho": [per block], "block_sizes": [...]}``."""
        rho = torch.sigmoid(self.logit_rho).detach().cpu()
        if self.shared:
            return {"rho": float(rho[0])}
        return {"rho": [float(r) for r in rho], "block_sizes": [int(m) for m in self.sizes.cpu()]}
