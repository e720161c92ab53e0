"""Training schedules: iid, grid, alternating and joint, over any dependence model.

Every schedule trains the flow by mini-batch gradient steps on the unbiased NLL
estimate (Adamax, exponential lr decay per epoch, weight decay on flow weights only),
keeps the state with the best held-out NLL, and reports one record per epoch and
one per stage through ``callback`` (the CLI draws progress bars from them).

The held-out score: given the held-out rows' kinship (``held_out``, a
:class:`HeldOutKinship`), a kinship fit scores them by their conditional density given the
training rows (``val_nll_conditional``): held-out individuals are relatives of training
ones, and their iid NLL rewards a flow that memorises families, which biases grid search
and early stopping towards ``s2 = 0``. Without it (``iid`` mode, equicorrelated blocks),
the iid NLL (``val_nll_iid``). Grid selection, early stopping, the kept state and the
divergence checks all use the one score named by :attr:`EpochTrainer.score`; every
epoch record also carries the iid NLL.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from flowpheno.config import (  # noqa: F401
    BATCHINGS,
    ESTIMATORS,
    OBJECTIVES,
    Batching,
    Estimator,
    Objective,
    TrainConfig,
)
from flowpheno.dependence import DependenceModel, HeldOutKinship, IIDCovariance, LatentControlVariate
from flowpheno.errors import FlowphenoError
from flowpheno.flows import LatentFlow
from flowpheno.train.exact import exact_backward
from flowpheno.train.objective import held_out_nll, layout_batch_nll, minibatch_nll, push_forward, uniform_batches

Callback = Callable[[dict[str, Any]], None]

MAX_NON_FINITE_SHARE = 0.5
"""Training stops when more than this share of an epoch's batches has a non-finite loss,
latent or gradient (the exact objective: when its one step is non-finite)."""


@dataclass
class FitOutcome:
    """A trained flow, its dependence model and the training history."""

    flow: LatentFlow
    dependence: DependenceModel
    epochs: list[dict[str, Any]] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    best_val_nll: float | None = None
    """The best held-out score, the one named by ``validation_score``."""
    grid: list[dict[str, Any]] = field(default_factory=list)
    non_finite_batches: int = 0
    """Batches whose loss, latents or gradient were not finite: their step was skipped."""
    diverged: str | None = None
    """What went wrong when training diverged (``"at stage 1 epoch 3 (validation NLL inf)"``), else None.
    The returned flow is then not usable."""
    best_epoch: int | None = None
    """The epoch (counted over all stages) whose state was restored: the best validation NLL
    (None without validation rows: the last epoch's state is returned)."""
    best_stage: int | None = None
    """The stage of ``best_epoch``."""
    stopped_early: dict[str, int] | None = None
    """When ``TrainConfig.patience`` ended training: ``{"epoch": last epoch run, "patience": p}``
    (epochs counted over stages), else None."""
    validation_score: str = "val_nll_iid"
    """The key of the held-out score that chose the state (and the grid value): ``val_nll_conditional``
    (kinship with held-out kinship blocks) or ``val_nll_iid``."""
    best_val_scores: dict[str, float | None] = field(default_factory=dict)
    """Both held-out scores of the kept state: ``val_nll_iid`` and, where defined, ``val_nll_conditional``."""


class _BestState:
    """Snapshot of the flow and covariance parameters with the lowest validation NLL
    (the selection score), and every held-out score of that state.

    Only the dependence model's parameters are copied, never its buffers (the
    kinship eigenvectors are n x n and do not change).
    """

    def __init__(self) -> None:
        self.value: float | None = None
        self.scores: dict[str, float | None] = {}
        self.state: tuple[dict[str, Tensor], dict[str, Tensor]] | None = None

    def offer(
        self,
        value: float | None,
        flow: LatentFlow,
        dependence: DependenceModel,
        scores: dict[str, float | None] | None = None,
    ) -> None:
        """Keep this state if ``value`` is finite and lower than the best so far (NaN and inf never are)."""
        if value is not None and math.isfinite(value) and (self.value is None or value < self.value):
            self.value = value
            self.scores = dict(scores or {})
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
        held_out: HeldOutKinship | None = None,
    ) -> None:
        self.flow, self.dependence = flow, dependence
        self.x_train, self.x_val = x_train, x_val
        self.config, self.callback = config, callback
        config.validate()
        if held_out is not None and not dependence.conditional_scoring:
            raise FlowphenoError(
                f"the held-out kinship scores a kinship model; {type(dependence).__name__} cannot score held-out rows "
                "given the training rows"
            )
        if held_out is not None and x_val is not None and held_out.m != x_val.shape[0]:
            raise FlowphenoError(
                f"the held-out kinship has {held_out.m} rows but there are {x_val.shape[0]} validation rows"
            )
        self.held_out = held_out
        self.score = "val_nll_conditional" if held_out is not None else "val_nll_iid"
        """The held-out score that selects, stops and diagnoses (see the module docstring)."""
        if config.batching not in dependence.batchings:
            raise FlowphenoError(
                f"TrainConfig.batching {config.batching!r} needs an EquicorrelatedBlocks dependence model, "
                f"not {type(dependence).__name__}; use batching={dependence.batchings[0]!r}"
            )
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
        self.best_stage: int | None = None
        self.stopped = False
        self.stopped_early: dict[str, int] | None = None
        self.non_finite_batches = 0
        self.diverged: str | None = None
        self.check_every_batch = x_train.device.type == "cpu"
        """Decide per batch whether its step is finite (one host sync per batch: free on the CPU).
        Otherwise only a device-side flag is kept, checked once per epoch; an epoch that had a
        non-finite batch is then replayed from its start with the per-batch check."""
        self.untrained_val_nll = self.validation_nll()

    def validation_scores(self) -> dict[str, float | None]:
        """``{"val_nll_iid": ..., "val_nll_conditional": ...}`` (nats per held-out individual; the
        conditional one only with a held-out kinship), empty without validation rows."""
        if self.x_val is None or self.x_val.shape[0] == 0:
            return {}
        self.flow.eval()
        conditional_model = self.dependence if self.held_out is not None else None
        iid, conditional = held_out_nll(self.flow, self.x_val, self.x_train, conditional_model, self.held_out)
        self.flow.train()
        scores: dict[str, float | None] = {"val_nll_iid": iid}
        if self.held_out is not None:
            scores["val_nll_conditional"] = conditional
        return scores

    def validation_nll(self) -> float | None:
        """The selection score (:attr:`score`) of the current state, None without validation rows."""
        return self.validation_scores().get(self.score)

    def _control_variate(self) -> LatentControlVariate | None:
        """For a fixed, non-identity covariance: latents of every row, refreshed once per call."""
        fixed = not any(p.requires_grad for p in self.dependence.parameters())
        if self.config.estimator != "control_variate" or not fixed or self.dependence.identity:
            return None
        return LatentControlVariate(self.dependence, push_forward(self.flow, self.x_train))

    def _batches(self, n: int, device: torch.device) -> list[Tensor]:
        if self.config.batching != "uniform":
            return self.dependence.batches(self.config.batching, self.config.batch_size, self.generator)
        return uniform_batches(n, self.config.batch_size, self.generator, device)

    def _gradient_norm(self) -> Tensor:
        """Clip the gradient (``max_grad_norm``) and return its total norm before clipping (on the device)."""
        grads = [p.grad for p in self.trainable if p.grad is not None]
        if self.config.max_grad_norm is not None:
            return torch.nn.utils.clip_grad_norm_(self.trainable, self.config.max_grad_norm)
        if not grads:
            return torch.zeros(())
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))

    def _step(self, finite: Tensor, checked: bool) -> Tensor:
        """Clip and take the optimiser step; with ``checked``, only when ``finite`` (a device
        bool: loss and latents finite) holds and the gradient is finite too. Returns whether
        the batch was finite (on the device)."""
        finite = finite & torch.isfinite(self._gradient_norm()).to(finite.device)
        if checked and not bool(finite):
            self.optimizer.zero_grad(set_to_none=True)
            return finite
        self.optimizer.step()
        return finite

    def _snapshot(self, control: LatentControlVariate | None) -> dict[str, Any]:
        """Everything an epoch changes, so that it can be replayed exactly."""
        return {
            "flow": copy.deepcopy(self.flow.state_dict()),
            "dependence": {name: p.detach().clone() for name, p in self.dependence.named_parameters()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "generator": self.generator.get_state(),
            "control": None if control is None else (control.latent.clone(), control.precision_latent.clone()),
        }

    def _restore(self, snapshot: dict[str, Any], control: LatentControlVariate | None) -> None:
        self.flow.load_state_dict(snapshot["flow"])
        with torch.no_grad():
            for name, parameter in self.dependence.named_parameters():
                parameter.copy_(snapshot["dependence"][name])
        self.optimizer.load_state_dict(snapshot["optimizer"])
        self.generator.set_state(snapshot["generator"])
        if control is not None:
            control.latent, control.precision_latent = snapshot["control"]

    def _minibatch_epoch(
        self, n: int, device: torch.device, control: LatentControlVariate | None
    ) -> tuple[Tensor, int, int]:
        """One pass over the rows in batches, skipping the step of every non-finite batch.

        Returns the mean loss of the finite batches (on the device; NaN if none was), the
        number of non-finite batches and the number of batches.
        """
        if self.check_every_batch:
            return self._minibatch_pass(n, device, control, checked=True)
        snapshot = self._snapshot(control)
        mean, bad, count = self._minibatch_pass(n, device, control, checked=False)
        if bad == 0:
            return mean, bad, count
        self._restore(snapshot, control)  # a NaN step spoilt the optimiser: replay, skipping it
        return self._minibatch_pass(n, device, control, checked=True)

    def _minibatch_pass(
        self, n: int, device: torch.device, control: LatentControlVariate | None, checked: bool
    ) -> tuple[Tensor, int, int]:
        batches = self._batches(n, device)
        loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per batch
        rows = torch.zeros((), device=device)
        bad = torch.zeros((), dtype=torch.long, device=device)
        for idx in batches:
            if self.config.batching != "uniform":
                loss, z = layout_batch_nll(
                    self.flow, self.dependence, self.x_train[idx], idx, self.config.batching, len(batches)
                )
            else:
                loss, z = minibatch_nll(self.flow, self.dependence, self.x_train[idx], idx, control)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            finite = self._step(torch.isfinite(loss) & torch.isfinite(z).all(), checked)
            weight = (n / len(batches) if self.config.batching != "uniform" else len(idx)) * finite
            loss_sum += torch.where(finite, loss.detach(), 0.0) * weight
            rows += weight
            bad += ~finite
            if control is not None and (not checked or bool(finite)):
                control.update(z, idx)
        bad_count = int(bad)  # the one host sync of the epoch
        return loss_sum / (rows if bad_count else n), bad_count, len(batches)

    def _exact_step(self) -> tuple[Tensor, int, int]:
        """One optimiser step on the exact full-data objective (skipped if not finite)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = exact_backward(self.flow, self.dependence, self.x_train, self.config.chunk_size)
        finite = self._step(torch.isfinite(loss), checked=True)
        return loss, int(not bool(finite)), 1

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
                train_nll, bad, batches = self._exact_step()
            else:
                train_nll, bad, batches = self._minibatch_epoch(n, device, control)
            self.scheduler.step()
            scores = self.validation_scores()
            val = scores.get(self.score)
            self.epoch_count += 1
            self.non_finite_batches += bad
            if bad > MAX_NON_FINITE_SHARE * batches:
                self.stopped = True
                self.diverged = (
                    f"at stage {stage} epoch {self.epoch_count} "
                    f"({bad} of {batches} batches had a non-finite loss, latent or gradient)"
                )
            elif val is not None and not math.isfinite(val):
                self.stopped = True
                self.diverged = f"at stage {stage} epoch {self.epoch_count} (validation NLL {val:g})"
            previous_best = self.best.value
            self.best.offer(val, self.flow, self.dependence, scores)
            if self.best.value != previous_best:
                self.best_epoch, self.best_stage = self.epoch_count, stage
            patience = self.config.patience
            if not self.stopped and patience and val is not None and self.epoch_count - self.best_epoch >= patience:
                self.stopped = True
                self.stopped_early = {"epoch": self.epoch_count, "patience": patience}
            record = {
                "stage": stage,
                "epoch": self.epoch_count,
                "train_nll": float(train_nll),
                "val_nll": val,
                **scores,
                "non_finite_batches": bad,
                "seconds": time.perf_counter() - started,
                **self.dependence.describe(),
            }
            self.epochs.append(record)
            if self.callback:
                self.callback({"event": "epoch", **record})

    def diagnosis(self) -> str | None:
        """Why the trained flow must not be used, or None.

        Diverged: a non-finite epoch or validation NLL stopped training; with validation rows,
        no epoch had a finite validation NLL, or the best one is worse than the untrained flow's
        (the identity on standardised traits) by more than one nat per trait.
        """
        if self.diverged is not None:
            return self.diverged
        if self.x_val is None or self.x_val.shape[0] == 0:
            return None
        if self.best.value is None:
            return f"(no finite validation NLL in {self.epoch_count} epochs)"
        reference = self.untrained_val_nll
        if reference is not None and math.isfinite(reference) and self.best.value > reference + self.x_train.shape[1]:
            return f"(best validation NLL {self.best.value:.4g}, worse than the untrained flow's {reference:.4g})"
        return None

    def outcome(self, stages: list[dict[str, Any]]) -> FitOutcome:
        kept = self.best.value is not None
        return FitOutcome(
            self.flow,
            self.dependence,
            self.epochs,
            stages,
            self.best.value,
            non_finite_batches=self.non_finite_batches,
            diverged=self.diagnosis(),
            best_epoch=self.best_epoch if kept else None,
            best_stage=self.best_stage if kept else None,
            stopped_early=self.stopped_early,
            validation_score=self.score,
            best_val_scores=self.best.scores,
        )


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
    held_out: HeldOutKinship | None = None,
) -> FitOutcome:
    """Train for ``stages x epochs`` epochs with ``dependence`` as it is.

    Covers ``iid`` (``IIDCovariance``), one grid value (fixed ``s2`` or ``rho``) and
    ``joint`` (covariance parameters with ``requires_grad`` join the optimiser).
    With ``held_out`` (a kinship model only) the held-out rows are scored conditionally.
    """
    trainer = EpochTrainer(flow, dependence, x_train, x_val, config, callback, held_out)
    return trainer.outcome(_run_stages(trainer, flow, dependence, config, callback))


def fit_iid(
    flow: LatentFlow, x_train: Tensor, x_val: Tensor | None, config: TrainConfig, callback: Callback | None = None
) -> FitOutcome:
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
    held_out: HeldOutKinship | None = None,
) -> FitOutcome:
    """One fresh flow per fixed covariance value (``s2`` or ``rho``); the best validation NLL wins.

    With ``held_out`` (kinship) that is the conditional held-out NLL, which at ``s2 = 0``
    equals the iid one; each grid record carries both scores of its kept state.
    """
    if x_val is None or x_val.shape[0] == 0:
        raise FlowphenoError("grid search picks s2 by validation NLL: set --val-frac above 0")
    best: FitOutcome | None = None
    grid: list[dict[str, Any]] = []
    for value in values:
        flow = make_flow().to(x_train.device)
        flow.initialize(x_train)
        dependence = make_dependence(value)
        started = time.perf_counter()
        outcome = fit_schedule(flow, dependence, x_train, x_val, config, _tag(callback, value), held_out)
        grid.append(
            {
                "value": value,
                "val_nll": outcome.best_val_nll,
                **outcome.best_val_scores,
                "seconds": time.perf_counter() - started,
                "non_finite_batches": outcome.non_finite_batches,
                "diverged": outcome.diverged,
            }
        )
        _emit(callback, {"event": "grid", **grid[-1]})
        if best is None or _grid_score(outcome) < _grid_score(best):
            best = outcome
    assert best is not None
    best.grid = grid
    best.non_finite_batches = sum(run["non_finite_batches"] for run in grid)
    return best


def _grid_score(outcome: FitOutcome) -> float:
    """Grid runs compete on validation NLL; a diverged run loses to any other."""
    if outcome.diverged is not None or outcome.best_val_nll is None:
        return math.inf
    return outcome.best_val_nll


def _tag(callback: Callback | None, value: float) -> Callback | None:
    if callback is None:
        return None
    return lambda record: callback({**record, "grid_value": value})


def fit_alternating(
    flow: LatentFlow,
    dependence: DependenceModel,
    x_train: Tensor,
    x_val: Tensor | None,
    config: TrainConfig,
    callback: Callback | None = None,
    held_out: HeldOutKinship | None = None,
) -> FitOutcome:
    """Stages of (flow epochs at a fixed covariance) then (exact covariance on all latents:
    :meth:`DependenceModel.refit`).

    Kinship: ``s2`` by a bounded Brent search after one rotation (with
    ``config.profile_scale``, or where it is None and the flow ends with an ActNorm, jointly
    with each trait's latent scale, which is then folded into the flow:
    :meth:`KinshipCovariance.fit_s2_and_scale`). Blocks: every
    ``rho_k`` (or the shared ``rho``) by an exact 1-D search per block
    (:meth:`EquicorrelatedBlocks.fit_rho`). The covariance starts from its exact optimum
    for the initial (ActNorm-standardised) latents; a kinship precision is rebuilt from
    the new ``s2`` at every stage. After the best flow state is restored, the covariance
    is refitted once so it matches the returned flow; with the scale step, the per-trait
    latent scales of that refit are folded into the returned flow as at every stage, so its
    training latents have ``z_t' Sigma^-1 z_t / n = 1`` per trait at the returned ``s2``.
    The ``"final"`` stage record holds the values before that refit (``s2_before_refit``),
    the folded scales (``latent_scale``, ``(d,)``) and the held-out scores of the returned
    state (``val_nll_iid``, ``val_nll_conditional``); the outcome's ``best_val_nll`` is the
    score that chose the state, before the refit.
    """
    refit = _scale_refit(flow, dependence, _profile_scale(config, dependence, flow))
    key = dependence.refit_name
    flow.initialize(x_train)
    for parameter in dependence.parameters():
        parameter.requires_grad_(False)
    started = time.perf_counter()
    refit(push_forward(flow, x_train))
    stages = [{"stage": 0, f"{key}_seconds": time.perf_counter() - started, **dependence.describe()}]
    _emit(callback, {"event": "stage", **stages[0]})
    trainer = EpochTrainer(flow, dependence, x_train, x_val, config, callback, held_out)
    for stage in range(1, config.stages + 1):
        started = time.perf_counter()
        trainer.run(config.epochs, stage)
        flow_seconds = time.perf_counter() - started
        dependence.release_caches()
        if trainer.diverged is not None:
            break  # no covariance step on a diverged flow's latents
        started = time.perf_counter()
        latent = push_forward(flow, x_train)
        if not bool(torch.isfinite(latent).all()):
            trainer.stopped = True
            trainer.diverged = f"at stage {stage} epoch {trainer.epoch_count} (non-finite latents of the training rows)"
            break
        refit(latent)
        stages.append(
            {
                "stage": stage,
                "flow_seconds": flow_seconds,
                f"{key}_seconds": time.perf_counter() - started,
                **dependence.describe(),
            }
        )
        _emit(callback, {"event": "stage", **stages[-1]})
        if trainer.stopped:
            break
    trainer.best.restore(flow, dependence)
    outcome = trainer.outcome(stages)
    if outcome.diverged is None:
        _refit_kept_state(trainer, outcome, flow, dependence, x_train, refit)
    return outcome


def fit_joint(
    flow: LatentFlow,
    dependence: DependenceModel,
    x_train: Tensor,
    x_val: Tensor | None,
    config: TrainConfig,
    callback: Callback | None = None,
    held_out: HeldOutKinship | None = None,
) -> FitOutcome:
    """Flow and covariance parameters (``s2`` or every ``rho_k``) by one optimiser.

    The covariance parameters become trainable through :meth:`DependenceModel.start_joint`:
    for kinship, ``s2`` starts at the exact optimum for the initial latents and the batch
    precision is rebuilt from ``U[idx]`` each step so gradients reach ``s2``.

    With the scale step (``config.profile_scale``; where it is None, wherever it applies: a
    kinship model and a flow that ends with an ActNorm, as in :func:`fit_alternating`), the
    kept state's ``s2`` is then refitted exactly jointly with each trait's latent scale, which
    is folded into the returned flow, and a ``"final"`` stage is recorded as in
    :func:`fit_alternating`. Without it, the learned ``s2`` is biased by the traits' latent
    scale, which the flow learns slowly: at n = 50k-100k (rank-40 kinship) it came out
    0.05-0.08 above what a perfect flow reaches, while the exact step on the same flow's
    latents was within 0.035 (``benchmarks/results/scale.md``).
    """
    profile_scale = _profile_scale(config, dependence, flow)
    flow.initialize(x_train)
    dependence.start_joint(push_forward(flow, x_train))
    if not profile_scale:
        return fit_schedule(flow, dependence, x_train, x_val, config, callback, held_out)
    trainer = EpochTrainer(flow, dependence, x_train, x_val, config, callback, held_out)
    stages = _run_stages(trainer, flow, dependence, config, callback)
    outcome = trainer.outcome(stages)
    if outcome.diverged is None:
        for parameter in dependence.parameters():
            parameter.requires_grad_(False)
        _refit_kept_state(trainer, outcome, flow, dependence, x_train, _scale_refit(flow, dependence, True))
    return outcome


def _profile_scale(config: TrainConfig, dependence: DependenceModel, flow: LatentFlow) -> bool:
    """``config.profile_scale`` decided: None means wherever it applies (a dependence model that
    profiles the scale and a flow that can rescale its latent). Raises FlowphenoError when
    it is asked for where the model cannot profile the scale."""
    if config.profile_scale and not dependence.profiles_scale:
        raise FlowphenoError(
            "profile_scale is implemented for the kinship model only, not " + type(dependence).__name__
        )
    if config.profile_scale is None:
        return dependence.profiles_scale and flow.can_rescale_latent
    return config.profile_scale


def _scale_refit(
    flow: LatentFlow, dependence: DependenceModel, profile_scale: bool
) -> Callable[[Tensor], dict[str, list[float]]]:
    """The exact covariance step on latents ``z`` (``(n, d)``); with ``profile_scale`` the fitted
    per-trait latent scales are folded into ``flow`` and returned as ``{"latent_scale": [...]}``."""

    def refit(z: Tensor) -> dict[str, list[float]]:
        scale = dependence.refit(z, profile_scale=profile_scale)
        if scale is None:
            return {}
        flow.rescale_latent(1.0 / scale)
        return {"latent_scale": scale.tolist()}

    return refit


def _run_stages(
    trainer: EpochTrainer,
    flow: LatentFlow,
    dependence: DependenceModel,
    config: TrainConfig,
    callback: Callback | None,
) -> list[dict[str, Any]]:
    """``config.stages`` stages of ``config.epochs`` epochs with ``dependence`` as it is (until
    training stops), then the best state restored; returns the stage records."""
    stages: list[dict[str, Any]] = []
    for stage in range(1, config.stages + 1):
        started = time.perf_counter()
        trainer.run(config.epochs, stage)
        stages.append({"stage": stage, "flow_seconds": time.perf_counter() - started, **dependence.describe()})
        _emit(callback, {"event": "stage", **stages[-1]})
        if trainer.stopped:
            break
    trainer.best.restore(flow, dependence)
    dependence.release_caches()
    return stages


def _refit_kept_state(
    trainer: EpochTrainer,
    outcome: FitOutcome,
    flow: LatentFlow,
    dependence: DependenceModel,
    x_train: Tensor,
    refit: Callable[[Tensor], dict[str, list[float]]],
) -> None:
    """Refit the covariance once on the kept (restored) flow's training latents so it matches
    the returned flow, and append the ``"final"`` stage record: the values before
    (``*_before_refit``), after, the folded scales (``latent_scale``) and the held-out scores
    of the returned state. Sets ``outcome.diverged`` instead when those latents are not finite."""
    of_best_stage = dependence.describe()
    latent = push_forward(flow, x_train)
    if not bool(torch.isfinite(latent).all()):
        outcome.diverged = "(the kept flow state gives non-finite latents for training rows)"
        return
    folded = refit(latent)
    outcome.stages.append(
        {
            "stage": "final",
            **{f"{name}_before_refit": value for name, value in of_best_stage.items() if name != "block_sizes"},
            **dependence.describe(),
            **folded,
            **trainer.validation_scores(),
        }
    )
