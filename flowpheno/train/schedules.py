"""Training schedules: iid, grid, alternating and joint, over any dependence model.

Every schedule trains the flow by mini-batch gradient steps on the unbiased NLL
estimate (Adamax, exponential lr decay per epoch, weight decay on flow weights only),
keeps the state with the best held-out iid NLL, and reports one record per epoch and
one per stage through ``callback`` (the CLI draws progress bars from them).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from flowpheno.dependence import DependenceModel, EquicorrelatedBlocks, IIDCovariance, KinshipCovariance, LatentControlVariate
from flowpheno.errors import FlowphenoError
from flowpheno.flows import LatentFlow
from flowpheno.train.exact import exact_backward
from flowpheno.train.objective import iid_nll, minibatch_nll, push_forward, stratified_blocks_nll, whole_blocks_nll

Callback = Callable[[dict[str, Any]], None]


@dataclass
class TrainConfig:
    """Optimisation settings shared by every schedule (``epochs`` is per stage)."""

    epochs: int = 25
    stages: int = 4
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-6
    lr_decay: float = 0.99
    covariance_lr: float = 0.03
    seed: int = 0
    patience: int | None = None
    """Stop after this many epochs without a better validation NLL (None: never)."""
    max_grad_norm: float | None = 10.0
    """Clip the gradient norm: one outlying batch must not poison Adamax's running maximum."""
    estimator: str = "plain"
    """Trace term for a fixed covariance: ``plain`` (Proposition 2.2) or ``control_variate`` (lower variance, opt-in)."""
    objective: str = "minibatch"
    """``minibatch`` (Proposition 2.2 per batch) or ``exact``: one full-data step per epoch, exact gradient."""
    chunk_size: int = 16_384
    """Rows per chunk of the exact objective's passes (autograd memory)."""
    profile_scale: bool = False
    """Kinship ``alternating`` only: the exact ``s2`` step also fits each trait's latent scale
    (profiled likelihood) and folds it into the flow's final ActNorm."""
    batching: str = "uniform"
    """``uniform`` random rows; ``blocks``: whole equicorrelated blocks per batch, exact Gaussian term;
    ``stratified``: large blocks dealt evenly over the batches and small blocks whole, so
    every batch's Gaussian term is bounded below (see ``EquicorrelatedBlocks.stratified_batches``)."""


@dataclass
class FitOutcome:
    """A trained flow, its dependence model and the training history."""

    flow: LatentFlow
    dependence: DependenceModel
    epochs: list[dict[str, Any]] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    best_val_nll: float | None = None
    grid: list[dict[str, Any]] = field(default_factory=list)


class _BestState:
    """Snapshot of the flow and covariance parameters with the lowest validation NLL.

    Only the dependence model's parameters are copied, never its buffers (the
    kinship eigenvectors are n x n and do not change).
    """

    def __init__(self) -> None:
        self.value: float | None = None
        self.state: tuple[dict[str, Tensor], dict[str, Tensor]] | None = None

    def offer(self, value: float | None, flow: LatentFlow, dependence: DependenceModel) -> None:
        if value is not None and (self.value is None or value < self.value):
            self.value = value
            covariance = {name: p.detach().clone() for name, p in dependence.named_parameters()}
            self.state = (copy.deepcopy(flow.state_dict()), covariance)

    def restore(self, flow: LatentFlow, dependence: DependenceModel) -> None:
        if self.state is not None:
            flow.load_state_dict(self.state[0])
            with torch.no_grad():
                for name, parameter in dependence.named_parameters():
                    parameter.copy_(self.state[1][name])


