"""Loci found by each arm on simulated related cohorts with known truth, calibration under the
null, and paired differences between arms across seeds.

    python benchmarks/gwas_power.py                    # 10 seeds x 2 cohort types + 3 null cohorts per type (hours)
    python benchmarks/gwas_power.py --seeds 1 --null-seeds 101 --n 400 --snps 3000 --epochs 2 --stages 2 \\
        --arms single,flow_iid,flow_kinship --out /tmp/gwas_power_smoke     # a smoke run

Runs the real workflow (`snakemake gwas_all`: flowpheno simulate, GEMMA GRM (LOCO unless
--no-loco), fits, GEMMA -lmm 3, PLINK clumping) once per cohort. Arms (config `methods`):
`single` (RINT per trait, univariate LMM per trait, min p x d), `rint_mv` (RINT per trait, the
same mvLMM as the flows), `flow_iid`, `flow_kinship` (run with `fit: {scale_step: false}`),
`flow_kinship_scale` (`flow_kinship` with `fit: {scale_step: true}`, the workflow's default in
mode alternating: a workflow run of its own on the same simulated cohort), `oracle`
(the simulator's own inverse map, then the same mvLMM). Cohort types: `standard`
(three-generation families, 5 chromosomes) and `deep` (four generations, 3 children per couple
on average, 10 chromosomes: relatedness matters more). In both, the last chromosomes carry no
causal and no polygenic SNP (`flowpheno simulate --null-chromosomes`): with a polygenic
background every SNP linked to a polygenic SNP is truly associated (within families, over tens
of Mb), so a genome-wide lambda GC mixes polygenic signal with miscalibration, above all with
LOCO. lambda GC over the null chromosomes' SNPs measures calibration alone (as BOLT-LMM's paper
did, Loh et al. 2015), and every locus found there is false whatever the truth window.

Every finished cohort is appended to `{out}/gwas_power_rows.jsonl` (one line per cohort and
arm, keyed by the cohort and the settings): a rerun skips the cohorts already there and
the tables are rebuilt from all rows: benchmarks/results/gwas_power.{md,json} by default.
Per arm: true loci, false loci, power, FDP, lambda GC (on the test's own df; genome-wide and
over the null chromosomes) under the null and the alternative, loci on the null chromosomes,
n analysed; the paired differences `flow_kinship - flow_iid`, `flow_kinship_scale -
flow_kinship`, `flow_iid - rint_mv` and `flow_iid - single` in true and false loci across seeds
with standard errors and how many seeds agree in sign.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import typer  # noqa: E402

from flowpheno.bench.results import package_versions, script, write_results  # noqa: E402
from flowpheno.gwas import TRUTH_WINDOW_KB  # noqa: E402  (the repository's own default, whatever is installed)

RESULTS = ROOT / "benchmarks" / "results"
ARMS = ["single", "rint_mv", "flow_iid", "flow_kinship", "flow_kinship_scale", "oracle"]
VARIANTS = {"flow_kinship_scale": ("flow_kinship", {"scale_step": True})}
"""Arms that are a workflow arm with other fit settings (config ``fit``): run as their own workflow
on the same simulated cohort (same simulate settings and seed), reported under their own name."""
PINNED_FIT = {"scale_step": False}
"""Fit settings of the workflow arms that are pinned to the value the rows on record ran with,
whatever flowpheno fit's default: `flow_kinship` is without the scale step (automatic, so on,
in `--mode alternating` since; that is the arm `flow_kinship_scale`)."""


def key_settings(fit: dict[str, Any]) -> dict[str, Any]:
    """The fit settings a cohort's key hashes: a pinned value is left out, as in the rows made
    when it was flowpheno fit's default (so they keep their keys)."""
    return {key: value for key, value in fit.items() if not (key in PINNED_FIT and value == PINNED_FIT[key])}


COHORT_TYPES = {
    "standard": {"chromosomes": 5, "null_chromosomes": 2},
    "deep": {"chromosomes": 10, "null_chromosomes": 3, "generations": 4, "family_size": 3},
}
PAIRS = [
    ("flow_kinship", "flow_iid"),
    ("flow_kinship_scale", "flow_kinship"),
    ("flow_iid", "rint_mv"),
    ("flow_iid", "single"),
    ("flow_kinship", "single"),
]
ROW_KEYS = (
    "n",
    "loci",
    "true_loci",
    "false_loci",
    "false_loci_near",
    "power",
    "fdp",
    "lambda_gc",
    "lambda_gc_df",
    "lambda_gc_1df",
    "truth_window_genome_share",
    "causal_snps",
    "snps_tested",
    "lambda_gc_null_snps",
    "lambda_gc_null_per_chromosome",
    "null_snps",
    "loci_null_chromosomes",
)


