"""Command line: ``flowpheno grm | fit | transform``. Parses, calls the library, reports."""

from __future__ import annotations

import sys
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.text import Text

from flowpheno import __version__
from flowpheno.config import FLAGS, flag_name, worded
from flowpheno.errors import FlowphenoError, OptionError
from flowpheno.gwas import TRUTH_WINDOW_KB
from flowpheno.progress import fit_progress, progress_bars


def _flags_without_placeholder() -> None:
    """Show flags as flags in ``--help``: typer 0.29's rich help prints a value placeholder
    (``--quiet <bool>``) after options that take no value, where its plain help (and click)
    print none. Older typer has no ``display_type_rich`` and needs nothing."""
    option = getattr(getattr(typer, "core", None), "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if shown is None or getattr(shown, "flowpheno_flags", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        return None if getattr(self, "is_flag", False) else shown(self, ctx)

    display_type_rich.flowpheno_flags = True  # type: ignore[attr-defined]
    option.display_type_rich = display_type_rich


_flags_without_placeholder()
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Relatedness-aware normalizing flows for multivariate GWAS.",
)
console = Console(stderr=True, soft_wrap=True)  # a log file gets whole lines, not lines cut at 80 columns


def _device(requested: str | None) -> str:
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise FlowphenoError(
            "--device cuda: this torch build sees no CUDA GPU; install the CUDA build (README) or use --device cpu"
        )
    if requested != "cpu" and not requested.startswith("cuda"):
        raise OptionError(f"--device {requested!r}: use cpu or cuda")
    return requested


def _plink_members(prefix: Path) -> list[Path]:
    """The .bed/.bim/.fam of a PLINK 1 prefix (given with or without one of those suffixes)."""
    name = str(prefix)
    stem = next((name[: -len(s)] for s in (".bed", ".bim", ".fam") if name.endswith(s)), name)
    return [Path(stem + suffix) for suffix in (".bed", ".bim", ".fam")]


def _floats(text: str, option: str) -> list[float]:
    items = text.split(",")
    if any(not item.strip() for item in items):
        raise OptionError(
            f"{option} {text!r}: an empty value between commas; give comma-separated numbers, e.g. 0,0.1,0.5"
        )
    try:
        return [float(item) for item in items]
    except ValueError:
        raise OptionError(f"{option} {text!r}: give comma-separated numbers, e.g. 0,0.1,0.5") from None


def _fit_option(field: str) -> Any:
    """The ``flowpheno fit`` option that sets ``field`` of FitConfig/TrainConfig: flag, default and
    help from :data:`flowpheno.config.FLAGS` (the default is the dataclass's, never restated here)."""
    flag = FLAGS[field]
    return typer.Option(flag.command_line_default, flag.declaration, help=flag.full_help)


THREADS_HELP = (
    "CPU threads for torch and BLAS/OpenMP (default: the CPUs this process may use: its CPU affinity, "
    "or SLURM_CPUS_PER_TASK or OMP_NUM_THREADS when smaller)"
)


def _threads_option() -> Any:
    return typer.Option(None, "--threads", min=1, help=THREADS_HELP)


def _tool_threads(threads: int | None) -> None:
    """GEMMA and PLINK, run by the ``gwas`` commands, get ``--threads`` through
    ``OMP_NUM_THREADS`` (:func:`flowpheno.gwas.tools.run_logged` reads it)."""
    if threads is not None:
        import os

        os.environ["OMP_NUM_THREADS"] = str(threads)


def _progress() -> Progress:
    return progress_bars(console)


