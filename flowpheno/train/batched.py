"""Training ``K`` small flows at once: one batched model, one optimiser state per member.

:func:`fit_members` trains the members of a :class:`BatchedSplineFlow` on the same rows
and the same batch order, each with its own learning rate, weight decay and covariance
(a fixed ``s2`` or ``rho``, or per-block ``rho`` learned jointly), and keeps each member's
best-validation state. Every member's trajectory is the one a lone run would take with
its settings: the loss is the sum of the members' losses (so each gradient is its
member's own), and :class:`MemberAdamax` applies torch's Adamax update elementwise with
each member's own ``lr``, weight decay and step count. A member trained in a batch and
the same member trained alone agree to 1e-6 (to the last bit on some CPUs; where a member's
slice meets the SIMD lanes decides the last bit elsewhere; ``tests/test_batched.py``).

Gaussian terms (:class:`MemberIID`, :class:`MemberKinship`, :class:`MemberBlocks`) are the
unbiased mini-batch estimate of Proposition 2.2 of the paper (``trace_estimate`` in
``flowpheno.dependence.base``), computed for all members in one pass; blocks members can
also take whole-block or stratified batches (``MemberBlocks(batching=...)``), as a lone
``EquicorrelatedBlocks`` run does. The per-member state lives on the flow's device.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from flowpheno.dependence import EquicorrelatedBlocks
from flowpheno.errors import FlowphenoError
from flowpheno.flows.batched import BatchedSplineFlow
from flowpheno.train.objective import uniform_batches

LOG_2PI = math.log(2 * math.pi)


def _view(values: Tensor, like: Tensor) -> Tensor:
    """``(K,)`` values shaped to broadcast over a ``(K, ...)`` tensor."""
    return values.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class MemberAdamax:
    """Adamax (Kingma and Ba 2015; torch.optim.Adamax's update) on stacked parameters.

    Member ``k`` (slice ``k`` of every parameter) has its own learning rate ``lr[k]``,
    coupled L2 weight decay ``weight_decay[k]`` (added to the gradient, as torch does) and
    step count; its state (``exp_avg``, ``exp_inf``) is its own slice. :meth:`step` updates
    only the members in ``active``; the others are left exactly as they were.

    Args:
        params: parameters with a leading member dimension ``K``.
        lr: ``(K,)`` learning rates (float64; the current rate, a schedule rewrites them).
        weight_decay: ``(K,)`` (float64); ``decay`` says which parameters it applies to.
        decay: per parameter, whether weight decay applies (default: all).
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        lr: Tensor,
        weight_decay: Tensor,
        decay: Sequence[bool] | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = list(params)
        self.device = self.params[0].device if self.params else torch.device("cpu")  # per-member state lives there
        self.lr = lr.to(self.device, torch.float64).clone()
        self.weight_decay = weight_decay.to(self.device, torch.float64).clone()
        self.decay = list(decay) if decay is not None else [True] * len(self.params)
        self.betas, self.eps = betas, eps
        self.reset()

    def reset(self) -> None:
        """Forget the moments and step counts (a fresh optimiser)."""
        self.steps = torch.zeros(len(self.lr), dtype=torch.float64, device=self.device)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_inf = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self, active: Tensor) -> None:
        beta1, beta2 = self.betas
        active = active.to(self.device)
        self.steps += active.to(torch.float64)
        # lr / (1 - beta1^t), computed in double as torch does with Python floats, then one rounding
        step_size = -(self.lr / (1 - torch.pow(beta1, self.steps.clamp_min(1))))
        every = bool(active.all())  # the usual case: no masking, the new values written in place
        views: dict[tuple[int, torch.dtype], tuple[Tensor, Tensor, Tensor]] = {}  # per (rank, dtype), once a step
        for param, exp_avg, exp_inf, decays in zip(self.params, self.exp_avg, self.exp_inf, self.decay, strict=True):
            if param.grad is None:
                continue
            key = (param.dim(), param.dtype)
            if key not in views:
                views[key] = (
                    _view(active, param).bool(),
                    _view(self.weight_decay, param),
                    _view(step_size, param),
                )
            mask, decay, size = views[key]
            grad = param.grad
            if decays:
                grad = grad.add(param * decay)
            new_avg = exp_avg * beta1 + grad * (
                1 - beta1
            )  # lerp, spelt out: no fused kernel whose tail rounds differently
            new_inf = torch.maximum(exp_inf * beta2, grad.abs().add_(self.eps))
            new_param = param + size * new_avg / new_inf
            if every:
                exp_avg.copy_(new_avg)
                exp_inf.copy_(new_inf)
                param.copy_(new_param)
            else:
                exp_avg.copy_(torch.where(mask, new_avg, exp_avg))
                exp_inf.copy_(torch.where(mask, new_inf, exp_inf))
                param.copy_(torch.where(mask, new_param, param))

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None


