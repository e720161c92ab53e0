"""Wall time of each step of `snakemake gwas_all` on the real HS1940 mice (GEMMA's example cohort).

    python benchmarks/hs1940_workflow.py               # 2 cores, tiny fits (2 epochs x 2 stages, 4 layers x 32)
    python benchmarks/hs1940_workflow.py --cores 8 --epochs 25 --stages 4 --layers 16 --hidden 128
    python benchmarks/hs1940_workflow.py --reuse      # tables again from the last run in --workdir

Inputs come from Debian's gemma-doc (/usr/share/doc/gemma/example/mouse_hs1940.*.gz): 1,940 mice,
12,226 SNPs as shipped (unsorted .bim, 1,926 SNPs at position -9), and the traits CD8 and MCH
(columns 1 and 6 of mouse_hs1940.pheno.txt, the pair of GEMMA's mvLMM example: 1,410 and 1,580
values, 1,197 mice with both). Arms single, rint_mv, flow_iid and flow_kinship, leave-one-chromosome-out
association. The times are those of Snakemake's `benchmark:` files, summed per step; written to
benchmarks/results/hs1940_workflow.{md,json}. For comparison, rint_mv is also tested once with the GRM
of every SNP (no LOCO) and both lambda GC are given.
"""

from __future__ import annotations

import gzip
import json
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import typer

from flowpheno.bench.results import script, write_results

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HS1940 = Path("/usr/share/doc/gemma/example/mouse_hs1940")
TRAITS = {"CD8": 0, "MCH": 5}
"""Trait name -> column of mouse_hs1940.pheno.txt (0-based): GEMMA's own mvLMM example pair."""
METHODS = ["single", "rint_mv", "flow_iid", "flow_kinship"]
STEPS = [
    "prepare_genotypes",
    "gemma_grm",
    "gemma_grm_loco",
    "rint",
    "fit_flow",
    "gemma_assoc",
    "gather_assoc",
    "evaluate",
    "report",
]
"""Rules in workflow order (the names of their benchmark files start with them)."""
WORKDIR_NAMES = ("config.json", "data", "out", r"\.snakemake")
"""What a run leaves in --workdir (config.json first: a folder of these is an earlier run's)."""


def write_hs1940_inputs(folder: Path) -> tuple[Path, Path]:
    """The gemma-doc fileset decompressed as shipped, and pheno.tsv (FID, IID and :data:`TRAITS`;
    the phenotype file's rows follow the .fam). Returns (PLINK prefix, pheno.tsv)."""
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in (".bed", ".bim", ".fam"):
        with gzip.open(f"{HS1940}{suffix}.gz", "rb") as source, open(folder / f"mouse_hs1940{suffix}", "wb") as target:
            shutil.copyfileobj(source, target)
    fam = pd.read_csv(folder / "mouse_hs1940.fam", sep=r"\s+", header=None, usecols=[0, 1], dtype=str)
    values = pd.read_csv(f"{HS1940}.pheno.txt.gz", sep=r"\s+", header=None, na_values="NA")
    pheno = pd.DataFrame({"FID": fam[0], "IID": fam[1], **{name: values[column] for name, column in TRAITS.items()}})
    pheno.to_csv(folder / "pheno.tsv", sep="\t", index=False, na_rep="NA")
    return folder / "mouse_hs1940", folder / "pheno.tsv"


def workflow_config(folder: Path, bfile: Path, pheno: Path, fit: dict) -> Path:
    config = {
        "outdir": str(folder / "out"),
        "cohort": {"bfile": str(bfile), "pheno": str(pheno)},
        "trait_groups": {"cd8_mch": list(TRAITS)},
        "methods": METHODS,
        "fit": fit,
        "gwas": {"loco": True},
    }
    path = folder / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def snakemake_binary() -> str:
    local = Path(sys.executable).parent / "snakemake"
    return str(local) if local.exists() else shutil.which("snakemake") or "snakemake"


def step_of(name: str) -> str:
    return max((step for step in STEPS if name.startswith(step)), key=len)


