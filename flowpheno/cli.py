"""Command line: ``flowpheno grm | fit | transform``. Parses, calls the library, reports."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.text import Text
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from flowpheno import __version__
from flowpheno.errors import FlowphenoError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Relatedness-aware normalizing flows for multivariate GWAS.")
console = Console(stderr=True)


def _device(requested: Optional[str]) -> str:
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise FlowphenoError("--device cuda: this torch build sees no CUDA GPU; install the CUDA build (README) or use --device cpu")
    if requested != "cpu" and not requested.startswith("cuda"):
        raise FlowphenoError(f"--device {requested!r}: use cpu or cuda")
    return requested


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise FlowphenoError(f"{option} {text!r}: give comma-separated numbers, e.g. 0,0.1,0.5") from None


class _FitProgress:
    """Rich progress bars fed by the training callback: runs/stages and epochs."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.stage_task: Any = None
        self.epoch_task: Any = None

    def __call__(self, record: dict[str, Any]) -> None:
        event = record["event"]
        if event == "plan":
            total_stages = record["stages"] * record["runs"]
            label = "s2 grid runs x stages" if record["runs"] > 1 else "stages"
            self.stage_task = self.progress.add_task(label, total=total_stages)
            self.epoch_task = self.progress.add_task("epochs", total=total_stages * record["epochs"])
        elif event == "epoch" and self.epoch_task is not None:
            val = record.get("val_nll")
            detail = f"train {record['train_nll']:.3f}" + (f" val {val:.3f}" if val is not None else "")
            if "s2" in record:
                detail += f" s2 {record['s2']:.3f}"
            self.progress.update(self.epoch_task, advance=1, description=f"epochs ({detail})")
        elif event == "stage" and self.stage_task is not None and record["stage"] not in (0, "final"):
            self.progress.update(self.stage_task, advance=1)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


@app.command()
def grm(
    bfile: Path = typer.Option(..., "--bfile", help="PLINK 1 prefix (.bed/.bim/.fam)"),
    out: Path = typer.Option(..., "--out", help="output kinship: .npz (K, ids) or GEMMA-style .txt (+ .ids)"),
    maf: float = typer.Option(0.01, "--maf", help="skip SNPs with minor allele frequency below this (GEMMA default)"),
    max_missing: float = typer.Option(0.05, "--max-missing", help="skip SNPs missing in more than this share (GEMMA default)"),
) -> None:
    """Centred genetic relatedness matrix, as GEMMA -gk 1 computes it."""
    import numpy as np

    from flowpheno.io.atomic import atomic_path
    from flowpheno.io.kinship import write_npz
    from flowpheno.io.plink import centred_grm

    with console.status(f"computing the centred GRM from {bfile}"):
        matrix, ids, used = centred_grm(bfile, maf=maf, max_missing=max_missing)
    if str(out).endswith(".txt"):
        with atomic_path(out) as tmp:
            np.savetxt(tmp, matrix, fmt="%.10g", delimiter="\t")
        with atomic_path(str(out) + ".ids") as tmp:
            tmp.write_text("\n".join(ids) + "\n")
    else:
        write_npz(out, matrix, ids)
    console.print(f"wrote {out}: {len(ids)} individuals, {used} SNPs (MAF >= {maf}, missingness <= {max_missing})")


