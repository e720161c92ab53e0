"""Epoch time of one fixed fit by thread count, on the machine as it is and next to busy processes.

    python benchmarks/threads.py                 # 3 rounds, the example cohort, 6 epochs per fit
    python benchmarks/threads.py --rounds 1      # a quicker look

Each measurement is a real ``flowpheno fit`` process on the embedded example cohort
(1,000 individuals, 4 traits, covariates, its GRM; ``--mode alternating``, one stage of
``--epochs`` epochs, default flow), timed by the epoch seconds it writes to ``fit.json``
(median over the epochs after the first). One round runs, side by side:

- ``--threads 1`` and ``--threads 2`` on the machine as it is;
- with COMPETITORS busy processes started by this script (Python busy loops, stopped by
  their process IDs afterwards): the default thread count (no ``--threads``: the CPUs this
  process may use) and ``--threads 1``.

Rounds alternate the order inside each pair, so drifting load hits both alike. The child
processes get no ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/``OPENBLAS_NUM_THREADS``, so the
default is flowpheno's own. Writes benchmarks/results/threads.json and threads.md.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer

from flowpheno.bench.results import script

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EXAMPLES = ROOT / "examples"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "SLURM_CPUS_PER_TASK")


def busy_processes(count: int) -> list[subprocess.Popen[bytes]]:
    """``count`` Python busy loops: the other users of a shared machine."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:  # only the processes this script started, by their PIDs
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def fit_epochs(kinship: Path, out: Path, epochs: int, threads: int | None) -> dict[str, object]:
    """One ``flowpheno fit`` process; its per-epoch seconds and the threads it recorded."""
    env = {key: value for key, value in os.environ.items() if key not in THREAD_VARIABLES}
    command = [
        sys.executable,
        "-m",
        "flowpheno.cli",
        "fit",
        "--pheno",
        str(EXAMPLES / "pheno.tsv"),
        "--covar",
        str(EXAMPLES / "covar.tsv"),
        "--grm",
        str(kinship),
        "--out",
        str(out),
        "--seed",
        "1",
        "--epochs",
        str(epochs),
        "--stages",
        "1",
        "--quiet",
        "--overwrite",
    ]
    if threads is not None:
        command += ["--threads", str(threads)]
    load = os.getloadavg()[0]
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    report = json.loads((out / "fit.json").read_text())
    seconds = [epoch["seconds"] for epoch in report["epochs"]]
    print(
        f"--threads {threads}: {statistics.median(seconds[1:] or seconds):.3f} s per epoch, {wall:.0f} s in all, "
        f"load {load:.1f}",
        flush=True,
    )
    return {
        "threads_flag": threads,
        "threads_used": report["threads"]["used"],
        "epoch_seconds": seconds,
        "median_epoch_seconds": statistics.median(seconds[1:] or seconds),
        "training_seconds": report["seconds"]["training"],
        "process_wall_seconds": wall,
        "load_average_1min_before": load,
    }


