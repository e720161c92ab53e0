"""Loci found by each method on simulated cohorts with known truth, and calibration under the null.

    python benchmarks/gwas_power.py                  # 3 seeds (n = 2000, 20,000 SNPs, 30 causal) + 1 null cohort
    python benchmarks/gwas_power.py --seeds 1 2 --n 1000 --snps 5000

Runs the real workflow (`snakemake gwas_all`: flowpheno simulate, GEMMA -gk 1, fits,
GEMMA -lmm 3, PLINK clumping) once per cohort and writes
benchmarks/results/gwas_power.{md,json}: loci / true / false / power / FDP per method
and seed, their means, and lambda GC per method under the null.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
METHODS = ["single", "flow_iid", "flow_kinship"]


def run_cohort(workdir: Path, name: str, simulate: dict, fit: dict, cores: int) -> tuple[pd.DataFrame, float]:
    """One workflow run; returns one row per method and its wall time."""
    config = {
        "outdir": str(workdir / name),
        "simulate": simulate,
        "trait_groups": {"all": [f"trait{j + 1}" for j in range(simulate["traits"])]},
        "methods": METHODS,
        "fit": fit,
    }
    config_path = workdir / f"{name}.json"
    config_path.write_text(json.dumps(config))
    local = Path(sys.executable).parent / "snakemake"
    snakemake = str(local) if local.exists() else shutil.which("snakemake")
    started = time.perf_counter()
    subprocess.run(
        [snakemake, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), "--configfile", str(config_path),
         f"-c{cores}", "gwas_all", "--quiet", "rules"],
        check=True,
    )
    seconds = time.perf_counter() - started
    rows = []
    for method in METHODS:
        summary = json.loads((workdir / name / "all" / method / "evaluation" / "summary.json").read_text())
        values = {k: v for k, v in summary.items() if not isinstance(v, list) and k != "method"}
        rows.append({"cohort": name, "method": method, **values})
    return pd.DataFrame(rows), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--null-seed", type=int, default=101)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--snps", type=int, default=20000)
    parser.add_argument("--causal", type=int, default=30)
    parser.add_argument("--causal-variance", type=float, default=0.2)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "work" / "gwas_power")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    fit = {"epochs": args.epochs, "stages": args.stages, "layers": 16, "hidden": 128, "batch_size": 256, "seed": 1,
           "device": "cpu", "extra": ""}
    cohort = {"n": args.n, "snps": args.snps, "traits": 4, "chromosomes": 5}
    tables, timings = [], {}
    for seed in args.seeds:
        simulate = {**cohort, "causal": args.causal, "causal_variance": args.causal_variance, "seed": seed}
        table, timings[f"seed{seed}"] = run_cohort(args.workdir, f"seed{seed}", simulate, fit, args.cores)
        tables.append(table)
    null_table, timings["null"] = run_cohort(args.workdir, "null", {**cohort, "seed": args.null_seed, "null": True}, fit, args.cores)

    power = pd.concat(tables, ignore_index=True)
    means = power.groupby("method", sort=False)[["loci", "true_loci", "false_loci", "power", "fdp", "lambda_gc"]].agg(["mean", "sem"])
    lines = [
        "# GWAS power and calibration on simulated related cohorts",
        "",
        f"`python benchmarks/gwas_power.py` — n = {args.n}, {args.snps} SNPs, 4 traits, {args.causal} pleiotropic causal SNPs "
        f"(latent variance share {args.causal_variance}), 3 populations, three-generation families; flows: "
        f"{args.stages} stages x {args.epochs} epochs, 16 coupling layers; threshold alpha 0.05 / SNPs tested; "
        "PLINK clumps r2 0.1, 250 kb; a locus is true within 250 kb of a causal SNP.",
        "",
        "## Per seed",
        "",
        "| cohort | method | loci | true | false | power | FDP | lambda GC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in power.itertuples():
        lines.append(f"| {row.cohort} | {row.method} | {row.loci} | {row.true_loci} | {row.false_loci} | {row.power:.2f} | "
                     f"{row.fdp:.2f} | {row.lambda_gc:.3f} |")
    lines += ["", f"## Mean +- standard error over {len(args.seeds)} seeds", "",
              "| method | loci | true loci | false loci | power | lambda GC |", "|---|---|---|---|---|---|"]
    for method in METHODS:
        m = means.loc[method]
        lines.append(
            f"| {method} | {m[('loci', 'mean')]:.1f} +- {m[('loci', 'sem')]:.1f} | {m[('true_loci', 'mean')]:.1f} +- "
            f"{m[('true_loci', 'sem')]:.1f} | {m[('false_loci', 'mean')]:.1f} +- {m[('false_loci', 'sem')]:.1f} | "
            f"{m[('power', 'mean')]:.3f} | {m[('lambda_gc', 'mean')]:.3f} |"
        )
    lines += ["", "## Null cohort (no causal SNPs)", "", "| method | loci | lambda GC |", "|---|---|---|"]
    for row in null_table.itertuples():
        lines.append(f"| {row.method} | {row.loci} | {row.lambda_gc:.3f} |")
    lines += ["", "Wall time per cohort (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gwas_power.md").write_text("\n".join(lines))
    (args.out / "gwas_power.json").write_text(json.dumps({
        "settings": vars(args) | {"workdir": str(args.workdir), "out": str(args.out)},
        "per_seed": power.replace({np.nan: None}).to_dict(orient="records"),
        "null": null_table.replace({np.nan: None}).to_dict(orient="records"),
        "seconds": timings,
    }, indent=2, default=str))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
