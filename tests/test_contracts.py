"""The interfaces as contracts: every dependence model and every flow against one oracle.

Dependence models (``DependenceModel``): iid, dense kinship below and above the rank where
batch precision entries come from a cached dense precision (``DENSE_PRECISION_MIN_RANK``),
low-rank kinship (a factor) below and above it, equicorrelated blocks with a shared ``rho``
and with one per block. Each is checked against the explicit dense ``Sigma`` it stands for:
``log det`` by ``numpy.linalg.slogdet``, the Gaussian term by ``scipy.stats.matrix_normal``,
precision entries and products by ``numpy.linalg.inv``, the batch trace estimator's mean over
every batch of a size (all ``C(n, b)`` of them: exact, not sampled), the exact covariance step
against a dense likelihood grid, and the hooks the training schedules call.

Flows (``LatentFlow``): every flow class, Glow included, inverts exactly, its log-det is
autograd's Jacobian log-determinant, rows never mix, and its initial weights come from its
seed alone.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from conftest import family_kinship
from scipy.stats import matrix_normal

from flowpheno.dependence import DependenceModel, EquicorrelatedBlocks, IIDCovariance, KinshipCovariance
from flowpheno.dependence.kinship import DENSE_PRECISION_MIN_RANK
from flowpheno.errors import FlowphenoError
from flowpheno.flows import GlowFlow, LatentFlow, affine_coupling_flow, spline_coupling_flow
from flowpheno.train import EpochTrainer, TrainConfig

D = 2
BLOCK_SIZES = [1, 2, 4, 12, 3, 5, 1, 2]  # the block of 12 is dealt over stratified batches of 8


class Case:
    """A dependence model, and the dense ``Sigma`` it stands for as a function of its parameter."""

    def __init__(
        self, model: DependenceModel, sigma_of: Callable[[float | np.ndarray], np.ndarray], value: float | np.ndarray
    ) -> None:
        self.model, self.sigma_of, self.value = model, sigma_of, value

    @property
    def sigma(self) -> np.ndarray:
        return self.sigma_of(self.value)


def _kinship_sigma(kinship: np.ndarray) -> Callable[[float | np.ndarray], np.ndarray]:
    n = len(kinship)
    scaled = kinship * n / np.trace(kinship)  # unit mean diagonal
    return lambda s2: float(s2) * scaled + (1 - float(s2)) * np.eye(n)


def _blocks_sigma(ids: np.ndarray) -> Callable[[float | np.ndarray], np.ndarray]:
    def sigma(rho: float | np.ndarray) -> np.ndarray:
        per_block = np.broadcast_to(np.asarray(rho, dtype=float), (int(ids.max()) + 1,))
        same = ids[:, None] == ids[None, :]
        out = np.where(same, per_block[ids][:, None], 0.0)
        np.fill_diagonal(out, 1.0)
        return out

    return sigma


def _dense(n: int, seed: int) -> Case:
    kinship = family_kinship(n, np.random.default_rng(seed), relatedness=0.6) * 0.8  # mean diagonal != 1
    return Case(KinshipCovariance.from_matrix(torch.tensor(kinship), s2=0.55), _kinship_sigma(kinship), 0.55)


def _factor(n: int, rank: int, seed: int) -> Case:
    factor = np.random.default_rng(seed).normal(size=(n, rank)) / math.sqrt(rank)
    model = KinshipCovariance.from_factor(torch.tensor(factor), s2=0.45)
    return Case(model, _kinship_sigma(factor @ factor.T), 0.45)


def _blocks(shared: bool) -> Case:
    ids = np.repeat(np.arange(len(BLOCK_SIZES)), BLOCK_SIZES)
    rho: float | np.ndarray = 0.4 if shared else np.linspace(0.1, 0.85, len(BLOCK_SIZES))
    model = EquicorrelatedBlocks(torch.tensor(ids), rho=torch.tensor(rho, dtype=torch.float64), shared=shared)
    return Case(model, _blocks_sigma(ids), rho)


CASES: dict[str, Callable[[], Case]] = {
    "iid": lambda: Case(IIDCovariance(14).double(), lambda _: np.eye(14), 0.0),
    "kinship_dense": lambda: _dense(20, 1),
    "kinship_dense_cached": lambda: _dense(DENSE_PRECISION_MIN_RANK + 4, 2),
    "kinship_low_rank": lambda: _factor(18, 4, 3),
    "kinship_low_rank_cached": lambda: _factor(DENSE_PRECISION_MIN_RANK + 30, DENSE_PRECISION_MIN_RANK + 2, 4),
    "blocks_shared": lambda: _blocks(True),
    "blocks_per_block": lambda: _blocks(False),
}
CACHED = {"kinship_dense_cached", "kinship_low_rank_cached"}


def _latent(case: Case, seed: int = 0) -> np.ndarray:
    """Latents drawn from the model itself (correlated rows), so off-diagonal terms matter."""
    rng = np.random.default_rng(seed)
    return np.linalg.cholesky(case.sigma) @ rng.normal(size=(case.model.n, D))


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]()


def test_every_case_reaches_the_path_it_names() -> None:
    """The cached cases use the dense precision cache, the others do not (so the two paths are both covered)."""
    for name, make in CASES.items():
        model = make().model
        if isinstance(model, KinshipCovariance):
            assert model._dense_cache_used() == (name in CACHED), name
            assert (model.complement > 0) == ("low_rank" in name), name


def test_gaussian_terms_match_the_dense_oracle(case: Case) -> None:
    model, sigma = case.model, case.sigma
    z = _latent(case)
    precision = np.linalg.inv(sigma)
    assert float(model.log_det()) == pytest.approx(np.linalg.slogdet(sigma)[1], rel=1e-9, abs=1e-9)
    assert float(model.quad_form(torch.tensor(z))) == pytest.approx(np.trace(z.T @ precision @ z), rel=1e-9)
    expected_nll = -matrix_normal(mean=np.zeros_like(z), rowcov=sigma, colcov=np.eye(D)).logpdf(z) / model.n
    assert float(model.gaussian_nll(torch.tensor(z))) == pytest.approx(expected_nll, rel=1e-9)
    np.testing.assert_allclose(model.precision_times(torch.tensor(z)).detach().numpy(), precision @ z, atol=1e-9)


def test_precision_entries_match_the_dense_inverse(case: Case) -> None:
    model = case.model
    precision = np.linalg.inv(case.sigma)
    rng = np.random.default_rng(5)
    for idx in (
        np.arange(model.n),
        np.sort(rng.choice(model.n, size=min(9, model.n), replace=False)),
        np.array([model.n - 1]),
    ):
        block = model.precision_block(torch.tensor(idx)).detach().numpy()
        np.testing.assert_allclose(block, precision[np.ix_(idx, idx)], atol=1e-9)
        values = rng.normal(size=(len(idx), D))
        np.testing.assert_allclose(
            model.precision_columns_times(torch.tensor(idx), torch.tensor(values)).detach().numpy(),
            precision[:, idx] @ values,
            atol=1e-9,
        )


def test_batch_estimate_averages_to_the_exact_trace_over_every_batch(case: Case) -> None:
    """Proposition 2.2: the mean of the estimate over all ``C(n, b)`` batches of ``b`` rows is
    ``tr(Z^T Sigma^-1 Z)`` exactly (float64 rounding aside), and single batches differ from it.
    ``b = 2`` (every pair) where ``n`` is small, and ``b = n - 1`` (``n`` batches) for every model."""
    model = case.model
    z = torch.tensor(_latent(case, seed=1))
    exact = float(model.quad_form(z))
    for b in [2, model.n - 1] if model.n <= 30 else [model.n - 1]:
        estimates = [
            float(model.minibatch_quad_form(z[list(rows)], torch.tensor(rows)))
            for rows in itertools.combinations(range(model.n), b)
        ]
        assert len(estimates) == math.comb(model.n, b)
        assert np.mean(estimates) == pytest.approx(exact, rel=1e-9), b
        assert np.std(estimates) > 1e-4 * abs(exact), b


def test_layout_batches_give_the_exact_term_on_average(case: Case) -> None:
    """Every batch layout a model declares (``batchings``): ``blocks`` batches hold whole blocks,
    cover each row once and average to the exact Gaussian term in every epoch; ``stratified``
    batches cover each row once and average to it over epochs (unbiased). Undeclared layouts raise."""
    model = case.model
    z = torch.tensor(_latent(case, seed=2))
    exact = float(model.gaussian_nll(z))
    assert "uniform" in model.batchings
    for batching in ("blocks", "stratified"):
        generator = torch.Generator().manual_seed(0)
        if batching not in model.batchings:
            with pytest.raises(FlowphenoError, match=batching):
                model.batches(batching, 8, generator)
            with pytest.raises(FlowphenoError, match=batching):
                model.batch_gaussian_nll(z[:2], torch.arange(2), batching, 2)
            continue
        epochs = 1 if batching == "blocks" else 600
        means = []
        for _ in range(epochs):
            batches = model.batches(batching, 8, generator)
            assert sorted(torch.cat(batches).tolist()) == list(range(model.n))
            means.append(
                float(torch.stack([model.batch_gaussian_nll(z[i], i, batching, len(batches)) for i in batches]).mean())
            )
        if batching == "blocks":
            assert means[0] == pytest.approx(exact, rel=1e-10)
        else:
            se = np.std(means, ddof=1) / math.sqrt(len(means))
            assert abs(np.mean(means) - exact) < 4 * se and se > 0, (np.mean(means), exact, se)


def test_refit_is_the_exact_maximiser(case: Case) -> None:
    """The covariance step of alternating training: no parameter value on a dense grid gives
    the latents a higher likelihood (dense oracle), and the model's own term agrees."""
    model = case.model
    z = _latent(case, seed=3) * 1.3
    assert model.refit(torch.tensor(z)) is None
    fitted = float(model.gaussian_nll(torch.tensor(z)))

    def oracle(value: float | np.ndarray) -> float:
        return -matrix_normal(mean=np.zeros_like(z), rowcov=case.sigma_of(value), colcov=np.eye(D)).logpdf(z) / model.n

    grid = [oracle(value) for value in np.linspace(0.0, 0.95, 20)]
    assert fitted <= min(grid) + 1e-7
    if isinstance(model, EquicorrelatedBlocks):
        assert fitted == pytest.approx(oracle(model.rho.detach().numpy()), rel=1e-9)
    elif isinstance(model, KinshipCovariance):
        assert fitted == pytest.approx(oracle(float(model.s2)), rel=1e-9)
    if model.profiles_scale:
        scale = model.refit(torch.tensor(z), profile_scale=True)
        assert scale is not None and scale.shape == (D,) and bool((scale > 0).all())
    else:
        with pytest.raises(FlowphenoError):
            model.refit(torch.tensor(z), profile_scale=True)


