"""``flowpheno bench stocks``: pairs of daily log returns, one equicorrelated block per pair.

One observation is one day of one pair (the 2-D vector of the two stocks' log
returns). Each pair's days are split in time, 70/15/15, never shuffled across time;
the training rows of a pair form one block, so the longer-listed pair weighs more in
training, as in the paper. ``baseline`` ignores the blocks, ``grid`` picks one shared
``rho`` by validation NLL, ``joint`` learns one ``rho`` per pair with the flow. Test
NLL is in nats per day-pair on the raw log returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from flowpheno.dependence import EquicorrelatedBlocks, IIDCovariance  # noqa: E402
from flowpheno.errors import FlowphenoError  # noqa: E402
from flowpheno.flows import LatentFlow, affine_coupling_flow  # noqa: E402
from flowpheno.io.prices import pair_log_returns, ticker_files  # noqa: E402
from flowpheno.train import TrainConfig, fit_grid, fit_joint, fit_schedule  # noqa: E402
from flowpheno.train.objective import iid_nll  # noqa: E402

METHODS = ("baseline", "grid", "joint")
GRID = (0.0, 0.001, 0.01, 0.05, 0.2)
"""Shared ``rho`` values; 0 is the baseline's model, so grid can only lose to it by validation noise."""
PAPER = {"baseline": -5.69, "grid": -5.72, "joint": -5.71}
SPLIT = (0.70, 0.15, 0.15)


@dataclass
class StocksSizes:
    """The paper's training setup by default; :meth:`quick` for CI."""

    epochs: int = 100
    batch_size: int = 256
    layers: int = 8
    hidden: int = 64
    lr: float = 1e-3
    patience: int = 20

    @classmethod
    def quick(cls) -> StocksSizes:
        return cls(epochs=4, layers=2, hidden=16, patience=4)


