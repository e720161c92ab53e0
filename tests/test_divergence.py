"""A fit that diverged never succeeds: non-finite batches are skipped and counted, a diverged
run stops with one line and writes nothing; kinships without relatedness and broken
eigendecomposition caches are reported in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import family_kinship, invoke, snapshot, write_table

from flowpheno.dependence import IIDCovariance
from flowpheno.errors import FlowphenoError, OptionError
from flowpheno.flows import affine_coupling_flow
from flowpheno.io.kinship import spectral_decomposition, write_npz
from flowpheno.pipeline import FitConfig
from flowpheno.train import EpochTrainer, TrainConfig, fit_iid
from flowpheno.train.schedules import _BestState

TINY = [
    "--epochs",
    "3",
    "--stages",
    "2",
    "--layers",
    "2",
    "--hidden",
    "16",
    "--device",
    "cpu",
    "--seed",
    "1",
    "--quiet",
]


def _cohort(tmp_path: Path, n: int = 200, kinship: np.ndarray | None = None) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    ids = [f"i{k}" for k in range(n)]
    matrix = family_kinship(n, rng) if kinship is None else kinship
    table = pd.DataFrame({"FID": "f", "IID": ids, "a": rng.gamma(2.0, size=n), "b": rng.normal(size=n)})
    write_npz(tmp_path / "kin.npz", matrix, np.array(ids))
    return write_table(tmp_path / "pheno.tsv", table), tmp_path / "kin.npz"


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize(
    ("lr", "code", "message"),
    [
        ("10", 1, "training diverged (best validation NLL"),
        # the held-out score is summed in float64: latents near 1e30 still score (~1e60 nats) and
        # the next epoch's batches are the first non-finite thing
        (
            "1e6",
            1,
            "training diverged at stage 1 epoch 2 (1 of 1 batches had a non-finite loss, latent or gradient): "
            "lower --lr (now 1e+06)",
        ),
        ("nan", 2, "--lr nan: must be a positive finite number"),
        ("inf", 2, "--lr inf: must be a positive finite number"),
    ],
)
def test_diverging_learning_rate_fails_and_writes_nothing(lr: str, code: int, message: str, tmp_path: Path) -> None:
    pheno, kinship = _cohort(tmp_path)
    before = snapshot(tmp_path)
    out = tmp_path / "run"
    result = invoke("fit", "--pheno", pheno, "--grm", kinship, "--out", out, "--lr", lr, *TINY)
    assert result.returncode == code, result
    errors = _error_lines(result.stderr)
    assert len(errors) == 1 and message in errors[0], result.stderr
    if code == 1:
        assert (
            f"lower --lr (now {float(lr):g}) or check the traits for extreme values; nothing was written" in errors[0]
        )
    assert "Traceback" not in result.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".run")]
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if ".eig-" not in k} == before  # only the eigendecomposition cache is new


@pytest.mark.slow
def test_healthy_fit_reports_zero_non_finite_batches(tmp_path: Path) -> None:
    pheno, kinship = _cohort(tmp_path)
    result = invoke("fit", "--pheno", pheno, "--grm", kinship, "--out", tmp_path / "run", *TINY)
    assert result.returncode == 0, result
    report = json.loads((tmp_path / "run" / "fit.json").read_text())
    assert report["non_finite_batches"] == 0
    assert [epoch["non_finite_batches"] for epoch in report["epochs"]] == [0] * 6
    assert all(math.isfinite(epoch["val_nll"]) for epoch in report["epochs"])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_best_state_refuses_non_finite_scores(value: float) -> None:
    flow = affine_coupling_flow(2, layers=2, hidden=8, seed=0)
    dependence = IIDCovariance(10)
    best = _BestState()
    best.offer(value, flow, dependence)
    assert best.value is None and best.state is None
    best.offer(3.5, flow, dependence)
    best.offer(value, flow, dependence)
    assert best.value == 3.5


def _poisoned(flow: torch.nn.Module, bad_calls: set[int], bad_row: torch.Tensor | None = None) -> torch.nn.Module:
    """Make the flow's forward return NaN latents on some training batches: the given calls
    (counted from 1 over forward calls with gradients on: the validation and push-forward
    passes run without), or every batch that holds ``bad_row``."""
    forward = flow.forward
    calls = [0]

    def poisoned(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, ladj = forward(x)
        if torch.is_grad_enabled():
            calls[0] += 1
            holds_row = bad_row is not None and bool((x == bad_row).all(dim=1).any())
            if calls[0] in bad_calls or holds_row:
                z = z * float("nan")
        return z, ladj

    flow.forward = poisoned  # type: ignore[method-assign]
    return flow


def _data(n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.gamma(2.0, size=n), rng.normal(size=n)])
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    tensor = torch.as_tensor(x, dtype=torch.float32)
    return tensor[:160], tensor[160:]


def _trained(
    bad_calls: set[int], check_every_batch: bool, bad_row: int | None = None
) -> tuple[EpochTrainer, dict[str, torch.Tensor]]:
    x_train, x_val = _data()
    torch.manual_seed(0)  # the conditioners' first layers draw from the global generator
    flow = affine_coupling_flow(2, layers=2, hidden=16, seed=0)
    flow.initialize(x_train)
    _poisoned(flow, bad_calls, None if bad_row is None else x_train[bad_row].clone())
    config = TrainConfig(epochs=3, stages=1, batch_size=40, lr=1e-2, seed=0)
    trainer = EpochTrainer(flow, IIDCovariance(160), x_train, x_val, config, None)
    trainer.check_every_batch = check_every_batch
    trainer.run(config.epochs, 1)
    return trainer, {k: v.clone() for k, v in flow.state_dict().items()}


def test_non_finite_batch_is_skipped_and_counted() -> None:
    trainer, state = _trained({2}, check_every_batch=True)  # 4 batches per epoch: batch 2 of epoch 1
    assert trainer.non_finite_batches == 1
    assert [epoch["non_finite_batches"] for epoch in trainer.epochs] == [1, 0, 0]
    assert trainer.diverged is None and trainer.diagnosis() is None and not trainer.stopped
    assert all(bool(torch.isfinite(v).all()) for v in state.values())
    assert all(math.isfinite(epoch["train_nll"]) and math.isfinite(epoch["val_nll"]) for epoch in trainer.epochs)
    # the skipped batch changed nothing: a run whose batch 2 is a no-op differs from a clean run
    clean, clean_state = _trained(set(), check_every_batch=True)
    assert clean.non_finite_batches == 0
    assert any(not torch.equal(state[k], clean_state[k]) for k in state)


def test_replayed_epoch_equals_per_batch_check() -> None:
    """Without the per-batch check (the GPU path), an epoch with a NaN batch is replayed from
    its start: the result is exactly that of the per-batch check."""
    checked, checked_state = _trained(set(), check_every_batch=True, bad_row=5)
    replayed, replayed_state = _trained(set(), check_every_batch=False, bad_row=5)
    assert (
        [e["non_finite_batches"] for e in checked.epochs]
        == [e["non_finite_batches"] for e in replayed.epochs]
        == [1, 1, 1]
    )
    assert replayed.diagnosis() is None and all(bool(torch.isfinite(v).all()) for v in replayed_state.values())
    for name, value in checked_state.items():
        assert torch.equal(value, replayed_state[name]), name
    assert [e["train_nll"] for e in checked.epochs] == [e["train_nll"] for e in replayed.epochs]


def test_non_finite_epoch_stops_training_as_diverged() -> None:
    trainer, _ = _trained({5, 6, 7}, check_every_batch=True)  # 3 of the 4 batches of epoch 2
    assert trainer.stopped and len(trainer.epochs) == 2
    assert trainer.diagnosis() == "at stage 1 epoch 2 (3 of 4 batches had a non-finite loss, latent or gradient)"


def test_no_finite_validation_score_is_divergence() -> None:
    x_train, x_val = _data()
    flow = affine_coupling_flow(2, layers=2, hidden=16, seed=0)
    x_val = x_val.clone()
    x_val[0, 0] = float("inf")
    outcome = fit_iid(flow, x_train, x_val, TrainConfig(epochs=2, stages=1, batch_size=40))
    assert outcome.best_val_nll is None
    assert outcome.diverged == "at stage 1 epoch 1 (validation NLL nan)"


def test_non_finite_output_of_a_complete_row_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flowpheno.model import PhenotypeModel

    pheno, _ = _cohort(tmp_path)
    gaussianize = PhenotypeModel.gaussianize

    def broken(self: PhenotypeModel, *args: object, **kwargs: object) -> np.ndarray:
        latent = gaussianize(self, *args, **kwargs)
        latent[17, 1] = np.nan
        return latent

    monkeypatch.setattr(PhenotypeModel, "gaussianize", broken)
    result = invoke("fit", "--pheno", pheno, "--mode", "iid", "--out", tmp_path / "run", *TINY)
    assert result.returncode == 1, result
    errors = _error_lines(result.stderr)
    assert len(errors) == 1 and "maps 1 of 200 complete individuals (first: IID i17) to non-finite values" in errors[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["identity", "scaled_identity", "diagonal"])
def test_kinship_without_relatedness_stops(kind: str, tmp_path: Path) -> None:
    n = 120
    matrix = {
        "identity": np.eye(n),
        "scaled_identity": 0.37 * np.eye(n),
        "diagonal": np.diag(np.linspace(0.9, 1.1, n)),
    }[kind]
    pheno, kinship = _cohort(tmp_path, n, matrix)
    result = invoke("fit", "--pheno", pheno, "--grm", kinship, "--out", tmp_path / "run", *TINY)
    assert result.returncode == 1, result
    errors = _error_lines(result.stderr)
    assert len(errors) == 1, result.stderr
    assert (
        f"{kinship}: the kinship of the 102 individuals used carries no relatedness (all off-diagonal entries are 0), "
        "so s2 is not identifiable; use --mode iid" in errors[0]
    )
    assert not (tmp_path / "run").exists()
    assert (
        invoke("fit", "--pheno", pheno, "--grm", kinship, "--out", tmp_path / "run", *TINY, "--mode", "iid").returncode
        == 0
    )


def test_all_zero_kinship_is_one_line_naming_the_file(tmp_path: Path) -> None:
    pheno, kinship = _cohort(tmp_path, 120, np.zeros((120, 120)))
    result = invoke("fit", "--pheno", pheno, "--grm", kinship, "--out", tmp_path / "run", *TINY)
    assert result.returncode == 1, result
    errors = _error_lines(result.stderr)
    assert errors == [
        f"error: {kinship}: kinship is all zeros; recompute it (e.g. flowpheno grm --bfile PREFIX) or check the file"
    ]
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_all_zero_kinship_of_the_individuals_used(tmp_path: Path) -> None:
    with pytest.raises(FlowphenoError, match=r"^kin\.npz: the kinship of the 80 individuals used is all zeros"):
        spectral_decomposition(np.zeros((80, 80)), "kin.npz")


@pytest.mark.parametrize("damage", ["truncated", "empty", "wrong_arrays"])
def test_broken_eigendecomposition_cache_is_named_discarded_and_recomputed(damage: str, tmp_path: Path) -> None:
    matrix = family_kinship(60, np.random.default_rng(2))
    fresh_values, fresh_vectors, hit = spectral_decomposition(matrix, str(tmp_path / "kin.npz"), tmp_path)
    assert not hit
    (cache,) = tmp_path.glob(".kin.npz.eig-60-*.npz")
    if damage == "truncated":
        cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    elif damage == "empty":
        cache.write_bytes(b"")
    else:
        np.savez(cache, eigenvalues=fresh_values[:10], eigenvectors=fresh_vectors)
    with pytest.warns(
        UserWarning, match=rf"^{cache}: unreadable eigendecomposition cache \(.+\); deleted it and recomputing$"
    ):
        values, vectors, hit = spectral_decomposition(matrix, str(tmp_path / "kin.npz"), tmp_path)
    assert not hit
    np.testing.assert_array_equal(values, fresh_values)
    np.testing.assert_array_equal(np.abs(vectors), np.abs(fresh_vectors))
    again_values, _, hit = spectral_decomposition(matrix, str(tmp_path / "kin.npz"), tmp_path)  # rewritten: a hit
    assert hit
    np.testing.assert_array_equal(again_values, fresh_values)


@pytest.mark.slow
def test_truncated_cache_in_a_fit_is_a_warning_not_a_traceback(tmp_path: Path) -> None:
    pheno, kinship = _cohort(tmp_path)
    assert invoke("fit", "--pheno", pheno, "--grm", kinship, "--out", tmp_path / "one", *TINY).returncode == 0
    (cache,) = tmp_path.glob(".kin.npz.eig-*.npz")
    cache.write_bytes(cache.read_bytes()[:100])
    result = invoke("fit", "--pheno", pheno, "--grm", kinship, "--out", tmp_path / "two", *TINY)
    assert result.returncode == 0, result
    assert f"warning: {cache}: unreadable eigendecomposition cache" in result.stderr
    assert (tmp_path / "one" / "gaussianized.tsv").read_text() == (tmp_path / "two" / "gaussianized.tsv").read_text()
    assert json.loads((tmp_path / "two" / "fit.json").read_text())["kinship"]["eigendecomposition_cached"] is False


def test_config_changed_after_construction_is_checked_at_fit_time(tmp_path: Path) -> None:
    from flowpheno.pipeline import fit_phenotypes

    pheno, _ = _cohort(tmp_path)
    config = FitConfig(mode="iid")
    config.train.lr = float("nan")
    with pytest.raises(OptionError, match=r"^TrainConfig\.lr: must be a positive finite number, got nan$"):
        fit_phenotypes(pheno, config=config, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