def test_hooks_match_the_declared_capabilities(case: Case) -> None:
    """``start_joint`` makes the covariance trainable; ``release_caches`` changes no value;
    ``conditional_gaussian_nll`` exists exactly where ``conditional_scoring`` says; the trainer
    refuses a held-out kinship or a batching the model does not declare."""
    model = case.model
    z = torch.tensor(_latent(case, seed=4))
    idx = torch.arange(0, model.n, 2)
    before = model.precision_block(idx).detach().clone()
    model.release_caches()
    assert torch.equal(model.precision_block(idx).detach(), before)
    if not model.conditional_scoring:
        with pytest.raises(FlowphenoError, match="held-out rows"):
            model.conditional_gaussian_nll(z[:3], z[3:5], None)  # type: ignore[arg-type]
    x = torch.randn(model.n, D, dtype=torch.float64)
    flow = affine_coupling_flow(D, layers=1, hidden=4).double()
    for batching in ("blocks", "stratified"):
        if batching not in model.batchings:
            with pytest.raises(FlowphenoError, match=f"batching '{batching}'"):
                EpochTrainer(flow, model, x, None, TrainConfig(batching=batching), None)
    assert model.identity == isinstance(model, IIDCovariance)
    model.start_joint(z)
    assert all(p.requires_grad for p in model.parameters())
    if isinstance(model, KinshipCovariance):  # starts at the exact optimum for the initial latents
        assert float(model.gaussian_nll(z).detach()) <= float(model.with_s2(0.5).gaussian_nll(z)) + 1e-12