@dataclass
class PairData:
    """Train/validation/test rows (log returns) and each training row's pair."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    train_pair: np.ndarray
    test_pair: np.ndarray
    pairs: list[str]
    days: dict[str, dict[str, Any]]


def load_pairs(
    prices: list[str | Path], pairs: list[str], start: str | None = None, end: str | None = None
) -> PairData:
    """Read, join and split every pair (``"AAPL-MSFT"``) in time."""
    files = ticker_files(prices)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    train_pair, test_pair, days = [], [], {}
    for index, pair in enumerate(pairs):
        first, _, second = pair.partition("-")
        if not first or not second:
            raise FlowphenoError(f"--pairs {pair!r}: write pairs as TICKER-TICKER, for example AAPL-MSFT")
        returns = pair_log_returns(files, first, second, start, end)
        n = len(returns)
        cut_train, cut_val = int(SPLIT[0] * n), int((SPLIT[0] + SPLIT[1]) * n)
        values = returns.to_numpy()
        parts["train"].append(values[:cut_train])
        parts["val"].append(values[cut_train:cut_val])
        parts["test"].append(values[cut_val:])
        train_pair.append(np.full(cut_train, index))
        test_pair.append(np.full(n - cut_val, index))
        dates = returns.index
        days[pair] = {
            "first_day": str(dates[0].date()),
            "last_day": str(dates[-1].date()),
            "days": n,
            "train_until": str(dates[cut_train - 1].date()),
            "test_from": str(dates[cut_val].date()),
        }
    return PairData(
        *(np.concatenate(parts[k]) for k in ("train", "val", "test")),
        np.concatenate(train_pair),
        np.concatenate(test_pair),
        pairs,
        days,
    )


def run_method(method: str, data: PairData, seed: int, sizes: StocksSizes) -> tuple[dict[str, Any], LatentFlow]:
    """Train one method with one seed (flow initialisation and batch order)."""
    started = time.perf_counter()
    x = torch.as_tensor(data.train, dtype=torch.float32)
    x_val = torch.as_tensor(data.val, dtype=torch.float32)
    config = TrainConfig(
        epochs=sizes.epochs, stages=1, batch_size=sizes.batch_size, lr=sizes.lr, seed=seed, patience=sizes.patience
    )

    def make_flow() -> LatentFlow:
        torch.manual_seed(seed)
        return affine_coupling_flow(2, layers=sizes.layers, hidden=sizes.hidden, seed=seed)

    blocks: Callable[[float], EquicorrelatedBlocks] = lambda rho: EquicorrelatedBlocks(  # noqa: E731
        torch.as_tensor(data.train_pair), rho=rho, shared=True
    )
    if method == "baseline":
        flow = make_flow()
        flow.initialize(x)
        outcome = fit_schedule(flow, IIDCovariance(len(x)), x, x_val, config)
    elif method == "grid":
        outcome = fit_grid(make_flow, blocks, GRID, x, x_val, config)
    elif method == "joint":
        model = EquicorrelatedBlocks(torch.as_tensor(data.train_pair), rho=0.05, shared=False)
        outcome = fit_joint(make_flow(), model, x, x_val, config)
    else:
        raise ValueError(f"unknown method {method!r}")
    outcome.flow.eval()
    test = torch.as_tensor(data.test, dtype=torch.float32)
    record = {
        "method": method,
        "seed": seed,
        "val_nll": outcome.best_val_nll,
        "test_nll": iid_nll(outcome.flow, test),
        "test_nll_per_pair": {
            pair: iid_nll(outcome.flow, test[torch.as_tensor(data.test_pair == k)]) for k, pair in enumerate(data.pairs)
        },
        "covariance": outcome.dependence.describe(),
        "grid": outcome.grid,
        "epochs_trained": len(outcome.epochs),
        "seconds": time.perf_counter() - started,
    }
    return record, outcome.flow


def table(records: list[dict[str, Any]], data: PairData, command: str, wall: float, synthetic: bool) -> str:
    """Markdown: test NLL per method (mean +- SE over seeds) beside the paper, and paired differences."""
    frame = pd.DataFrame([{k: r[k] for k in ("method", "seed", "test_nll")} for r in records])
    lines = [
        "# Stocks: test NLL (nats per day-pair of log returns, lower is better)",
        "",
        f"`{command}` — wall time {wall / 60:.1f} min",
        "",
    ]
    if synthetic:
        lines += [
            "**Data: SYNTHETIC price series** (`flowpheno bench stocks-data`), not market data: compare methods "
            "with each other, not with the paper's numbers.",
            "",
        ]
    lines += ["| pair | days | first day | training until | test from |", "|---|---|---|---|---|"]
    for pair, info in data.days.items():
        lines.append(f"| {pair} | {info['days']} | {info['first_day']} | {info['train_until']} | {info['test_from']} |")
    lines += ["", "| method | test NLL (mean +- SE, seeds) | paper | covariance (seed 0) |", "|---|---|---|---|"]
    for method in [m for m in METHODS if m in set(frame["method"])]:
        values = frame.loc[frame["method"] == method, "test_nll"].to_numpy()
        se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
        first = next(r for r in records if r["method"] == method)
        cov = {k: v for k, v in first["covariance"].items() if k != "block_sizes"}
        lines.append(f"| {method} | {values.mean():.4f} +- {se:.4f} ({len(values)}) | {PAPER[method]:.2f} | {cov} |")
    wide = frame.pivot(index="seed", columns="method", values="test_nll")
    if "baseline" in wide:
        lines += ["", "| method - baseline | mean difference | SE |", "|---|---|---|"]
        for method in [m for m in METHODS if m in wide and m != "baseline"]:
            diff = (wide[method] - wide["baseline"]).dropna()
            se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
            lines.append(f"| {method} | {diff.mean():+.4f} | {se:.4f} |")
    return "\n".join(lines) + "\n"


@torch.no_grad()
def figure(flows: dict[str, LatentFlow], data: PairData, path: Path, level: float = 0.95) -> None:
    """Test returns with each method's ``level`` highest-density region (from model samples)."""
    lo, hi = np.percentile(data.test, [0.5, 99.5], axis=0)
    pad = 0.3 * (hi - lo)
    xs, ys = np.meshgrid(
        np.linspace(lo[0] - pad[0], hi[0] + pad[0], 200), np.linspace(lo[1] - pad[1], hi[1] + pad[1], 200)
    )
    grid = torch.as_tensor(np.column_stack([xs.ravel(), ys.ravel()]), dtype=torch.float32)
    fig, axes = plt.subplots(1, len(flows), figsize=(4 * len(flows), 4), sharex=True, sharey=True, squeeze=False)
    generator = torch.Generator().manual_seed(0)
    for axis, (method, flow) in zip(axes[0], flows.items(), strict=True):
        z, ladj = flow(grid)
        log_density = (-0.5 * z.square().sum(dim=1) - np.log(2 * np.pi) + ladj).numpy().reshape(xs.shape)
        samples = flow.inverse(torch.randn(20_000, 2, generator=generator))
        zs, ladj_s = flow(samples)
        sample_log_density = (-0.5 * zs.square().sum(dim=1) - np.log(2 * np.pi) + ladj_s).numpy()
        threshold = np.quantile(sample_log_density[np.isfinite(sample_log_density)], 1 - level)
        for k, pair in enumerate(data.pairs):
            rows = data.test_pair == k
            axis.scatter(data.test[rows, 0], data.test[rows, 1], s=3, alpha=0.4, label=f"{pair} (test)")
        axis.contour(xs, ys, log_density, levels=[threshold], colors="k", linewidths=1.2)
        axis.set_title(f"{method}: {int(level * 100)}% highest-density region", fontsize=9)
        axis.set_xlabel("log return, first stock")
    axes[0][0].set_ylabel("log return, second stock")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sizes_dict(sizes: StocksSizes) -> dict[str, Any]:
    return asdict(sizes)
