"""The mini-batch trace estimator (Proposition 2.2) is unbiased: averages over batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import family_kinship

from flowpheno.dependence import EquicorrelatedBlocks, IIDCovariance, KinshipCovariance


def _average_estimate(model, z: torch.Tensor, batch: int, draws: int, seed: int) -> tuple[float, float]:  # noqa: ANN001
    generator = torch.Generator().manual_seed(seed)
    estimates = []
    n = z.shape[0]
    for _ in range(draws):
        idx = torch.randperm(n, generator=generator)[:batch]
        estimates.append(float(model.minibatch_quad_form(z[idx], idx)))
    values = np.array(estimates)
    return values.mean(), values.std(ddof=1) / np.sqrt(draws)


@pytest.mark.slow
@pytest.mark.parametrize("batch", [2, 16])
def test_kinship_estimator_unbiased(batch: int) -> None:
    rng = np.random.default_rng(10)
    n = 60
    kinship = family_kinship(n, rng, relatedness=0.6)
    model = KinshipCovariance.from_matrix(torch.tensor(kinship, dtype=torch.float64), s2=0.7)
    # correlated latents, so off-diagonal terms matter
    z = torch.tensor(np.linalg.cholesky(0.7 * kinship + 0.3 * np.eye(n)) @ rng.normal(size=(n, 3)))
    exact = float(model.quad_form(z))
    mean, se = _average_estimate(model, z, batch, draws=20000, seed=1)
    assert abs(mean - exact) < 3 * se, (mean, exact, se)
    # and the estimate is not trivially exact: it varies from batch to batch
    assert se > 1e-3 * abs(exact)


@pytest.mark.slow
def test_blocks_estimator_unbiased() -> None:
    rng = np.random.default_rng(11)
    block_ids = np.repeat(np.arange(8), [1, 3, 5, 8, 2, 6, 4, 11])
    model = EquicorrelatedBlocks(torch.tensor(block_ids), rho=torch.tensor(rng.uniform(0.2, 0.9, 8))).double()
    z = torch.tensor(
        rng.normal(size=(len(block_ids), 2)) + np.repeat(rng.normal(size=(8, 2)), [1, 3, 5, 8, 2, 6, 4, 11], axis=0)
    )
    exact = float(model.quad_form(z))
    mean, se = _average_estimate(model, z, 10, draws=20000, seed=2)
    assert abs(mean - exact) < 3 * se, (mean, exact, se)


def test_iid_estimator_unbiased() -> None:
    z = torch.tensor(np.random.default_rng(12).normal(size=(50, 2)))
    model = IIDCovariance(50).double()
    mean, se = _average_estimate(model, z, 7, draws=5000, seed=3)
    assert abs(mean - float(model.quad_form(z))) < 3 * se


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["kinship", "low_rank", "blocks"])
def test_control_variate_unbiased_and_lower_variance(kind: str) -> None:
    from flowpheno.dependence import LatentControlVariate

    rng = np.random.default_rng(13)
    n, d = 60, 3
    if kind == "kinship":
        kinship = family_kinship(n, rng, relatedness=0.6)
        model = KinshipCovariance.from_matrix(torch.tensor(kinship), s2=0.7)
    elif kind == "low_rank":
        model = KinshipCovariance.from_factor(torch.tensor(rng.normal(size=(n, 4))), s2=0.7)
    else:
        model = EquicorrelatedBlocks(
            torch.tensor(np.repeat(np.arange(6), 10)), rho=torch.tensor(rng.uniform(0.3, 0.9, 6))
        ).double()
    previous = torch.tensor(rng.normal(size=(n, d)))
    current = previous + 0.1 * torch.tensor(rng.normal(size=(n, d)))  # latents moved a little since the last visit
    exact = float(model.quad_form(current))
    control = LatentControlVariate(model, previous)
    np.testing.assert_allclose(
        control.precision_latent.numpy(), (torch.linalg.inv(_dense(model)) @ previous).numpy(), atol=1e-8
    )
    generator = torch.Generator().manual_seed(5)
    plain, variate = [], []
    for _ in range(4000):
        idx = torch.randperm(n, generator=generator)[:8]
        plain.append(float(model.minibatch_quad_form(current[idx], idx)))
        variate.append(float(control.quad_form_estimate(current[idx], idx)))
    variate_arr = np.array(variate)
    se = variate_arr.std(ddof=1) / np.sqrt(len(variate_arr))
    assert abs(variate_arr.mean() - exact) < 3 * se + 1e-9, (variate_arr.mean(), exact, se)
    assert variate_arr.std() < 0.2 * np.std(plain)
    # updating with the current latents makes the estimate exact
    for start in range(0, n, 8):
        idx = torch.arange(start, min(start + 8, n))
        control.update(current[idx], idx)
    assert float(control.quad_form_estimate(current[:8], torch.arange(8))) == pytest.approx(exact, rel=1e-9)


def _dense(model) -> torch.Tensor:  # noqa: ANN001
    """Sigma as a dense matrix, from the model's own precision entries."""
    idx = torch.arange(model.n)
    return torch.linalg.inv(model.precision_block(idx).detach())


