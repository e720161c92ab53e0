"""Why an adjusted method wins or loses on a blocks shape: rho error per block, and convergence.

    python benchmarks/blocks_diagnosis.py --results DIR                     # crescent and sinewave, seed 0
    python benchmarks/blocks_diagnosis.py --results DIR --shapes sinewave --seeds 0,1

DIR is a `flowpheno bench synthetic --protocol paper` folder; the runs of its `results.json`
(the last call's) are read, nothing is trained. For each blocks shape and seed, the training data are rebuilt
from the run's own sizes (the same generator), so the true `rho` and size of every block are
known. Reported per method: test NLL and its difference from the baseline of the same data;
the mean absolute and mean signed error of the learned per-block `rho` over blocks of 2+ rows,
overall and by block size; the best epoch of the chosen member (when its best-validation state
was reached) out of those trained; and, for `grid`, the validation NLL at each `rho` (best over
the lr x weight decay sweep), which says whether validation sees any gain from modelling the
dependence at all. Figure: learned vs true `rho` per block (area ~ block size) per method, and
the grid's validation curve, one row per shape.

Writes OUT/blocks_diagnosis.{json,md,png} (OUT: benchmarks/results by default).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flowpheno.bench.results import command_line, script, write_results  # noqa: E402
from flowpheno.bench.shapes import SHAPES  # noqa: E402
from flowpheno.errors import FlowphenoError  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PER_BLOCK = ("joint", "joint_blockbatch", "alternating", "alternating_strat")
SIZE_BINS = ((2, 4), (5, 19), (20, 10**9))


def _list(kind: str, allowed: tuple[str, ...] | None = None) -> Any:
    def check(text: str) -> str:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise typer.BadParameter(f"name at least one {kind}")
        for item in items:
            if allowed is not None and item not in allowed:
                raise typer.BadParameter(f"{item!r}: choose from {', '.join(allowed)}")
            if allowed is None and not item.isdigit():
                raise typer.BadParameter(f"{item!r}: each seed is a whole number >= 0")
        return text

    return check


def load_runs(results: Path, shape: str, seed: int) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The blocks runs of one shape and seed in ``results/results.json`` (a ``--protocol paper``
    call), by method, and the call's sizes.

    Raises:
        FlowphenoError: not a paper-protocol results.json, or no baseline run of that shape and seed.
    """
    path = results / "results.json"
    try:
        content = json.loads(path.read_text())
        found = content["runs"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise FlowphenoError(
            f"--results {results}: no readable results.json of flowpheno bench synthetic ({error.__class__.__name__})"
        ) from None
    if content.get("protocol") != "paper":
        raise FlowphenoError(f"--results {results}: results.json is of --protocol {content.get('protocol')}, not paper")
    runs = {r["method"]: r for r in found if r["setting"] == "blocks" and r["shape"] == shape and r["seed"] == seed}
    if "baseline" not in runs:
        raise FlowphenoError(
            f"--results {results}: results.json has no blocks {shape} baseline run of seed {seed}; "
            f"run flowpheno bench synthetic --setting blocks --shapes {shape} into it first"
        )
    return runs, content["sizes"]


def true_blocks(shape: str, seed: int, sizes: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The true ``rho`` and size of every block of the run's training data (rebuilt by the
    bench's own generator from the recorded sizes)."""
    from flowpheno.bench.synthetic import BenchSizes, make_data

    data = make_data("blocks", shape, seed, BenchSizes(**sizes), None)
    return np.asarray(data["rho"]), np.bincount(data["block_ids"])


def diagnose(runs: dict[str, dict[str, Any]], sizes: dict[str, Any]) -> dict[str, Any]:
    """One shape and seed: a row per method, the grid's validation curve, the per-block rho."""
    baseline_run = runs["baseline"]
    rho_true, block_size = true_blocks(baseline_run["shape"], baseline_run["seed"], sizes)
    repeated = block_size > 1
    baseline = runs["baseline"]["test_nll"]
    rows, learned = [], {}
    for method, record in runs.items():
        row: dict[str, Any] = {
            "method": method,
            "test_nll": record["test_nll"],
            "vs_baseline": record["test_nll"] - baseline,
            "best_epoch": record["best_epoch"],
            "epochs_trained": record["epochs_trained"],
            "lr": record["lr"],
            "weight_decay": record["weight_decay"],
        }
        rho = record["covariance"].get("rho")
        if method in PER_BLOCK and isinstance(rho, list):
            rho = np.asarray(rho)
            error = (rho - rho_true)[repeated]
            row.update(rho_mae=float(np.abs(error).mean()), rho_bias=float(error.mean()))
            for low, high in SIZE_BINS:
                chosen = (block_size >= low) & (block_size <= high)
                row[f"rho_mae_{low}_{high}"] = float(np.abs(rho - rho_true)[chosen].mean()) if chosen.any() else None
            learned[method] = rho.tolist()
        elif method == "grid":
            row["rho"] = float(rho)
        rows.append(row)
    curve = [{"rho": g["value"], "val_nll": g["val_nll"]} for g in runs["grid"]["grid"]] if "grid" in runs else []
    return {
        "rows": rows,
        "grid_curve": curve,
        "rho_true": rho_true.tolist(),
        "block_size": block_size.tolist(),
        "learned": learned,
    }


def _markdown(findings: list[dict[str, Any]], command: str) -> str:
    bins = ", ".join(f"{low}-{high}" if high < 10**9 else f"{low}+" for low, high in SIZE_BINS)
    lines = [
        "# Blocks shapes: rho error per block, and when training converged",
        "",
        f"`{command}`",
        "",
        "Per shape and seed, from the runs of a `--protocol paper` folder. vs baseline: test NLL minus the "
        "baseline's on the same data. rho MAE / bias: mean absolute / signed error of the learned per-block rho "
        f"over blocks of 2+ rows (rows of one block carry no information on its rho), then the MAE by block size "
        f"({bins} rows). Best epoch: when the kept (best-validation) state was reached, of the epochs trained.",
        "",
        f"| shape | seed | method | test NLL | vs baseline | best epoch / trained | lr x wd | rho MAE | rho bias | "
        f"MAE by size ({bins}) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for item in findings:
        for row in item["rows"]:
            sizes = " / ".join(
                "-" if row.get(f"rho_mae_{lo}_{hi}") is None else f"{row[f'rho_mae_{lo}_{hi}']:.3f}"
                for lo, hi in SIZE_BINS
            )
            per_block = "rho_mae" in row
            lines.append(
                f"| {item['shape']} | {item['seed']} | {row['method']}"
                + (f" (rho {row['rho']:g})" if "rho" in row else "")
                + f" | {row['test_nll']:.3f} | {row['vs_baseline']:+.3f} | {row['best_epoch']} / "
                f"{row['epochs_trained']} | {row['lr']:g} x {row['weight_decay']:g} | "
                + (f"{row['rho_mae']:.3f} | {row['rho_bias']:+.3f} | {sizes} |" if per_block else "- | - | - |")
            )
    curves = [item for item in findings if item["grid_curve"]]
    if curves:
        values = [point["rho"] for point in curves[0]["grid_curve"]]
        lines += [
            "",
            "## Grid: validation NLL at each rho (best over the 12 lr x weight decay settings), minus its value at 0",
            "",
            "| shape | seed | " + " | ".join(f"{v:g}" for v in values) + " |",
            "|---|---|" + "---|" * len(values),
        ]
        for item in curves:
            at_zero = item["grid_curve"][0]["val_nll"]
            lines.append(
                f"| {item['shape']} | {item['seed']} | "
                + " | ".join(f"{point['val_nll'] - at_zero:+.3f}" for point in item["grid_curve"])
                + " |"
            )
    return "\n".join(lines) + "\n"


def _figure(findings: list[dict[str, Any]], path: Path) -> bool:
    """Learned vs true rho per method and the grid's curve, a row per shape and seed; False
    (nothing drawn) when no run learned a per-block rho and none is a grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flowpheno.io.atomic import atomic_path

    findings = [item for item in findings if item["learned"] or item["grid_curve"]]  # rows with something to draw
    if not findings:
        return False
    methods = sorted({m for item in findings for m in item["learned"]}, key=PER_BLOCK.index)
    curves = any(item["grid_curve"] for item in findings)
    columns = len(methods) + int(curves)
    fig, axes = plt.subplots(len(findings), columns, figsize=(3.2 * columns, 3.0 * len(findings)), squeeze=False)
    for row_axes, item in zip(axes, findings, strict=True):
        truth, size = np.asarray(item["rho_true"]), np.asarray(item["block_size"])
        repeated = size > 1
        for axis, method in zip(row_axes, methods, strict=False):
            if method not in item["learned"]:
                axis.set_axis_off()
                continue
            learned = np.asarray(item["learned"][method])
            axis.scatter(truth[repeated], learned[repeated], s=3 + 40 * size[repeated] / size.max(), alpha=0.5)
            axis.plot([0, 1], [0, 1], color="grey", lw=0.8)
            axis.set_xlim(0.4, 1.0)
            axis.set_ylim(0.0, 1.0)
            axis.set_xlabel("true rho")
            axis.set_ylabel("learned rho")
            axis.set_title(f"{item['shape']} seed {item['seed']}: {method}", fontsize=9)
        if not curves:
            continue
        axis = row_axes[-1]
        if item["grid_curve"]:
            curve = item["grid_curve"]
            axis.plot([p["rho"] for p in curve], [p["val_nll"] - curve[0]["val_nll"] for p in curve], marker="o")
            axis.axhline(0, color="grey", lw=0.8)
            axis.set_xlabel("grid rho")
            axis.set_ylabel("validation NLL - at rho 0")
            axis.set_title(f"{item['shape']} seed {item['seed']}: grid", fontsize=9)
        else:
            axis.set_axis_off()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return True


def main(
    results: Path = typer.Option(
        ..., "--results", help="a flowpheno bench synthetic --protocol paper folder (its results.json is read)"
    ),
    shapes: str = typer.Option(
        "crescent,sinewave", "--shapes", callback=_list("shape", tuple(SHAPES)), help="blocks shapes"
    ),
    seeds: str = typer.Option("0", "--seeds", callback=_list("seed"), help="seeds (comma separated)"),
    out: Path = typer.Option(RESULTS, "--out", help="folder for blocks_diagnosis.{json,md,png}"),
) -> None:
    findings = []
    for shape in [s.strip() for s in shapes.split(",") if s.strip()]:
        for seed in [int(s) for s in seeds.split(",") if s.strip()]:
            findings.append({"shape": shape, "seed": seed, **diagnose(*load_runs(results, shape, seed))})
    command = command_line("python benchmarks/blocks_diagnosis.py")
    write_results(
        out,
        {
            "blocks_diagnosis.json": {"command": command, "findings": findings},
            "blocks_diagnosis.md": _markdown(findings, command),
        },
    )
    figure = out / "blocks_diagnosis.png"
    if _figure(findings, figure):
        print(f"wrote {out}/blocks_diagnosis.md, .json and .png")
    else:
        figure.unlink(missing_ok=True)  # an earlier call's figure would not match these tables
        print(f"wrote {out}/blocks_diagnosis.md and .json (no figure: no per-block rho or grid run)")


if __name__ == "__main__":
    script(main, __doc__)