def settings_key(settings: dict[str, Any]) -> str:
    """A short hash of everything that changes a cohort's numbers."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line cut by an interrupted run: that cohort is simply rerun
                continue
    return rows


def run_cohort(
    workdir: Path, name: str, simulate: dict, arms: list[str], fit: dict, gwas: dict, cores: int
) -> tuple[list[dict], float]:
    """One workflow run; one row per arm (its evaluation summary) and the wall time."""
    config = {
        "outdir": str(workdir / name),
        "simulate": simulate,
        "trait_groups": {"all": [f"trait{j + 1}" for j in range(simulate["traits"])]},
        "methods": arms,
        "fit": fit,
        "gwas": gwas,
    }
    config_path = workdir / f"{name}.json"
    config_path.write_text(json.dumps(config))
    local = Path(sys.executable).parent / "snakemake"
    snakemake = str(local) if local.exists() else shutil.which("snakemake")
    started = time.perf_counter()
    finished = subprocess.run(
        [
            snakemake,
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
        ],
        check=False,
    )
    if finished.returncode != 0:
        raise SystemExit(
            f"error: the workflow of cohort {name} failed (snakemake exit {finished.returncode}; its messages are "
            f"above): each job's log is in {workdir / name / 'logs'}; rows of the cohorts finished before are kept"
        )
    seconds = time.perf_counter() - started
    rows = []
    for arm in arms:
        summary = json.loads((workdir / name / "all" / arm / "evaluation" / "summary.json").read_text())
        rows.append({"arm": arm, **{key: summary.get(key) for key in ROW_KEYS}})
    return rows, seconds


MEAN_COLUMNS = (
    "n",
    "loci",
    "true_loci",
    "false_loci",
    "false_loci_near",
    "loci_null_chromosomes",
    "power",
    "fdp",
    "lambda_gc",
    "lambda_gc_null_snps",
)
"""The columns of the mean +- SE table, in order (results.json's means: all but loci and false_loci_near)."""
DECIMALS = {"n": 0, "power": 2, "fdp": 2, "lambda_gc": 3, "lambda_gc_null_snps": 3}
"""Decimals shown per column (counts of loci: 1)."""


def mean_se(values: pd.Series, decimals: int = 1) -> str:
    """Mean +- standard error over seeds, with ``decimals`` decimals (the mean alone for one seed)."""
    values = values.dropna().astype(float)
    if values.empty:
        return "-"
    if len(values) == 1:
        return f"{values.iloc[0]:.{decimals}f}"
    return f"{values.mean():.{decimals}f} +- {values.std(ddof=1) / np.sqrt(len(values)):.{max(decimals, 1)}f}"


def paired(alternative: pd.DataFrame, first: str, second: str, metric: str) -> dict[str, Any] | None:
    """``first - second`` in ``metric`` per seed (same simulated cohort): mean, standard error, signs."""
    table = alternative.pivot_table(index="seed", columns="arm", values=metric, aggfunc="first")
    if first not in table or second not in table:
        return None
    difference = (table[first] - table[second]).dropna()
    if difference.empty:
        return None
    se = float(difference.std(ddof=1) / np.sqrt(len(difference))) if len(difference) > 1 else None
    return {
        "pair": f"{first} - {second}",
        "metric": metric,
        "seeds": int(len(difference)),
        "mean": float(difference.mean()),
        "se": se,
        "positive": int((difference > 0).sum()),
        "negative": int((difference < 0).sum()),
        "zero": int((difference == 0).sum()),
    }


def tables(rows: list[dict[str, Any]], settings: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    frame = pd.DataFrame(rows)
    arms = [arm for arm in ARMS if arm in set(frame["arm"])]
    lines = [
        "# GWAS power and calibration on simulated related cohorts",
        "",
        f"`python benchmarks/gwas_power.py {' '.join(arg for arg in sys.argv[1:] if arg != '--no-run')}`".replace(
            "``", "`"
        ),
        "",
        f"n = {settings['n']}, {settings['snps']} SNPs, 4 traits, {settings['causal']} pleiotropic causal SNPs (latent "
        f"variance share {settings['causal_variance']}), 3 populations; flows: {settings['stages']} stages x "
        f"{settings['epochs']} epochs, 16 coupling layers; GRM "
        f"{'leave-one-chromosome-out' if not settings['no_loco'] else 'from every SNP'}; threshold alpha 0.05 / SNPs "
        f"tested; PLINK clumps r2 0.1, 250 kb; a locus is true within {TRUTH_WINDOW_KB:g} kb of a causal SNP (the "
        "windows' share of the genome is in the per-cohort table). lambda GC on each test's own scale: chi-square with "
        "d = 4 df for the mvLMM arms, the mean of the per-trait 1-df lambdas for `single`.",
        "",
        "Cohort types: "
        + "; ".join(
            f"`{name}`: {', '.join(f'{k} {v}' for k, v in spec.items())}" for name, spec in COHORT_TYPES.items()
        ),
    ]
    summary: dict[str, Any] = {"means": {}, "null": {}, "paired": {}}
    for cohort_type in [t for t in COHORT_TYPES if t in set(frame["type"])]:
        of_type = frame[frame["type"] == cohort_type]
        alternative, null = of_type[~of_type["null"]], of_type[of_type["null"]]
        lines += ["", f"## `{cohort_type}` cohorts"]
        if not alternative.empty:
            seeds = alternative["seed"].nunique()
            lines += [
                "",
                f"### Mean +- standard error over {seeds} seed(s)",
                "",
                "| arm | n | loci | true loci | false loci [3] | false near [1] | loci on null chr. [2] | power | "
                "FDP | lambda GC | lambda GC, null chr. [2] |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            summary["means"][cohort_type] = {}
            for arm in arms:
                of_arm = alternative[alternative["arm"] == arm]
                if of_arm.empty:
                    continue
                cells = [mean_se(of_arm[key], DECIMALS.get(key, 1)) for key in MEAN_COLUMNS]
                counted = of_arm["seed"].nunique()
                label = arm if counted == seeds else f"{arm} ({counted} of the seeds)"
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
                summary["means"][cohort_type][arm] = {
                    key: float(of_arm[key].astype(float).mean())
                    for key in MEAN_COLUMNS
                    if key not in ("loci", "false_loci_near") and key in of_arm and of_arm[key].notna().any()
                }
            differences = [
                d
                for first, second in PAIRS
                for metric in ("true_loci", "false_loci", "loci_null_chromosomes")
                if (d := paired(alternative, first, second, metric)) is not None
            ]
            summary["paired"][cohort_type] = differences
            if differences:
                lines += [
                    "",
                    "### Paired differences across seeds (same cohort)",
                    "",
                    "| difference | metric | seeds | mean +- SE | seeds > 0 / < 0 / = 0 |",
                    "|---|---|---|---|---|",
                ]
                for d in differences:
                    se = f" +- {d['se']:.2g}" if d["se"] is not None else ""
                    lines.append(
                        f"| {d['pair']} | {d['metric']} | {d['seeds']} | {d['mean']:.2f}{se} | "
                        f"{d['positive']} / {d['negative']} / {d['zero']} |"
                    )
            lines += [
                "",
                "### Per seed",
                "",
                "| cohort | arm | n | loci | true | false | on null chr. | power | FDP | lambda GC (df) | "
                "null chr. | window share |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for row in alternative.itertuples():
                lam = (
                    "-"
                    if row.lambda_gc is None or pd.isna(row.lambda_gc)
                    else f"{row.lambda_gc:.3f} ({row.lambda_gc_df})"
                )
                share = "-" if pd.isna(row.truth_window_genome_share) else f"{row.truth_window_genome_share:.1%}"
                lines.append(
                    f"| {row.cohort} | {row.arm} | {_int(row.n)} | {row.loci} | {_int(row.true_loci)} | "
                    f"{_int(row.false_loci)} | {_int(row.loci_null_chromosomes)} | {row.power:.2f} | {row.fdp:.2f} | "
                    f"{lam} | {_float(row.lambda_gc_null_snps)} | {share} |"
                )
        if not null.empty:
            lines += [
                "",
                f"### Null cohorts ({null['seed'].nunique()} seed(s)): no causal SNP, the polygenic background stays",
                "",
                "| arm | loci | loci on null chr. (false) | lambda GC | per seed | lambda GC, null chr. [2] | "
                "per seed |",
                "|---|---|---|---|---|---|---|",
            ]
            summary["null"][cohort_type] = {}
            for arm in arms:
                of_arm = null[null["arm"] == arm]
                if of_arm.empty:
                    continue
                per_seed = ", ".join(f"{value:.3f}" for value in of_arm["lambda_gc"].astype(float))
                null_per_seed = ", ".join(_float(value) for value in of_arm["lambda_gc_null_snps"])
                lines.append(
                    f"| {arm} | {mean_se(of_arm['loci'])} | {mean_se(of_arm['loci_null_chromosomes'])} | "
                    f"{mean_se(of_arm['lambda_gc'], 3)} | {per_seed} | {mean_se(of_arm['lambda_gc_null_snps'], 3)} | "
                    f"{null_per_seed} |"
                )
                summary["null"][cohort_type][arm] = {
                    "loci": float(of_arm["loci"].mean()),
                    "loci_null_chromosomes": _mean(of_arm["loci_null_chromosomes"]),
                    "lambda_gc": float(of_arm["lambda_gc"].mean()),
                    "lambda_gc_null_snps": _mean(of_arm["lambda_gc_null_snps"]),
                }
    timings = frame.drop_duplicates("cohort")[["cohort", "seconds"]]
    lines += [
        "",
        "[1] false loci within the clumping distance (250 kb) of a causal SNP: secondary clumps of a true signal, "
        "counted false by the truth window.",
        "",
        "[2] the chromosomes that carry no causal and no polygenic SNP: every locus there is false, and lambda GC over "
        "their SNPs (same test, same df) measures calibration alone. The genome-wide lambda GC also grows with true "
        "polygenic signal: with LOCO, a SNP's own chromosome's polygenic effects are left out of the GRM, and in "
        "families every SNP is linked to them over long shared segments.",
        "",
        "[3] false loci: index SNPs farther than the truth window from every one of the listed causal SNPs. The "
        "polygenic background (many SNPs of small effect, all on the effect chromosomes) is truly associated too, "
        "and with LOCO its linked signal reaches significance in families; so `false loci` and FDP count polygenic "
        "signal as false, and the false positives proper are the loci on the null chromosomes, where nothing acts.",
        "",
        "Wall time per cohort (s): " + ", ".join(f"{row.cohort} {row.seconds:.0f}" for row in timings.itertuples()),
        "",
    ]
    return "\n".join(lines), summary


def _int(value: Any) -> str:
    return "-" if value is None or pd.isna(value) else str(int(value))


def _float(value: Any) -> str:
    return "-" if value is None or pd.isna(value) else f"{float(value):.3f}"


def _mean(values: pd.Series) -> float | None:
    values = values.dropna().astype(float)
    return float(values.mean()) if not values.empty else None


def _listed(text: str, option: str, allowed: list[str] | None = None) -> list[str]:
    """A comma-separated option value as a list, each item checked against ``allowed``
    (``option``: the name an error gives; empty in a callback, where click names it)."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    for item in items:
        if allowed is not None and item not in allowed:
            raise typer.BadParameter(f"{item!r}: choose from {', '.join(allowed)}", param_hint=option or None)
    return items


def _checked(allowed: list[str] | None = None, seeds: bool = False, empty: bool = False) -> Callable[[str], str]:
    """A Typer callback for a comma-separated option: each item one of ``allowed``, or a seed
    (a whole number >= 0); at least one item unless ``empty``."""

    def check(text: str) -> str:
        items = _listed(text, "", allowed)
        if not items and not empty:
            raise typer.BadParameter("give at least one value")
        for item in items if seeds else []:
            if not item.isdigit():
                raise typer.BadParameter(f"{item!r}: each seed is a whole number >= 0")
        return text

    return check


def main(
    seeds: str = typer.Option(
        ",".join(map(str, range(1, 11))), "--seeds", callback=_checked(seeds=True), help="comma-separated cohort seeds"
    ),
    null_seeds: str = typer.Option(
        "101,102,103",
        "--null-seeds",
        callback=_checked(seeds=True, empty=True),
        help="comma-separated seeds of null cohorts ('' for none)",
    ),
    cohorts: str = typer.Option(
        ",".join(COHORT_TYPES),
        "--cohorts",
        callback=_checked(list(COHORT_TYPES)),
        help=f"comma-separated, of {', '.join(COHORT_TYPES)}",
    ),
    arms: str = typer.Option(
        ",".join(ARMS), "--arms", callback=_checked(ARMS), help=f"comma-separated, of {', '.join(ARMS)}"
    ),
    n: int = typer.Option(2000, "--n", min=20, help="individuals (flowpheno simulate --n)"),
    snps: int = typer.Option(20000, "--snps", min=100),
    causal: int = typer.Option(30, "--causal", min=0),
    causal_variance: float = typer.Option(0.2, "--causal-variance", min=0.0, max=1.0),
    epochs: int = typer.Option(25, "--epochs", min=1),
    stages: int = typer.Option(4, "--stages", min=1),
    no_loco: bool = typer.Option(False, "--no-loco", help="one GRM from every SNP (config gwas.loco: false)"),
    cores: int = typer.Option(2, "--cores", min=1),
    no_run: bool = typer.Option(
        False, "--no-run", help="run nothing: rebuild the tables from the rows on record, listing the cohorts missing"
    ),
    workdir: Path = typer.Option(ROOT / "benchmarks" / "work" / "gwas_power", "--workdir"),
    out: Path = typer.Option(
        RESULTS, "--out", help="folder for gwas_power.{md,json} and gwas_power_rows.jsonl (resumed)"
    ),
) -> None:
    workdir, out = workdir.resolve(), out.resolve()  # snakemake runs in --directory: relative paths would nest
    settings: dict[str, Any] = {
        "seeds": [int(seed) for seed in _listed(seeds, "--seeds")],
        "null_seeds": [int(seed) for seed in _listed(null_seeds, "--null-seeds")],
        "cohorts": _listed(cohorts, "--cohorts", list(COHORT_TYPES)),
        "arms": _listed(arms, "--arms", ARMS),
        "n": n,
        "snps": snps,
        "causal": causal,
        "causal_variance": causal_variance,
        "epochs": epochs,
        "stages": stages,
        "no_loco": no_loco,
        "cores": cores,
        "workdir": str(workdir),
        "out": str(out),
        "truth_window_kb": TRUTH_WINDOW_KB,
    }
    if not no_run:
        workdir.mkdir(parents=True, exist_ok=True)
        out.mkdir(parents=True, exist_ok=True)

    fit = {
        "epochs": epochs,
        "stages": stages,
        "layers": 16,
        "hidden": 128,
        "batch_size": 256,
        "seed": 1,
        "device": "cpu",
        **PINNED_FIT,
    }
    gwas = {"loco": not no_loco, "truth_window_kb": TRUTH_WINDOW_KB}
    rows_path = out / "gwas_power_rows.jsonl"
    rows = read_rows(rows_path)
    # null cohorts first: their calibration decides how every other number reads
    plan = [(cohort_type, seed, True) for cohort_type in settings["cohorts"] for seed in settings["null_seeds"]]
    plan += [(cohort_type, seed, False) for cohort_type in settings["cohorts"] for seed in settings["seeds"]]
    wanted, missing = [], []
    for cohort_type, seed, null in plan:
        simulate = {"n": n, "snps": snps, "traits": 4, **COHORT_TYPES[cohort_type], "seed": seed}
        simulate |= {"null": True} if null else {"causal": causal, "causal_variance": causal_variance}
        workflow_arms = [arm for arm in settings["arms"] if arm not in VARIANTS]
        runs = [(workflow_arms, fit, None)] if workflow_arms else []
        runs += [([VARIANTS[arm][0]], fit | VARIANTS[arm][1], arm) for arm in settings["arms"] if arm in VARIANTS]
        for arms_run, fit_run, variant in runs:
            key = settings_key({"simulate": simulate, "fit": key_settings(fit_run), "gwas": gwas, "arms": arms_run})
            name = f"{cohort_type}_{'null' if null else 'seed'}{seed}{f'_{variant}' if variant else ''}_{key}"
            wanted.append(key)
            if any(row.get("key") == key for row in rows):
                print(f"{name}: {'on record' if no_run else 'done before, skipped'}", flush=True)
                continue
            if no_run:
                print(f"{name}: not run yet, left out of the tables (--no-run)", flush=True)
                missing.append(name)
                continue
            cohort_rows, seconds = run_cohort(workdir, name, simulate, arms_run, fit_run, gwas, cores)
            finished = [
                {"cohort": name, "key": key, "type": cohort_type, "seed": seed, "null": null, "seconds": seconds}
                | row
                | ({"arm": variant} if variant else {})
                for row in cohort_rows
            ]
            with rows_path.open("a") as handle:  # appended as each cohort finishes: an interrupted run resumes here
                handle.write("".join(json.dumps(row) + "\n" for row in finished))
            rows += finished
            print(f"{name}: {seconds:.0f} s", flush=True)

    chosen = [row for row in rows if row.get("key") in wanted]
    if not chosen:
        raise SystemExit(f"error: {rows_path} holds no row of these cohorts; run them without --no-run first")
    markdown, summary = tables(chosen, settings)
    if missing:
        markdown += f"\nNot run yet, so left out of these tables ({len(missing)}): {', '.join(missing)}.\n"
    write_results(
        out,
        {
            "gwas_power.md": markdown,
            "gwas_power.json": {
                "command": ["benchmarks/gwas_power.py", *sys.argv[1:]],
                "settings": settings,
                "versions": package_versions(),
                **summary,
                "not_run": missing,
                "rows": chosen,
            },
        },
        default=str,
    )
    print(markdown)


if __name__ == "__main__":
    script(main, __doc__)
