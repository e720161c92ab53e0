"""Flows invert exactly and their log-determinants match autograd Jacobians."""

from __future__ import annotations

import pytest
import torch

from flowpheno.flows import affine_coupling_flow, build_flow, spline_coupling_flow

FLOWS = {
    "affine_d4": lambda: affine_coupling_flow(4, layers=4, hidden=16, seed=3),
    "affine_d1": lambda: affine_coupling_flow(1, layers=2, hidden=8),
    "spline_d2": lambda: spline_coupling_flow(2, layers=3, hidden=16, bins=8, seed=1),
}


def _trained_like(name: str) -> torch.nn.Module:
    """A flow with non-trivial weights (random, larger than at initialisation)."""
    torch.manual_seed(0)
    flow = FLOWS[name]().double()
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    x = torch.randn(64, flow.config["features"], dtype=torch.float64) * 2 + 1
    flow.initialize(x)
    return flow


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_inverse_round_trip(name: str) -> None:
    flow = _trained_like(name)
    x = torch.randn(200, flow.config["features"], dtype=torch.float64) * 2 + 1
    z, _ = flow(x)
    assert not torch.allclose(z, x)
    assert torch.allclose(flow.inverse(z), x, atol=1e-5)
    assert torch.allclose(flow(flow.inverse(z))[0], z, atol=1e-5)


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_log_det_matches_autograd_jacobian(name: str) -> None:
    flow = _trained_like(name)
    d = flow.config["features"]
    x = torch.randn(6, d, dtype=torch.float64) * 1.5
    _, ladj = flow(x)
    for i in range(x.shape[0]):
        jacobian = torch.autograd.functional.jacobian(lambda row: flow(row[None])[0][0], x[i])
        expected = torch.linalg.slogdet(jacobian.reshape(d, d))[1]
        assert float(ladj[i].detach()) == pytest.approx(float(expected), abs=1e-6)


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_rebuilt_from_config(name: str) -> None:
    flow = _trained_like(name)
    copy = build_flow(flow.config).double()
    copy.load_state_dict(flow.state_dict())
    x = torch.randn(10, flow.config["features"], dtype=torch.float64)
    assert torch.equal(copy(x)[0], flow(x)[0])


@pytest.mark.parametrize("name", ["affine_d4", "spline_d2"])
def test_rescale_latent_scales_z_and_log_det_exactly(name: str) -> None:
    flow = _trained_like(name)
    x = torch.randn(32, flow.config["features"], dtype=torch.float64)
    z, ladj = flow(x)
    factor = torch.linspace(0.4, 2.5, flow.config["features"], dtype=torch.float64)
    flow.rescale_latent(factor)
    z2, ladj2 = flow(x)
    assert torch.allclose(z2, z * factor, atol=1e-9)
    assert torch.allclose(ladj2, ladj + torch.log(factor).sum(), atol=1e-9)
    assert torch.allclose(flow.inverse(z2), x, atol=1e-6)
