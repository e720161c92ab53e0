"""Where the time of a `flowpheno fit` goes, on the real HS1940 mice (GEMMA's example cohort) or
`make example`'s cohort.

    python benchmarks/profile_fit.py                          # today's defaults (one profiled fit)
    python benchmarks/profile_fit.py --setting quick="--epochs 10 --stages 2 --layers 8 --hidden 64"

Inputs come from Debian's gemma-doc (see benchmarks/hs1940_workflow.py): the traits CD8 and MCH
(1,197 mice with both), the GRM of the shipped SNPs (`flowpheno grm`, equal to GEMMA's `-gk 1`).
Each setting is one `flowpheno fit --seed 1` run under cProfile (`python -m cProfile`, in a
subprocess so every setting starts from a fresh interpreter). The profile is cut into parts by
the functions that own them (cumulative seconds; a part that calls another is reported without
it): mini-batch epochs (forward, backward and optimiser steps), validation (held-out scores after
every epoch), the `s2` step between stages, diagnostics figure, and the rest (reading, alignment,
writing, imports). Every setting uses the same split (same seed), so its held-out NLL (fit.json's
`best_validation_nll`) is comparable across settings. GEMMA's own steps on the same mice are
timed for comparison: the centred GRM (`-gk 1`) and the mvLMM (`-lmm 3`, the score test the
workflow runs, with the two traits).

Writes benchmarks/results/profile_{hs1940,example}.{json,md}; benchmarks/results/profile.md puts them together
with the choice of defaults they support.
"""

from __future__ import annotations

import json
import os
import platform
import pstats
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from hs1940_workflow import write_hs1940_inputs  # noqa: E402

from flowpheno.bench.results import script, write_results  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

PARTS = {
    "mini-batch epochs": ("schedules.py", "_minibatch_epoch"),
    "exact-objective steps": ("schedules.py", "_exact_step"),
    "validation": ("schedules.py", "validation_scores"),
    "s2 step": ("schedules.py", "refit"),
    "diagnostics figure": ("plots.py", "diagnostics_figure"),
    "Gaussianity tests": ("diagnostics.py", "gaussianity_report"),
}
"""Part -> (file, function) whose cumulative time is the part's."""


def cumulative(stats: pstats.Stats, filename: str, function: str) -> float:
    """Cumulative seconds of every function of that name in that file (0 if never called)."""
    total = 0.0
    for (path, _, name), (_, _, _, cum, _) in stats.stats.items():  # type: ignore[attr-defined]
        if name == function and path.endswith(filename):
            total += cum
    return total


def profile_setting(name: str, options: str, inputs: list[str], folder: Path, threads: int) -> dict:
    out = folder / f"run_{name}"
    profile = folder / f"{name}.prof"
    command = [
        sys.executable,
        "-m",
        "cProfile",
        "-o",
        str(profile),
        "-m",
        "flowpheno.cli",
        "fit",
        *inputs,
        "--out",
        str(out),
        "--seed",
        "1",
        "--quiet",
        "--overwrite",
        "--threads",
        str(threads),
        *shlex.split(options),
    ]
    started = time.perf_counter()
    cpu_before = os.times()
    subprocess.run(command, check=True, cwd=ROOT)
    cpu_after = os.times()
    wall = time.perf_counter() - started
    cpu = (cpu_after.children_user - cpu_before.children_user) + (
        cpu_after.children_system - cpu_before.children_system
    )
    stats = pstats.Stats(str(profile))
    total = stats.total_tt  # type: ignore[attr-defined]
    parts = {part: cumulative(stats, *where) for part, where in PARTS.items()}
    parts["rest (reading, alignment, writing, imports)"] = max(total - sum(parts.values()), 0.0)
    report = json.loads((out / "fit.json").read_text())
    epochs = len(report.get("epochs") or [])
    return {
        "setting": name,
        "options": options or "(defaults)",
        "wall_s": wall,
        "cpu_s": cpu,
        "profiled_s": total,
        "parts_s": parts,
        "epochs_run": epochs,
        "s2": (report.get("covariance") or {}).get("s2"),
        "best_validation_nll": report.get("best_validation_nll"),
        "best_epoch": report.get("best_epoch"),
        "validation_score": report.get("validation_score"),
        "n_used": report.get("n_used"),
    }