def read_benchmarks(folder: Path) -> pd.DataFrame:
    """One row per job: step, arm (where the step has one), wall and CPU seconds, peak memory (max_rss, MB)."""
    rows = []
    for path in sorted(folder.glob("*.tsv")):
        table = pd.read_csv(path, sep="\t")
        step = step_of(path.stem)
        arm = next(
            (method for method in sorted(METHODS, key=len, reverse=True) if re.search(rf"_{method}(_|$)", path.stem)),
            "",
        )
        rows.append(
            {
                "step": step,
                "arm": arm,
                "job": path.stem,
                "s": float(table["s"].iloc[-1]),
                "cpu_s": float(pd.to_numeric(table["cpu_time"], errors="coerce").iloc[-1]),
                "max_rss_mb": float(pd.to_numeric(table["max_rss"], errors="coerce").iloc[-1]),
            }
        )
    return pd.DataFrame(rows)


def version(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    return (result.stdout + result.stderr).strip().splitlines()[0] if (result.stdout + result.stderr).strip() else "?"


def main(
    cores: int = typer.Option(2, "--cores", min=1, help="snakemake -c"),
    epochs: int = typer.Option(2, "--epochs", min=1),
    stages: int = typer.Option(2, "--stages", min=1),
    layers: int = typer.Option(4, "--layers", min=1),
    hidden: int = typer.Option(32, "--hidden", min=1),
    workdir: Path = typer.Option(
        ROOT / "benchmarks" / "work" / "hs1940",
        "--workdir",
        help="the workflow's folder: new, empty or an earlier run's (its files are replaced)",
    ),
    out: Path = typer.Option(RESULTS, "--out", help="folder for hs1940_workflow.json and .md"),
    reuse: bool = typer.Option(False, "--reuse", help="no new run: tabulate the last run in --workdir"),
) -> None:
    fit = {
        "epochs": epochs,
        "stages": stages,
        "layers": layers,
        "hidden": hidden,
        "batch_size": 256,
        "seed": 1,
        "device": "cpu",
    }
    if reuse:
        config = json.loads((workdir / "config.json").read_text())
        fit = config["fit"]
        log = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))[-1].read_text()
        hours, minutes, seconds = re.search(r"Elapsed time: (\d+):(\d+):([\d.]+)", log).groups()
        wall = 3600 * int(hours) + 60 * int(minutes) + float(seconds)
    else:
        from flowpheno.io.atomic import results_folder

        # a folder this script wrote (its manifest, or only the names it writes), never another one
        results_folder(workdir, "benchmarks/hs1940_workflow.py", legacy=WORKDIR_NAMES, option="--workdir")
        for name in ("data", "out", ".snakemake", "config.json"):  # the last run's files, not the manifest
            if (workdir / name).is_dir():
                shutil.rmtree(workdir / name)
            elif (workdir / name).exists():
                (workdir / name).unlink()
        bfile, pheno = write_hs1940_inputs(workdir / "data")
        config_path = workflow_config(workdir, bfile, pheno, fit)
        command = [
            snakemake_binary(),
            "-s",
            str(ROOT / "Snakefile"),
            "--directory",
            str(workdir),
            "--configfile",
            str(config_path),
            f"-c{cores}",
            "gwas_all",
            "--quiet",
            "rules",
        ]
        started = time.perf_counter()
        subprocess.run(command, check=True)
        wall = time.perf_counter() - started
    run = workdir / "out"
    lambdas = lambda_comparison(run)

    jobs = read_benchmarks(run / "benchmarks")
    per_step = jobs.groupby("step", sort=False).agg(
        jobs=("s", "size"),
        total_s=("s", "sum"),
        max_s=("s", "max"),
        cpu_s=("cpu_s", "sum"),
        max_rss_mb=("max_rss_mb", "max"),
    )
    per_step = per_step.reindex([step for step in STEPS if step in per_step.index])
    assoc = jobs[jobs["step"] == "gemma_assoc"].groupby("arm", sort=False)["s"].agg(["size", "sum", "max"])
    prepare_log = (run / "genotypes" / "cohort.log").read_text().splitlines()[0].replace(f"{workdir}/", "")
    report = (run / "report.md").read_text()
    table = [line for line in report.splitlines() if line.startswith("|")]
    shown = " ".join(argument for argument in sys.argv[1:] if argument != "--reuse")
    lines = [
        "# The GWAS workflow on the HS1940 mice: wall time per step",
        "",
        f"`python benchmarks/hs1940_workflow.py{' ' + shown if shown else ''}` (snakemake gwas_all -c{cores}, "
        f"{platform.machine()}): 1,940 mice, gemma-doc's fileset as shipped, "
        f"traits CD8 and MCH; arms {', '.join(METHODS)}; leave-one-chromosome-out association (19 chromosomes); "
        f"fits of {fit['stages']} stages x {fit['epochs']} epochs, {fit['layers']} layers x {fit['hidden']}.",
        "",
        f"Fileset: {prepare_log.split(': ', 1)[1]}.",
        "",
        "Wall times include waiting for a core while other work runs on the machine (here: 2 cores, shared); CPU "
        "seconds do not.",
        "",
        "| step | jobs | wall, total (s) | wall, longest job (s) | CPU, total (s) | peak memory (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for step, row in per_step.iterrows():
        lines.append(
            f"| {step} | {int(row.jobs)} | {row.total_s:.1f} | "
            f"{row.max_s:.1f} | {row.cpu_s:.1f} | {row.max_rss_mb:.0f} |"
        )
    lines += [
        "",
        f"Sum of job wall times {jobs['s'].sum():.0f} s, of CPU times {jobs['cpu_s'].sum():.0f} s; wall time of the "
        f"whole run {wall:.0f} s.",
        "",
        "GEMMA association jobs per arm (one per chromosome; `single` runs one LMM per trait in each):",
        "",
        "| arm | jobs | total (s) | longest job (s) |",
        "|---|---|---|---|",
    ]
    for arm, row in assoc.iterrows():
        lines.append(f"| {arm} | {int(row['size'])} | {row['sum']:.1f} | {row['max']:.1f} |")
    lines += [
        "",
        "The run's report (loci: PLINK clumps below alpha / SNPs tested):",
        "",
        *table,
        "",
        f"lambda GC of rint_mv: {lambdas['loco']:.2f} with LOCO, {lambdas['full']:.2f} with the GRM of every SNP "
        "(one extra GEMMA run). CD8 and MCH are highly heritable and HS mice have long-range LD: LOCO leaves each "
        "chromosome's share of the polygenic signal out of that chromosome's GRM, so its SNPs carry it (lambda > 1), "
        "while the full GRM holds the tested SNPs themselves (proximal contamination, lambda < 1). Clumps at r2 0.1 "
        "within 250 kb split the long LD blocks of HS mice into many loci.",
        "",
    ]
    write_results(
        out,
        {
            "hs1940_workflow.md": "\n".join(lines),
            "hs1940_workflow.json": {
                "command": ["python", "benchmarks/hs1940_workflow.py", *shown.split()],
                "settings": {"cores": cores, "fit": fit, "methods": METHODS, "traits": TRAITS, "loco": True},
                "versions": {
                    "gemma": version(["gemma"]),
                    "plink": version(["plink1.9", "--version"]),
                    "snakemake": version([snakemake_binary(), "--version"]),
                    "python": platform.python_version(),
                },
                "wall_s": wall,
                "lambda_gc_rint_mv": lambdas,
                "per_step": per_step.reset_index().to_dict(orient="records"),
                "jobs": jobs.to_dict(orient="records"),
            },
        },
    )
    print("\n".join(lines))


def lambda_comparison(out: Path) -> dict[str, float]:
    """lambda GC of rint_mv with LOCO (the run's) and with the GRM of every SNP (one more GEMMA run)."""
    from flowpheno.gwas.evaluate import lambda_gc

    full = out / "comparison" / "rint_mv_full_grm.tsv"
    if not full.exists():
        subprocess.run(
            [
                "flowpheno",
                "gwas",
                "assoc",
                "--bfile",
                str(out / "genotypes" / "cohort"),
                "--kinship",
                str(out / "grm" / "kinship.cXX.txt"),
                "--pheno",
                str(out / "cd8_mch" / "rint_mv" / "pheno.gemma.txt"),
                "--columns",
                "1,2",
                "--out",
                str(full),
            ],
            check=True,
            capture_output=True,
        )
    loco = pd.read_csv(out / "cd8_mch" / "rint_mv" / "assoc.tsv", sep="\t")["P"]
    return {"loco": lambda_gc(loco.to_numpy()), "full": lambda_gc(pd.read_csv(full, sep="\t")["P"].to_numpy())}


if __name__ == "__main__":
    script(main, __doc__)
