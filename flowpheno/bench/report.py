"""Table 1 (mean +- SE over seeds beside the paper, paired t-tests) and Figure-1-style plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from scipy.stats import ttest_rel  # noqa: E402

from flowpheno.bench.shapes import true_log_density  # noqa: E402
from flowpheno.bench.synthetic import METHODS, SETTINGS  # noqa: E402
from flowpheno.flows import build_flow  # noqa: E402
from flowpheno.io.atomic import atomic_path  # noqa: E402

PAPER_TABLE1 = {
    ("blocks", "baseline"): {"abs": 1.513, "crescent": 2.021, "crescentcubed": 3.010, "sign": 1.519, "sinewave": 2.070},
    ("blocks", "grid"): {"abs": 1.379, "crescent": 1.885, "crescentcubed": 2.938, "sign": 1.420, "sinewave": 1.983},
    ("blocks", "joint"): {"abs": 1.475, "crescent": 2.005, "crescentcubed": 3.067, "sign": 1.501, "sinewave": 2.087},
    ("kinship", "baseline"): {
        "abs": 1.898,
        "crescent": 2.070,
        "crescentcubed": 3.253,
        "sign": 1.748,
        "sinewave": 2.130,
    },
    ("kinship", "grid"): {"abs": 1.454, "crescent": 1.886, "crescentcubed": 2.983, "sign": 1.490, "sinewave": 1.980},
    ("kinship", "alternating"): {
        "abs": 1.537,
        "crescent": 1.905,
        "crescentcubed": 3.076,
        "sign": 1.580,
        "sinewave": 2.020,
    },
}


PROTOCOL_LINES = {
    "paper": "Protocol `paper`: the authors' setup (no ActNorm, spline tail bound per shape, batch 256, "
    "lr {1e-3, 3e-3, 1e-2, 3e-2} x weight decay {1e-3, 1e-2, 1e-1} chosen per run by validation NLL, "
    "13-value s2/rho grids, 100 epochs at full size, StepLR 0.9 x 32, best-validation state; "
    "`flowpheno.bench.protocols`).",
    "fast": "Protocol `fast`: ActNorm-standardised inputs, tail bound "
    "5, batch 512, one lr, 3-value grids, early stopping.",
}


def table1(
    results: list[dict[str, Any]], wall_seconds: float | None = None, command: str = "", protocol: str | None = None
) -> str:
    """Markdown: ours (mean +- SE) beside the paper per setting/method/shape, and paired one-sided
    t-tests of the best adjusted method against the baseline per shape; ``protocol`` (``paper`` or
    ``fast``) is named in the header."""
    frame = pd.DataFrame([{k: r[k] for k in ("setting", "shape", "method", "seed", "test_nll")} for r in results])
    shapes = sorted(frame["shape"].unique())
    lines = ["# Table 1: test NLL (nats per observation, lower is better)", ""]
    if command:
        lines += [f"`{command}`" + (f" — wall time {wall_seconds / 60:.1f} min" if wall_seconds else ""), ""]
    if protocol:
        lines += [PROTOCOL_LINES.get(protocol, f"Protocol `{protocol}`."), ""]
    lines += [
        "Ours: mean +- standard error over seeds (number of seeds in brackets); paper in italics.",
        "",
        "| setting | method | " + " | ".join(shapes) + " |",
        "|---|---|" + "---|" * len(shapes),
    ]
    order = [(s, m) for s in SETTINGS for m in METHODS[s]]
    for setting, method in [key for key in order if key in set(zip(frame["setting"], frame["method"], strict=True))]:
        group = frame[(frame["setting"] == setting) & (frame["method"] == method)]
        cells = []
        for shape in shapes:
            values = group.loc[group["shape"] == shape, "test_nll"].to_numpy()
            paper = PAPER_TABLE1.get((setting, method), {}).get(shape)
            ours = (
                "-"
                if len(values) == 0
                else (
                    f"{values.mean():.3f} +- {values.std(ddof=1) / np.sqrt(len(values)):.3f} ({len(values)})"
                    if len(values) > 1
                    else f"{values.mean():.3f} (1)"
                )
            )
            cells.append(ours + (f" / *{paper:.3f}*" if paper is not None else ""))
        lines.append(f"| {setting} | {method} | " + " | ".join(cells) + " |")
    paired_lines = []
    for setting, setting_frame in frame.groupby("setting", sort=False):
        for shape in shapes:
            wide = setting_frame[setting_frame["shape"] == shape].pivot(
                index="seed", columns="method", values="test_nll"
            )
            adjusted = [m for m in METHODS[setting] if m in wide.columns and m != "baseline"]
            if "baseline" not in wide.columns or not adjusted:
                continue
            # each method paired with the baseline on the seeds both have (methods may have fewer seeds)
            pairs = {m: wide[[m, "baseline"]].dropna() for m in adjusted}
            best = min(adjusted, key=lambda m: (pairs[m][m] - pairs[m]["baseline"]).mean())
            for method in adjusted:
                paired = pairs[method]
                difference = (paired[method] - paired["baseline"]).mean()
                p = (
                    ttest_rel(paired[method], paired["baseline"], alternative="less").pvalue
                    if len(paired) > 1
                    else float("nan")
                )
                paired_lines.append(
                    f"| {setting} | {shape} | {method} | {difference:+.3f} | {len(paired)} | {p:.3g} | "
                    f"{'yes' if method == best else ''} |"
                )
    if paired_lines:
        lines += [
            "",
            "## Adjusted methods vs baseline (paired over seeds, one-sided t-test that the method is better)",
            "",
            "| setting | shape | method | mean difference | seeds | p | best |",
            "|---|---|---|---|---|---|---|",
            *paired_lines,
        ]
    lines += _selection_lines(results)
    rho = [r for r in results if "rho_mse" in r]
    if rho:
        lines += [
            "",
            "## Learned vs true rho (blocks): MSE and MAE over blocks, mean over seeds",
            "",
            "| method | shape | MSE | MAE | MAE, blocks of 2+ rows |",
            "|---|---|---|---|---|",
        ]
        rho_frame = pd.DataFrame(rho).groupby(["method", "shape"])[["rho_mse", "rho_mae", "rho_mae_repeated"]].mean()
        for (method, shape), row in rho_frame.iterrows():
            lines.append(
                f"| {method} | {shape} | {row['rho_mse']:.4f} | {row['rho_mae']:.4f} | {row['rho_mae_repeated']:.4f} |"
            )
    return "\n".join(lines) + "\n"


def _selection_lines(results: list[dict[str, Any]]) -> list[str]:
    """Paper protocol: what validation chose per run and when it converged, as mean over seeds.

    Per (setting, method, shape): the chosen grid value (``rho`` or ``s2``) or, for the
    exact-step methods, the final ``s2`` / the repeated blocks' ``rho`` error after each
    step; the chosen learning rate and weight decay (most frequent); the best epoch of the
    chosen member (out of the epochs trained); members whose training diverged."""
    swept = [r for r in results if r.get("sweep")]
    if not swept:
        return []
    lines = [
        "",
        "## What validation chose, and when (paper protocol; mean over seeds)",
        "",
        "Chosen value: the grid value of the chosen member; for the exact-step methods, `s2`, or the mean absolute "
        "error of the repeated blocks' `rho`, at each exact step (the first one from the untrained flow, the others "
        "after each stage of epochs // 4 epochs: 125 epochs in all at full size, as in the paper). Best epoch: when "
        "the kept (best-validation) state was reached.",
        "",
        "| setting | method | shape | seeds | chosen value | lr x weight decay (most often) | best epoch / trained "
        "| members diverged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = {(s, m): i for i, (s, m) in enumerate((s, m) for s in SETTINGS for m in METHODS[s])}
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for record in swept:
        groups.setdefault((record["setting"], record["method"], record["shape"]), []).append(record)
    for (setting, method, shape), records in sorted(groups.items(), key=lambda g: (order.get(g[0][:2], 99), g[0][2])):
        if method == "grid":
            values = [r["covariance"].get("rho", r["covariance"].get("s2")) for r in records]
            name = "rho" if setting == "blocks" else "s2"
            chosen = f"{name} {np.mean(values):.3f} (range {min(values):g}-{max(values):g})"
        elif "s2_stages" in records[0]:
            chosen = "s2 " + " -> ".join(f"{v:.3f}" for v in np.mean([r["s2_stages"] for r in records], axis=0))
        elif "rho_mae_stages" in records[0]:
            stages = np.mean([r["rho_mae_stages"] for r in records], axis=0)
            chosen = "rho MAE " + " -> ".join(f"{v:.3f}" for v in stages)
        elif "rho_start" in records[0]:
            chosen = f"rho from {np.mean([r['rho_start'] for r in records]):.3f} (start)"
        else:
            chosen = "-"
        pairs = pd.Series([f"{r['lr']:g} x {r['weight_decay']:g}" for r in records]).value_counts()
        best = np.mean([r["best_epoch"] or 0 for r in records])
        trained = np.mean([r["epochs_trained"] for r in records])
        diverged = np.mean([sum(m["diverged"] is not None for m in r["sweep"]) for r in records])
        lines.append(
            f"| {setting} | {method} | {shape} | {len(records)} | {chosen} | {pairs.index[0]} ({pairs.iloc[0]}) | "
            f"{best:.0f} / {trained:.0f} | {diverged:.1f} of {records[0]['members']} |"
        )
    return lines


def _density(record: dict[str, Any], grid: np.ndarray) -> np.ndarray:
    flow = build_flow(record["flow_config"])
    flow.load_state_dict({k: torch.as_tensor(v) for k, v in record["flow_state"].items()})
    flow.eval()
    with torch.no_grad():
        z, ladj = flow(torch.as_tensor(grid, dtype=torch.float32))
        log_p = -0.5 * (z.square().sum(dim=1) + 2 * np.log(2 * np.pi)) + ladj
    return np.exp(log_p.numpy())


def figure(setting: str, shape: str, results: list[dict[str, Any]], train_x: np.ndarray, path: Path) -> bool:
    """True density, the dependent training sample, baseline density, best adjusted density
    (seed 0); written to ``path`` through a temporary file. False, and nothing written, when
    the results hold no seed-0 baseline of this setting and shape."""
    chosen = {
        r["method"]: r for r in results if r["setting"] == setting and r["shape"] == shape and r.get("flow_state")
    }
    if "baseline" not in chosen:
        return False
    adjusted = min((m for m in chosen if m != "baseline"), key=lambda m: chosen[m]["test_nll"], default=None)
    lo, hi = np.percentile(train_x, [0.5, 99.5], axis=0)
    pad = 0.15 * (hi - lo)
    xs, ys = np.meshgrid(
        np.linspace(lo[0] - pad[0], hi[0] + pad[0], 160), np.linspace(lo[1] - pad[1], hi[1] + pad[1], 160)
    )
    grid = np.column_stack([xs.ravel(), ys.ravel()])
    panels = [("true density", np.exp(true_log_density(shape, grid)))]
    panels.append((f"baseline (test NLL {chosen['baseline']['test_nll']:.3f})", _density(chosen["baseline"], grid)))
    if adjusted:
        panels.append((f"{adjusted} (test NLL {chosen[adjusted]['test_nll']:.3f})", _density(chosen[adjusted], grid)))
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(3.3 * (len(panels) + 1), 3.2))
    axes[0].imshow(
        panels[0][1].reshape(xs.shape), origin="lower", extent=(xs.min(), xs.max(), ys.min(), ys.max()), aspect="auto"
    )
    axes[0].set_title(panels[0][0], fontsize=9)
    axes[1].scatter(train_x[:, 0], train_x[:, 1], s=2, alpha=0.3)
    axes[1].set_xlim(xs.min(), xs.max())
    axes[1].set_ylim(ys.min(), ys.max())
    axes[1].set_title(f"dependent training sample ({setting})", fontsize=9)
    for axis, (title, density) in zip(axes[2:], panels[1:], strict=True):
        axis.imshow(
            density.reshape(xs.shape), origin="lower", extent=(xs.min(), xs.max(), ys.min(), ys.max()), aspect="auto"
        )
        axis.set_title(title, fontsize=9)
    fig.suptitle(f"{shape}, {setting} setting, seed 0", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return True
