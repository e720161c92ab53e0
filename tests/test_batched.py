"""Batched training of many small flows: members are independent and train as if alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowpheno.bench.shapes import iid_sample
from flowpheno.dependence import EquicorrelatedBlocks, IIDCovariance, KinshipCovariance
from flowpheno.flows import spline_coupling_flow
from flowpheno.flows.batched import BatchedSplineFlow
from flowpheno.train.batched import LRSchedule, MemberBlocks, MemberIID, MemberKinship, fit_members, members_iid_nll
from flowpheno.train.objective import iid_nll, minibatch_nll

N = 420


def _member(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return spline_coupling_flow(
        2, layers=3, hidden=16, bins=8, actnorm=False, tail_bound=8.0, coupling="alternating", seed=seed
    )


def _rows(seed: int, n: int) -> torch.Tensor:
    return torch.as_tensor(iid_sample("crescent", n, np.random.default_rng(seed)), dtype=torch.float32)


def _kinship(dtype: torch.dtype = torch.float32) -> KinshipCovariance:
    factor = torch.randn(N, N, generator=torch.Generator().manual_seed(3), dtype=dtype) / N**0.5
    return KinshipCovariance.from_matrix(factor @ factor.T)


def _layout_blocks() -> torch.Tensor:
    """One block of 60 rows (dealt over the batches by the stratified layout), then 60 of 6."""
    return torch.cat([torch.zeros(60, dtype=torch.long), 1 + torch.arange(N - 60) // 6])


def _covariance(kind: str, values: list[float], dtype: torch.dtype = torch.float32) -> object:
    block_ids = torch.arange(N) // 6  # 70 blocks: the per-block table is not a multiple of any SIMD width
    if kind in ("blocks_layout", "stratified"):
        rho = torch.tensor(values)[:, None] * torch.linspace(0.5, 1.0, 61)[None, :]  # (K, B): one per block
        return MemberBlocks(_layout_blocks(), rho, batching="blocks" if kind == "blocks_layout" else "stratified")
    if kind == "iid":
        return MemberIID(N)
    if kind == "kinship":
        kinship = _kinship(dtype)
        return MemberKinship(kinship.eigenvalues, kinship.eigenvectors, torch.tensor(values, dtype=dtype))
    return MemberBlocks(block_ids, torch.tensor(values), learn=kind == "joint")


@pytest.mark.parametrize("kind", ["iid", "kinship", "blocks", "joint", "blocks_layout", "stratified"])
def test_three_members_batched_train_exactly_as_one_alone(kind: str) -> None:
    """Member 1 of a 3-member batch and the same member trained alone end equal to 1e-6, the
    same epoch kept. Not to the bit on every CPU: where a member's slice meets the SIMD lanes
    decides the last bit of vectorised kernels, and that differs between CPUs (on AVX-512
    machines the kinship case differs in the last bit; on AVX2 ones all but ``joint`` were
    bit-identical)."""
    x, x_val = _rows(0, N), _rows(1, 200)
    lrs, decays, values = [1e-3, 3e-2, 1e-2], [1e-3, 1e-1, 1e-2], [0.1, 0.5, 0.9]
    settings = {"epochs": 3, "batch_size": 64, "seed": 5, "schedule": LRSchedule(0.9, "step", 4)}
    together = BatchedSplineFlow([_member(seed) for seed in (0, 1, 2)])
    covariance = _covariance(kind, values)
    outcome = fit_members(together, covariance, x, x_val, lrs, decays, **settings)
    alone = BatchedSplineFlow([_member(1)])
    covariance_alone = _covariance(kind, values[1:2])
    outcome_alone = fit_members(alone, covariance_alone, x, x_val, lrs[1:2], decays[1:2], **settings)
    for (name, batched), single in zip(together.named_parameters(), alone.parameters(), strict=True):
        assert torch.allclose(batched[1], single[0], atol=1e-6, rtol=0), name
    if kind == "joint":
        assert torch.allclose(covariance.logit_rho[1], covariance_alone.logit_rho[0], atol=1e-6, rtol=0)
    assert outcome.best_val_nll[1] == pytest.approx(outcome_alone.best_val_nll[0], abs=1e-6)
    assert outcome.best_epoch[1] == outcome_alone.best_epoch[0]
    # the members did train apart: other settings, other weights
    assert not torch.equal(together.layer0_weight2[0], together.layer0_weight2[1])


def test_batched_flow_equals_its_members_and_hands_them_back() -> None:
    flows = [_member(seed) for seed in (0, 1)]
    for flow in flows:
        with torch.no_grad():
            for parameter in flow.parameters():
                parameter.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(parameter.numel()))
    batched = BatchedSplineFlow(flows)
    x = 3 * torch.randn(300, 2)
    z, ladj = batched(x)
    for k, flow in enumerate(flows):
        z_k, ladj_k = flow(x)
        assert torch.allclose(z[k], z_k, atol=1e-6) and torch.allclose(ladj[k], ladj_k, atol=1e-5)
        assert torch.equal(batched.member(k)(x)[0], z_k)  # handed back: the member's own weights, exactly
    assert float(members_iid_nll(batched, x)[1]) == pytest.approx(iid_nll(flows[1], x), abs=1e-5)


def test_one_member_follows_torch_adamax_and_steplr() -> None:
    """Against the ordinary path (zuko flow, torch.optim.Adamax, StepLR): equal to 1e-6; not to
    the bit, because the first linear layer is a broadcast product, not addmm, and the Adamax
    moment is spelt out rather than torch's fused lerp."""
    x, x_val = _rows(0, N), _rows(1, 200)
    batched = BatchedSplineFlow([_member(1)])
    outcome = fit_members(
        batched,
        MemberIID(N),
        x,
        x_val,
        [1e-2],
        [1e-2],
        epochs=3,
        batch_size=64,
        seed=5,
        schedule=LRSchedule(0.9, "step", 4),
    )
    flow = _member(1)
    optimiser = torch.optim.Adamax(flow.parameters(), lr=1e-2, weight_decay=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimiser, step_size=4, gamma=0.9)
    generator, iid = torch.Generator().manual_seed(5), IIDCovariance(N)
    best, best_state = float("inf"), None
    for _ in range(3):
        for idx in torch.randperm(N, generator=generator).split(64):
            loss, _ = minibatch_nll(flow, iid, x[idx], idx)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            scheduler.step()
        val = iid_nll(flow, x_val)
        if val < best:
            best, best_state = val, {k: v.clone() for k, v in flow.state_dict().items()}
    flow.load_state_dict(best_state)
    for mine, theirs in zip(batched.member(0).parameters(), flow.parameters(), strict=True):
        assert torch.allclose(mine, theirs, atol=1e-6, rtol=0)
    assert outcome.best_val_nll[0] == pytest.approx(best, abs=1e-5)