@pytest.mark.parametrize("write", ["set_s2", "data_fill", "data_assign", "new_parameter", "load_state_dict"])
def test_cached_precision_follows_every_way_of_writing_s2(write: str) -> None:
    """The dense precision cache is keyed on the value of ``s2`` it was built for: whichever way
    ``s2`` is written, the next batch gets the precision of the new value."""
    case = _dense(DENSE_PRECISION_MIN_RANK + 4, 6)
    model = case.model
    assert isinstance(model, KinshipCovariance) and model._dense_cache_used()
    idx = torch.tensor([0, 3, 17, 100, DENSE_PRECISION_MIN_RANK + 3])
    np.testing.assert_allclose(
        model.precision_block(idx).numpy(), np.linalg.inv(case.sigma_of(0.55))[np.ix_(idx, idx)], atol=1e-9
    )
    new_logit = math.log(0.8 / 0.2)
    if write == "set_s2":
        model.set_s2(0.8)
    elif write == "data_fill":
        model.logit_s2.data.fill_(new_logit)
    elif write == "data_assign":
        model.logit_s2.data = torch.tensor(new_logit, dtype=torch.float64)
    elif write == "new_parameter":
        model.logit_s2 = torch.nn.Parameter(torch.tensor(new_logit, dtype=torch.float64), requires_grad=False)
    else:
        state = model.state_dict()
        state["logit_s2"] = torch.tensor(new_logit, dtype=torch.float64)
        model.load_state_dict(state)
    assert float(model.s2) == pytest.approx(0.8)
    precision = np.linalg.inv(case.sigma_of(0.8))
    np.testing.assert_allclose(model.precision_block(idx).numpy(), precision[np.ix_(idx, idx)], atol=1e-9)
    values = torch.ones(len(idx), D, dtype=torch.float64)
    np.testing.assert_allclose(
        model.precision_columns_times(idx, values).numpy(), precision[:, idx.numpy()] @ values.numpy(), atol=1e-9
    )