class EpochTrainer:
    """Mini-batch training of one flow against one dependence model, one epoch at a time."""

    def __init__(
        self,
        flow: LatentFlow,
        dependence: DependenceModel,
        x_train: Tensor,
        x_val: Tensor | None,
        config: TrainConfig,
        callback: Callback | None,
    ) -> None:
        self.flow, self.dependence = flow, dependence
        self.x_train, self.x_val = x_train, x_val
        self.config, self.callback = config, callback
        if config.objective not in ("minibatch", "exact"):
            raise FlowphenoError(f"unknown objective {config.objective!r}: use 'minibatch' or 'exact'")
        if config.batching not in ("uniform", "blocks", "stratified"):
            raise FlowphenoError(f"unknown batching {config.batching!r}: use 'uniform', 'blocks' or 'stratified'")
        if config.batching != "uniform" and not isinstance(dependence, EquicorrelatedBlocks):
            raise FlowphenoError("block-aware batching needs equicorrelated blocks (--blocks), not a kinship or iid model")
        groups: list[dict[str, Any]] = [
            {"params": list(flow.parameters()), "weight_decay": config.weight_decay, "lr": config.lr}
        ]
        covariance_params = [p for p in dependence.parameters() if p.requires_grad]
        if covariance_params:
            groups.append({"params": covariance_params, "weight_decay": 0.0, "lr": config.covariance_lr})
        self.trainable = [p for group in groups for p in group["params"]]
        self.optimizer = torch.optim.Adamax(groups)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=config.lr_decay)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.best = _BestState()
        self.epochs: list[dict[str, Any]] = []
        self.epoch_count = 0
        self.best_epoch = 0
        self.stopped = False

    def validation_nll(self) -> float | None:
        if self.x_val is None or self.x_val.shape[0] == 0:
            return None
        self.flow.eval()
        value = iid_nll(self.flow, self.x_val)
        self.flow.train()
        return value

    def _control_variate(self) -> LatentControlVariate | None:
        """For a fixed, non-identity covariance: latents of every row, refreshed once per call."""
        fixed = not any(p.requires_grad for p in self.dependence.parameters())
        if self.config.estimator != "control_variate" or not fixed or isinstance(self.dependence, IIDCovariance):
            return None
        return LatentControlVariate(self.dependence, push_forward(self.flow, self.x_train))

    def _batches(self, n: int, device: torch.device) -> list[Tensor]:
        if self.config.batching == "blocks":
            return self.dependence.block_batches(self.config.batch_size, self.generator)
        if self.config.batching == "stratified":
            return self.dependence.stratified_batches(self.config.batch_size, self.generator)
        order = torch.randperm(n, generator=self.generator).to(device)
        return list(order.split(self.config.batch_size))

    def _step(self, loss: Tensor | None = None) -> None:
        """Backward (unless the gradient is already accumulated), clip, optimiser step."""
        if loss is not None:
            loss.backward()
        if self.config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.config.max_grad_norm)
        self.optimizer.step()

    def _minibatch_epoch(self, n: int, device: torch.device, control: LatentControlVariate | None) -> Tensor:
        """One pass over the rows in batches; returns the mean batch loss (on the device)."""
        batches = self._batches(n, device)
        loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per batch
        for idx in batches:
            if self.config.batching == "blocks":
                loss, z = whole_blocks_nll(self.flow, self.dependence, self.x_train[idx], idx, len(batches))
            elif self.config.batching == "stratified":
                loss, z = stratified_blocks_nll(self.flow, self.dependence, self.x_train[idx], idx, len(batches))
            else:
                loss, z = minibatch_nll(self.flow, self.dependence, self.x_train[idx], idx, control)
            self.optimizer.zero_grad(set_to_none=True)
            self._step(loss)
            loss_sum += loss.detach() * (n / len(batches) if self.config.batching != "uniform" else len(idx))
            if control is not None:
                control.update(z, idx)
        return loss_sum / n

    def _exact_step(self) -> Tensor:
        """One optimiser step on the exact full-data objective."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = exact_backward(self.flow, self.dependence, self.x_train, self.config.chunk_size)
        self._step()
        return loss

    def run(self, epochs: int, stage: int) -> None:
        """Up to ``epochs`` epochs; sets ``stopped`` when early stopping triggers."""
        n = self.x_train.shape[0]
        device = self.x_train.device
        control = self._control_variate()
        for _ in range(epochs):
            if self.stopped:
                return
            started = time.perf_counter()
            if self.config.objective == "exact":
                train_nll = self._exact_step()
            else:
                train_nll = self._minibatch_epoch(n, device, control)
            self.scheduler.step()
            val = self.validation_nll()
            self.epoch_count += 1
            previous_best = self.best.value
            self.best.offer(val, self.flow, self.dependence)
            if self.best.value != previous_best:
                self.best_epoch = self.epoch_count
            patience = self.config.patience
            self.stopped = patience is not None and val is not None and self.epoch_count - self.best_epoch >= patience
            record = {
                "stage": stage,
                "epoch": self.epoch_count,
                "train_nll": float(train_nll),
                "val_nll": val,
                "seconds": time.perf_counter() - started,
                **self.dependence.describe(),
            }
            self.epochs.append(record)
            if self.callback:
                self.callback({"event": "epoch", **record})


def _emit(callback: Callback | None, record: dict[str, Any]) -> None:
    if callback:
        callback(record)


def fit_schedule(
    flow: LatentFlow,
    dependence: DependenceModel,
    x_train: Tensor,
    x_val: Tensor | None,
    config: TrainConfig,
    callback: Callback | None = None,
) -> FitOutcome:
    """Train for ``stages x epochs`` epochs with ``dependence`` as it is.

    Covers ``iid`` (``IIDCovariance``), one grid value (fixed ``s2`` or ``rho``) and
    ``joint`` (covariance parameters with ``requires_grad`` join the optimiser).
    """
    trainer = EpochTrainer(flow, dependence, x_train, x_val, config, callback)
    stages: list[dict[str, Any]] = []
    for stage in range(1, config.stages + 1):
        started = time.perf_counter()
        trainer.run(config.epochs, stage)
        stages.append({"stage": stage, "flow_seconds": time.perf_counter() - started, **dependence.describe()})
        _emit(callback, {"event": "stage", **stages[-1]})
        if trainer.stopped:
            break
    trainer.best.restore(flow, dependence)
    if isinstance(dependence, KinshipCovariance):
        dependence.release_cache()
    return FitOutcome(flow, dependence, trainer.epochs, stages, trainer.best.value)


def fit_iid(flow: LatentFlow, x_train: Tensor, x_val: Tensor | None, config: TrainConfig, callback: Callback | None = None) -> FitOutcome:
    """Baseline: independent rows (``Sigma = I``)."""
    flow.initialize(x_train)
    dependence = IIDCovariance(x_train.shape[0]).to(x_train.device, x_train.dtype)
    return fit_schedule(flow, dependence, x_train, x_val, config, callback)


def fit_grid(
    make_flow: Callable[[], LatentFlow],
    make_dependence: Callable[[float], DependenceModel],
    values: Sequence[float],
    x_train: Tensor,
    x_val: Tensor | None,
    config: TrainConfig,
    callback: Callback | None = None,
) -> FitOutcome:
    """One fresh flow per fixed covariance value (``s2`` or ``rho``); the best validation NLL wins."""
    if x_val is None or x_val.shape[0] == 0:
        raise FlowphenoError("grid search picks s2 by validation NLL: set --val-frac above 0")
    best: FitOutcome | None = None
    grid: list[dict[str, Any]] = []
    for value in values:
        flow = make_flow().to(x_train.device)
        flow.initialize(x_train)
        dependence = make_dependence(value)
        started = time.perf_counter()
        outcome = fit_schedule(flow, dependence, x_train, x_val, config, _tag(callback, value))
        grid.append({"value": value, "val_nll": outcome.best_val_nll, "seconds": time.perf_counter() - started})
        _emit(callback, {"event": "grid", **grid[-1]})
        if best is None or (outcome.best_val_nll or float("inf")) < (best.best_val_nll or float("inf")):
            best = outcome
    assert best is not None
    best.grid = grid
    return best


def _tag(callback: Callback | None, value: float) -> Callback | None:
    if callback is None:
        return None
    return lambda record: callback({**record, "grid_value": value})


def fit_alternating(
    flow: LatentFlow,
    dependence: KinshipCovariance | EquicorrelatedBlocks,
    x_train: Tensor,
    x_val: Tensor | None,
    config: TrainConfig,
    callback: Callback | None = None,
) -> FitOutcome:
    """Stages of (flow epochs at a fixed covariance) then (exact covariance on all latents).

    Kinship: ``s2`` by a bounded Brent search after one rotation (with
    ``config.profile_scale``, jointly with each trait's latent scale, which is then folded
    into the flow: :meth:`KinshipCovariance.fit_s2_and_scale`). Blocks: every
    ``rho_k`` (or the shared ``rho``) by an exact 1-D search per block
    (:meth:`EquicorrelatedBlocks.fit_rho`). The covariance starts from its exact optimum
    for the initial (ActNorm-standardised) latents; a kinship precision is rebuilt from
    the new ``s2`` at every stage. After the best flow state is restored, the covariance
    is refitted once so it matches the returned flow.
    """
    kinship = isinstance(dependence, KinshipCovariance)
    if config.profile_scale and not kinship:
        raise FlowphenoError("profile_scale is implemented for the kinship model only")

    def refit(z: Tensor, move_flow: bool = True) -> None:
        if not kinship:
            dependence.fit_rho(z)
        elif config.profile_scale:
            _, scale = dependence.fit_s2_and_scale(z)
            if move_flow:
                flow.rescale_latent(1.0 / scale)
        else:
            dependence.fit_s2(z)

    key = "s2" if kinship else "covariance"
    flow.initialize(x_train)
    for parameter in dependence.parameters():
        parameter.requires_grad_(False)
    started = time.perf_counter()
    refit(push_forward(flow, x_train))
    stages = [{"stage": 0, f"{key}_seconds": time.perf_counter() - started, **dependence.describe()}]
    _emit(callback, {"event": "stage", **stages[0]})
    trainer = EpochTrainer(flow, dependence, x_train, x_val, config, callback)
    for stage in range(1, config.stages + 1):
        started = time.perf_counter()
        trainer.run(config.epochs, stage)
        flow_seconds = time.perf_counter() - started
        if kinship:
            dependence.release_cache()
        started = time.perf_counter()
        refit(push_forward(flow, x_train))
        stages.append({"stage": stage, "flow_seconds": flow_seconds, f"{key}_seconds": time.perf_counter() - started,
                       **dependence.describe()})
        _emit(callback, {"event": "stage", **stages[-1]})
        if trainer.stopped:
            break
    trainer.best.restore(flow, dependence)
    of_best_stage = dependence.describe()
    refit(push_forward(flow, x_train), move_flow=False)  # the returned flow is the validated one
    stages.append({"stage": "final", **{f"{name}_before_refit": value for name, value in of_best_stage.items() if name != "block_sizes"},
                   **dependence.describe()})
    return FitOutcome(flow, dependence, trainer.epochs, stages, trainer.best.value)


def fit_joint(
    flow: LatentFlow,
    dependence: DependenceModel,
    x_train: Tensor,
    x_val: Tensor | None,
    config: TrainConfig,
    callback: Callback | None = None,
) -> FitOutcome:
    """Flow and covariance parameters (``s2`` or every ``rho_k``) by one optimiser.

    For kinship, ``s2`` starts at the exact optimum for the initial latents and the
    batch precision is rebuilt from ``U[idx]`` each step so gradients reach ``s2``.
    """
    flow.initialize(x_train)
    if isinstance(dependence, KinshipCovariance):
        dependence.fit_s2(push_forward(flow, x_train))
        dependence.logit_s2.requires_grad_(True)
    else:
        for parameter in dependence.parameters():
            parameter.requires_grad_(True)
    return fit_schedule(flow, dependence, x_train, x_val, config, callback)
