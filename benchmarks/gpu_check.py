"""One GPU check: CUDA against the CPU on the same fits, the dependence overhead on the GPU,
the exact objective at biobank scale, the images experiment, and host-device syncs.

    python benchmarks/gpu_check.py                  # a CUDA GPU: about 6 min on an H200-class GPU
    python benchmarks/gpu_check.py --cpu-fallback   # no GPU: the same steps on the CPU at small sizes

Needs flowpheno installed with a CUDA build of torch (README, "GPU") and the repository's
`examples/`. Writes benchmarks/results/gpu.{json,md} (``--cpu-fallback``:
gpu_cpu_fallback.{json,md}); the JSON is rewritten after every section, so a run cut short
keeps what it measured. Sections:

1. ``make example``'s fit (`flowpheno grm` + `flowpheno fit --seed 1`) with ``--device cuda``
   and ``--device cpu``: s2 per stage and the Gaussianized traits, max |difference|.
2. Seconds per flow epoch, iid against kinship (trace estimator), interleaved epochs, at
   n = 10,000 (dense kinship) and n = 500,000 (rank-40 factor), on CUDA and on the CPU:
   the dependence overhead ratio per device and the GPU/CPU speed ratio.
3. ``--objective exact`` at n = 500,000 (rank 40) on CUDA: seconds per epoch and peak GPU
   memory (``torch.cuda.max_memory_allocated``).
4. ``flowpheno bench images --quick --device cuda``: wall time and test NLL.
5. Host-device synchronisations per epoch (``torch.cuda.set_sync_debug_mode``), with the
   flowpheno line that caused each. (On the CPU, tests/test_device_placement.py runs the
   same pass on PyTorch's meta device, where any host read raises.)
6. Where a mini-batch step's time goes (``torch.profiler``): kernel launches per batch, device
   busy time, the operators with the most CPU and device time.
7. The kinship step's milliseconds per batch at batch sizes 1,024 to 16,384, GPU against CPU.

``--only A,B`` runs those sections and keeps the others' numbers from the ``gpu.json``
already in ``--out`` (the report names the earlier commands).
"""

from __future__ import annotations

import collections
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import typer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_overhead import family_kinship  # noqa: E402  (the same dense kinship as overhead.md)

from flowpheno.bench.results import command_line, package_versions, script, write_results  # noqa: E402
from flowpheno.errors import FlowphenoError  # noqa: E402

D = 6
RANK = 40

SIZES = {  # (GPU run, CPU fallback)
    "dense_n": (10_000, 1_500),
    "low_rank_n": (500_000, 20_000),
    "cpu_low_rank_n": (20_000, 20_000),  # CPU side of the low-rank comparison (a step costs the same at any n)
    "timed_epochs": (3, 1),
    "batch_sizes": ((1024, 4096, 16384), (256, 1024)),
    "example_fit": ([], ["--epochs", "4", "--stages", "2"]),
}


def flowpheno_command() -> list[str]:
    script = Path(sys.executable).parent / "flowpheno"
    return [str(script)] if script.exists() else [sys.executable, "-m", "flowpheno.cli"]


def run(args: list[str], log: Path) -> float:
    """Run a flowpheno command; raise with the tail of its output if it fails."""
    started = time.perf_counter()
    result = subprocess.run(flowpheno_command() + args, capture_output=True, text=True)
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"flowpheno {' '.join(args[:2])} failed: {(result.stdout + result.stderr)[-800:]}")
    return time.perf_counter() - started


