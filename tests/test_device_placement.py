"""Device placement without a GPU: the training hot path run on PyTorch's ``meta`` device.

A ``meta`` tensor has a shape and a device but no data. Mixing it with a tensor created
without ``device=`` (which lands on the CPU) raises, and so does any host read of a value
(``.item()``, ``bool()``, ``int()``, ``.cpu()``, ``.tolist()``, ``nonzero()``). So a
mini-batch pass that runs on ``meta`` up to its one intended host read shows, on a CPU-only
machine, that on CUDA every tensor of the pass is created on the device and that no batch
waits for the device (``schedules.EpochTrainer._minibatch_pass``: one read per epoch).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

import pytest
import torch

from flowpheno.dependence import DependenceModel, EquicorrelatedBlocks, IIDCovariance, KinshipCovariance
from flowpheno.flows import LatentFlow, affine_coupling_flow
from flowpheno.flows.spline import spline_coupling_flow
from flowpheno.train import EpochTrainer, TrainConfig
from flowpheno.train.exact import exact_backward

META = torch.device("meta")
D = 3


def _kinship(n: int, learn: bool = False) -> KinshipCovariance:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n // 2, generator=generator, dtype=torch.float64)
    return KinshipCovariance.from_matrix(a @ a.T / a.shape[1], s2=0.4, learn_s2=learn).float()


def _factor(n: int) -> KinshipCovariance:
    generator = torch.Generator().manual_seed(0)
    return KinshipCovariance.from_factor(torch.randn(n, 12, generator=generator, dtype=torch.float64) / 12**0.5).float()


def _blocks(n: int) -> EquicorrelatedBlocks:
    ids = torch.arange(n) // 5
    return EquicorrelatedBlocks(ids, rho=torch.full((int(ids.max()) + 1,), 0.3), shared=False).float()


DEPENDENCE: dict[str, Callable[[int], DependenceModel]] = {
    "iid": lambda n: IIDCovariance(n),
    "kinship_dense": _kinship,
    # rank >= 256: on the CPU a cached dense precision (keyed on the value of s2, read per batch);
    # off the CPU (meta here) the U[idx] path, so that no batch reads s2 back to the host
    "kinship_dense_cached_precision": lambda n: _kinship(max(n, 300)),
    "kinship_learn_s2": lambda n: _kinship(n, learn=True),
    "kinship_low_rank": _factor,
    "blocks": _blocks,
}
FLOWS: dict[str, Callable[[], LatentFlow]] = {
    "affine_coupling": lambda: affine_coupling_flow(D, layers=3, hidden=8),
    "spline_coupling": lambda: spline_coupling_flow(D, layers=2, hidden=8),
}


def _on_meta(dependence: DependenceModel, flow: LatentFlow) -> tuple[DependenceModel, LatentFlow, torch.Tensor]:
    n = dependence.n
    x = torch.randn(n, D, generator=torch.Generator().manual_seed(1))
    flow.initialize(x)  # data-dependent ActNorm initialisation happens on the host, before training
    return dependence.to(META), flow.to(META), x.to(META)


def _first_host_read(action: Callable[[], object]) -> str:
    """Run ``action`` on meta tensors; return the flowpheno source line of the first host
    read (or device mix-up) it reaches, or "" if it finished."""
    try:
        action()
    except (RuntimeError, NotImplementedError) as error:
        frames = [
            f for f in traceback.extract_tb(error.__traceback__) if "/flowpheno/" in f.filename.replace("\\", "/")
        ]
        assert frames, f"raised outside flowpheno: {error}"
        return f"{frames[-1].filename.rsplit('/', 1)[-1]}: {frames[-1].line} ({error})"
    return ""


@pytest.mark.parametrize("flow_name", sorted(FLOWS))
@pytest.mark.parametrize("model_name", sorted(DEPENDENCE))
def test_minibatch_pass_stays_on_the_device_until_the_epoch_ends(model_name: str, flow_name: str) -> None:
    batching = {"blocks": ["uniform", "blocks", "stratified"]}.get(model_name, ["uniform"])
    for mode in batching:
        config = TrainConfig(epochs=1, batch_size=16, batching=mode)
        # Block-aware batches are dealt once per epoch, on the host, before the first batch
        # (EquicorrelatedBlocks.block_batches / stratified_batches): deal them from a host copy.
        host = DEPENDENCE[model_name](40)
        batches = EpochTrainer(FLOWS[flow_name](), host, torch.zeros(40, D), None, config, None)._batches(
            40, torch.device("cpu")
        )
        dependence, flow, x = _on_meta(host, FLOWS[flow_name]())
        trainer = EpochTrainer(flow, dependence, x, None, config, None)
        trainer._batches = lambda n, device, batches=batches: [idx.to(device) for idx in batches]  # type: ignore[method-assign]
        reached = _first_host_read(
            lambda trainer=trainer, x=x: trainer._minibatch_pass(x.shape[0], META, None, checked=False)
        )
        # the one read of the epoch: the count of non-finite batches, after the last batch
        assert reached.startswith("schedules.py: bad_count = int(bad)"), f"{mode}: {reached}"


@pytest.mark.parametrize("model_name", ["kinship_dense", "kinship_low_rank", "kinship_learn_s2"])
def test_exact_objective_runs_on_the_device(model_name: str) -> None:
    dependence, flow, x = _on_meta(DEPENDENCE[model_name](40), FLOWS["affine_coupling"]())
    reached = _first_host_read(lambda: exact_backward(flow, dependence, x, chunk_size=16))
    assert reached == ""
    grads = [p.grad for p in list(flow.parameters()) + list(dependence.parameters()) if p.requires_grad]
    assert grads and all(g is not None and g.device == META for g in grads)


@pytest.mark.parametrize("model_name", sorted(DEPENDENCE))
def test_dependence_model_outputs_are_on_the_input_device(model_name: str) -> None:
    dependence = DEPENDENCE[model_name](40).to(META)
    n = dependence.n
    z = torch.empty(n, D, device=META)
    idx = torch.arange(0, n, 3, device=META)
    outputs = {
        "log_det": dependence.log_det(),
        "quad_form": dependence.quad_form(z),
        "gaussian_nll": dependence.gaussian_nll(z),
        "minibatch_gaussian_nll": dependence.minibatch_gaussian_nll(z[idx], idx),
        "precision_times": dependence.precision_times(z),
        "precision_block": dependence.precision_block(idx),
    }
    assert {name: t.device for name, t in outputs.items()} == {name: META for name in outputs}


def test_coupling_flow_matches_zuko_and_keeps_its_weights() -> None:
    """The sync-free coupling computes zuko's transform: same outputs, same state dict keys."""
    from zuko.flows.coupling import GeneralCouplingTransform

    flow = affine_coupling_flow(4, layers=2, hidden=8, seed=3)
    torch.manual_seed(0)
    x = torch.randn(50, 4)
    for layer in flow.transform.transforms:
        layer_params = dict(layer.named_parameters())
        if not isinstance(layer, GeneralCouplingTransform) or not layer_params:
            continue
        for p in layer.parameters():
            torch.nn.init.normal_(p, std=0.3)
        reference = GeneralCouplingTransform(
            features=4, mask=layer.mask, hidden_features=(8, 8), activation=torch.nn.SiLU
        )
        assert reference.load_state_dict(layer.state_dict()).missing_keys == []
        y, ladj = layer().call_and_ladj(x)
        y_ref, ladj_ref = reference().call_and_ladj(x)
        assert torch.equal(y, y_ref) and torch.equal(ladj, ladj_ref)
        assert torch.equal(layer().inv(y), reference().inv(y_ref))


def test_glow_pass_stays_on_the_device_until_the_epoch_ends() -> None:
    """The images experiment's flow (Glow), with one equicorrelated block per individual."""
    from flowpheno.flows.glow import GlowFlow

    flow = GlowFlow((1, 8, 8), levels=2, steps=1, hidden=8, seed=0)
    x = torch.rand(24, 64, generator=torch.Generator().manual_seed(0))
    flow.initialize(x)
    dependence = EquicorrelatedBlocks(torch.arange(24) // 4, rho=0.3, shared=True).float()
    trainer = EpochTrainer(
        flow.to(META), dependence.to(META), x.to(META), None, TrainConfig(epochs=1, batch_size=8), None
    )
    reached = _first_host_read(lambda: trainer._minibatch_pass(24, META, None, checked=False))
    assert reached.startswith("schedules.py: bad_count = int(bad)"), reached