def test_moving_the_model_drops_the_cached_precision() -> None:
    model = _dense(DENSE_PRECISION_MIN_RANK + 4, 7).model
    idx = torch.tensor([1, 2, 3])
    model.precision_block(idx)
    as_float = model.float()
    assert as_float.precision_block(idx).dtype == torch.float32


# flows

FLOWS: dict[str, Callable[[int], LatentFlow]] = {
    "affine_d1": lambda seed: affine_coupling_flow(1, layers=2, hidden=8, seed=seed),
    "affine_d3": lambda seed: affine_coupling_flow(3, layers=3, hidden=8, seed=seed),
    "spline_d2": lambda seed: spline_coupling_flow(2, layers=2, hidden=8, bins=6, seed=seed),
    "glow": lambda seed: GlowFlow((1, 4, 4), levels=2, steps=2, hidden=4, seed=seed),
}


def _features(flow: LatentFlow) -> int:
    return int(np.prod(flow.config["shape"])) if flow.config["kind"] == "glow" else int(flow.config["features"])


def _data(flow: LatentFlow, rows: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if flow.config["kind"] == "glow":  # dequantised pixels in [0, 1]
        return torch.rand(rows, _features(flow), generator=generator, dtype=torch.float64)
    return torch.randn(rows, _features(flow), generator=generator, dtype=torch.float64) * 1.5 + 0.5


@pytest.fixture(params=sorted(FLOWS))
def trained_like(request: pytest.FixtureRequest) -> LatentFlow:
    """A flow with non-trivial weights (the zero-initialised output layers made non-zero), ActNorm set from data."""
    flow = FLOWS[request.param](3).double()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    flow.initialize(_data(flow, 64, 1))
    return flow


def test_flow_inverse_undoes_forward(trained_like: LatentFlow) -> None:
    flow = trained_like
    assert isinstance(flow, LatentFlow)
    x = _data(flow, 40, 2)
    with torch.no_grad():
        z, ladj = flow(x)
        assert z.shape == x.shape and ladj.shape == (x.shape[0],)
        assert not torch.allclose(z, x, atol=1e-2)
        torch.testing.assert_close(flow.inverse(z), x, atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(flow(flow.inverse(z))[0], z, atol=1e-9, rtol=1e-9)


def test_flow_log_det_is_the_autograd_jacobian_log_det(trained_like: LatentFlow) -> None:
    flow = trained_like
    x = _data(flow, 3, 3)
    _, ladj = flow(x)
    for i in range(x.shape[0]):
        jacobian = torch.autograd.functional.jacobian(lambda row: flow(row[None])[0][0], x[i])
        assert float(ladj[i]) == pytest.approx(float(torch.linalg.slogdet(jacobian)[1]), abs=1e-8)


def test_flow_rows_do_not_mix(trained_like: LatentFlow) -> None:
    """The matrix-normal likelihood needs a row-wise map: a batch's latents are its rows' latents."""
    flow = trained_like
    x = _data(flow, 6, 4)
    with torch.no_grad():
        z, ladj = flow(x)
        for i in range(x.shape[0]):
            z_i, ladj_i = flow(x[i : i + 1])
            torch.testing.assert_close(z_i[0], z[i], atol=1e-12, rtol=1e-12)
            torch.testing.assert_close(ladj_i[0], ladj[i], atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_flow_weights_come_from_its_seed_alone(name: str) -> None:
    """Same seed, same initial weights whatever the global random state; building a flow leaves
    the global random state as it was; another seed gives other weights."""
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = FLOWS[name](5)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(999)
    second, other = FLOWS[name](5), FLOWS[name](6)
    weights = [list(flow.state_dict().values()) for flow in (first, second, other)]
    assert all(torch.equal(a, b) for a, b in zip(weights[0], weights[1], strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(weights[0], weights[2], strict=True))