def main(
    rounds: int = typer.Option(3, "--rounds", min=1),
    epochs: int = typer.Option(6, "--epochs", min=2, help="epochs per fit (the first is not counted)"),
    competitors: int = typer.Option(2, "--competitors", min=1, help="busy processes for the loaded runs"),
    out: Path = typer.Option(RESULTS, "--out", help="folder for threads.json and threads.md"),
) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still stops the busy processes (finally below)

    from flowpheno.bench.results import command_line, package_versions, write_results
    from flowpheno.io.kinship import write_npz
    from flowpheno.io.plink import centred_grm, sample_fids
    from flowpheno.threads import cpu_limit

    runs: list[dict[str, object]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        matrix, ids, _ = centred_grm(EXAMPLES / "cohort")
        write_npz(work / "kinship.npz", matrix, ids, sample_fids(EXAMPLES / "cohort"))
        fit_epochs(work / "kinship.npz", work / "warmup", 2, None)  # the eigendecomposition cache, disk caches
        for round_ in range(rounds):
            idle = [1, 2] if round_ % 2 == 0 else [2, 1]
            for threads in idle:
                runs.append(
                    {
                        "round": round_,
                        "condition": "as is",
                        **fit_epochs(work / "kinship.npz", work / "run", epochs, threads),
                    }
                )
            busy = busy_processes(competitors)
            print(f"round {round_ + 1}: {competitors} busy processes, PIDs {[c.pid for c in busy]}", flush=True)
            try:
                time.sleep(1.0)
                for threads in [None, 1] if round_ % 2 == 0 else [1, None]:
                    record = fit_epochs(work / "kinship.npz", work / "run", epochs, threads)
                    runs.append({"round": round_, "condition": f"{competitors} busy processes", **record})
            finally:
                stop(busy)
    wall = time.perf_counter() - started

    def median_of(condition: str, flag: int | None) -> float:
        values = [r["median_epoch_seconds"] for r in runs if r["condition"] == condition and r["threads_flag"] == flag]
        return statistics.median(values)  # type: ignore[arg-type]

    loaded = f"{competitors} busy processes"
    cpus, source = cpu_limit()
    default_used = next(r["threads_used"] for r in runs if r["threads_flag"] is None)
    summary = {
        "as_is_threads_1": median_of("as is", 1),
        "as_is_threads_2": median_of("as is", 2),
        "loaded_default": median_of(loaded, None),
        "loaded_threads_1": median_of(loaded, 1),
    }
    result = {
        "command": command_line("python benchmarks/threads.py"),
        "fit": "examples/ cohort, --mode alternating, --stages 1 --epochs "
        f"{epochs}, default flow (16 layers, 128 hidden), batch 256",
        "rounds": rounds,
        "competitors": competitors,
        "default_threads": default_used,
        "median_epoch_seconds": summary,
        "slowdown_loaded_default_over_threads_1": summary["loaded_default"] / summary["loaded_threads_1"],
        "runs": runs,
        "wall_seconds": wall,
        "machine": {
            "cpus_available": cpus,
            "cpus_from": source,
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "shared": True,
        },
        "versions": package_versions(),
    }
    lines = [
        "# Threads: epoch time by `--threads`, alone and next to busy processes",
        "",
        f"`{result['command'].strip()}`: {result['fit']}; median seconds per epoch (epochs after the first) of each "
        f"fit, median over {rounds} rounds. Each fit is its own `flowpheno fit` process; the pairs are measured side "
        f"by side in one run, their order alternating between rounds. {cpus} CPUs available ({source}); the default is "
        f"{default_used} threads.",
        "",
        "**The machine is shared and noisy**: other people's jobs ran during the measurement (1-minute load average "
        f"before each fit: {min(r['load_average_1min_before'] for r in runs):.1f} to "  # type: ignore[type-var]
        f"{max(r['load_average_1min_before'] for r in runs):.1f}); compare the rows of one condition with each other, "
        "not with other machines.",
        "",
        "| condition | threads | seconds per epoch |",
        "|---|---|---|",
        f"| machine as it is | `--threads 1` | {summary['as_is_threads_1']:.3f} |",
        f"| machine as it is | `--threads 2` | {summary['as_is_threads_2']:.3f} |",
        f"| {loaded} | default ({default_used}) | {summary['loaded_default']:.3f} |",
        f"| {loaded} | `--threads 1` | {summary['loaded_threads_1']:.3f} |",
        "",
        f"Next to {competitors} busy processes the default is {result['slowdown_loaded_default_over_threads_1']:.2f} x "
        "the time of `--threads 1`. On a shared machine pass `--threads` with the cores you may really use (a "
        "workflow rule's `threads:`); SLURM jobs get `SLURM_CPUS_PER_TASK` by default.",
        "",
        "Every fit: `benchmarks/results/threads.json` (`runs`: epoch "
        f"seconds, load before it, wall time). Total {wall / 60:.1f} min.",
        "",
    ]
    write_results(out, {"threads.json": result, "threads.md": "\n".join(lines)})
    print("\n".join(lines))


if __name__ == "__main__":
    script(main, __doc__)
