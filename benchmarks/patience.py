"""Early stopping's patience, read off full training curves on the HS1940 mice and `make example`'s cohort.

    python benchmarks/patience.py                                   # seeds 1-5, patience 10-30
    python benchmarks/patience.py --seeds 1 --patience 15 --cohorts hs1940   # a quick look

For each cohort and seed, one `flowpheno fit --patience 0 --threads 1` (the default schedule
run to the end: 4 stages x 25 epochs) records the validation NLL after every epoch. With the
same seed, training up to a stop is the same with or without early stopping (same batches,
same steps; the best state is restored only at the end), so each patience's stopping epoch,
kept epoch and kept held-out NLL are read off that one curve exactly. The cost of a patience
is its share of the 100 epochs (the fit's fixed cost, imports and writing, is the same for
all). Inputs as in `benchmarks/profile_fit.py`: CD8 and MCH of gemma-doc's HS1940 mice (1,197
with both) and the four traits with covariates of examples/ (963 complete), each with the
GRM of its shipped SNPs.

Writes benchmarks/results/patience.{json,md}.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from profile_fit import cohort_inputs  # noqa: E402

from flowpheno.bench.results import script, write_results  # noqa: E402
from flowpheno.errors import FlowphenoError  # noqa: E402
from flowpheno.io.atomic import results_folder  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
COHORTS = ("hs1940", "example")


def full_curve(options: list[str], seed: int, out: Path) -> dict:
    """One fit without early stopping: its validation NLL per epoch and CPU seconds."""
    command = [sys.executable, "-m", "flowpheno.cli", "fit", *options, "--out", str(out), "--seed", str(seed)]
    command += ["--patience", "0", "--threads", "1", "--quiet", "--overwrite"]
    before = os.times()
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True)
    after = os.times()
    report = json.loads((out / "fit.json").read_text())
    return {
        "seed": seed,
        "cpu_s": (after.children_user - before.children_user) + (after.children_system - before.children_system),
        "training_s": report["seconds"]["training"],
        "val_nll": [epoch["val_nll"] for epoch in report["epochs"]],
        "stage": [epoch["stage"] for epoch in report["epochs"]],
    }


def stop(curve: list[float], patience: int) -> tuple[int, int, float]:
    """``(epochs run, kept epoch, kept NLL)`` with ``patience`` (0: never stop), as
    :class:`flowpheno.train.schedules.EpochTrainer` decides: stop once ``patience`` epochs
    passed without a lower validation NLL; keep the lowest."""
    best, kept = float("inf"), 0
    for epoch, value in enumerate(curve, start=1):
        if value < best:
            best, kept = value, epoch
        if patience and epoch - kept >= patience:
            return epoch, kept, best
    return len(curve), kept, best


def summarise(curves: list[dict], patiences: list[int]) -> list[dict]:
    """Per patience: epochs run, kept epoch and the kept NLL's excess over no early stopping, per seed."""
    rows = []
    for patience in [0, *patiences]:
        stops = [stop(c["val_nll"], patience) for c in curves]
        excess = [nll - stop(c["val_nll"], 0)[2] for (_, _, nll), c in zip(stops, curves, strict=True)]
        rows.append(
            {
                "patience": patience,
                "epochs_run": [run for run, _, _ in stops],
                "kept_epoch": [kept for _, kept, _ in stops],
                "stage_of_stop": [c["stage"][run - 1] for (run, _, _), c in zip(stops, curves, strict=True)],
                "excess_nll": excess,
                "mean_epochs": statistics.mean(run for run, _, _ in stops),
                "mean_excess_nll": statistics.mean(excess),
                "max_excess_nll": max(excess),
            }
        )
    return rows