@pytest.mark.parametrize("kind", ["kinship", "blocks", "joint"])
def test_member_gaussian_terms_equal_the_dependence_models(kind: str) -> None:
    z = torch.randn(3, 40, 2, dtype=torch.float64 if kind == "kinship" else torch.float32)
    idx = torch.randperm(N, generator=torch.Generator().manual_seed(0))[:40]
    values = [0.05, 0.4, 0.8]
    if kind == "joint":
        per_block = torch.rand(3, N // 6, generator=torch.Generator().manual_seed(1)) * 0.9
        batched = MemberBlocks(torch.arange(N) // 6, per_block, learn=True).minibatch_gaussian_nll(z, idx)
        expected = [
            EquicorrelatedBlocks(torch.arange(N) // 6, rho=per_block[k]).minibatch_gaussian_nll(z[k], idx)
            for k in range(3)
        ]
    elif kind == "blocks":
        batched = _covariance(kind, values).minibatch_gaussian_nll(z, idx)
        expected = [
            EquicorrelatedBlocks(torch.arange(N) // 6, rho=v, shared=True).minibatch_gaussian_nll(z[k], idx)
            for k, v in enumerate(values)
        ]
    else:
        batched = _covariance(kind, values, torch.float64).minibatch_gaussian_nll(z, idx)
        expected = [_kinship(torch.float64).with_s2(v).minibatch_gaussian_nll(z[k], idx) for k, v in enumerate(values)]
    tolerance = 1e-10 if kind == "kinship" else 1e-4
    assert torch.allclose(
        batched.detach().double(), torch.stack(expected).detach().double(), atol=tolerance, rtol=tolerance
    )


@pytest.mark.parametrize("batching", ["blocks", "stratified"])
def test_member_layout_losses_equal_a_lone_runs(batching: str) -> None:
    """Each member's batch loss on whole-block and stratified batches is the one a lone run
    of that layout takes (``layout_batch_nll``: the dependence model's exact or stratified
    Gaussian term minus the scaled log-det), for every batch of an epoch."""
    block_ids = _layout_blocks()
    rho = torch.rand(3, 61, generator=torch.Generator().manual_seed(2)) * 0.9
    covariance = MemberBlocks(block_ids, rho, batching=batching)
    batches = covariance.batches(64, torch.Generator().manual_seed(0))
    lone = EquicorrelatedBlocks(block_ids)
    assert sorted(torch.cat(batches).tolist()) == list(range(N))  # an epoch covers every row once
    assert [b.tolist() for b in batches] == [
        b.tolist() for b in lone.batches(batching, 64, torch.Generator().manual_seed(0))
    ]
    if batching == "stratified":  # the 60-row block is dealt: a share of it in every batch
        assert all(int((block_ids[idx] == 0).sum()) in (8, 9) for idx in batches)
    for idx in batches:
        z = torch.randn(3, len(idx), 2, dtype=torch.float32, generator=torch.Generator().manual_seed(len(idx)))
        ladj = torch.randn(3, len(idx), generator=torch.Generator().manual_seed(1))
        expected = []
        for k in range(3):
            model = EquicorrelatedBlocks(block_ids, rho=rho[k])
            gaussian = model.batch_gaussian_nll(z[k], idx, batching, len(batches))
            expected.append(gaussian - ladj[k].sum() * len(batches) / N)
        got = covariance.batch_loss(z, ladj, idx, len(batches))
        assert torch.allclose(got.double(), torch.stack(expected).double(), atol=1e-4, rtol=1e-5)


def test_member_exact_rho_step_is_each_members_own() -> None:
    """``MemberBlocks.fit_rho`` sets every member's per-block rho to the exact maximiser for
    its own latents; a block of one row and a member with non-finite latents keep theirs."""
    block_ids = torch.cat([torch.arange(N - 1) // 7, torch.tensor([10_000])])  # the last row: a block alone
    blocks = int(torch.unique(block_ids).numel())
    start = torch.full((3, blocks), 0.3)
    covariance = MemberBlocks(block_ids, start)
    z = torch.randn(3, N, 2, generator=torch.Generator().manual_seed(4))
    _, inverse = torch.unique(block_ids, return_inverse=True)
    shared = torch.randn(blocks, 2, generator=torch.Generator().manual_seed(5))
    z[1] = z[1] + shared[inverse]  # member 1: latents that share a block offset, so rho well above 0
    z[2, 0, 0] = float("nan")
    covariance.fit_rho(z)
    for k in range(2):
        expected = EquicorrelatedBlocks(block_ids, rho=0.3).fit_rho(z[k])
        assert torch.allclose(covariance.rho[k, :-1], expected[:-1], atol=1e-6)
    assert not torch.allclose(covariance.rho[0], covariance.rho[1])
    assert torch.allclose(covariance.rho[:, -1], torch.tensor(0.3))  # the one-row block
    assert torch.allclose(covariance.rho[2], torch.tensor(0.3))  # not finite: unchanged


def test_each_member_stops_and_keeps_its_own_best_state() -> None:
    x, x_val = _rows(0, N), _rows(1, 200)
    batched = BatchedSplineFlow([_member(0), _member(0)])
    # member 0 takes steps below float32 resolution: no epoch improves on its first, it stops after 2 more
    outcome = fit_members(
        batched, MemberIID(N), x, x_val, [1e-30, 1e-2], [0.0, 0.0], epochs=6, batch_size=100, patience=2
    )
    assert outcome.epochs_trained == [3, 6] and outcome.best_epoch[0] == 1
    stopped = [record["val_nll"][0] for record in outcome.history[2:]]
    assert stopped == [stopped[0]] * 4  # no step once stopped; the other member went on
    assert len({record["val_nll"][1] for record in outcome.history}) == 6
    kept = members_iid_nll(batched, x_val)  # the restored states score their recorded best
    assert float(kept[0]) == outcome.best_val_nll[0] == outcome.history[0]["val_nll"][0]
    assert float(kept[1]) == outcome.best_val_nll[1] == min(record["val_nll"][1] for record in outcome.history)
    assert outcome.best_val_nll[1] < outcome.best_val_nll[0]
