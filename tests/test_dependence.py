"""Exact likelihood terms against dense matrices and scipy; block closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import family_kinship
from scipy.stats import multivariate_normal

from flowpheno.dependence import EquicorrelatedBlocks, IIDCovariance, KinshipCovariance


def dense_matrix_normal_nll(z: np.ndarray, sigma: np.ndarray) -> float:
    """``-log N(vec Z; 0, I_d (x) Sigma) / n`` by scipy on the vectorised latent."""
    n, d = z.shape
    full = np.kron(np.eye(d), sigma)
    return -multivariate_normal(mean=np.zeros(n * d), cov=full).logpdf(z.T.reshape(-1)) / n


@pytest.mark.parametrize("s2", [0.0, 0.3, 0.8])
def test_kinship_exact_nll_matches_scipy(s2: float) -> None:
    rng = np.random.default_rng(1)
    n, d = 24, 3
    kinship = family_kinship(n, rng)
    kinship *= 0.7  # mean diagonal != 1: the model must rescale
    sigma_scaled = kinship * n / np.trace(kinship)
    z = rng.normal(size=(n, d))
    model = KinshipCovariance.from_matrix(torch.tensor(kinship), s2=s2)
    expected = dense_matrix_normal_nll(z, s2 * sigma_scaled + (1 - s2) * np.eye(n))
    assert float(model.gaussian_nll(torch.tensor(z))) == pytest.approx(expected, abs=1e-6)
    assert model.scale == pytest.approx(n / np.trace(kinship))


def test_kinship_precision_is_dense_inverse() -> None:
    rng = np.random.default_rng(2)
    n = 30
    kinship = family_kinship(n, rng)
    model = KinshipCovariance.from_matrix(torch.tensor(kinship), s2=0.4)
    sigma = 0.4 * kinship + 0.6 * np.eye(n)
    idx = torch.tensor([3, 7, 8, 20, 29])
    expected = np.linalg.inv(sigma)[np.ix_(idx.numpy(), idx.numpy())]
    np.testing.assert_allclose(model.precision_block(idx).numpy(), expected, atol=1e-10)
    model.logit_s2.requires_grad_(True)  # joint path rebuilds the block from U[idx]
    np.testing.assert_allclose(model.precision_block(idx).detach().numpy(), expected, atol=1e-10)


def test_cached_precision_follows_s2() -> None:
    rng = np.random.default_rng(3)
    kinship = family_kinship(20, rng)
    model = KinshipCovariance.from_matrix(torch.tensor(kinship), s2=0.2)
    idx = torch.arange(20)
    model.precision_block(idx)
    model.set_s2(0.7)
    expected = np.linalg.inv(0.7 * kinship + 0.3 * np.eye(20))
    np.testing.assert_allclose(model.precision_block(idx).numpy(), expected, atol=1e-8)


@pytest.mark.parametrize("shared", [True, False])
def test_blocks_exact_nll_matches_scipy(shared: bool) -> None:
    rng = np.random.default_rng(4)
    block_ids = np.repeat(np.arange(5), [1, 2, 4, 6, 3])
    n, d = len(block_ids), 2
    rho = np.array([0.3]) if shared else rng.uniform(0.1, 0.95, 5)
    model = EquicorrelatedBlocks(torch.tensor(block_ids), rho=torch.tensor(rho), shared=shared).double()
    sigma = np.zeros((n, n))
    for k in range(5):
        members = block_ids == k
        r = rho[0] if shared else rho[k]
        sigma[np.ix_(members, members)] = r
    np.fill_diagonal(sigma, 1.0)
    z = rng.normal(size=(n, d))
    assert float(model.gaussian_nll(torch.tensor(z))) == pytest.approx(dense_matrix_normal_nll(z, sigma), abs=1e-6)
    assert float(model.log_det()) == pytest.approx(np.linalg.slogdet(sigma)[1], abs=1e-10)
    idx = torch.tensor([0, 2, 3, 5, 6, 7, 13, 14])
    np.testing.assert_allclose(
        model.precision_block(idx).detach().numpy(), np.linalg.inv(sigma)[np.ix_(idx.numpy(), idx.numpy())], atol=1e-10
    )


def test_iid_is_standard_normal() -> None:
    z = np.random.default_rng(5).normal(size=(10, 3))
    assert float(IIDCovariance(10).double().gaussian_nll(torch.tensor(z))) == pytest.approx(
        dense_matrix_normal_nll(z, np.eye(10)), abs=1e-8
    )


def test_low_rank_matches_dense_and_scipy() -> None:
    rng = np.random.default_rng(6)
    n, r, d = 40, 5, 2
    factor = rng.normal(size=(n, r))
    kinship = factor @ factor.T
    low = KinshipCovariance.from_factor(torch.tensor(factor), s2=0.6)
    dense = KinshipCovariance.from_matrix(torch.tensor(kinship), s2=0.6)
    assert (low.rank, low.complement) == (r, n - r)
    assert low.scale == pytest.approx(dense.scale)
    z = torch.tensor(rng.normal(size=(n, d)))
    sigma = 0.6 * kinship * low.scale + 0.4 * np.eye(n)
    assert float(low.gaussian_nll(z)) == pytest.approx(dense_matrix_normal_nll(z.numpy(), sigma), abs=1e-6)
    assert float(low.log_det()) == pytest.approx(float(dense.log_det()), abs=1e-6)
    assert float(low.quad_form(z)) == pytest.approx(float(dense.quad_form(z)), rel=1e-8)
    idx = torch.tensor([1, 5, 9, 33])
    np.testing.assert_allclose(
        low.precision_block(idx).numpy(), np.linalg.inv(sigma)[np.ix_(idx.numpy(), idx.numpy())], atol=1e-8
    )
    assert low.fit_s2(z) == pytest.approx(dense.fit_s2(z), abs=1e-4)
    (low_s2, low_scale), (dense_s2, dense_scale) = low.fit_s2_and_scale(z), dense.fit_s2_and_scale(z)
    assert low_s2 == pytest.approx(dense_s2, abs=1e-4)
    assert torch.allclose(low_scale, dense_scale, rtol=1e-4)


def test_profiled_s2_and_scale_maximise_the_dense_likelihood() -> None:
    from scipy.optimize import minimize

    rng = np.random.default_rng(7)
    n, d = 40, 2
    kinship = family_kinship(n, rng, relatedness=0.9)
    scales = np.array([0.5, 2.0])
    z = np.linalg.cholesky(0.7 * kinship + 0.3 * np.eye(n)) @ rng.normal(size=(n, d)) * scales
    model = KinshipCovariance.from_matrix(torch.tensor(kinship))

    def dense_nll(params: np.ndarray) -> float:  # per-trait variances times Sigma(s2), by scipy
        s2, log_scale = params[0], params[1:]
        cov = np.kron(np.diag(np.exp(2 * log_scale)), s2 * kinship * model.scale + (1 - s2) * np.eye(n))
        return -multivariate_normal(mean=np.zeros(n * d), cov=cov).logpdf(z.T.reshape(-1))

    reference = minimize(
        dense_nll, x0=np.array([0.5, 0.0, 0.0]), bounds=[(0.0, 0.999), (-3, 3), (-3, 3)], method="L-BFGS-B"
    )
    s2, fitted_scale = model.fit_s2_and_scale(torch.tensor(z))
    ours = dense_nll(np.concatenate([[s2], np.log(fitted_scale.numpy())]))
    assert ours <= reference.fun + 1e-6
    assert s2 == pytest.approx(reference.x[0], abs=2e-3)
    assert float(model.s2) == pytest.approx(s2)
    # with the scale held at 1 (standardised latents), the plain step gives another s2
    standardised = torch.tensor(z / z.std(axis=0))
    assert abs(model.fit_s2(standardised) - model.fit_s2_and_scale(standardised)[0]) > 0.01