def markdown(results: dict, command: str) -> str:
    lines = [
        "# Early stopping: patience read off full training curves",
        "",
        f"`{command}`",
        "",
        "Each seed's fit ran all 100 epochs (4 stages x 25, `--patience 0`, `--threads 1`); a patience's stop,",
        "kept epoch and kept held-out NLL are read off that curve (training up to the stop is the same).",
        "Excess: the kept held-out NLL minus that of no early stopping (nats per individual, >= 0): fit.json's",
        "selection score (`val_nll`) of the kept epoch, before the final `s2` refit.",
        "",
    ]
    for cohort, result in results["cohorts"].items():
        curves = result["curves"]
        per_epoch = statistics.mean(c["training_s"] / len(c["val_nll"]) for c in curves)
        lines += [
            f"## {cohort} ({result['n_used']} individuals, {result['d']} traits)",
            "",
            f"Whole fit without early stopping: {statistics.mean(c['cpu_s'] for c in curves):.0f} CPU s (mean over "
            f"seeds); training {per_epoch:.2f} s per epoch (wall, fit.json's `seconds.training` over the epochs: "
            "inflated where the machine is shared).",
            "",
            "| patience | epochs run (per seed) | mean | stops in stage | kept epoch | excess NLL (per seed) | mean "
            "| max |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in result["rows"]:
            name = "none" if row["patience"] == 0 else str(row["patience"])
            lines.append(
                f"| {name} | {', '.join(map(str, row['epochs_run']))} | {row['mean_epochs']:.0f} | "
                f"{', '.join(map(str, row['stage_of_stop']))} | {', '.join(map(str, row['kept_epoch']))} | "
                f"{', '.join(f'{e:.4f}' for e in row['excess_nll'])} | {row['mean_excess_nll']:.4f} | "
                f"{row['max_excess_nll']:.4f} |"
            )
        lines.append("")
    lines.append(f"Machine: {results['machine']}.")
    return "\n".join(lines) + "\n"


def _items(text: str) -> list[str]:
    """Comma-separated items, each given once; an empty item is refused."""
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise typer.BadParameter(f"{text!r}: an empty item (write e.g. 1,2,3)")
    repeated = sorted({item for item in items if items.count(item) > 1})
    if repeated:
        raise typer.BadParameter(f"{repeated[0]!r} is given twice")
    return items


def _numbers(text: str) -> str:
    """``--seeds``, ``--patience``: comma-separated whole numbers, each at least 1, each once."""
    for item in _items(text):
        if not item.isdigit() or int(item) < 1:
            raise typer.BadParameter(f"{item!r}: each is a whole number of at least 1")
    return text


def _cohorts(text: str) -> str:
    """``--cohorts``: comma-separated, each one of :data:`COHORTS`, each once."""
    for item in _items(text):
        if item not in COHORTS:
            raise typer.BadParameter(f"{item!r}: choose from {', '.join(COHORTS)}")
    return text


def main(
    seeds: str = typer.Option("1,2,3,4,5", "--seeds", callback=_numbers, help="comma-separated fit seeds"),
    patience: str = typer.Option(
        "10,15,20,25,30", "--patience", callback=_numbers, help="comma-separated patience values to read off"
    ),
    cohorts: str = typer.Option(
        ",".join(COHORTS), "--cohorts", callback=_cohorts, help=f"comma-separated, of {', '.join(COHORTS)}"
    ),
    workdir: Path | None = typer.Option(None, "--workdir", help="keep the runs here (default: a temporary folder)"),
    out: Path = typer.Option(RESULTS, "--out", help="folder for patience.json and patience.md"),
) -> None:
    seed_list, patience_list, chosen = (
        [int(i) for i in _items(seeds)],
        [int(i) for i in _items(patience)],
        _items(cohorts),
    )
    out = out.absolute()  # the fits run in the checkout: relative paths would land there
    if out.exists() and not out.is_dir():
        raise FlowphenoError(f"--out {out} is a file; give a folder for patience.json and patience.md")
    try:
        out.mkdir(parents=True, exist_ok=True)  # before minutes of fitting, not after
    except OSError as error:
        raise FlowphenoError(f"--out {out} cannot be created ({error.strerror}); choose a writable folder") from error
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="flowpheno_patience_") as temporary:
            run(Path(temporary), seed_list, patience_list, chosen, out, seeds, patience)
        return
    folder = workdir.absolute()
    # a folder this script wrote (its manifest), or a new or empty one: never another one
    results_folder(folder, "benchmarks/patience.py", option="--workdir")
    run(folder, seed_list, patience_list, chosen, out, seeds, patience)


def run(
    folder: Path,
    seed_list: list[int],
    patience_list: list[int],
    chosen: list[str],
    out: Path,
    seeds: str,
    patience: str,
) -> None:
    """The fits under ``folder`` and the tables in ``out``."""
    started = time.perf_counter()
    results: dict = {"machine": f"{os.uname().machine}, {os.cpu_count()} CPUs", "cohorts": {}}
    for cohort in chosen:
        _, _, options = cohort_inputs(cohort, folder / cohort)
        curves = []
        for seed in seed_list:
            curves.append(full_curve(options, seed, folder / cohort / f"run_{seed}"))
            print(f"{cohort} seed {seed}: {curves[-1]['cpu_s']:.0f} CPU s", flush=True)
        report = json.loads((folder / cohort / f"run_{seed_list[0]}" / "fit.json").read_text())
        results["cohorts"][cohort] = {
            "n_used": report["n_used"],
            "d": report["d"],
            "curves": curves,
            "rows": summarise(curves, patience_list),
        }
    results["wall_s"] = time.perf_counter() - started
    command = f"python benchmarks/patience.py --seeds {seeds} --patience {patience} --cohorts {','.join(chosen)}"
    write_results(out, {"patience.json": {"command": command, **results}, "patience.md": markdown(results, command)})
    print(f"wrote {out}/patience.md")


if __name__ == "__main__":
    script(main, __doc__)