def cohort_inputs(cohort: str, folder: Path) -> tuple[Path, Path, list[str]]:
    """``(PLINK prefix, phenotype file, fit input options)`` of ``cohort`` (``hs1940``: gemma-doc's
    files, decompressed under ``folder``; ``example``: examples/, with its covariates), with the
    GRM of the cohort's SNPs written to ``folder/kinship.npz`` by ``flowpheno grm``."""
    if cohort == "hs1940":
        bfile, pheno = write_hs1940_inputs(folder / "inputs")
        options = ["--pheno", str(pheno)]
    else:
        bfile, pheno = ROOT / "examples" / "cohort", ROOT / "examples" / "pheno.tsv"
        options = ["--pheno", str(pheno), "--covar", str(ROOT / "examples" / "covar.tsv")]
    grm = folder / "kinship.npz"
    subprocess.run(
        [sys.executable, "-m", "flowpheno.cli", "grm", "--bfile", str(bfile), "--out", str(grm), "--overwrite"],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    return bfile, pheno, [*options, "--grm", str(grm)]


def gemma_times(bfile: Path, pheno: Path, folder: Path, fam_order: bool) -> dict:
    """CPU seconds of GEMMA's GRM and mvLMM on the same individuals (complete rows of the traits)."""
    import pandas as pd

    table = pd.read_csv(pheno, sep="\t", dtype={"FID": str, "IID": str})
    if not fam_order:  # GEMMA reads -p in .fam order
        fam = pd.read_csv(f"{bfile}.fam", sep=r"\s+", header=None, usecols=[0, 1], dtype=str, names=["FID", "IID"])
        table = fam.merge(table, on=["FID", "IID"], how="left")
    work = folder / "gemma"
    work.mkdir(exist_ok=True)
    gemma_pheno = work / "pheno.txt"
    table.iloc[:, 2:].to_csv(gemma_pheno, sep=" ", header=False, index=False, na_rep="NA")
    times = {}
    for step, args in {
        "GRM (-gk 1)": ["-bfile", str(bfile), "-p", str(gemma_pheno), "-gk", "1", "-o", "grm"],
        f"mvLMM (-lmm 3, {table.shape[1] - 2} traits)": [
            "-bfile",
            str(bfile),
            "-p",
            str(gemma_pheno),
            "-n",
            *map(str, range(1, table.shape[1] - 1)),
            "-k",
            str(work / "output" / "grm.cXX.txt"),
            "-lmm",
            "3",
            "-o",
            "assoc",
        ],
    }.items():
        before = os.times()
        subprocess.run(
            ["gemma", *args],
            check=True,
            cwd=work,
            capture_output=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
        )
        after = os.times()
        times[step] = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return times


def markdown(rows: list[dict], gemma: dict, threads: int, command: str) -> str:
    parts = list(rows[0]["parts_s"])
    cohort = (
        "CD8 and MCH of gemma-doc's HS1940 mice"
        if "example" not in command
        else "the 4 traits and covariates of `make example`'s cohort (examples/)"
    )
    lines = [
        "## " + ("HS1940 mice" if "example" not in command else "`make example` cohort"),
        "",
        f"`{command}` — {cohort}, kinship fit with the GRM of the shipped SNPs, "
        f"seed 1, `--threads {threads}`, under cProfile (which adds some overhead to Python-heavy parts). "
        "Seconds are cumulative wall time in each part as seen by the profiler; CPU seconds are the fit process's.",
        "",
        "| setting | options | CPU s | wall s | epochs run | kept epoch | s2 | held-out NLL |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        nll = row["best_validation_nll"]
        lines.append(
            f"| {row['setting']} | `{row['options']}` | {row['cpu_s']:.0f} | {row['wall_s']:.0f} | {row['epochs_run']} "
            f"| {row['best_epoch']} | {row['s2'] if row['s2'] is None else round(row['s2'], 3)} | "
            f"{'-' if nll is None else f'{nll:.4f}'} |"
        )
    lines += [
        "",
        "Parts (seconds, share of the profiled time):",
        "",
        "",
        "| part | " + " | ".join(r["setting"] for r in rows) + " |",
        "|---|" + "---|" * len(rows),
    ]
    for part in parts:
        cells = [f"{r['parts_s'][part]:.1f} ({100 * r['parts_s'][part] / r['profiled_s']:.0f}%)" for r in rows]
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    lines += ["", "GEMMA on the same individuals (CPU s, one thread):", "", "| step | CPU s |", "|---|---|"]
    lines += [f"| {step} | {seconds:.1f} |" for step, seconds in gemma.items()]
    lines += [
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end "
        "(shared machine: wall times vary; compare CPU seconds and shares).",
    ]
    return "\n".join(lines) + "\n"


def _settings(items: list[str]) -> list[str]:
    """``--setting``: each ``NAME=options`` with a new, non-empty NAME (``default`` is taken)."""
    names = {"default"}
    for item in items:
        name, equals, _ = item.partition("=")
        if not equals or not name.strip():
            raise typer.BadParameter(f'{item!r}: write NAME="fit options", e.g. small="--layers 4"')
        if name in names:
            raise typer.BadParameter(f"{item!r}: the name {name!r} is already taken")
        names.add(name)
    return items


def _cohort(cohort: str) -> str:
    if cohort not in ("hs1940", "example"):
        raise typer.BadParameter(f"{cohort!r}: choose hs1940 or example")
    return cohort


def main(
    setting: list[str] = typer.Option(
        [],
        "--setting",
        callback=_settings,
        help='NAME="fit options" (repeatable); "default" (no options) always runs first',
    ),
    threads: int = typer.Option(1, "--threads", min=1),
    cohort: str = typer.Option(
        "hs1940",
        "--cohort",
        callback=_cohort,
        help="hs1940: gemma-doc's mice; example: the cohort `make example` fits (examples/, with covariates)",
    ),
    workdir: Path | None = typer.Option(
        None, "--workdir", help="keep the runs and profiles here (default: a new temporary folder)"
    ),
    out: Path = typer.Option(RESULTS, "--out", help="folder for profile_{cohort}.json and .md"),
) -> None:
    settings = {"default": ""}
    for item in setting:
        name, _, options = item.partition("=")
        settings[name] = options.strip('"')
    folder = workdir or Path(tempfile.mkdtemp(prefix="flowpheno_profile_"))
    bfile, pheno, inputs = cohort_inputs(cohort, folder)
    rows = []
    for name, options in settings.items():
        rows.append(profile_setting(name, options, inputs, folder, threads))
        print(json.dumps(rows[-1]), flush=True)
    gemma = gemma_times(bfile, pheno, folder, cohort == "hs1940")
    command = f"python benchmarks/profile_fit.py --cohort {cohort} " + " ".join(
        shlex.quote(f"--setting={s}") for s in setting
    )
    stem = f"profile_{cohort}"
    write_results(
        out,
        {
            f"{stem}.json": {"command": command.strip(), "threads": threads, "rows": rows, "gemma_cpu_s": gemma},
            f"{stem}.md": markdown(rows, gemma, threads, command.strip()),
        },
    )
    print(f"wrote {out}/{stem}.md")


if __name__ == "__main__":
    script(main, __doc__)
