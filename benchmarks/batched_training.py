"""Steps per second of K small spline flows trained as one batched model vs K lone runs.

The model is the paper protocol's 2-D flow (3 alternating spline couplings, MLP 1-64-64-47,
16 bins, no ActNorm), batch 256 of n = 10,000 rows, the iid (baseline) objective. A *lone*
run is the ordinary path: the zuko flow, ``minibatch_nll`` and ``torch.optim.Adamax`` with
``StepLR`` (what ``EpochTrainer`` does per step, without its bookkeeping); K of them run one
after another take K times as long as one. A *batched* step is one step of
:class:`flowpheno.train.batched.MemberTrainer` (all K members, per-member Adamax).
Reported: member-steps per second (K x steps / s) and the speed-up over K sequential lone
runs. Each figure is the median of ``--repeats`` timings.

    python benchmarks/batched_training.py --threads 2            # CPU, writes results/batched_training.{json,md}
    python benchmarks/batched_training.py --device cuda --out-name batched_training_gpu
    python benchmarks/batched_training.py --members 4 --extra '' --steps 10 --out /tmp/bt   # a quick look
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import typer

from flowpheno.bench.results import command_line, script, write_results
from flowpheno.bench.shapes import iid_sample
from flowpheno.dependence import IIDCovariance
from flowpheno.flows import spline_coupling_flow
from flowpheno.flows.batched import BatchedSplineFlow
from flowpheno.train.batched import LRSchedule, MemberIID, MemberTrainer
from flowpheno.train.objective import minibatch_nll

RESULTS = Path(__file__).resolve().parent / "results"


def _flow(seed: int, device: str) -> torch.nn.Module:
    torch.manual_seed(seed)
    flow = spline_coupling_flow(
        2, layers=3, hidden=64, bins=16, actnorm=False, tail_bound=8.0, coupling="alternating", seed=seed
    )
    return flow.to(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def lone_steps_per_second(x: torch.Tensor, steps: int, batch: int, device: str) -> float:
    flow = _flow(0, device)
    optimiser = torch.optim.Adamax(flow.parameters(), lr=1e-2, weight_decay=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimiser, step_size=100, gamma=0.9)
    iid = IIDCovariance(x.shape[0]).to(device)
    generator = torch.Generator().manual_seed(0)
    batches = [idx.to(device) for idx in torch.randperm(x.shape[0], generator=generator).split(batch)][: steps + 3]
    while len(batches) < steps + 3:
        batches += batches
    for k, idx in enumerate(batches[: steps + 3]):
        if k == 3:
            _sync(device)
            started = time.perf_counter()
        loss, _ = minibatch_nll(flow, iid, x[idx], idx)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
    _sync(device)
    return steps / (time.perf_counter() - started)


def batched_steps_per_second(x: torch.Tensor, members: int, steps: int, batch: int, device: str) -> float:
    flow = BatchedSplineFlow([_flow(0, "cpu") for _ in range(members)]).to(device)
    lrs = [1e-3, 3e-3, 1e-2, 3e-2] * (members // 4 + 1)
    trainer = MemberTrainer(
        flow, MemberIID(x.shape[0]), x, x[:10], lrs[:members], [1e-2] * members, batch, 0, LRSchedule(0.9, "step", 100)
    )
    generator = torch.Generator().manual_seed(0)
    batches = [idx.to(device) for idx in torch.randperm(x.shape[0], generator=generator).split(batch)]
    per_epoch = len(batches)
    while len(batches) < steps + 3:
        batches += batches
    for k, idx in enumerate(batches[: steps + 3]):
        if k == 3:
            _sync(device)
            started = time.perf_counter()
        trainer._step(idx, per_epoch)
    _sync(device)
    return members * steps / (time.perf_counter() - started)


def _member_counts(empty: bool = False) -> Callable[[str], str]:
    """A Typer callback for a comma-separated list of K (member counts), each a whole number
    >= 1; at least one unless ``empty``."""

    def check(text: str) -> str:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items and not empty:
            raise typer.BadParameter("give at least one K")
        for item in items:
            if not item.isdigit() or int(item) < 1:
                raise typer.BadParameter(f"{item!r}: each K is a whole number >= 1")
        return text

    return check


def _device(device: str) -> str:
    """``--device``: ``cpu``, or ``cuda`` / ``cuda:N`` when this torch sees that GPU."""
    kind, _, index = device.partition(":")
    if device != "cpu" and not (kind == "cuda" and (not index or index.isdigit())):
        raise typer.BadParameter(f"{device!r}: choose cpu, cuda or cuda:N")
    if kind == "cuda" and (not torch.cuda.is_available() or int(index or 0) >= torch.cuda.device_count()):
        raise typer.BadParameter(f"{device!r}: this torch sees no such CUDA GPU; use --device cpu")
    return device


def main(
    members: str = typer.Option("1,4,12", "--members", callback=_member_counts(), help="K values (comma separated)"),
    extra: str = typer.Option(
        "48,156",
        "--extra",
        callback=_member_counts(empty=True),
        help="larger K (joint starts x sweep, grid x sweep), batched only ('' for none)",
    ),
    steps: int = typer.Option(40, "--steps", min=1, help="timed optimiser steps (after 3 untimed)"),
    repeats: int = typer.Option(3, "--repeats", min=1, help="timings per figure (the median is reported)"),
    threads: int = typer.Option(2, "--threads", min=1, help="torch threads"),
    device: str = typer.Option("cpu", "--device", callback=_device, help="cpu, cuda or cuda:N"),
    out_name: str = typer.Option("batched_training", "--out-name", help="file stem: OUT/OUT_NAME.{json,md}"),
    out: Path = typer.Option(RESULTS, "--out", help="folder for OUT_NAME.json and OUT_NAME.md"),
) -> None:
    if not out_name or Path(out_name).name != out_name:
        raise typer.BadParameter(
            f"{out_name!r}: a file stem, without folders (the folder is --out)", param_hint="'--out-name'"
        )
    torch.set_num_threads(threads)
    x = torch.as_tensor(iid_sample("crescent", 10_000, np.random.default_rng(0)), dtype=torch.float32).to(device)
    load_before = os.getloadavg()
    started = time.perf_counter()
    lone = statistics.median(lone_steps_per_second(x, steps, 256, device) for _ in range(repeats))
    rows = []
    for k in [int(k) for k in members.split(",") if k.strip()] + [int(k) for k in extra.split(",") if k.strip()]:
        timed = max(5, steps // max(1, k // 12))
        timings = [batched_steps_per_second(x, k, timed, 256, device) for _ in range(repeats)]
        rate = statistics.median(timings)
        rows.append(
            {
                "members": k,
                "batched_member_steps_per_s": rate,
                "batched_steps_per_s": rate / k,
                "sequential_member_steps_per_s": lone,
                "speedup": rate / lone,
                "timings": timings,
                "steps_timed": timed,
            }
        )
        print(
            f"K={k}: batched {rate:.1f} member-steps/s ({rate / k:.2f} steps/s), lone {lone:.1f} steps/s, "
            f"speed-up {rate / lone:.1f}x",
            flush=True,
        )
    load_after = os.getloadavg()
    command = command_line("python benchmarks/batched_training.py")
    device_name = (
        torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or platform.machine()
    )
    result = {
        "command": command,
        "device": device,
        "device_name": device_name,
        "threads": threads,
        "torch": torch.__version__,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "cpus": os.cpu_count(),
        "lone_steps_per_s": lone,
        "rows": rows,
        "seconds": time.perf_counter() - started,
        "model": "3 alternating RQS couplings, MLP 1-64-64-47, 16 bins, batch 256, n = 10,000, iid objective",
    }
    lines = [
        f"# Batched training of small spline flows ({device})",
        "",
        f"`{command}` ({device_name}, {threads} threads, torch {torch.__version__}; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after, on {os.cpu_count()} CPUs; "
        f"{result['seconds']:.0f} s).",
        "",
        "Model: " + result["model"] + ". Member-steps/s = K x optimiser steps per second; K sequential lone runs "
        "(zuko flow, torch Adamax, StepLR) make as many member-steps per second as one. Median of "
        f"{repeats} timings.",
        "",
        "| K | batched member-steps/s | batched steps/s | K sequential runs, member-steps/s | speed-up |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['members']} | {row['batched_member_steps_per_s']:.1f} | {row['batched_steps_per_s']:.2f} | "
            f"{row['sequential_member_steps_per_s']:.1f} | {row['speedup']:.1f}x |"
        )
    write_results(out, {f"{out_name}.json": result, f"{out_name}.md": "\n".join(lines) + "\n"})


if __name__ == "__main__":
    script(main, __doc__)