class MemberCovariance:
    """The row covariance of each member: its mini-batch Gaussian term, and its state."""

    n: int

    def parameters(self) -> list[Tensor]:
        """Learned covariance parameters (leading dimension ``K``); none when fixed."""
        return []

    def minibatch_gaussian_nll(self, z: Tensor, idx: Tensor) -> Tensor:
        """``(K,)`` unbiased estimates of ``-log N(vec Z; 0, I (x) Sigma_k) / n`` from the batch
        latents ``z`` (``(K, b, d)``) of the rows ``idx`` (``(b,)``)."""
        raise NotImplementedError

    def batches(self, batch_size: int, generator: torch.Generator) -> list[Tensor]:
        """One epoch's batches of row indices, shared by the members (uniform, by default)."""
        return uniform_batches(self.n, batch_size, generator)

    def batch_loss(self, z: Tensor, ladj: Tensor, idx: Tensor, n_batches: int) -> Tensor:
        """``(K,)`` per-row training losses of one batch (latents ``z``: ``(K, b, d)``, log-dets
        ``ladj``: ``(K, b)``), whose mean over an epoch's ``n_batches`` batches estimates each
        member's full objective without bias."""
        return self.minibatch_gaussian_nll(z, idx) - ladj.mean(dim=1)

    def batch_weight(self, idx: Tensor, n_batches: int) -> float:
        """The weight of a batch's loss in the epoch's mean training loss."""
        return float(len(idx))

    def state(self) -> dict[str, Tensor]:
        return {}

    def load(self, state: dict[str, Tensor], members: Tensor) -> None:
        """Take ``state``'s values for the ``members`` (a ``(K,)`` bool mask)."""

    def describe(self, k: int) -> dict[str, Any]:
        return {}


def _gaussian(n: int, d: int, log_det: Tensor, trace: Tensor) -> Tensor:
    return 0.5 * (n * d * LOG_2PI + d * log_det + trace) / n


def _trace(diagonal: Tensor, total: Tensor, n: int, b: int) -> Tensor:
    """Proposition 2.2 from ``sum_i P_ii |z_i|^2`` and ``sum_ij P_ij <z_i, z_j>`` (both ``(K,)``)."""
    estimate = (n / b) * diagonal
    if b > 1:
        estimate = estimate + (n * (n - 1) / (b * (b - 1))) * (total - diagonal)
    return estimate


