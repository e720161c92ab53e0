"""Per-epoch cost of the kinship-aware objective against the iid flow (same flow, same data).

    python benchmarks/bench_overhead.py            # n = 10,000, d = 6, batch 256, CPU
    python benchmarks/bench_overhead.py --n 2000   # a quicker look

Writes benchmarks/results/overhead.json and overhead.md: median seconds per flow
epoch for ``--mode iid`` and for an alternating flow stage (mini-batch trace
estimator with the cached precision), their ratio (target <= 1.10), and the
once-per-run and once-per-stage costs: the eigendecomposition of the n x n kinship,
the dense precision built at the start of each stage, and the exact s2 update.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import typer

from flowpheno.bench.results import package_versions, script, write_results
from flowpheno.dependence import IIDCovariance, KinshipCovariance
from flowpheno.flows import affine_coupling_flow
from flowpheno.io.kinship import spectral_decomposition
from flowpheno.train import EpochTrainer, TrainConfig
from flowpheno.train.objective import push_forward

RESULTS = Path(__file__).resolve().parent / "results"


def family_kinship(n: int, rng: np.random.Generator) -> np.ndarray:
    """Families of 1-8 (relatedness 0.5) plus weak population structure: dense and PSD."""
    sizes = rng.integers(1, 9, size=n)
    labels = np.repeat(np.arange(n), sizes)[:n]
    kinship = 0.5 * (labels[:, None] == labels[None, :])
    populations = rng.integers(0, 3, size=n)
    kinship += 0.05 * (populations[:, None] == populations[None, :])
    np.fill_diagonal(kinship, 1.05)
    return kinship


def interleaved_epoch_seconds(
    models: dict[str, torch.nn.Module], x: torch.Tensor, epochs: int, config: TrainConfig
) -> dict[str, list[float]]:
    """Alternate one epoch of each method, so machine noise hits both alike.

    Each method trains its own copy of the same initial flow; the first epoch of each
    is a warm-up and is not timed.
    """
    trainers = {}
    for name, dependence in models.items():
        torch.manual_seed(0)
        flow = affine_coupling_flow(x.shape[1], layers=16, hidden=128)
        flow.initialize(x)
        trainers[name] = EpochTrainer(flow, dependence, x, None, config, None)
    for trainer in trainers.values():
        trainer.run(1, stage=0)
    for _ in range(epochs):
        for trainer in trainers.values():
            trainer.run(1, stage=1)
    return {name: [record["seconds"] for record in trainer.epochs[1:]] for name, trainer in trainers.items()}


def model_flow(d: int, x: torch.Tensor) -> torch.nn.Module:
    flow = affine_coupling_flow(d, layers=16, hidden=128)
    flow.initialize(x)
    return flow


def main(
    n: int = typer.Option(10_000, "--n", min=2, help="individuals"),
    d: int = typer.Option(6, "--d", min=1, help="traits"),
    batch_size: int = typer.Option(256, "--batch-size", min=2, help="rows per minibatch, at most --n"),
    epochs: int = typer.Option(8, "--epochs", min=1, help="timed epochs per method (after one warm-up epoch)"),
    out: Path = typer.Option(RESULTS, "--out", help="folder for overhead.json and overhead.md"),
) -> None:
    if batch_size > n:
        raise typer.BadParameter(f"{batch_size} is more than --n {n}", param_hint="'--batch-size'")

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    kinship = family_kinship(n, rng)
    x = torch.randn(n, d)

    started = time.perf_counter()
    eigenvalues, eigenvectors, _ = spectral_decomposition(kinship, "benchmark kinship")
    eig_seconds = time.perf_counter() - started
    model = KinshipCovariance(
        torch.as_tensor(eigenvalues, dtype=torch.float32), torch.as_tensor(eigenvectors, dtype=torch.float32), s2=0.3
    )
    started = time.perf_counter()
    model.precision_block(torch.arange(2))  # builds and caches the dense precision for this s2
    precision_seconds = time.perf_counter() - started

    config = TrainConfig(batch_size=batch_size, seed=0, patience=None)
    timings = interleaved_epoch_seconds({"iid": IIDCovariance(n), "kinship": model}, x, epochs, config)
    iid, kin = timings["iid"], timings["kinship"]
    started = time.perf_counter()
    model.fit_s2(push_forward(model_flow(d, x), x))
    s2_seconds = time.perf_counter() - started

    result = {
        "n": n,
        "d": d,
        "batch_size": batch_size,
        "flow": "affine coupling, 16 layers, 128-128 SiLU conditioners",
        "timed_epochs": epochs,
        "iid_epoch_seconds": iid,
        "kinship_epoch_seconds": kin,
        "iid_epoch_median": statistics.median(iid),
        "kinship_epoch_median": statistics.median(kin),
        "ratio_kinship_over_iid": statistics.median(kin) / statistics.median(iid),
        "target_ratio": 1.10,
        "eigendecomposition_seconds": eig_seconds,
        "precision_build_seconds_per_stage": precision_seconds,
        "s2_update_seconds_per_stage": s2_seconds,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch_threads": torch.get_num_threads()},
        "versions": package_versions(),
    }
    lines = [
        "# Overhead of the kinship-aware objective",
        "",
        f"`python benchmarks/bench_overhead.py --n {n}`: n = {n}, d = {d}, batch {batch_size}, "
        f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads), "
        f"median of {epochs} interleaved epochs per method after a warm-up.",
        "",
        "| what | seconds |",
        "|---|---|",
        f"| flow epoch, `--mode iid` | {result['iid_epoch_median']:.3f} |",
        f"| flow epoch, kinship stage (trace estimator) | {result['kinship_epoch_median']:.3f} |",
        f"| **ratio** (target <= 1.10) | **{result['ratio_kinship_over_iid']:.3f}** |",
        f"| eigendecomposition, once per kinship (cached on disk) | {eig_seconds:.1f} |",
        f"| dense precision, once per stage | {precision_seconds:.1f} |",
        f"| exact s2 update (push-forward, rotation, Brent), once per stage | {s2_seconds:.1f} |",
        "",
    ]
    write_results(out, {"overhead.json": result, "overhead.md": "\n".join(lines)})
    print("\n".join(lines))


if __name__ == "__main__":
    script(main, __doc__)
