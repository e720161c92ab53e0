"""The exact full-data gradient (chunked two-pass) and block-aware batching."""

from __future__ import annotations

import re

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
    for p, grad in zip(params, expected, strict=True):
        assert torch.allclose(p.grad, grad, rtol=1e-8, atol=1e-10)
    assert abs(float(model.logit_s2.grad)) > 1e-6


@pytest.mark.slow
def test_joint_exact_objective_recovers_s2() -> None:
    rng = np.random.default_rng(2)
    n, rank, truth = 3000, 20, 0.6
    factor = rng.normal(size=(n, rank))
    factor /= np.linalg.norm(factor, axis=1, keepdims=True)  # unit diagonal: the model's K is W W^T itself
    latent = np.sqrt(truth) * factor @ rng.normal(size=(rank, 3)) + np.sqrt(1 - truth) * rng.normal(size=(n, 3))
    model = KinshipCovariance.from_factor(torch.tensor(factor, dtype=torch.float32), s2=0.1)
    torch.manual_seed(0)
    config = TrainConfig(epochs=60, stages=1, lr=3e-3, covariance_lr=0.05, objective="exact", chunk_size=1000)
    outcome = fit_joint(
        affine_coupling_flow(3, layers=2, hidden=16), model, torch.tensor(latent, dtype=torch.float32), None, config
    )
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
    message = "TrainConfig.batching 'blocks' needs an EquicorrelatedBlocks dependence model, not KinshipCovariance; use batching='uniform'"
    with pytest.raises(FlowphenoError, match=f"^{re.escape(message)}$"):
        fit_joint(
            affine_coupling_flow(2, layers=1, hidden=8), model, torch.randn(50, 2), None, TrainConfig(batching="blocks")
        )


def _large_blocks(seed: int = 0) -> torch.Tensor:
    """Singletons, small blocks and a few blocks large enough to be dealt over the batches."""
    rng = np.random.default_rng(seed)
    sizes = np.concatenate([[1] * 60, rng.integers(2, 15, size=40), [400, 250, 90]])
    return torch.tensor(rng.permutation(np.repeat(np.arange(len(sizes)), sizes)))


def test_stratified_batches_deal_large_blocks_evenly_and_keep_small_ones_whole() -> None:
    ids = _large_blocks()
    model = EquicorrelatedBlocks(ids, rho=0.5, shared=False)
    batches = model.stratified_batches(128, torch.Generator().manual_seed(0))
    n_batches = -(-len(ids) // 128)
    assert len(batches) == n_batches
    assert sorted(torch.cat(batches).tolist()) == list(range(len(ids)))
    sizes = torch.bincount(ids)
    dealt = model.dealt_blocks(n_batches)
    assert sorted(sizes[dealt].tolist()) == [90, 250, 400]
    for batch in batches:
        counts = torch.bincount(ids[batch], minlength=len(sizes))
        for block in torch.nonzero(dealt).flatten():
            share = int(sizes[block]) / n_batches
            assert int(share) <= int(counts[block]) <= int(share) + 1
        present_small = (counts > 0) & ~dealt
        assert torch.equal(counts[present_small], sizes[present_small])  # small blocks whole
    assert max(map(len, batches)) - min(map(len, batches)) <= 2 * int(sizes[~dealt].max())


@pytest.mark.slow
def test_stratified_estimate_is_unbiased() -> None:
    ids = _large_blocks(1)
    rho = torch.linspace(0.05, 0.97, int(ids.max()) + 1).double()
    model = EquicorrelatedBlocks(ids, rho=rho, shared=False)
    rng = torch.Generator().manual_seed(3)
    z = (
        torch.randn(len(ids), 2, generator=rng, dtype=torch.float64)
        + 0.7 * torch.randn(len(rho), 2, generator=rng, dtype=torch.float64)[ids]
    )
    epoch_means = []
    for _ in range(400):
        batches = model.stratified_batches(128, rng)
        epoch_means.append(torch.stack([model.stratified_gaussian_nll(z[b], b, len(batches)) for b in batches]).mean())
    estimates = torch.stack(epoch_means)
    standard_error = float(estimates.std()) / len(estimates) ** 0.5
    assert abs(float(estimates.mean()) - float(model.gaussian_nll(z))) < 4 * standard_error


def test_stratified_batch_term_is_bounded_below_where_uniform_batches_are_not() -> None:
    """Latents that put every row of a large, strongly correlated block at one point: the
    exact quadratic form is small, the uniform-batch estimate goes negative in batches that
    hold more than their share of the block, the stratified estimate never does."""
    ids = _large_blocks(2)
    n_blocks = int(ids.max()) + 1
    rho = torch.full((n_blocks,), 0.5, dtype=torch.float64)
    large = int(torch.bincount(ids).argmax())
    rho[large] = 0.995
    model = EquicorrelatedBlocks(ids, rho=rho, shared=False)
    z = torch.zeros(len(ids), 2, dtype=torch.float64)
    z[ids == large] = 10.0
    assert float(model.quad_form(z)) > 0
    rng = torch.Generator().manual_seed(0)
    uniform = [
        float(model.minibatch_quad_form(z[b], b))
        for _ in range(20)
        for b in torch.randperm(len(ids), generator=rng).split(128)
    ]
    assert min(uniform) < 0
    for _ in range(20):
        batches = model.stratified_batches(128, rng)
        for b in batches:
            trace = (
                2 * model.n * model.stratified_gaussian_nll(z[b], b, len(batches))
                - model.n * 2 * np.log(2 * np.pi)
                - 2 * model.log_det()
            )
            assert float(trace) >= -1e-8


def test_fit_rho_is_the_exact_per_block_maximum() -> None:
    from scipy.optimize import minimize_scalar

    ids = _large_blocks(3)
    rng = np.random.default_rng(4)
    truth = rng.uniform(0.0, 0.98, size=int(ids.max()) + 1)
    shared = rng.normal(size=(len(truth), 2)) * np.sqrt(truth)[:, None]
    z = torch.tensor(shared[ids.numpy()] + rng.normal(size=(len(ids), 2)) * np.sqrt(1 - truth)[ids.numpy(), None])
    model = EquicorrelatedBlocks(ids, rho=0.5, shared=False)
    fitted = model.fit_rho(z).double()
    sizes = torch.bincount(ids)
    for block in torch.nonzero(sizes > 1).flatten().tolist():

        def objective(r: float, block: int = block) -> float:
            return float(model.rho_objective(z, torch.tensor([r], dtype=torch.float64))[block, 0])

        reference = minimize_scalar(objective, bounds=(0.0, 0.9995), method="bounded", options={"xatol": 1e-10})
        best = min([reference.x, 0.0, 0.9995], key=objective)
        # rho is stored in float32 and kept off 0 and 1 by 1e-6: hence the small tolerance
        assert objective(float(fitted[block])) <= objective(best) + 1e-5 * max(1.0, abs(objective(best)))
    assert torch.all(fitted[sizes == 1] == torch.tensor(0.5).float().double())  # a singleton says nothing: left alone
    pooled = EquicorrelatedBlocks(ids, rho=0.5, shared=True)
    value = float(pooled.fit_rho(z)[0])
    total = lambda r: float(pooled.rho_objective(z, torch.tensor([r], dtype=torch.float64)).sum())  # noqa: E731
    reference = minimize_scalar(total, bounds=(0.0, 0.9995), method="bounded", options={"xatol": 1e-10})
    assert total(value) <= total(reference.x) + 1e-5 * abs(total(reference.x))