@app.command()
def grm(
    bfile: Path = typer.Option(..., "--bfile", help="PLINK 1 prefix (.bed/.bim/.fam)"),
    out: Path = typer.Option(
        ..., "--out", help="output kinship: .npz (K, ids, fids) or GEMMA-style .txt (+ .ids: FID IID per row)"
    ),
    maf: float = typer.Option(0.01, "--maf", help="skip SNPs with minor allele frequency below this (GEMMA default)"),
    max_missing: float = typer.Option(
        0.05, "--max-missing", help="skip SNPs missing in more than this share (GEMMA default)"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace --out (and its sidecar files) if it exists"),
    threads: int | None = _threads_option(),
) -> None:
    """Centred genetic relatedness matrix, as GEMMA -gk 1 computes it."""
    import numpy as np

    from flowpheno.io.atomic import atomic_path, check_file_output
    from flowpheno.io.kinship import write_npz
    from flowpheno.io.plink import centred_grm, sample_fids
    from flowpheno.threads import thread_limits

    inputs = {"--bfile": _plink_members(bfile)}
    check_file_output(out, inputs, overwrite=overwrite)
    if str(out).endswith(".txt"):
        check_file_output(str(out) + ".ids", inputs, overwrite=overwrite)
    with console.status(f"computing the centred GRM from {bfile}"), thread_limits(threads):
        matrix, ids, used = centred_grm(bfile, maf=maf, max_missing=max_missing)
    fids = sample_fids(bfile)
    if str(out).endswith(".txt"):
        with atomic_path(out) as tmp:
            np.savetxt(tmp, matrix, fmt="%.10g", delimiter="\t")
        with atomic_path(str(out) + ".ids") as tmp:  # FID IID per row, as GCTA's .grm.id
            tmp.write_text("".join(f"{fid}\t{iid}\n" for fid, iid in zip(fids, ids, strict=True)))
    else:
        write_npz(out, matrix, ids, fids)
    console.print(f"wrote {out}: {len(ids)} individuals, {used} SNPs (MAF >= {maf}, missingness <= {max_missing})")


@app.command()
def fit(
    pheno: Path = typer.Option(..., "--pheno", help="phenotypes: FID, IID, traits (tsv/csv/whitespace or parquet)"),
    out: Path = typer.Option(..., "--out", help="run directory to write"),
    grm: Path | None = typer.Option(
        None, "--grm", help="kinship: .npz, GEMMA .cXX/.sXX.txt, GCTA .grm.bin, or PLINK prefix"
    ),
    grm_ids: Path | None = typer.Option(
        None, "--grm-ids", "--fam", help="row IDs of a GEMMA kinship (.fam or ID list)"
    ),
    grm_pcs: Path | None = typer.Option(
        None, "--grm-pcs", help="low-rank kinship: correlation of individuals' PCs (FID, IID, PC1..PCr)"
    ),
    grm_factor: Path | None = typer.Option(
        None,
        "--grm-factor",
        help="low-rank kinship: standardised genotypes of a PLINK prefix with fewer SNPs than individuals",
    ),
    covar: Path | None = typer.Option(
        None, "--covar", help="covariates projected out by least squares before the flow"
    ),
    traits: str | None = _fit_option("traits"),
    categorical: str | None = _fit_option("categorical"),
    keep_outliers: bool = _fit_option("keep_outliers"),
    mode: str = _fit_option("mode"),
    s2_grid: str = _fit_option("s2_grid"),
    epochs: int = _fit_option("epochs"),
    stages: int = _fit_option("stages"),
    layers: int = _fit_option("layers"),
    hidden: int = _fit_option("hidden"),
    batch_size: int = _fit_option("batch_size"),
    lr: float = _fit_option("lr"),
    weight_decay: float = _fit_option("weight_decay"),
    val_frac: float = _fit_option("val_frac"),
    device: str | None = _fit_option("device"),
    seed: int = _fit_option("seed"),
    patience: int | None = _fit_option("patience"),
    objective: str = _fit_option("objective"),
    scale_step: bool | None = _fit_option("profile_scale"),
    quiet: bool = typer.Option(
        False,
        "--quiet",
        help="no progress (default: bars on a terminal, a line every 15 s and per stage in a log file)",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="replace --out if it holds an earlier flowpheno run (never another folder)"
    ),
    threads: int | None = _threads_option(),
) -> None:
    """Train the flow and write Gaussianized phenotypes, model, fit.json and diagnostics."""
    from flowpheno.pipeline import FitConfig, fit_phenotypes
    from flowpheno.train import TrainConfig

    grid = _floats(s2_grid, "--s2-grid")
    config = FitConfig(
        traits=[t.strip() for t in traits.split(",") if t.strip()] if traits else None,
        mode=mode,
        s2_grid=grid,
        layers=layers,
        hidden=hidden,
        val_frac=val_frac,
        device=_device(device),
        categorical=[c.strip() for c in categorical.split(",") if c.strip()] if categorical else None,
        keep_outliers=keep_outliers,
        threads=threads,
        train=TrainConfig(
            epochs=epochs,
            stages=stages,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            seed=seed,
            patience=patience,
            objective=objective,
            profile_scale=scale_step,
        ),
    )
    if mode != "grid" and grid != FLAGS["s2_grid"].default:  # values checked above; a grid no mode reads
        raise OptionError(
            f"--s2-grid {s2_grid}: the values of --mode grid, not of --mode {mode}; drop it or add --mode grid"
        )
    with nullcontext(None) if quiet else fit_progress(console) as callback:  # bars on a terminal, lines in a log
        _, table, report = fit_phenotypes(
            pheno,
            grm,
            covar,
            config,
            out=out,
            grm_ids=grm_ids,
            callback=callback,
            command=sys.argv,
            grm_pcs=grm_pcs,
            grm_factor=grm_factor,
            overwrite=overwrite,
            progress=False,
        )
    summary = (
        f"fitted {report.d} traits on {report.n_used} individuals ({report.dropped_count} dropped, see fit.json); "
        f"{report.final_state}"
    )
    console.print(
        f"{summary}\nwrote {out}/gaussianized.tsv, model, fit.json, split.tsv, diagnostics.png", soft_wrap=True
    )


@app.command()
def transform(
    model: Path = typer.Option(..., "--model", help="run directory written by flowpheno fit"),
    pheno: Path = typer.Option(..., "--pheno", help="phenotypes with the model's trait columns"),
    out: Path = typer.Option(..., "--out", help="output file"),
    fmt: str = typer.Option("tsv", "--format", help="tsv | gemma (GEMMA -p, needs --fam) | parquet"),
    fam: Path | None = typer.Option(None, "--fam", help="order rows like this .fam (required for --format gemma)"),
    covar: Path | None = typer.Option(None, "--covar", help="covariates, if the model was fitted with them"),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda"),
    keep_outliers: bool = typer.Option(False, "--keep-outliers", help="transform values beyond 100 training SDs too"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace --out (and its sidecar files) if it exists"),
    threads: int | None = _threads_option(),
) -> None:
    """Gaussianize phenotypes with a fitted model."""
    from flowpheno.io.atomic import check_file_output
    from flowpheno.io.outputs import write_phenotypes
    from flowpheno.pipeline import transform_phenotypes

    fileset = (
        [fam.with_suffix(suffix) for suffix in (".bed", ".bim")] if fam is not None else []
    )  # read by GEMMA with the output
    check_file_output(
        out,
        {"--model": model, "--pheno": pheno, "--covar": covar, "--fam": [fam, *fileset] if fam else None},
        overwrite=overwrite,
    )
    table = transform_phenotypes(
        model, pheno, covar, device=_device(device), keep_outliers=keep_outliers, threads=threads
    )
    written = write_phenotypes(
        table, out, fmt, fam, source=str(pheno)
    )  # the rows actually written, in the file's order
    complete = int(written.drop(columns=["FID", "IID"]).notna().all(axis=1).sum())
    console.print(f"wrote {out} ({fmt}): {complete} of {len(written)} individuals Gaussianized")


@app.command()
def simulate(
    out: Path = typer.Option(
        ..., "--out", help="directory for cohort.bed/bim/fam, pheno.tsv, oracle.tsv, covar.tsv, truth.tsv"
    ),
    n: int = typer.Option(2000, "--n", min=20, help="individuals (families of --generations generations)"),
    snps: int = typer.Option(20000, "--snps", min=100, help="SNPs kept (MAF >= 0.05, thinned at random)"),
    traits: int = typer.Option(4, "--traits", min=1, help="traits"),
    causal: int = typer.Option(30, "--causal", min=0, help="causal SNPs (pleiotropic)"),
    null: bool = typer.Option(False, "--null", help="no causal SNPs: a calibration cohort"),
    populations: int = typer.Option(3, "--populations", min=1, help="populations split from one ancestor"),
    chromosomes: int = typer.Option(5, "--chromosomes", min=1, help="chromosomes of 10 Mb"),
    null_chromosomes: int = typer.Option(
        0,
        "--null-chromosomes",
        min=0,
        help="the last K chromosomes carry no causal and no polygenic SNP: null SNPs whose lambda GC "
        "measures calibration (gwas evaluate --null-chromosomes)",
    ),
    causal_variance: float = typer.Option(0.2, "--causal-variance", help="share of latent variance from causal SNPs"),
    generations: int = typer.Option(
        3,
        "--generations",
        min=3,
        help="generations per family (3: grandparents unsampled, children, grandchildren; more: deeper pedigrees)",
    ),
    family_size: int = typer.Option(
        2,
        "--family-size",
        min=1,
        help="children of each founder couple, and the mean number of children of every other couple",
    ),
    seed: int = typer.Option(1, "--seed", help="random seed"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace --out if it holds an earlier simulated cohort"),
    threads: int | None = _threads_option(),
) -> None:
    """Simulate a related, structured cohort with non-Gaussian pleiotropic traits and known truth."""
    if null_chromosomes >= chromosomes:
        raise OptionError(
            f"--null-chromosomes {null_chromosomes}: give fewer than --chromosomes ({chromosomes}); "
            "at least one chromosome must carry the effects"
        )
    from flowpheno.io.atomic import StagedDirectory
    from flowpheno.simulate.cohort import SIMULATED_FILES, write_simulated_cohort
    from flowpheno.threads import thread_limits

    with StagedDirectory(out, "simulate", overwrite=overwrite, legacy=SIMULATED_FILES) as staged:
        with console.status(f"simulating {n} individuals with msprime"), thread_limits(threads):
            structure = write_simulated_cohort(
                staged.path,
                n=n,
                snps=snps,
                traits=traits,
                causal=0 if null else causal,
                populations=populations,
                chromosomes=chromosomes,
                causal_variance=causal_variance,
                seed=seed,
                generations=generations,
                family_size=family_size,
                null_chromosomes=null_chromosomes,
            )
        staged.commit()
    null = f"; chromosomes {','.join(structure['null_chromosomes'])} carry no effect" if null_chromosomes else ""
    console.print(
        f"wrote {out}: {structure['individuals']} individuals in {structure['families']} families, "
        f"{structure['snps']} SNPs, {structure['causal_snps']} causal, "
        f"{structure['share_pairs_kinship_ge_0.1']:.1%} of pairs with kinship >= 0.1{null}"
    )


gwas_app = typer.Typer(no_args_is_help=True, help="GWAS workflow steps: GEMMA, baseline, clumping, report.")
app.add_typer(gwas_app, name="gwas")


def _columns(text: str) -> list[int]:
    try:
        columns = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise FlowphenoError(f"--columns {text!r}: give 1-based column numbers, e.g. 1,2,3") from None
    repeated = sorted({column for column in columns if columns.count(column) > 1})
    if repeated:
        raise FlowphenoError(f"--columns {text!r}: column {repeated[0]} is named twice; name each trait once")
    return columns


def _check_evaluate_options(
    threshold: str, alpha: float, r2: float, kb: int, window_kb: float, test: str | None
) -> None:
    """``gwas evaluate``'s numbers, checked before any work: PLINK 1.9 ``--clump-r2`` takes
    [0, 1) and ``--clump-kb`` at least 1; a p-value threshold is in (0, 1]. Raises
    :class:`OptionError` (exit 2) naming the option."""
    from flowpheno.gwas.evaluate import TESTS

    if threshold.lower() != "bonferroni":
        try:
            value = float(threshold)
        except ValueError:
            value = float("nan")
        if not 0 < value <= 1:  # also NaN
            raise OptionError(f"--threshold {threshold!r}: give a p-value in (0, 1], e.g. 5e-8, or bonferroni")
    if not 0 < alpha < 1:
        raise OptionError(f"--alpha {alpha:g}: give a family-wise error rate in (0, 1), e.g. 0.05")
    if not 0 <= r2 < 1:
        raise OptionError(f"--r2 {r2:g}: give an LD r2 in [0, 1) (PLINK 1.9 --clump-r2), e.g. 0.1")
    if kb < 1:
        raise OptionError(f"--kb {kb}: give a clumping window of at least 1 kb (PLINK 1.9 --clump-kb), e.g. 250")
    if not 0 <= window_kb < float("inf"):
        raise OptionError(f"--truth-window-kb {window_kb:g}: give a distance of 0 kb or more, e.g. 40")
    if test is not None and test not in TESTS:
        raise OptionError(f"--test {test!r}: choose {' or '.join(TESTS)}")


def _null_chromosomes(text: str | None) -> list[str] | None:
    """``--null-chromosomes 4,5`` as a list; None when not given."""
    if text is None:
        return None
    names = [item.strip() for item in text.split(",") if item.strip()]
    if not names:
        raise OptionError(f"--null-chromosomes {text!r}: give comma-separated chromosome names, e.g. 4,5")
    return names


@gwas_app.command("prepare")
def gwas_prepare(
    bfile: Path = typer.Option(..., "--bfile", help="PLINK 1 prefix of the cohort"),
    out: Path = typer.Option(..., "--out", help="prefix of the fileset to write (.bed/.bim/.fam, .excluded.tsv, .log)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace the files of --out if they exist"),
    threads: int | None = _threads_option(),
) -> None:
    """The fileset every GWAS step reads: sorted by PLINK, no SNP at a negative position (-9) or on chromosome 0."""
    _tool_threads(threads)
    from flowpheno.gwas.fileset import FILESET_SUFFIXES, describe_fileset, prepare_fileset
    from flowpheno.io.atomic import check_file_output

    inputs = {"--bfile": _plink_members(bfile)}
    for suffix in FILESET_SUFFIXES:
        check_file_output(Path(f"{out}{suffix}"), inputs, overwrite=overwrite)
    summary = prepare_fileset(bfile, out)
    console.print("wrote " + describe_fileset(summary, bfile, out))


@gwas_app.command("grm")
def gwas_grm(
    bfile: Path = typer.Option(..., "--bfile", help="PLINK 1 prefix"),
    out: Path = typer.Option(..., "--out", help="GEMMA kinship to write (.cXX.txt)"),
    loco: str | None = typer.Option(None, "--loco", help="leave this chromosome out: the GRM of every SNP not on it"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace --out (and its sidecar files) if it exists"),
    threads: int | None = _threads_option(),
) -> None:
    """Centred GRM with GEMMA -gk 1 over every individual of the fileset."""
    _tool_threads(threads)
    from flowpheno.gwas.gemma import gemma_grm
    from flowpheno.io.atomic import check_file_output

    inputs = {"--bfile": _plink_members(bfile)}
    check_file_output(out, inputs, overwrite=overwrite)
    check_file_output(out.with_suffix(".log"), inputs, overwrite=overwrite)
    gemma_grm(bfile, out, loco=loco)
    console.print(f"wrote {out}" + (f" (every chromosome but {loco})" if loco is not None else ""))


@gwas_app.command("rint")
def gwas_rint(
    pheno: Path = typer.Option(..., "--pheno"),
    fam: Path = typer.Option(..., "--fam", help="row order of the GEMMA phenotype file"),
    out: Path = typer.Option(..., "--out", help="GEMMA -p file to write"),
    covar: Path | None = typer.Option(None, "--covar"),
    traits: str | None = typer.Option(None, "--traits", help="comma-separated trait columns"),
    no_rank: bool = typer.Option(
        False,
        "--no-rank",
        help="write the covariate residuals without the rank-inverse-normal step (traits already Gaussian, e.g. a "
        "simulated cohort's oracle.tsv)",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace --out (and its sidecar files) if it exists"),
) -> None:
    """Baseline: covariates out, then rank-inverse-normal per trait, as a GEMMA -p file."""
    from flowpheno.gwas.steps import write_rint_phenotypes
    from flowpheno.io.atomic import check_file_output

    check_file_output(out, {"--pheno": pheno, "--fam": fam, "--covar": covar}, overwrite=overwrite)
    chosen = [t.strip() for t in traits.split(",")] if traits else None
    table = write_rint_phenotypes(pheno, out, fam, covar, chosen, rank=not no_rank)
    complete = int(table.drop(columns=["FID", "IID"]).notna().all(axis=1).sum())
    console.print(f"wrote {out}: {table.shape[1] - 2} traits, {complete} of {len(table)} .fam individuals with values")


@gwas_app.command("assoc")
def gwas_assoc(
    bfile: Path = typer.Option(..., "--bfile"),
    kinship: Path = typer.Option(..., "--kinship", help="GEMMA kinship (.cXX.txt)"),
    pheno: Path = typer.Option(..., "--pheno", help="GEMMA -p file"),
    columns: str = typer.Option(..., "--columns", help="1-based phenotype columns, e.g. 1,2,3,4"),
    out: Path = typer.Option(..., "--out", help="association table to write (SNP, CHR, BP, P)"),
    per_trait: bool = typer.Option(
        False, "--per-trait", help="one univariate LMM per column, min p x d (the single baseline)"
    ),
    covar: Path | None = typer.Option(
        None,
        "--covar",
        help="covariates (FID, IID, columns; text columns one-hot) GEMMA adjusts every test for (-c, with an "
        "intercept); individuals with a missing covariate are left out",
    ),
    chromosome: str | None = typer.Option(
        None, "--chr", help="test only the SNPs on this chromosome (LOCO: with its --loco GRM)"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace --out (and its sidecar files) if it exists"),
    threads: int | None = _threads_option(),
) -> None:
    """GEMMA -lmm 3: multivariate over the columns, or per trait with --per-trait."""
    _tool_threads(threads)
    from flowpheno.gwas.steps import association, covariates_path
    from flowpheno.io.atomic import check_file_output

    inputs = {"--bfile": _plink_members(bfile), "--kinship": kinship, "--pheno": pheno, "--covar": covar}
    check_file_output(out, inputs, overwrite=overwrite)
    check_file_output(out.with_suffix(".log"), inputs, overwrite=overwrite)
    if covar is not None:
        check_file_output(covariates_path(out), inputs, overwrite=overwrite)
    result = association(
        bfile, kinship, pheno, _columns(columns), out, per_trait=per_trait, covar=covar, chromosome=chromosome
    )
    analysed = (
        f"{result.attrs['n_analysed']} individuals"
        if "n_analysed" in result.attrs
        else "individuals per trait " + ", ".join(map(str, result.attrs.get("n_per_trait", [])))
    )
    console.print(
        f"wrote {out}: {len(result)} SNPs"
        + (f" on chromosome {chromosome}" if chromosome is not None else "")
        + f"; {analysed} analysed"
        + (f" (covariates: {covariates_path(out)})" if covar else "")
    )


@gwas_app.command("gather")
def gwas_gather(
    parts: list[Path] = typer.Argument(
        ..., help="association tables of flowpheno gwas assoc --chr, one per chromosome"
    ),
    bfile: Path = typer.Option(..., "--bfile", help="PLINK 1 prefix the tables were computed on"),
    out: Path = typer.Option(..., "--out", help="association table to write (SNP, CHR, BP, P)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace --out if it exists"),
) -> None:
    """One association table from per-chromosome (LOCO) ones: every chromosome once, no SNP twice."""
    from flowpheno.gwas.gemma import gather_chromosomes
    from flowpheno.io.atomic import atomic_path, check_file_output

    check_file_output(out, {"--bfile": _plink_members(bfile), "PARTS": parts}, overwrite=overwrite)
    table = gather_chromosomes(parts, bfile)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    console.print(f"wrote {out}: {len(table)} SNPs from {len(parts)} chromosomes")


@gwas_app.command("evaluate")
def gwas_evaluate(
    bfile: Path = typer.Option(..., "--bfile"),
    assoc: Path = typer.Option(
        ..., "--assoc", help="association table: SNP, CHR, BP, P; or GEMMA's assoc.txt, PLINK's .assoc.linear"
    ),
    out_dir: Path = typer.Option(..., "--out-dir"),
    name: str = typer.Option(..., "--name", help="method name for tables and plots"),
    truth: Path | None = typer.Option(None, "--truth", help="truth.tsv of a simulated cohort"),
    threshold: str = typer.Option(
        "bonferroni", "--threshold", help="p threshold, or 'bonferroni' (alpha / SNPs tested)"
    ),
    alpha: float = typer.Option(0.05, "--alpha"),
    r2: float = typer.Option(0.1, "--r2", help="clumping r2"),
    kb: int = typer.Option(250, "--kb", help="clumping window (kb)"),
    window_kb: float = typer.Option(
        TRUTH_WINDOW_KB,
        "--truth-window-kb",
        help="a locus within this of a causal SNP is true (summary.json "
        "records the share of the genome these windows cover)",
    ),
    pheno: Path | None = typer.Option(
        None,
        "--pheno",
        help="the GEMMA -p file that was tested (with --columns, --test): "
        "n analysed, lambda GC on the test's own scale",
    ),
    columns: str | None = typer.Option(None, "--columns", help="its tested 1-based columns, e.g. 1,2,3,4"),
    test: str | None = typer.Option(
        None,
        "--test",
        help="mvlmm (one mvLMM over --columns: d-df lambda GC) or "
        "per-trait (gwas assoc --per-trait: per-trait 1-df lambdas)",
    ),
    covar: Path | None = typer.Option(
        None,
        "--covar",
        help="the covariates given to gwas assoc --covar: individuals with a missing one are not counted in n",
    ),
    null_chromosomes: str | None = typer.Option(
        None,
        "--null-chromosomes",
        help="comma-separated chromosomes that carry no effect (simulate --null-chromosomes; structure.json "
        "lists them): adds lambda GC over their SNPs alone, a calibration check free of polygenic signal; "
        "with --truth, a named chromosome holding a causal SNP is refused",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace --out-dir if it holds an earlier evaluation"),
    threads: int | None = _threads_option(),
) -> None:
    """PLINK clumping, loci counts (true/false with a truth file), lambda GC, Manhattan and QQ plots."""
    _check_evaluate_options(threshold, alpha, r2, kb, window_kb, test)
    _tool_threads(threads)
    from flowpheno.gwas.steps import evaluate_method

    summary = evaluate_method(
        bfile,
        assoc,
        out_dir,
        name,
        truth,
        threshold,
        alpha,
        r2,
        kb,
        window_kb,
        overwrite=overwrite,
        pheno=pheno,
        columns=_columns(columns) if columns is not None else None,
        test=test,
        covar=covar,
        null_chromosomes=_null_chromosomes(null_chromosomes),
    )
    n = f", n {summary['n']}" if "n" in summary else ""
    null = (
        f"; over null chromosomes {','.join(summary['null_chromosomes'])}: {summary['lambda_gc_null_snps']:.3f} "
        f"({summary['null_snps']} SNPs, {summary['loci_null_chromosomes']} loci)"
        if "lambda_gc_null_snps" in summary
        else ""
    )
    console.print(
        f"{name}: {summary['loci']} loci, lambda GC {summary['lambda_gc']:.3f} ({summary['lambda_gc_df']} df){n}{null}"
    )


@gwas_app.command("report")
def gwas_report(
    methods: list[Path] = typer.Argument(..., help="directories written by flowpheno gwas evaluate"),
    out_dir: Path = typer.Option(..., "--out-dir"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace report.md and loci.tsv if --out-dir holds them"),
) -> None:
    """loci.tsv and report.md comparing the methods."""
    from flowpheno.gwas.steps import write_report
    from flowpheno.io.atomic import check_folder_output

    check_folder_output(out_dir, {"METHODS": methods})
    write_report(methods, out_dir, overwrite=overwrite)
    console.print(f"wrote {out_dir}/report.md and {out_dir}/loci.tsv")


bench_app = typer.Typer(no_args_is_help=True, help="The paper's experiments, reproducible.")
app.add_typer(bench_app, name="bench")


@bench_app.command("synthetic")
def bench_synthetic(
    out: Path = typer.Option(..., "--out", help="results directory (finished runs are kept: the command resumes)"),
    shapes: str | None = typer.Option(
        None,
        "--shapes",
        help="comma-separated, of: abs, crescent, crescentcubed, sign, sinewave (default: all five; with --quick: "
        "crescent, sinewave)",
    ),
    setting: str = typer.Option("blocks,kinship", "--setting", help="blocks, kinship or both"),
    methods: str | None = typer.Option(
        None,
        "--methods",
        help="comma-separated, of: baseline, grid, joint, joint_blockbatch, alternating, alternating_strat (blocks); "
        "baseline, grid, alternating, alternating_scaled (kinship; alternating_scaled with --protocol fast only) "
        "(default: every method of the protocol)",
    ),
    seeds: int = typer.Option(10, "--seeds", min=1, help="seeds 0..N-1"),
    quick: bool = typer.Option(
        False, "--quick", help="CI size: small n, few epochs, 1 seed; crescent and sinewave unless --shapes"
    ),
    jobs: int = typer.Option(
        1, "--jobs", min=1, help="parallel processes (each gets --threads / --jobs threads, at least 1)"
    ),
    threads: int | None = _threads_option(),
    protocol: str = typer.Option(
        "paper",
        "--protocol",
        help="paper: the authors' setup (no ActNorm, tail bound per shape, batch 256, "
        "lr x weight decay sweep, 13-value grids, 100 epochs, batched members); fast: the earlier one",
    ),
    stored_only: bool = typer.Option(
        False,
        "--stored-only",
        help="train nothing: the table, results.json and figures of the finished runs in --out among those asked for",
    ),
) -> None:
    """Table 1 of the paper: 2-D shapes with dependent training data (blocks, kinship)."""
    from flowpheno.bench.run import run_synthetic

    chosen_settings = [s.strip() for s in setting.split(",") if s.strip()]
    if shapes is None:
        shapes = "crescent,sinewave" if quick else "abs,crescent,crescentcubed,sign,sinewave"
    chosen_shapes = [s.strip().lower() for s in shapes.split(",") if s.strip()]
    if not chosen_shapes:
        raise OptionError(f"--shapes {shapes!r}: name at least one of abs,crescent,crescentcubed,sign,sinewave")
    console.print(
        run_synthetic(
            out,
            chosen_settings,
            chosen_shapes,
            methods,
            seeds,
            quick,
            jobs,
            threads,
            _progress,
            protocol=protocol,
            stored_only=stored_only,
        )
    )


@bench_app.command("stocks")
def bench_stocks(
    out: Path = typer.Option(..., "--out", help="results directory"),
    prices: list[Path] = typer.Option(
        ..., "--prices", help="price files or folders (Huge Stock Market Dataset or Yahoo CSV); repeatable"
    ),
    pairs: str = typer.Option(
        "AAPL-MSFT,MA-V", "--pairs", help="comma-separated TICKER-TICKER pairs (case-insensitive)"
    ),
    start: str | None = typer.Option(None, "--start", help="first date used (YYYY-MM-DD)"),
    end: str | None = typer.Option(None, "--end", help="last date used (YYYY-MM-DD)"),
    seeds: int = typer.Option(5, "--seeds", min=1, help="seeds 0..N-1 (flow initialisation and batch order)"),
    methods: str = typer.Option("baseline,grid,joint", "--methods"),
    quick: bool = typer.Option(False, "--quick", help="CI size: small flow, few epochs, 1 seed"),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="replace --out if it holds earlier results of this command"
    ),
    threads: int | None = _threads_option(),
) -> None:
    """Stocks experiment: daily log-return pairs, one equicorrelated block per pair."""
    from flowpheno.bench.run import run_stocks

    chosen_pairs = [p.strip() for p in pairs.split(",") if p.strip()]
    console.print(
        run_stocks(out, list(prices), chosen_pairs, start, end, seeds, methods, quick, overwrite, threads, _progress)
    )


@bench_app.command("stocks-data")
def bench_stocks_data(
    out: Path = typer.Option(..., "--out", help="folder to write"),
    layout: str = typer.Option("huge", "--layout", help="huge (Stocks/aapl.us.txt) or yahoo (AAPL.csv)"),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace --out if it holds prices this command wrote"),
) -> None:
    """Write SYNTHETIC daily prices for AAPL, MSFT, MA and V (no download is possible)."""
    from flowpheno.io.atomic import StagedDirectory
    from flowpheno.simulate.prices import write_prices

    if layout not in ("huge", "yahoo"):
        raise FlowphenoError(f"--layout {layout!r}: choose huge or yahoo")
    with StagedDirectory(out, "bench stocks-data", overwrite=overwrite) as staged:
        written = write_prices(staged.path, layout, seed)
        staged.commit()
    console.print(f"wrote {len(written)} SYNTHETIC price files under {out} ({layout} layout)")


@bench_app.command("images")
def bench_images(
    out: Path = typer.Option(..., "--out", help="results directory"),
    images: Path | None = typer.Option(
        None,
        "--images",
        help="folder with one sub-folder per individual (LFW layout); default: the embedded digits dataset",
    ),
    size: int = typer.Option(16, "--size", min=4, help="images are resized to SIZE x SIZE (divisible by 4)"),
    grayscale: bool = typer.Option(
        False, "--grayscale", help="convert to one channel (the embedded dataset always is)"
    ),
    seeds: int = typer.Option(2, "--seeds", min=1),
    methods: str = typer.Option("baseline,grid,joint", "--methods"),
    quick: bool = typer.Option(False, "--quick", help="CI size: 8x8, a tiny Glow, 3 epochs, 1 seed"),
    device: str | None = typer.Option(
        None, "--device", help="cpu or cuda (default: cuda when available); metrics are computed on the CPU"
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="replace --out if it holds earlier results of this command"
    ),
    threads: int | None = _threads_option(),
) -> None:
    """Images experiment: repeated images of individuals, one equicorrelated block each."""
    from flowpheno.bench.run import run_images

    console.print(
        run_images(out, images, size, grayscale, seeds, methods, quick, _device(device), overwrite, threads, _progress)
    )


@bench_app.command("images-data")
def bench_images_data(
    out: Path = typer.Option(..., "--out", help="folder to write (LFW layout)"),
    individuals: int = typer.Option(250, "--individuals", min=2),
    size: int = typer.Option(16, "--size", min=8),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace --out if it holds images this command wrote"),
) -> None:
    """Write the embedded image dataset: scikit-learn's digits as individuals with Pareto repeats."""
    from flowpheno.io.atomic import StagedDirectory
    from flowpheno.simulate.digits import make_digit_individuals

    with StagedDirectory(out, "bench images-data", overwrite=overwrite) as staged:
        written = make_digit_individuals(staged.path, individuals=individuals, size=size, seed=seed)
        staged.commit()
    console.print(f"wrote {written} images of {individuals} individuals under {out}")


def _version(value: bool) -> None:
    if value:
        print(f"flowpheno {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version"),
) -> None:
    """Relatedness-aware normalizing flows for multivariate GWAS."""


def _usage_error_types() -> tuple[type[BaseException], ...]:
    """Click's usage exceptions: typer >= 0.16 raises its vendored copies, older typer click's own."""
    import click

    types: list[type[BaseException]] = [click.ClickException]
    try:
        from typer._click import exceptions as vendored  # typer >= 0.16 vendors click
    except ImportError:  # pragma: no cover - older typer
        pass
    else:
        types.append(vendored.ClickException)
    return tuple(types)


def _abort_types() -> tuple[type[BaseException], ...]:
    """Ctrl-C as click (``Abort``), typer (its own ``Abort``) or Python raises it."""
    import click

    types: list[type[BaseException]] = [click.exceptions.Abort, KeyboardInterrupt]
    abort = getattr(getattr(typer, "exceptions", None), "Abort", None)  # typer >= 0.16
    if isinstance(abort, type) and issubclass(abort, BaseException):
        types.append(abort)
    return tuple(types)


def _usage_line(error: BaseException) -> str:
    """One line for a usage error: the message and where to read the options."""
    message = " ".join(str(error.format_message()).split())  # type: ignore[attr-defined]
    context = getattr(error, "ctx", None)
    command = context.command_path if context is not None else "flowpheno"
    return f"{message} (see '{command} --help')"


def _contradicting_switches(args: list[str]) -> str | None:
    """The usage error for a switch given both ways (``--scale-step --no-scale-step``), which
    click would settle silently by keeping the last; None when there is none."""
    given = args[: args.index("--")] if "--" in args else args
    command = next((arg for arg in given if not arg.startswith("-")), "")
    for flag in FLAGS.values():
        if flag.negative is not None and flag.flag in given and flag.negative in given:
            return f"{flag.flag} and {flag.negative} both given; give one (see 'flowpheno {command} --help')"
    return None


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 1, usage errors
    (unknown option, bad value, missing argument, a switch given both ways) one line and exit code 2."""
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    warnings.showwarning = lambda message, *_, **__: console.print(
        Text("warning: ", "yellow") + Text(str(message)), soft_wrap=True
    )
    contradiction = _contradicting_switches(sys.argv[1:])
    if contradiction is not None:
        console.print(Text("error: ", "bold red") + Text(contradiction), soft_wrap=True)
        sys.exit(2)
    try:
        code = app(
            prog_name="flowpheno", standalone_mode=False
        )  # a command's Exit (Ctrl-C: 130) is returned, not raised
        if isinstance(code, int) and code != 0:
            if code == 130:
                console.print(Text("error: ", "bold red") + Text("interrupted; nothing was written"), soft_wrap=True)
            sys.exit(code)
    except FlowphenoError as error:
        # a value the library refused is named by its flag (--epochs 0), not its field (TrainConfig.epochs)
        message = worded(error, flag_name, command_line=True) if isinstance(error, OptionError) else str(error)
        console.print(Text("error: ", "bold red") + Text(message), soft_wrap=True)
        sys.exit(getattr(error, "exit_code", 1))  # OptionError (a value out of range): 2, as usage errors
    except (typer.Exit, SystemExit) as done:
        sys.exit(getattr(done, "exit_code", getattr(done, "code", 0)))
    except _usage_error_types() as error:
        if type(error).__name__ == "NoArgsIsHelpError":  # a bare command: show its help
            print(error.ctx.get_help())  # type: ignore[attr-defined]
            sys.exit(2)
        console.print(Text("error: ", "bold red") + Text(_usage_line(error)), soft_wrap=True)
        sys.exit(getattr(error, "exit_code", 2))
    except _abort_types():
        console.print(Text("error: ", "bold red") + Text("interrupted; nothing was written"), soft_wrap=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
