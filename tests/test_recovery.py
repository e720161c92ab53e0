"""Recovered s2 and rho against the simulated truth, through the real training schedules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import family_kinship

from flowpheno.dependence import EquicorrelatedBlocks, KinshipCovariance
from flowpheno.flows import affine_coupling_flow
from flowpheno.train import TrainConfig, fit_alternating, fit_joint

SMALL = TrainConfig(epochs=3, stages=2, batch_size=256, lr=2e-3, seed=0)


def _kinship_data(s2: float, n: int = 2000, d: int = 3, seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    rng = np.random.default_rng(seed)
    kinship = family_kinship(n, rng)
    sigma = s2 * kinship + (1 - s2) * np.eye(n)
    latent = np.linalg.cholesky(sigma) @ rng.normal(size=(n, d))
    return kinship, torch.tensor(latent, dtype=torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize("profile_scale", [False, True])
@pytest.mark.parametrize(("truth", "low", "high"), [(0.5, 0.4, 0.6), (0.0, 0.0, 0.1)])
def test_alternating_recovers_s2(truth: float, low: float, high: float, profile_scale: bool) -> None:
    kinship, x = _kinship_data(truth)
    model = KinshipCovariance.from_matrix(torch.tensor(kinship, dtype=torch.float32))
    torch.manual_seed(0)
    config = TrainConfig(**{**SMALL.__dict__, "profile_scale": profile_scale})
    outcome = fit_alternating(affine_coupling_flow(3, layers=4, hidden=32), model, x, None, config)
    estimate = outcome.dependence.describe()["s2"]
    assert low <= estimate <= high, estimate
    assert len(outcome.stages) == SMALL.stages + 2  # stage 0, each stage, final refit


@pytest.mark.slow
def test_joint_recovers_s2() -> None:
    kinship, x = _kinship_data(0.5, seed=1)
    model = KinshipCovariance.from_matrix(torch.tensor(kinship, dtype=torch.float32))
    torch.manual_seed(0)
    outcome = fit_joint(affine_coupling_flow(3, layers=4, hidden=32), model, x, None, SMALL)
    assert abs(outcome.dependence.describe()["s2"] - 0.5) < 0.1


def _block_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 40, size=30)
    rho = rng.uniform(0.05, 0.9, size=30)
    rows = []
    for size, r in zip(sizes, rho, strict=True):
        shared = rng.normal(size=(1, 2)) * np.sqrt(r)
        rows.append(shared + rng.normal(size=(size, 2)) * np.sqrt(1 - r))
    return np.repeat(np.arange(30), sizes), rho, torch.tensor(np.concatenate(rows), dtype=torch.float32)


def test_blocks_exact_objective_recovers_rho() -> None:
    block_ids, rho, z = _block_data()
    model = EquicorrelatedBlocks(torch.tensor(block_ids), rho=0.5, learn_rho=True)
    optimiser = torch.optim.LBFGS(model.parameters(), max_iter=200)

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = model.gaussian_nll(z)
        loss.backward()
        return loss

    optimiser.step(closure)
    estimate = model.rho.detach().numpy()
    assert np.corrcoef(estimate, rho)[0, 1] > 0.8
    assert np.abs(estimate - rho).mean() < 0.15


@pytest.mark.slow
def test_joint_blocks_rho_correlates_with_truth() -> None:
    block_ids, rho, x = _block_data(seed=1)
    model = EquicorrelatedBlocks(torch.tensor(block_ids), rho=0.5)
    torch.manual_seed(0)
    config = TrainConfig(epochs=15, stages=2, batch_size=64, lr=2e-3, covariance_lr=0.05, seed=0)
    outcome = fit_joint(affine_coupling_flow(2, layers=2, hidden=16), model, x, None, config)
    estimate = np.array(outcome.dependence.describe()["rho"])
    assert np.corrcoef(estimate, rho)[0, 1] > 0.6, np.corrcoef(estimate, rho)[0, 1]


@pytest.mark.parametrize("batching", ["uniform", "stratified"])
def test_alternating_blocks_recovers_rho(batching: str) -> None:
    block_ids, rho, x = _block_data(seed=2)
    model = EquicorrelatedBlocks(torch.tensor(block_ids), rho=0.5)
    torch.manual_seed(0)
    config = TrainConfig(epochs=4, stages=2, batch_size=64, lr=2e-3, seed=0, batching=batching)
    outcome = fit_alternating(affine_coupling_flow(2, layers=2, hidden=16), model, x, None, config)
    estimate = np.array(outcome.dependence.describe()["rho"])
    assert np.corrcoef(estimate, rho)[0, 1] > 0.8, np.corrcoef(estimate, rho)[0, 1]
    assert np.abs(estimate - rho).mean() < 0.12
    assert len(outcome.stages) == config.stages + 2  # stage 0, each stage, final refit