class MemberIID(MemberCovariance):
    """``Sigma = I`` for every member (the baseline)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def minibatch_gaussian_nll(self, z: Tensor, idx: Tensor) -> Tensor:
        trace = (self.n / z.shape[1]) * z.square().sum(dim=(1, 2))
        return _gaussian(self.n, z.shape[2], torch.zeros((), dtype=z.dtype), trace)


class MemberKinship(MemberCovariance):
    """``Sigma_k = s2_k K + (1 - s2_k) I`` with a fixed ``s2`` per member, from ``K = U diag(k) U^T``.

    The batch terms never form a precision matrix: with ``w_kj = 1/D_kj - c_k``,
    ``D_kj = s2_k k_j + 1 - s2_k`` and ``c_k = 1/(1 - s2_k)`` (0 when ``U`` is square),
    ``sum_ij P_ij <z_i, z_j> = sum_j w_kj |U_B^T Z_B|_j^2 + c_k |Z_B|^2`` (``O(b r d K)``) and
    ``P_ii = c_k + sum_j w_kj U_ij^2`` (computed once for all ``n`` rows).

    Args:
        eigenvalues: ``(r,)`` eigenvalues of the kinship, already on the model's scale
            (``KinshipCovariance.eigenvalues``).
        eigenvectors: ``(n, r)``.
        s2: ``(K,)`` in ``[0, 1)``.
    """

    def __init__(self, eigenvalues: Tensor, eigenvectors: Tensor, s2: Tensor) -> None:
        self.n, self.rank = eigenvectors.shape
        self.eigenvalues, self.eigenvectors = eigenvalues, eigenvectors
        self.set_s2(s2)

    def set_s2(self, s2: Tensor) -> None:
        """Fix ``s2`` (``(K,)``) and rebuild the per-row precision diagonals."""
        self.s2 = s2.to(self.eigenvalues.dtype).clone()
        spectrum = self.s2[:, None] * self.eigenvalues[None, :] + (1 - self.s2[:, None])  # (K, r)
        complement = self.n - self.rank
        self.inside = 1 / (1 - self.s2) if complement else torch.zeros_like(self.s2)
        self.weights = 1 / spectrum - self.inside[:, None]
        self.log_det = torch.log(spectrum).sum(dim=1) + complement * torch.log(1 - self.s2)
        self.diagonal = self.inside[None, :] + self.eigenvectors.square() @ self.weights.T  # (n, K)

    def minibatch_gaussian_nll(self, z: Tensor, idx: Tensor) -> Tensor:
        members, b, d = z.shape
        rows = self.eigenvectors[idx]  # (b, r)
        rotated = (rows.T @ z.permute(1, 0, 2).reshape(b, members * d)).reshape(-1, members, d)  # (r, K, d)
        norms = z.square().sum(dim=2)  # (K, b)
        total = (self.weights * rotated.square().sum(dim=2).T).sum(dim=1) + self.inside * norms.sum(dim=1)
        diagonal = (self.diagonal[idx].T * norms).sum(dim=1)
        return _gaussian(self.n, d, self.log_det, _trace(diagonal, total, self.n, b))

    def state(self) -> dict[str, Tensor]:
        return {"s2": self.s2.clone()}

    def load(self, state: dict[str, Tensor], members: Tensor) -> None:
        self.set_s2(torch.where(members, state["s2"], self.s2))

    def describe(self, k: int) -> dict[str, Any]:
        return {"s2": float(self.s2[k])}


class MemberBlocks(MemberCovariance):
    """Equicorrelated blocks: ``Sigma_k`` block-diagonal, ``(1 - rho) I + rho 1 1^T`` per block.

    ``rho`` is ``(K,)`` (one value per member, shared by its blocks: grid search) or
    ``(K, B)`` (one per block); with ``learn=True`` its logits ``(K, B)`` are learned
    (joint training: Adamax, no weight decay). ``batching`` is the batch layout of
    :class:`~flowpheno.dependence.EquicorrelatedBlocks` (``TrainConfig.batching``):
    ``uniform`` (the paper's), ``blocks`` (whole blocks, exact Gaussian term) or
    ``stratified`` (large blocks dealt over the batches: unbiased and bounded below); each
    member's batch loss is the one a lone run of that layout takes
    (:func:`flowpheno.train.objective.layout_batch_nll`).

    Raises:
        FlowphenoError: an unknown ``batching``.
    """

    def __init__(self, block_ids: Tensor, rho: Tensor, learn: bool = False, batching: str = "uniform") -> None:
        _, block_ids = torch.unique(torch.as_tensor(block_ids, dtype=torch.long), return_inverse=True)
        if batching not in EquicorrelatedBlocks.batchings:
            raise FlowphenoError(f"batching {batching!r}: choose from {', '.join(EquicorrelatedBlocks.batchings)}")
        self.batching = batching
        self.layout = EquicorrelatedBlocks(block_ids)  # batch layouts and the exact rho step
        self.block_ids = block_ids
        self.n = int(block_ids.shape[0])
        self.sizes = torch.bincount(block_ids).to(torch.float32)
        blocks = int(self.sizes.shape[0])
        rho = rho.to(torch.float32).clamp(1e-6, 1 - 1e-6)
        self.shared = rho.dim() == 1 and not learn
        logits = torch.logit(rho[:, None] if rho.dim() == 1 else rho).expand(-1, 1 if self.shared else blocks).clone()
        self.logit_rho = logits.requires_grad_(learn)

    @property
    def rho(self) -> Tensor:
        """``(K, B)`` (``(K, 1)`` when shared)."""
        return torch.sigmoid(self.logit_rho)

    def parameters(self) -> list[Tensor]:
        return [self.logit_rho] if self.logit_rho.requires_grad else []

    def minibatch_gaussian_nll(self, z: Tensor, idx: Tensor) -> Tensor:
        members, b, d = z.shape
        rho, sizes = self.rho, self.sizes  # (K, B) or (K, 1): a shared rho broadcasts over the blocks
        denominator = (1 - rho) * (1 + (sizes - 1) * rho)  # (K, B)
        diagonal_entry, off_entry = (1 + (sizes - 2) * rho) / denominator, -rho / denominator
        log_det = self._block_log_dets(rho).sum(dim=1)
        blocks = self.block_ids[idx]
        norms = z.square().sum(dim=2)  # (K, b)
        diagonal = (diagonal_entry.expand(members, -1).index_select(1, blocks) * norms).sum(dim=1)
        present, local = torch.unique(blocks, return_inverse=True)
        block_sums = z.new_zeros(members, len(present), d).index_add_(
            1, local, z
        )  # per block of the batch: sum of its rows
        within = (z * block_sums.index_select(1, local)).sum(dim=2) - norms  # sum_{j != i, same block} <z_i, z_j>
        total = diagonal + (off_entry.expand(members, -1).index_select(1, blocks) * within).sum(dim=1)
        return _gaussian(self.n, d, log_det, _trace(diagonal, total, self.n, b))

    def _block_log_dets(self, rho: Tensor) -> Tensor:
        """``(K, B)`` log-determinants of the blocks' correlation matrices, from ``rho``
        (``(K, B)``, or ``(K, 1)`` shared)."""
        m = self.sizes
        return (m - 1) * torch.log(1 - rho) + torch.log(1 + (m - 1) * rho)

    def batches(self, batch_size: int, generator: torch.Generator) -> list[Tensor]:
        if self.batching == "uniform":
            return super().batches(batch_size, generator)
        return self.layout.batches(self.batching, batch_size, generator)

    def batch_loss(self, z: Tensor, ladj: Tensor, idx: Tensor, n_batches: int) -> Tensor:
        if self.batching == "uniform":
            return super().batch_loss(z, ladj, idx, n_batches)
        members, b, d = z.shape
        rho, m = self.rho, self.sizes  # (K, B) or (K, 1)
        blocks = self.block_ids[idx]
        rows = z.new_zeros(len(m)).index_add_(0, blocks, torch.ones_like(blocks, dtype=z.dtype))  # (B,)
        sum_sq = z.new_zeros(members, len(m)).index_add_(1, blocks, z.square().sum(dim=2))  # (K, B)
        squared_sum = z.new_zeros(members, len(m), d).index_add_(1, blocks, z).square().sum(dim=2)  # (K, B)
        shrink = rho / (1 + (m - 1) * rho)
        if self.batching == "blocks":  # EquicorrelatedBlocks.whole_blocks_gaussian_nll, per member
            quad = ((sum_sq - shrink * squared_sum) / (1 - rho)).sum(dim=1)
            present = (rows > 0).to(z.dtype)
            log_det = (present * ((m - 1) * torch.log1p(-rho) + torch.log1p((m - 1) * rho))).sum(dim=1)
            gaussian = 0.5 * (b * d * LOG_2PI + d * log_det + quad) * n_batches / self.n
        else:  # EquicorrelatedBlocks.stratified_gaussian_nll, per member
            pairs = squared_sum - sum_sq
            diagonal_weight = torch.where(rows > 0, m / rows.clamp(min=1), 0.0)
            pair_weight = torch.where(rows > 1, m * (m - 1) / (rows * (rows - 1)).clamp(min=1), 0.0)
            per_epoch = torch.where(self.layout.dealt_blocks(n_batches), 1.0, float(n_batches))
            quad = per_epoch * ((1 - shrink) * diagonal_weight * sum_sq - shrink * pair_weight * pairs) / (1 - rho)
            log_det = self._block_log_dets(rho).sum(dim=1)
            gaussian = _gaussian(self.n, d, log_det, quad.sum(dim=1))
        return gaussian - ladj.sum(dim=1) * n_batches / self.n

    def batch_weight(self, idx: Tensor, n_batches: int) -> float:
        return float(len(idx)) if self.batching == "uniform" else self.n / n_batches

    @torch.no_grad()
    def fit_rho(self, z: Tensor) -> None:
        """Set each member's per-block ``rho`` to the exact maximiser of its latents'
        Gaussian likelihood (:meth:`EquicorrelatedBlocks.fit_rho`, on ``[0, RHO_MAX]``): the
        covariance step of blocks ``alternating``. ``z`` is ``(K, n, d)``; a member whose
        latents are not all finite, and a block of one row, keep their ``rho``.

        Raises:
            FlowphenoError: a shared or learned ``rho`` (this step sets one per block).
        """
        if self.shared or self.logit_rho.requires_grad:
            raise FlowphenoError("the exact rho step sets one fixed rho per block: build with (K, B) rho, learn=False")
        repeated = self.sizes > 1
        for k in range(z.shape[0]):
            if bool(torch.isfinite(z[k]).all()):
                fitted = self.layout.fit_rho(z[k]).to(self.logit_rho.dtype)
                logits = torch.logit(fitted.clamp(1e-6, 1 - 1e-6))
                self.logit_rho[k] = torch.where(repeated, logits, self.logit_rho[k])

    def state(self) -> dict[str, Tensor]:
        return {"logit_rho": self.logit_rho.detach().clone()}

    def load(self, state: dict[str, Tensor], members: Tensor) -> None:
        with torch.no_grad():
            self.logit_rho.copy_(torch.where(members[:, None], state["logit_rho"], self.logit_rho))

    def describe(self, k: int) -> dict[str, Any]:
        rho = self.rho[k].detach()
        return {"rho": float(rho[0])} if self.shared else {"rho": rho.tolist()}


@dataclass
class LRSchedule:
    """The learning-rate factor after ``t`` optimiser steps of ``epochs`` epochs.

    ``per="epoch"``: ``gamma^(epochs done)`` (torch ``ExponentialLR`` stepped per epoch);
    ``per="step"``: ``gamma^floor(t / step_size)`` (``StepLR`` stepped per optimiser step).
    """

    gamma: float = 0.99
    per: str = "epoch"
    step_size: int = 1

    def factor(self, steps: int, epochs: int) -> float:
        count = epochs if self.per == "epoch" else steps // self.step_size
        return self.gamma**count


@dataclass
class MembersOutcome:
    """What :meth:`MemberTrainer.outcome` returns; every per-member list has ``K`` entries."""

    best_val_nll: list[float | None]
    """Each member's best iid validation NLL (None: never finite)."""
    best_epoch: list[int | None]
    """The epoch (1-based, over all stages) whose state was kept."""
    epochs_trained: list[int]
    diverged: list[str | None]
    history: list[dict[str, Any]] = field(default_factory=list)
    """One record per epoch: ``train_nll`` and ``val_nll`` lists over the members."""
    steps: int = 0
    seconds: float = 0.0


@torch.no_grad()
def members_iid_nll(flow: BatchedSplineFlow, x: Tensor, rows: int = 2048) -> Tensor:
    """``(K,)`` iid NLL of the rows ``x`` under each member (nats per row): the validation
    and test metric, ``-(1/m) sum_v [log N(z_v; 0, I_d) + log |det J_g(x_v)|]``."""
    total = torch.zeros(flow.members, dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], rows):
        z, ladj = flow(x[start : start + rows])
        log_normal = -0.5 * (z.square().sum(dim=2) + z.shape[2] * LOG_2PI)
        total += (-(log_normal + ladj)).sum(dim=1).to(torch.float64)
    return total / x.shape[0]


