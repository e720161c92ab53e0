"""The exact full-data gradient (chunked two-pass) and block-aware batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowpheno.dependence import EquicorrelatedBlocks, KinshipCovariance
from flowpheno.errors import FlowphenoError
from flowpheno.flows import affine_coupling_flow
from flowpheno.train import TrainConfig, fit_joint
from flowpheno.train.exact import exact_backward
from flowpheno.train.objective import exact_nll


def _low_rank_problem(n: int = 300, rank: int = 6, d: int = 3, s2: float = 0.4, seed: int = 0):  # noqa: ANN202
    rng = np.random.default_rng(seed)
    factor = rng.normal(size=(n, rank)) / np.sqrt(rank)
    latent = np.sqrt(s2) * factor @ rng.normal(size=(rank, d)) + np.sqrt(1 - s2) * rng.normal(size=(n, d))
    x = latent + 0.3 * latent**3  # something for the flow to undo
    return torch.tensor(factor, dtype=torch.float64), torch.tensor(x, dtype=torch.float64)


def test_exact_backward_matches_autograd_of_exact_nll() -> None:
    factor, x = _low_rank_problem()
    torch.manual_seed(0)
    flow = affine_coupling_flow(3, layers=3, hidden=16).double()
    flow.initialize(x)
    with torch.no_grad():  # move away from the identity start so every gradient is non-zero
        for parameter in flow.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model = KinshipCovariance.from_factor(factor, s2=0.3, learn_s2=True).double()
    params = [*flow.parameters(), model.logit_s2]

    reference = exact_nll(flow, model, x)
    expected = torch.autograd.grad(reference, params)
    for p in params:
        p.grad = None
    value = exact_backward(flow, model, x, chunk_size=64)  # 300 rows: five chunks
    assert float(value) == pytest.approx(float(reference.detach()), rel=1e-12)
    for p, grad in zip(params, expected):
        assert torch.allclose(p.grad, grad, rtol=1e-8, atol=1e-10)
    assert abs(float(model.logit_s2.grad)) > 1e-6


def test_joint_exact_objective_recovers_s2() -> None:
    rng = np.random.default_rng(2)
    n, rank, truth = 3000, 20, 0.6
    factor = rng.normal(size=(n, rank))
    factor /= np.linalg.norm(factor, axis=1, keepdims=True)  # unit diagonal: the model's K is W W^T itself
    latent = np.sqrt(truth) * factor @ rng.normal(size=(rank, 3)) + np.sqrt(1 - truth) * rng.normal(size=(n, 3))
    model = KinshipCovariance.from_factor(torch.tensor(factor, dtype=torch.float32), s2=0.1)
    torch.manual_seed(0)
    config = TrainConfig(epochs=60, stages=1, lr=3e-3, covariance_lr=0.05, objective="exact", chunk_size=1000)
    outcome = fit_joint(affine_coupling_flow(3, layers=2, hidden=16), model, torch.tensor(latent, dtype=torch.float32), None, config)
    assert abs(outcome.dependence.describe()["s2"] - truth) < 0.08
    assert len(outcome.epochs) == 60


def _blocks(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    sizes = np.concatenate([[1] * 40, rng.integers(2, 30, size=25), [300]])
    ids = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))  # rows of a block need not be adjacent
    return torch.tensor(ids), torch.tensor(rng.normal(size=(len(ids), 2)))


def test_block_batches_hold_whole_blocks_and_cover_every_row_once() -> None:
    ids, _ = _blocks()
    model = EquicorrelatedBlocks(ids, rho=0.4, shared=False)
    batches = model.block_batches(64, torch.Generator().manual_seed(0))
    rows = torch.cat(batches)
    assert sorted(rows.tolist()) == list(range(len(ids)))
    for batch in batches:
        for block in ids[batch].unique():
            assert int((ids[batch] == block).sum()) == int((ids == block).sum())
    assert any(len(batch) >= 300 for batch in batches)  # a block larger than the batch size stays whole


def test_whole_block_losses_average_to_the_exact_gaussian_term() -> None:
    ids, z = _blocks(1)
    model = EquicorrelatedBlocks(ids, rho=torch.linspace(0.05, 0.95, int(ids.max()) + 1).double(), shared=False)
    batches = model.block_batches(50, torch.Generator().manual_seed(1))
    mean = torch.stack([model.whole_blocks_gaussian_nll(z[b], b, len(batches)) for b in batches]).mean()
    assert float(mean) == pytest.approx(float(model.gaussian_nll(z)), rel=1e-10)


def test_block_batching_needs_blocks() -> None:
    model = KinshipCovariance.from_factor(torch.randn(50, 3))
    with pytest.raises(FlowphenoError, match="equicorrelated blocks"):
        fit_joint(affine_coupling_flow(2, layers=1, hidden=8), model, torch.randn(50, 2), None, TrainConfig(batching="blocks"))
