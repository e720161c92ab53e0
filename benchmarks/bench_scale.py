"""Biobank scale: a rank-40 kinship from PCs, n = 10k .. 500k, no n x n matrix.

    python benchmarks/bench_scale.py                      # n = 10k, 50k, 100k, 500k + dense at 10k
    python benchmarks/bench_scale.py --sizes 5000 --dense-max 5000   # a quick look

For each n, synthetic 8-trait phenotypes are drawn from the model itself: latent
``Z = sqrt(s2) W A + sqrt(1 - s2) E`` with ``W`` the unit-length, row-centred PC
vectors (``K = W W^T``, the paper's UK Biobank kinship), then a fixed non-linear map
per trait. Each (n, method) runs in its own process so its peak resident memory
(``ru_maxrss``) is its own. Measured: wall time of the spectral step (thin SVD of
``W``; dense: eigendecomposition of ``W W^T``), seconds per flow epoch, seconds per
exact s2 stage (alternating), total fit time, peak memory and the recovered s2.
Writes benchmarks/results/scale.json and scale.md.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer

from flowpheno.bench.results import script

RESULTS = Path(__file__).resolve().parent / "results"
TRUE_S2 = 0.4
D = 8
RANK = 40
METHODS = ("alternating", "alternating_scale", "joint", "joint_scale", "joint_exact")
"""``alternating_scale``: ``alternating`` with the scale step (``--scale-step``: each trait's latent scale
profiled in the exact s2 step); ``joint_scale``: ``joint`` with the scale step (the kept state's s2 refitted
exactly with each trait's latent scale). ``alternating``, ``joint`` and ``joint_exact`` run without it
(``--no-scale-step``)."""


def simulate(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(W, X, Z)``: PC-correlation factor (n x 40), non-Gaussian traits (n x 8), true latent."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(200, RANK)) * 1.5  # 200 ancestry clusters
    pcs = centres[rng.integers(0, 200, size=n)] + rng.normal(size=(n, RANK))
    pcs -= pcs.mean(axis=1, keepdims=True)
    factor = pcs / np.linalg.norm(pcs, axis=1, keepdims=True)
    latent = np.sqrt(TRUE_S2) * factor @ rng.normal(size=(RANK, D)) + np.sqrt(1 - TRUE_S2) * rng.normal(size=(n, D))
    mixed = latent @ np.linalg.cholesky(0.5 * np.eye(D) + 0.5 * np.ones((D, D))).T  # correlated traits
    traits = np.column_stack(
        [
            np.exp(0.5 * mixed[:, 0]),
            mixed[:, 1] + 0.3 * mixed[:, 1] ** 3,
            np.sinh(mixed[:, 2]),
            np.log1p(np.exp(2 * mixed[:, 3])),
            mixed[:, 4],
            np.exp(0.3 * mixed[:, 5]),
            mixed[:, 6] ** 3 + mixed[:, 6],
            np.tanh(0.5 * mixed[:, 7]) + 0.1 * mixed[:, 7],
        ]
    )
    return factor, (traits - traits.mean(axis=0)) / traits.std(axis=0), latent


def train_rows(n: int) -> np.ndarray:
    """The training individuals (85%), the same in every process."""
    order = np.random.default_rng(1).permutation(n)
    return np.sort(order[int(0.15 * n) :])


def oracle_s2(n: int) -> dict[str, float]:
    """What the draw allows, from the true latent of the training rows:

    - ``oracle_s2_profiled``: the exact maximum-likelihood s2 with each trait's latent scale
      free (profiled). A perfect flow recovers the latent only up to each trait's affine map,
      so this is the s2 a perfect flow with an exact s2 step reaches: the target.
    - ``oracle_s2``: the same with the latent's simulated unit scale kept. The model has no
      free scale, and with rank 40 the realised scale of the relatedness part of each trait
      varies by chance (about sqrt(2 / 40)), so this can differ from the target by 0.04.

    Each has its own sampling error of about s2 * sqrt(2 / (r d)), roughly 0.03."""
    from flowpheno.dependence import KinshipCovariance

    factor, _, latent = simulate(n)
    rows = train_rows(n)
    model = KinshipCovariance.from_factor(torch.as_tensor(factor[rows], dtype=torch.float64))
    z = torch.as_tensor(latent[rows], dtype=torch.float64)
    unit = model.fit_s2(z)
    model.refit(z, profile_scale=True)
    return {"oracle_s2": unit, "oracle_s2_profiled": float(model.s2)}


def measure(n: int, method: str, dense: bool, config: dict[str, Any], queue: multiprocessing.Queue) -> None:
    """One fit in a fresh process; puts its timings, s2 and peak RSS on ``queue``."""
    from flowpheno.dependence import KinshipCovariance
    from flowpheno.flows import affine_coupling_flow
    from flowpheno.train import TrainConfig, fit_alternating, fit_joint

    torch.set_num_threads(config["threads"])
    factor, traits, _ = simulate(n)
    train = train_rows(n)
    val = np.setdiff1d(np.arange(n), train)
    x_train = torch.as_tensor(traits[train], dtype=torch.float32)
    x_val = torch.as_tensor(traits[val], dtype=torch.float32)

    started = time.perf_counter()
    w = torch.as_tensor(factor[train], dtype=torch.float64)
    if dense:
        model = KinshipCovariance.from_matrix(w @ w.T).float()
    else:
        model = KinshipCovariance.from_factor(w).float()
    spectral = time.perf_counter() - started
    del w

    train_config = TrainConfig(
        epochs=config["epochs"],
        stages=config["stages"],
        batch_size=config["batch_size"],
        lr=1e-3,
        seed=0,
        patience=None,
        objective="exact" if method == "joint_exact" else "minibatch",
        profile_scale=method.endswith("_scale"),
    )
    torch.manual_seed(0)
    flow = affine_coupling_flow(D, layers=config["layers"], hidden=config["hidden"], seed=0)
    started = time.perf_counter()
    if method.startswith("alternating"):
        outcome = fit_alternating(flow, model, x_train, x_val, train_config)
    else:
        outcome = fit_joint(flow, model, x_train, x_val, train_config)
    fit_seconds = time.perf_counter() - started
    epoch_seconds = [record["seconds"] for record in outcome.epochs]
    s2_seconds = [stage["s2_seconds"] for stage in outcome.stages if "s2_seconds" in stage]
    queue.put(
        {
            "n": n,
            "n_train": len(train),
            "path": "dense" if dense else "low-rank",
            "method": method,
            "rank": model.rank,
            "spectral_seconds": spectral,
            "epoch_seconds_median": statistics.median(epoch_seconds),
            "epochs": len(epoch_seconds),
            "s2_stage_seconds_median": statistics.median(s2_seconds) if s2_seconds else None,
            "fit_seconds": fit_seconds,
            "total_seconds": spectral + fit_seconds,
            "s2": outcome.dependence.describe()["s2"],
            "s2_error": abs(outcome.dependence.describe()["s2"] - TRUE_S2),
            "best_val_nll": outcome.best_val_nll,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # kB on Linux
        }
    )


def run(n: int, method: str, dense: bool, config: dict[str, Any]) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=measure, args=(n, method, dense, config, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def markdown(rows: list[dict[str, Any]], config: dict[str, Any], wall: float) -> str:
    lines = [
        "# Biobank scale: rank-40 kinship, d = 8",
        "",
        f"`python benchmarks/bench_scale.py {config['argv']}` on {config['machine']} ({config['threads']} torch "
        f"threads); total wall time {wall / 60:.1f} min (sum of fits, setup excluded when resumed).",
        f"Flow: affine coupling, {config['layers']} layers x {config['hidden']} hidden; batch {config['batch_size']}; "
        f"{config['stages']} stages x {config['epochs']} epochs; 15% of individuals held out for validation; "
        f"true s2 = {TRUE_S2}.",
        "",
        "'perfect-flow s2' is the exact maximum-likelihood s2 of the simulated latent of the training rows with each",
        "trait's scale free: what a flow that recovers the true inverse map (up to each trait's affine map, all a",
        "flow can know) reaches with an exact s2 step. 'unit-scale oracle' keeps the simulated unit scale instead;",
        "the model has no free scale, so it is not reachable when the draw's realised scale is off. Each has its own",
        "sampling error of about 0.03 (rank 40, d = 8). Held-out NLL: the best epoch's iid NLL of the 15% held-out",
        "individuals (nats per individual; the flow's fit, lower is better).",
        "",
        "| n | path | method | rank | spectral step (s) | s / epoch | us / epoch / row | s / s2 stage | whole fit "
        "(min) | peak RSS (GB) | held-out NLL | s2 | perfect-flow s2 | s2 - perfect-flow | unit-scale oracle |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        s2_stage = f"{row['s2_stage_seconds_median']:.2f}" if row["s2_stage_seconds_median"] is not None else "-"
        lines.append(
            f"| {row['n']:,} | {row['path']} | {row['method']} | {row['rank']} | {row['spectral_seconds']:.1f} | "
            f"{row['epoch_seconds_median']:.1f} | {1e6 * row['epoch_seconds_median'] / row['n_train']:.0f} | "
            f"{s2_stage} | {row['total_seconds'] / 60:.1f} | {row['peak_rss_gb']:.2f} | {row['best_val_nll']:.3f} | "
            f"{row['s2']:.3f} | {row['oracle_s2_profiled']:.3f} | {row['s2'] - row['oracle_s2_profiled']:+.3f} | "
            f"{row['oracle_s2']:.3f} |"
        )
    lines += [
        "",
        "`joint_exact` takes one optimiser step per epoch on the exact full-data objective (Woodbury, chunked",
        "two-pass gradient): its epoch costs about two forward passes and one backward pass over all rows, with no",
        "estimator variance; it needs more epochs than mini-batch training to fit the flow equally well.",
    ]
    return "\n".join(lines) + "\n"


def _sizes(text: str) -> str:
    """``--sizes``: comma-separated n, each at least 100 (85 training rows against rank 40)."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise typer.BadParameter("give at least one n")
    for item in items:
        if not item.isdigit() or int(item) < 100:
            raise typer.BadParameter(f"{item!r}: each n is a whole number of at least 100")
    return text


def _methods(text: str) -> str:
    """``--methods``, ``--dense-methods``: comma-separated, each one of :data:`METHODS`."""
    for item in [item.strip() for item in text.split(",") if item.strip()]:
        if item not in METHODS:
            raise typer.BadParameter(f"{item!r}: choose from {', '.join(METHODS)}")
    return text


def main(
    sizes: str = typer.Option(
        "10000,50000,100000,500000", "--sizes", callback=_sizes, help="comma-separated n (each >= 100)"
    ),
    methods: str = typer.Option(
        ",".join(METHODS), "--methods", callback=_methods, help=f"comma-separated, of {', '.join(METHODS)}"
    ),
    dense_max: int = typer.Option(10_000, "--dense-max", min=0, help="largest n for the dense path beside"),
    dense_methods: str = typer.Option(
        "alternating",
        "--dense-methods",
        callback=_methods,
        help="methods run on the dense path (each redoes the eigendecomposition)",
    ),
    epochs: int = typer.Option(3, "--epochs", min=1, help="epochs per stage"),
    stages: int = typer.Option(4, "--stages", min=1),
    batch_size: int = typer.Option(1024, "--batch-size", min=2),
    layers: int = typer.Option(8, "--layers", min=1),
    hidden: int = typer.Option(64, "--hidden", min=1),
    threads: int = typer.Option(os.cpu_count() or 1, "--threads", min=1),
    out: Path = typer.Option(RESULTS, "--out", help="folder for scale.json, scale.md and scale_rows.jsonl (resumed)"),
) -> None:
    config = {
        "epochs": epochs,
        "stages": stages,
        "batch_size": batch_size,
        "layers": layers,
        "hidden": hidden,
        "threads": threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "argv": " ".join(os.sys.argv[1:]),
    }
    low_rank_list = [m.strip() for m in methods.split(",") if m.strip()]
    dense_list = [m.strip() for m in dense_methods.split(",") if m.strip()]
    out.mkdir(parents=True, exist_ok=True)
    done_path = out / "scale_rows.jsonl"  # finished fits: a repeated command resumes
    rows = [json.loads(line) for line in done_path.read_text().splitlines()] if done_path.exists() else []
    done = {(row["n"], row["path"], row["method"]) for row in rows}
    started = time.perf_counter()
    for n in [int(s) for s in sizes.split(",")]:
        for dense in [False, True] if n <= dense_max else [False]:
            for method in dense_list if dense else low_rank_list:
                if (n, "dense" if dense else "low-rank", method) in done:
                    continue
                row = run(n, method, dense, config)
                rows.append(row)
                with done_path.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    # once per n, here rather than in the measured process (it would add to that fit's peak RSS)
    oracles = {n: oracle_s2(n) for n in sorted({row["n"] for row in rows if "oracle_s2_profiled" not in row})}
    for row in rows:
        row.update(oracles.get(row["n"], {}))
    wall = (
        time.perf_counter()
        - started
        + sum(row["total_seconds"] for row in rows if (row["n"], row["path"], row["method"]) in done)
    )
    from flowpheno.bench.results import package_versions, write_results

    write_results(
        out,
        {
            "scale.json": {"config": config, "versions": package_versions(), "wall_seconds": wall, "rows": rows},
            "scale.md": markdown(rows, config, wall),
        },
    )
    print(markdown(rows, config, wall))


if __name__ == "__main__":
    script(main, __doc__)