class MemberTrainer:
    """Mini-batch training of every member of a batched flow, one epoch at a time.

    Rows ``x_train`` (``(n, d)``) are shared, as is the batch order (a permutation per
    epoch from ``seed``). Member ``k`` steps with ``lr[k]`` times the ``schedule`` factor
    and coupled weight decay ``weight_decay[k]`` on the flow weights; learned covariance
    logits step with ``covariance_lr`` (None: the member's own ``lr``), the same schedule
    and no weight decay. A member whose loss, latents
    or gradient is not finite skips that step (as a lone run would); one whose validation
    NLL is not finite, or that has not improved for ``patience`` epochs, stops. After
    every epoch each member's iid NLL on ``x_val`` is computed and its best state (flow
    and covariance) kept; :meth:`finish` restores it.

    Raises:
        FlowphenoError: lr or weight decay lists of another length than the members.
    """

    def __init__(
        self,
        flow: BatchedSplineFlow,
        covariance: MemberCovariance,
        x_train: Tensor,
        x_val: Tensor,
        lr: Sequence[float],
        weight_decay: Sequence[float],
        batch_size: int,
        seed: int = 0,
        schedule: LRSchedule | None = None,
        patience: int | None = None,
        covariance_lr: float | None = 0.03,
        callback: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        members = flow.members
        if len(lr) != members or len(weight_decay) != members:
            raise FlowphenoError(f"{members} members need {members} learning rates and weight decays")
        self.flow, self.covariance = flow, covariance
        self.x_train, self.x_val = x_train, x_val
        self.batch_size, self.patience, self.callback = batch_size, patience, callback
        self.schedule = schedule or LRSchedule()
        device = x_train.device  # the flow's and the data's; the per-member bookkeeping lives there too
        self.base_lr = torch.tensor(lr, dtype=torch.float64, device=device)
        self.flow_params = list(flow.parameters())
        self.covariance_params = covariance.parameters()
        self.optimiser = MemberAdamax(
            self.flow_params, self.base_lr, torch.tensor(weight_decay, dtype=torch.float64, device=device)
        )
        self.covariance_base_lr = (
            self.base_lr
            if covariance_lr is None
            else torch.full((members,), covariance_lr, dtype=torch.float64, device=device)
        )
        self.covariance_optimiser = (
            MemberAdamax(self.covariance_params, self.covariance_base_lr, torch.zeros_like(self.covariance_base_lr))
            if self.covariance_params
            else None
        )
        self.generator = torch.Generator().manual_seed(seed)
        self.steps = 0
        self.epoch = 0
        self.started = time.perf_counter()
        self.history: list[dict[str, Any]] = []
        self.best_value = torch.full((members,), math.inf, dtype=torch.float64, device=device)
        self.best_epoch: list[int | None] = [None] * members
        self.best_flow = {name: p.detach().clone() for name, p in flow.named_parameters()}
        self.best_covariance = covariance.state()
        self.since_best = torch.zeros(members, dtype=torch.long, device=device)
        self.active = torch.ones(members, dtype=torch.bool, device=device)
        self.epochs_trained = torch.zeros(members, dtype=torch.long, device=device)
        self.diverged: list[str | None] = [None] * members

    def reset_optimiser(self) -> None:
        """Fresh Adamax moments and step counts (the learning-rate schedule continues)."""
        self.optimiser.reset()
        if self.covariance_optimiser is not None:
            self.covariance_optimiser.reset()

    def _step(self, idx: Tensor, n_batches: int) -> tuple[Tensor, Tensor]:
        """One optimiser step on the batch ``idx`` (one of the epoch's ``n_batches``); the
        losses ``(K,)`` and which members stepped."""
        factor = self.schedule.factor(self.steps, self.epoch)
        self.optimiser.lr = self.base_lr * factor
        if self.covariance_optimiser is not None:
            self.covariance_optimiser.lr = self.covariance_base_lr * factor
        z, ladj = self.flow(self.x_train[idx])
        loss = self.covariance.batch_loss(z, ladj, idx, n_batches)
        self.optimiser.zero_grad()
        if self.covariance_optimiser is not None:
            self.covariance_optimiser.zero_grad()
        loss.sum().backward()  # each member's gradient is its own loss's
        finite = torch.isfinite(loss) & torch.isfinite(z).flatten(1).all(dim=1)
        for param in self.flow_params + self.covariance_params:
            if param.grad is not None:
                finite &= torch.isfinite(param.grad).flatten(1).all(dim=1)
        step = self.active & finite
        self.optimiser.step(step)
        if self.covariance_optimiser is not None:
            self.covariance_optimiser.step(step)
        self.steps += 1
        return loss.detach(), step

    def run(self, epochs: int) -> None:
        """Up to ``epochs`` more epochs (fewer when every member has stopped)."""
        members = self.flow.members
        for _ in range(epochs):
            if not bool(self.active.any()):
                return
            started = time.perf_counter()
            loss_sum = torch.zeros(members, dtype=torch.float64, device=self.active.device)
            rows = torch.zeros_like(loss_sum)
            batches = self.covariance.batches(self.batch_size, self.generator)
            for idx in batches:
                loss, step = self._step(idx, len(batches))
                weight = self.covariance.batch_weight(idx, len(batches))
                loss_sum += torch.where(step, loss.to(torch.float64) * weight, 0.0)
                rows += step.to(torch.float64) * weight
            self.epoch += 1
            val = members_iid_nll(self.flow, self.x_val)
            self._offer(val)
            record = {
                "epoch": self.epoch,
                "train_nll": (loss_sum / rows.clamp_min(1)).tolist(),
                "val_nll": val.tolist(),
                "seconds": time.perf_counter() - started,
            }
            self.history.append(record)
            if self.callback:
                self.callback({"event": "epoch", **record})

    @torch.no_grad()
    def _offer(self, val: Tensor) -> None:
        """Keep the state of every active member whose validation NLL improved; stop members."""
        active = self.active
        self.epochs_trained += active.long()
        improved = active & torch.isfinite(val) & (val < self.best_value)
        if bool(improved.any()):
            self.best_value = torch.where(improved, val, self.best_value)
            for name, param in self.flow.named_parameters():
                self.best_flow[name] = torch.where(_view(improved, param).bool(), param, self.best_flow[name])
            for key, value in self.covariance.state().items():
                self.best_covariance[key] = torch.where(_view(improved, value).bool(), value, self.best_covariance[key])
            for k in improved.nonzero().flatten().tolist():
                self.best_epoch[k] = self.epoch
        self.since_best = torch.where(improved, 0, self.since_best + active.long())
        stop = active & ~torch.isfinite(val)
        for k in stop.nonzero().flatten().tolist():
            self.diverged[k] = f"at epoch {self.epoch} (validation NLL {float(val[k]):g})"
        if self.patience is not None:
            stop |= active & (self.since_best >= self.patience)
        self.active = active & ~stop

    @torch.no_grad()
    def finish(self) -> MembersOutcome:
        """Restore every member's best state (members never finite keep theirs) and report."""
        kept = torch.isfinite(self.best_value)
        for name, param in self.flow.named_parameters():
            param.copy_(torch.where(_view(kept, param).bool(), self.best_flow[name], param))
        self.covariance.load(self.best_covariance, kept)
        return MembersOutcome(
            best_val_nll=[float(v) if math.isfinite(v) else None for v in self.best_value.tolist()],
            best_epoch=list(self.best_epoch),
            epochs_trained=self.epochs_trained.tolist(),
            diverged=list(self.diverged),
            history=self.history,
            steps=self.steps,
            seconds=time.perf_counter() - self.started,
        )


def fit_members(
    flow: BatchedSplineFlow,
    covariance: MemberCovariance,
    x_train: Tensor,
    x_val: Tensor,
    lr: Sequence[float],
    weight_decay: Sequence[float],
    epochs: int,
    batch_size: int,
    seed: int = 0,
    schedule: LRSchedule | None = None,
    patience: int | None = None,
    covariance_lr: float | None = 0.03,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> MembersOutcome:
    """Train every member for ``epochs`` epochs and restore each one's best-validation
    state (:class:`MemberTrainer`, one stage)."""
    trainer = MemberTrainer(
        flow,
        covariance,
        x_train,
        x_val,
        lr,
        weight_decay,
        batch_size,
        seed,
        schedule,
        patience,
        covariance_lr,
        callback,
    )
    trainer.run(epochs)
    return trainer.finish()