# 1 ------------------------------------------------------------------------------------------
def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation over the rows where both are present (a trait may be missing)."""
    both = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[both], b[both])[0, 1])


def example_fit(devices: tuple[str, str], extra: list[str], work: Path) -> dict[str, Any]:
    kinship = work / "kinship.npz"
    run(["grm", "--bfile", str(ROOT / "examples" / "cohort"), "--out", str(kinship)], work / "grm.log")
    runs = {}
    for i, device in enumerate(devices):
        out = work / f"run_{i}_{device}"
        seconds = run(
            [
                "fit",
                "--pheno",
                str(ROOT / "examples" / "pheno.tsv"),
                "--covar",
                str(ROOT / "examples" / "covar.tsv"),
                "--grm",
                str(kinship),
                "--out",
                str(out),
                "--seed",
                "1",
                "--device",
                device,
                *extra,
            ],
            work / f"fit_{i}.log",
        )
        fit = json.loads((out / "fit.json").read_text())
        runs[f"{i}_{device}"] = {
            "seconds": seconds,
            "s2_per_stage": [stage.get("s2") for stage in fit["stages"]],
            "best_validation_nll": fit["best_validation_nll"],
            "latent": pd.read_csv(out / "gaussianized.tsv", sep="\t").iloc[:, 2:].to_numpy(),
        }
    (a, b) = runs.values()
    # strict: stopping at another stage on one device is a difference, not a shorter comparison
    s2_diff = max(abs(x - y) for x, y in zip(a["s2_per_stage"], b["s2_per_stage"], strict=True))
    return {
        "devices": list(devices),
        "extra_options": extra,
        "seconds": {key: value["seconds"] for key, value in runs.items()},
        "s2_per_stage": {key: value["s2_per_stage"] for key, value in runs.items()},
        "best_validation_nll": {key: value["best_validation_nll"] for key, value in runs.items()},
        "max_abs_s2_difference": s2_diff,
        "max_abs_latent_difference": float(np.nanmax(np.abs(a["latent"] - b["latent"]))),
        "latent_correlation_min": min(
            _correlation(a["latent"][:, j], b["latent"][:, j]) for j in range(a["latent"].shape[1])
        ),
    }


# 2, 3 ---------------------------------------------------------------------------------------
def kinship_models(n: int, path: str, device: str) -> tuple[Any, Any]:
    """(iid, kinship) dependence models for ``n`` individuals on ``device``; eigendecomposition
    or thin SVD in float64 on the device (not timed: flowpheno caches it on disk)."""
    from flowpheno.dependence import IIDCovariance, KinshipCovariance

    rng = np.random.default_rng(0)
    if path == "dense":
        kinship = torch.as_tensor(family_kinship(n, rng), dtype=torch.float64, device=device)
        model = KinshipCovariance.from_matrix(kinship, s2=0.3)
        del kinship
    else:
        pcs = torch.as_tensor(rng.normal(size=(n, RANK)), dtype=torch.float64, device=device)
        pcs -= pcs.mean(dim=1, keepdim=True)
        model = KinshipCovariance.from_factor(pcs / pcs.norm(dim=1, keepdim=True), s2=0.3)
        del pcs
    return IIDCovariance(n).to(device), model.float().to(device)


def make_trainers(
    models: dict[str, Any], n: int, device: str, objective: str = "minibatch", batch_size: int = 1024
) -> dict[str, Any]:
    """One trainer per dependence model: the same flow start (16 x 128 affine coupling), the same
    ``n`` rows of standard-normal data on ``device``."""
    from flowpheno.flows import affine_coupling_flow
    from flowpheno.train import EpochTrainer, TrainConfig

    x = torch.randn(n, D, generator=torch.Generator().manual_seed(0)).to(device)
    config = TrainConfig(batch_size=batch_size, seed=0, objective=objective, patience=None)
    trainers = {}
    for name, dependence in models.items():
        flow = affine_coupling_flow(D, layers=16, hidden=128, seed=0)
        flow.initialize(x.cpu())  # data-dependent initialisation on the CPU, as flowpheno's fit does
        trainers[name] = EpochTrainer(flow.to(device), dependence, x, None, config, None)
    return trainers


def epoch_seconds(
    models: dict[str, Any],
    n: int,
    device: str,
    epochs: int,
    warmup: int,
    objective: str = "minibatch",
    batch_size: int = 1024,
) -> dict[str, list[float]]:
    """Interleaved epochs of each model (one flow copy each, same start); warm-up epochs untimed."""
    trainers = make_trainers(models, n, device, objective, batch_size)
    for _ in range(warmup):
        for trainer in trainers.values():
            trainer.run(1, stage=0)
    for _ in range(epochs):
        for trainer in trainers.values():
            trainer.run(1, stage=1)
    return {name: [record["seconds"] for record in trainer.epochs[warmup:]] for name, trainer in trainers.items()}


def overhead(devices: list[str], sizes: dict[str, Any]) -> dict[str, Any]:
    """Interleaved iid/kinship epochs per (path, device). The dense models are built once on the
    first device and copied to the others (one eigendecomposition); the CPU side of the low-rank
    path runs at ``cpu_low_rank_n`` rows, since an epoch of 500,000 rows takes minutes there and
    a mini-batch step's cost does not depend on n. Speed ratios are therefore per batch."""
    rows = []
    for path in ("dense", "low_rank"):
        built: tuple[Any, Any] | None = None
        for device in devices:
            n = sizes["dense_n"] if path == "dense" else sizes["low_rank_n"]
            if path == "low_rank" and device == "cpu":
                n = min(n, sizes["cpu_low_rank_n"])
            if path == "dense" and built is not None:
                iid, kinship = (model.to(device) for model in built)
            else:
                iid, kinship = kinship_models(n, path, device)
                built = (iid, kinship) if path == "dense" else None
            timings = epoch_seconds({"iid": iid, "kinship": kinship}, n, device, epochs=sizes["timed_epochs"], warmup=1)
            medians = {name: statistics.median(values) for name, values in timings.items()}
            batches = -(-n // 1024)
            rows.append(
                {
                    "path": path,
                    "n": n,
                    "device": device,
                    "batches_per_epoch": batches,
                    "epoch_seconds": timings,
                    "iid_median": medians["iid"],
                    "kinship_median": medians["kinship"],
                    "iid_ms_per_batch": 1000 * medians["iid"] / batches,
                    "kinship_ms_per_batch": 1000 * medians["kinship"] / batches,
                    "overhead_ratio": medians["kinship"] / medians["iid"],
                }
            )
            del iid, kinship
        del built
        if any(device.startswith("cuda") for device in devices):
            torch.cuda.empty_cache()
    for row in rows:
        cpu = [r for r in rows if r["path"] == row["path"] and r["device"] == "cpu"]
        if row["device"] != "cpu" and cpu:
            row["speedup_over_cpu_per_batch"] = {
                name: cpu[0][f"{name}_ms_per_batch"] / row[f"{name}_ms_per_batch"] for name in ("iid", "kinship")
            }
    return {
        "rows": rows,
        "batch_size": 1024,
        "flow": "affine coupling, 16 layers, 128-128 SiLU",
        "d": D,
        "cpu_threads": torch.get_num_threads(),
    }


def exact_objective(device: str, n: int) -> dict[str, Any]:
    _, kinship = kinship_models(n, "low_rank", device)
    kinship.logit_s2.requires_grad_(True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    timings = epoch_seconds({"kinship": kinship}, n, device, epochs=2, warmup=1, objective="exact")["kinship"]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return {
        "n": n,
        "rank": RANK,
        "device": device,
        "epoch_seconds": timings,
        "epoch_median": statistics.median(timings),
        "peak_gpu_memory_gb": peak,
    }


# 4 ------------------------------------------------------------------------------------------
def images(device: str, work: Path) -> dict[str, Any]:
    out = work / "images"
    seconds = run(["bench", "images", "--quick", "--device", device, "--out", str(out)], work / "images.log")
    result = json.loads((out / "results.json").read_text())
    return {
        "device": result.get("device", device),
        "wall_seconds": seconds,
        "test_nll": {run_["method"]: run_["test_nll"] for run_ in result["runs"]},
    }


# 5 ------------------------------------------------------------------------------------------
OUTSIDE = "outside flowpheno's code (torch itself, or this script)"


def _site(site: str) -> str:
    """A sync site for the report (runs before the OUTSIDE label named the script wrapper)."""
    return OUTSIDE if site.startswith("results.py:") else site


def _op(name: str) -> str:
    """An operator or kernel name, cut to fit a table cell."""
    return name if len(name) <= 70 else name[:67] + "..."


def host_syncs(device: str, n: int) -> dict[str, Any]:
    """Synchronising CUDA calls during one kinship epoch and one iid epoch (after a warm-up
    epoch; building the trainer is not counted), by the innermost flowpheno line."""
    if not device.startswith("cuda"):
        return {"skipped": "CPU: see tests/test_device_placement.py (the same pass on the meta device)"}
    iid, kinship = kinship_models(n, "dense", device)
    sites: collections.Counter[str] = collections.Counter()

    def record(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        ours = [f for f in traceback.extract_stack() if "/flowpheno/" in f.filename and "/bench/" not in f.filename]
        sites[f"{Path(ours[-1].filename).name}:{ours[-1].lineno} {ours[-1].line}" if ours else OUTSIDE] += 1

    counts = {}
    for name, model in (("iid", iid), ("kinship", kinship)):
        trainer = make_trainers({name: model}, n, device)[name]
        trainer.run(1, stage=0)  # compile kernels, build caches
        torch.cuda.synchronize()
        sites.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record  # restored by catch_warnings
            torch.cuda.set_sync_debug_mode("warn")
            try:
                trainer.run(1, stage=1)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts[name] = {"syncs": sum(sites.values()), "batches": -(-n // 1024), "sites": dict(sites.most_common())}
    return {
        "n": n,
        "path": "dense",
        "per_epoch": counts,
        "note": "one epoch after a warm-up epoch: its batches, the epoch-end reads and the epoch record",
    }


def batch_profile(device: str, n: int) -> dict[str, Any]:
    """Where a mini-batch step's time goes on ``device`` (torch.profiler over one kinship epoch,
    dense path): kernel launches per batch and the operators with the most CPU and device time."""
    from torch.profiler import ProfilerActivity, profile

    _, kinship = kinship_models(n, "dense", device)
    trainer = make_trainers({"kinship": kinship}, n, device)["kinship"]
    trainer.run(1, stage=0)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        trainer.run(1, stage=1)
    batches = -(-n // 1024)
    events = prof.key_averages()
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    device_us = sum(getattr(e, "self_device_time_total", 0) or 0 for e in events)

    def top(attribute: str) -> list[dict[str, Any]]:
        ranked = sorted(events, key=lambda e: getattr(e, attribute, 0) or 0, reverse=True)[:12]
        return [
            {"op": e.key, "calls": e.count, "ms_per_batch": (getattr(e, attribute, 0) or 0) / 1000 / batches}
            for e in ranked
        ]

    return {
        "n": n,
        "batches": batches,
        "epoch_seconds": trainer.epochs[-1]["seconds"],
        "ms_per_batch": 1000 * trainer.epochs[-1]["seconds"] / batches,
        "kernel_launches_per_batch": launches / batches,
        "device_busy_ms_per_batch": device_us / 1000 / batches,
        "top_self_cpu": top("self_cpu_time_total"),
        "top_self_device": top("self_device_time_total") if device.startswith("cuda") else [],
    }


def batch_sizes(devices: list[str], sizes: dict[str, Any]) -> dict[str, Any]:
    """Milliseconds per batch and rows per second of the kinship (low-rank) model's mini-batch
    step at several batch sizes, each device: 8 batches per epoch, one warm-up epoch, then
    ``timed_epochs``. A GPU step is launch-bound at the default batch (section 6), so its cost
    barely grows with the batch while the CPU's grows with it."""
    rows = []
    for batch_size in sizes["batch_sizes"]:
        for device in devices:
            n = 8 * batch_size
            _, kinship = kinship_models(n, "low_rank", device)
            timings = epoch_seconds({"kinship": kinship}, n, device, sizes["timed_epochs"], 1, batch_size=batch_size)
            median = statistics.median(timings["kinship"])
            rows.append(
                {
                    "batch_size": batch_size,
                    "device": device,
                    "n": n,
                    "epoch_seconds": timings["kinship"],
                    "ms_per_batch": 1000 * median / 8,
                    "rows_per_second": n / median,
                }
            )
    for row in rows:
        cpu = [r for r in rows if r["batch_size"] == row["batch_size"] and r["device"] == "cpu"]
        if row["device"] != "cpu" and cpu:
            row["speedup_over_cpu"] = cpu[0]["ms_per_batch"] / row["ms_per_batch"]
    return {"rows": rows, "cpu_threads": torch.get_num_threads(), "path": "low_rank", "rank": RANK}


# --------------------------------------------------------------------------------------------
def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# GPU check: {result['device_name']}",
        "",
        f"`{result['command']}`; {result['machine']}; torch {result['versions'].get('torch')}; "
        f"wall time {result.get('wall_seconds', 0) / 60:.1f} min"
        + (" (this run)." if result.get("earlier_commands") else "."),
        "",
    ]
    if result.get("earlier_commands"):
        lines += [
            "Sections not named in `--only` come from earlier runs on the same kind of machine: "
            + "; ".join(f"`{command}`" for command in result["earlier_commands"]),
            "",
        ]
    fit = result.get("example_fit")
    if isinstance(fit, dict) and "error" not in fit:
        a, b = fit["devices"]
        keys = list(fit["seconds"])  # "0_cuda", "1_cpu": run order and device
        head = " | ".join(f"{key.split('_', 1)[1]} (run {int(key.split('_', 1)[0]) + 1})" for key in keys)
        lines += ["## 1. `make example`'s fit, same seed", "", f"| | {head} |", "|---|---|---|"]
        lines.append(f"| wall time (s) | {fit['seconds'][keys[0]]:.1f} | {fit['seconds'][keys[1]]:.1f} |")
        lines.append(
            "| s2 per stage | " + " | ".join(", ".join(f"{v:.4f}" for v in fit["s2_per_stage"][k]) for k in keys) + " |"
        )
        lines.append(
            "| best validation NLL | " + " | ".join(f"{fit['best_validation_nll'][k]:.4f}" for k in keys) + " |"
        )
        lines += [
            "",
            f"max |s2 difference| {fit['max_abs_s2_difference']:.2e}; max |Gaussianized trait difference| "
            f"{fit['max_abs_latent_difference']:.2e}; smallest per-trait correlation "
            f"{fit['latent_correlation_min']:.5f}.",
            "",
        ]
    over = result.get("overhead")
    if isinstance(over, dict) and "error" not in over:
        lines += [
            "## 2. Seconds per flow epoch: iid vs kinship (batch 1024, d = 6, 16 x 128 affine coupling)",
            "",
            "| kinship | n | device | iid s/epoch | kinship s/epoch | ms per batch (iid, kinship) | kinship / iid "
            "(target <= 1.10) | CPU / this device, per batch (iid, kinship) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in over["rows"]:
            speed = row.get("speedup_over_cpu_per_batch")
            speed_text = f"{speed['iid']:.1f}x, {speed['kinship']:.1f}x" if speed else "-"
            lines.append(
                f"| {row['path']} | {row['n']:,} | {row['device']} | {row['iid_median']:.3f} | "
                f"{row['kinship_median']:.3f} | {row['iid_ms_per_batch']:.1f}, {row['kinship_ms_per_batch']:.1f} | "
                f"{row['overhead_ratio']:.3f} | {speed_text} |"
            )
        lines += ["", f"CPU rows use {over['cpu_threads']} torch threads."]
        if any(row["device"] != "cpu" for row in over["rows"]):
            lines[-1] += (
                " A low-rank CPU row has fewer rows than the GPU row (an epoch of 500,000 rows takes minutes on "
                "a CPU; a step's cost does not grow with n), so the speed ratio compares milliseconds per batch."
            )
        lines.append("")
    exact = result.get("exact_objective")
    if isinstance(exact, dict) and "error" not in exact:
        peak = f"{exact['peak_gpu_memory_gb']:.2f} GB" if exact["peak_gpu_memory_gb"] is not None else "n/a (CPU)"
        lines += [
            "## 3. Exact objective",
            "",
            f"n = {exact['n']:,}, rank {exact['rank']}, {exact['device']}: "
            f"{exact['epoch_median']:.2f} s per epoch (one full-data step), peak GPU memory {peak}.",
            "",
        ]
    img = result.get("images")
    if isinstance(img, dict) and "error" not in img:
        nll = ", ".join(f"{k} {v:.3f}" for k, v in img["test_nll"].items())
        lines += [
            "## 4. `flowpheno bench images --quick`",
            "",
            f"{img['device']}: {img['wall_seconds']:.1f} s; test NLL {nll}.",
            "",
        ]
    syncs = result.get("host_syncs")
    if isinstance(syncs, dict) and "error" not in syncs:
        lines += ["## 5. Host-device synchronisations per epoch", ""]
        if "skipped" in syncs:
            lines += [syncs["skipped"], ""]
        else:
            for name, count in syncs["per_epoch"].items():
                lines.append(f"- {name}: {count['syncs']} in an epoch of {count['batches']} batches")
                lines += [f"  - {times} x `{_site(site)}`" for site, times in count["sites"].items()]
            lines += ["", syncs["note"], ""]
    prof = result.get("batch_profile")
    if isinstance(prof, dict) and "error" not in prof:
        lines += [
            "## 6. Where a mini-batch step's time goes (kinship, dense path, torch.profiler)",
            "",
            f"n = {prof['n']:,} ({prof['batches']} batches of at most 1,024 rows): "
            f"{prof['ms_per_batch']:.1f} ms per batch under the profiler (which slows the host side), "
            + (
                f"{prof['kernel_launches_per_batch']:.0f} kernel launches per batch, device busy "
                f"{prof['device_busy_ms_per_batch']:.1f} ms per batch."
                if prof["top_self_device"]
                else "kernel launches and device time n/a (CPU)."
            ),
            "",
            "| operator (self CPU time) | calls per epoch | ms per batch |",
            "|---|---|---|",
        ]
        lines += [
            f"| `{_op(row['op'])}` | {row['calls']} | {row['ms_per_batch']:.2f} |" for row in prof["top_self_cpu"]
        ]
        if prof["top_self_device"]:
            lines += ["", "| operator (self device time) | calls per epoch | ms per batch |", "|---|---|---|"]
            lines += [
                f"| `{_op(row['op'])}` | {row['calls']} | {row['ms_per_batch']:.3f} |"
                for row in prof["top_self_device"]
            ]
        lines.append("")
    sweep = result.get("batch_sizes")
    if isinstance(sweep, dict) and "error" not in sweep:
        lines += [
            "## 7. Batch size: the kinship (rank-40) step per device",
            "",
            "| batch size | device | ms per batch | rows per second | CPU / this device |",
            "|---|---|---|---|---|",
        ]
        for row in sweep["rows"]:
            speed = f"{row['speedup_over_cpu']:.1f}x" if "speedup_over_cpu" in row else "-"
            lines.append(
                f"| {row['batch_size']:,} | {row['device']} | {row['ms_per_batch']:.1f} | "
                f"{row['rows_per_second']:,.0f} | {speed} |"
            )
        lines += ["", f"8 batches per epoch; CPU rows use {sweep['cpu_threads']} torch threads.", ""]
    failed = [key for key, value in result.items() if isinstance(value, dict) and "error" in value]
    for key in failed:
        lines += [f"**{key} failed**: `{result[key]['error'][:300]}`", ""]
    return "\n".join(lines)


SECTIONS = ("example_fit", "overhead", "exact_objective", "images", "host_syncs", "batch_profile", "batch_sizes")


def _sections(text: str) -> str:
    """``--only``: comma-separated, each one of :data:`SECTIONS`, at least one."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise typer.BadParameter(f"give at least one of {', '.join(SECTIONS)}")
    for item in items:
        if item not in SECTIONS:
            raise typer.BadParameter(f"{item!r}: choose from {', '.join(SECTIONS)}")
        if items.count(item) > 1:
            raise typer.BadParameter(f"{item!r} is named twice")
    return text


def main(
    cpu_fallback: bool = typer.Option(False, "--cpu-fallback", help="no GPU: run every step on the CPU at small sizes"),
    out: Path = typer.Option(RESULTS, "--out", help="folder for gpu.json and gpu.md (gpu_cpu_fallback.*)"),
    only: str = typer.Option(
        ",".join(SECTIONS), "--only", callback=_sections, help=f"comma-separated, of {', '.join(SECTIONS)}"
    ),
) -> None:
    pick = 1 if cpu_fallback else 0
    sizes = {key: value[pick] for key, value in SIZES.items()}
    if not cpu_fallback and not torch.cuda.is_available():
        raise FlowphenoError("this torch sees no CUDA GPU; use --cpu-fallback to check the script on the CPU")
    if out.exists() and not out.is_dir():
        raise FlowphenoError(f"--out {out} is a file; give a folder (it is made if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FlowphenoError(f"--out {out}: cannot make this folder ({error.strerror})") from None
    device = "cpu" if cpu_fallback else "cuda"

    name = "gpu_cpu_fallback" if cpu_fallback else "gpu"
    result: dict[str, Any] = {
        "command": command_line("python benchmarks/gpu_check.py"),
        "device_name": torch.cuda.get_device_name(0)
        if device == "cuda"
        else f"CPU fallback ({platform.processor() or platform.machine()})",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads",
        "versions": package_versions(),
        "sizes": sizes,
    }

    previous = out / f"{name}.json"
    if only != ",".join(SECTIONS) and previous.exists():  # a partial rerun keeps the other sections' numbers
        try:
            kept = json.loads(previous.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise FlowphenoError(
                f"{previous}: cannot keep its sections ({error}); move it away, or choose another --out"
            ) from None
        if not isinstance(kept, dict) or "command" not in kept:
            raise FlowphenoError(f"{previous}: not a gpu_check result; move it away, or choose another --out")
        here = (result["device_name"], result["machine"], result["versions"].get("torch"))
        there = (kept.get("device_name"), kept.get("machine"), kept.get("versions", {}).get("torch"))
        if here != there:
            raise FlowphenoError(
                f"{previous} was measured on {' / '.join(map(str, there))}, this run is on "
                f"{' / '.join(map(str, here))}: --only would mix the two; choose another --out"
            )
        for key in SECTIONS:
            if key in kept and key not in only.split(","):
                result[key] = kept[key]
                result.setdefault("section_seconds", {})[key] = kept.get("section_seconds", {}).get(key)
        result["earlier_commands"] = kept.get("earlier_commands", []) + [kept.get("command")]

    def save() -> None:
        write_results(out, {f"{name}.json": result, f"{name}.md": markdown(result)}, default=str)

    sections: dict[str, Callable[[Path], Any]] = {
        "example_fit": lambda work: example_fit((device, "cpu"), sizes["example_fit"], work),
        "overhead": lambda work: overhead([device, "cpu"] if device != "cpu" else ["cpu"], sizes),
        "exact_objective": lambda work: exact_objective(device, sizes["low_rank_n"]),
        "images": lambda work: images(device, work),
        "host_syncs": lambda work: host_syncs(device, sizes["dense_n"]),
        "batch_profile": lambda work: batch_profile(device, sizes["dense_n"]),
        "batch_sizes": lambda work: batch_sizes([device, "cpu"] if device != "cpu" else ["cpu"], sizes),
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        for key in [s.strip() for s in only.split(",") if s.strip()]:
            section_started = time.perf_counter()
            work = Path(scratch) / key
            work.mkdir()
            try:
                result[key] = sections[key](work)
            except Exception as error:  # one failed section must not lose the others' numbers
                result[key] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-2000:]}
            result.setdefault("section_seconds", {})[key] = time.perf_counter() - section_started
            result["wall_seconds"] = time.perf_counter() - started
            save()
            print(f"{key}: {result['section_seconds'][key]:.1f} s", flush=True)
    print(markdown(result))
    if any(isinstance(v, dict) and "error" in v for v in result.values()):
        sys.exit(1)


if __name__ == "__main__":
    script(main, __doc__)