@app.command()
def fit(
    pheno: Path = typer.Option(..., "--pheno", help="phenotypes: FID, IID, traits (tsv/csv/whitespace or parquet)"),
    out: Path = typer.Option(..., "--out", help="run directory to write"),
    grm: Optional[Path] = typer.Option(None, "--grm", help="kinship: .npz, GEMMA .cXX/.sXX.txt, GCTA .grm.bin, or PLINK prefix"),
    grm_ids: Optional[Path] = typer.Option(None, "--grm-ids", "--fam", help="row IDs of a GEMMA kinship (.fam or ID list)"),
    covar: Optional[Path] = typer.Option(None, "--covar", help="covariates projected out by least squares before the flow"),
    traits: Optional[str] = typer.Option(None, "--traits", help="comma-separated trait columns (default: every numeric column)"),
    mode: str = typer.Option("alternating", "--mode", help="iid | grid | alternating | joint"),
    s2_grid: str = typer.Option("0,0.01,0.1,0.25,0.5", "--s2-grid", help="s2 values tried by --mode grid"),
    epochs: int = typer.Option(25, "--epochs", min=1, help="flow epochs per stage"),
    stages: int = typer.Option(4, "--stages", min=1, help="stages (alternating: flow epochs then an s2 update)"),
    layers: int = typer.Option(16, "--layers", min=1, help="coupling layers"),
    hidden: int = typer.Option(128, "--hidden", min=1, help="hidden units of each conditioner layer"),
    batch_size: int = typer.Option(256, "--batch-size", min=2, help="mini-batch size"),
    lr: float = typer.Option(1e-3, "--lr", help="Adamax learning rate of the flow"),
    weight_decay: float = typer.Option(1e-6, "--weight-decay", help="weight decay on flow weights (never on s2)"),
    val_frac: float = typer.Option(0.15, "--val-frac", help="share of individuals held out for validation NLL"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)"),
    seed: int = typer.Option(0, "--seed", help="random seed (same seed on CPU gives the same numbers)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """Train the flow and write Gaussianized phenotypes, model, fit.json and diagnostics."""
    from flowpheno.pipeline import FitConfig, fit_phenotypes
    from flowpheno.train import TrainConfig

    config = FitConfig(
        traits=[t.strip() for t in traits.split(",") if t.strip()] if traits else None,
        mode=mode,
        s2_grid=_floats(s2_grid, "--s2-grid"),
        layers=layers,
        hidden=hidden,
        val_frac=val_frac,
        device=_device(device),
        train=TrainConfig(epochs=epochs, stages=stages, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed),
    )
    with _progress() as progress:
        callback = None if quiet else _FitProgress(progress)
        _, table, report = fit_phenotypes(
            pheno, grm, covar, config, out=out, grm_ids=grm_ids, callback=callback, command=sys.argv
        )
    dropped = sum(entry["count"] for entry in report["dropped"].values())
    summary = f"fitted {report['d']} traits on {report['n_used']} individuals ({dropped} dropped, see fit.json)"
    if "s2" in report["covariance"]:
        summary += f"; s2 = {report['covariance']['s2']:.3f}"
    console.print(f"{summary}\nwrote {out}/gaussianized.tsv, model, fit.json, diagnostics.png")


@app.command()
def transform(
    model: Path = typer.Option(..., "--model", help="run directory written by flowpheno fit"),
    pheno: Path = typer.Option(..., "--pheno", help="phenotypes with the model's trait columns"),
    out: Path = typer.Option(..., "--out", help="output file"),
    fmt: str = typer.Option("tsv", "--format", help="tsv | gemma (GEMMA -p, needs --fam) | parquet"),
    fam: Optional[Path] = typer.Option(None, "--fam", help="order rows like this .fam (required for --format gemma)"),
    covar: Optional[Path] = typer.Option(None, "--covar", help="covariates, if the model was fitted with them"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda"),
) -> None:
    """Gaussianize phenotypes with a fitted model."""
    from flowpheno.io.outputs import write_phenotypes
    from flowpheno.pipeline import transform_phenotypes

    table = transform_phenotypes(model, pheno, covar, device=_device(device))
    write_phenotypes(table, out, fmt, fam)
    complete = int(table.drop(columns=["FID", "IID"]).notna().all(axis=1).sum())
    console.print(f"wrote {out} ({fmt}): {complete} of {len(table)} individuals Gaussianized")


def _version(value: bool) -> None:
    if value:
        print(f"flowpheno {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version")) -> None:
    """Relatedness-aware normalizing flows for multivariate GWAS."""


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 1."""
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    warnings.showwarning = lambda message, *_, **__: console.print(Text("warning: ", "yellow") + Text(str(message)))
    try:
        app(standalone_mode=False)
    except FlowphenoError as error:
        console.print(Text("error: ", "bold red") + Text(str(error)), soft_wrap=True)
        sys.exit(1)
    except (typer.Exit, SystemExit) as done:
        sys.exit(getattr(done, "exit_code", getattr(done, "code", 0)))
    except Exception as error:  # click usage errors
        import click

        if isinstance(error, click.ClickException):
            error.show()
            sys.exit(error.exit_code)
        raise


if __name__ == "__main__":
    main()