@pytest.mark.parametrize("path", ["dense", "low_rank"])
@pytest.mark.parametrize("learn_s2", [False, True])
@pytest.mark.parametrize("batch", [1, 2, 17])
def test_kinship_batch_estimate_equals_the_block_formula(path: str, learn_s2: bool, batch: int) -> None:
    """The kinship model's ``O(b r d)`` batch estimate is Proposition 2.2 on the ``(b, b)``
    precision block (``trace_estimate``), value and gradients (latents and ``s2``), for a
    full-rank kinship (no complement) and a rank-5 factor (complement ``1 / (1 - s2)``)."""
    from flowpheno.dependence import trace_estimate

    rng = np.random.default_rng(3)
    n = 40
    if path == "dense":
        model = KinshipCovariance.from_matrix(
            torch.tensor(family_kinship(n, rng, relatedness=0.5), dtype=torch.float64), s2=0.6
        )
        assert model.complement == 0
    else:
        model = KinshipCovariance.from_factor(torch.tensor(rng.normal(size=(n, 5)) / 3), s2=0.6)
        assert model.complement == n - 5
    model.logit_s2.requires_grad_(learn_s2)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(batch))[:batch]
    z = torch.tensor(rng.normal(size=(batch, 3)), requires_grad=True)

    fast = model.minibatch_quad_form(z, idx)
    fast_grads = torch.autograd.grad(fast, [z, model.logit_s2] if learn_s2 else [z])
    block = trace_estimate(z, model.precision_block(idx), n)
    block_grads = torch.autograd.grad(block, [z, model.logit_s2] if learn_s2 else [z])

    torch.testing.assert_close(fast, block, rtol=1e-10, atol=1e-10)
    for got, expected in zip(fast_grads, block_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("n", "batch", "sizes"),
    [
        (513, 256, [256, 257]),
        (512, 256, [256, 256]),
        (257, 256, [257]),
        (3, 2, [3]),
        (1, 256, [1]),
        (300, 256, [256, 44]),
    ],
)
def test_uniform_batches_never_leave_a_single_row(n: int, batch: int, sizes: list[int]) -> None:
    """A batch of one row would estimate only the diagonal of the trace (biased), so a trailing
    single row joins the batch before it; every row is in exactly one batch."""
    from flowpheno.train.objective import uniform_batches

    batches = uniform_batches(n, batch, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == sizes
    assert sorted(torch.cat(batches).tolist()) == list(range(n))


def test_a_single_row_batch_is_biased_so_training_avoids_it() -> None:
    """Why: the exact mean of the one-row estimate over all rows is the diagonal part only."""
    rng = np.random.default_rng(4)
    n = 30
    model = KinshipCovariance.from_matrix(torch.tensor(family_kinship(n, rng, relatedness=0.6)), s2=0.7)
    z = torch.tensor(rng.normal(size=(n, 2)))
    single = np.mean([float(model.minibatch_quad_form(z[[i]], torch.tensor([i]))) for i in range(n)])
    diagonal = float((torch.diagonal(model.precision()) * z.square().sum(dim=1)).sum())
    assert single == pytest.approx(diagonal, rel=1e-10)
    assert abs(single - float(model.quad_form(z))) > 1e-3 * abs(float(model.quad_form(z)))
