"""``flowpheno bench images``: repeated images of individuals, one equicorrelated block each.

Pixels are dequantised once with seeded uniform noise, ``x = (pixel + u) / 256``, and
split by image 70/15/15 (an individual may appear in several splits, as in the
paper). ``baseline`` treats images as independent; ``grid`` picks one shared ``rho``
by validation NLL; ``joint`` learns one ``rho`` per individual with the flow. Reported:
NLL (nats per image) and bits per dimension on the whole test split and on one test
image per individual, a grid of samples per method, and k-NN precision/recall
(Kynkäänniemi et al. 2019) of samples against test images in pixel space.
FID is not computed: it needs Inception weights, which cannot be downloaded here.
"""

from __future__ import annotations

import time
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
from flowpheno.flows.glow import GlowFlow, bits_per_dim  # noqa: E402
from flowpheno.io.images import ImageSet  # noqa: E402
from flowpheno.train import TrainConfig, fit_grid, fit_joint, fit_schedule  # noqa: E402
from flowpheno.train.objective import iid_nll  # noqa: E402

METHODS = ("baseline", "grid", "joint")
GRID = (0.0, 0.05, 0.1, 0.3, 0.6)
"""Shared ``rho`` values; 0 is the baseline's model."""
PAPER_BPD = {
    "LFW": {"baseline": 3.012, "grid": 2.986, "joint": 2.983},
    "ADNI": {"baseline": 2.745, "grid": 2.734, "joint": 2.705},
}


@dataclass
class ImageSizes:
    """A CPU-sized Glow (the paper: 2 levels x 12 steps, batch 64); :meth:`quick` for CI."""

    levels: int = 2
    steps: int = 4
    hidden: int = 48
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    patience: int = 6

    @classmethod
    def quick(cls) -> ImageSizes:
        return cls(steps=2, hidden=16, epochs=3, patience=3)


@dataclass
class ImageSplits:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    test_one: np.ndarray
    train_individual: np.ndarray
    shape: tuple[int, int, int]
    counts: dict[str, int]


def split_images(images: ImageSet, seed: int = 0) -> ImageSplits:
    """Dequantise and split by image; also the first test image of each individual."""
    rng = np.random.default_rng(seed)
    x = (
        ((images.pixels + rng.uniform(size=images.pixels.shape)) / 256)
        .astype(np.float32)
        .reshape(len(images.pixels), -1)
    )
    order = rng.permutation(len(x))
    cut_train, cut_val = int(0.7 * len(x)), int(0.85 * len(x))
    train, val, test = np.sort(order[:cut_train]), np.sort(order[cut_train:cut_val]), np.sort(order[cut_val:])
    _, first = np.unique(images.individuals[test], return_index=True)
    one = test[first]
    counts = {
        "images": len(x),
        "individuals": len(images.names),
        "train": len(train),
        "val": len(val),
        "test": len(test),
        "test_one_per_individual": len(one),
        "largest_block_in_train": int(np.bincount(images.individuals[train]).max()),
    }
    return ImageSplits(x[train], x[val], x[test], x[one], images.individuals[train], images.shape, counts)


def run_method(
    method: str, splits: ImageSplits, seed: int, sizes: ImageSizes, device: str = "cpu"
) -> tuple[dict[str, Any], GlowFlow]:
    """Train one method on ``device``; the flow returned and every metric are on the CPU."""
    started = time.perf_counter()
    x = torch.as_tensor(splits.train).to(device)
    x_val = torch.as_tensor(splits.val).to(device)
    config = TrainConfig(
        epochs=sizes.epochs,
        stages=1,
        batch_size=sizes.batch_size,
        lr=sizes.lr,
        seed=seed,
        patience=sizes.patience,
        weight_decay=0.0,
    )

    def make_flow() -> GlowFlow:
        torch.manual_seed(seed)
        return GlowFlow(splits.shape, levels=sizes.levels, steps=sizes.steps, hidden=sizes.hidden, seed=seed).to(device)

    individuals = torch.as_tensor(splits.train_individual)

    def blocks(rho: float, shared: bool) -> EquicorrelatedBlocks:
        return EquicorrelatedBlocks(individuals, rho=rho, shared=shared).to(device)

    if method == "baseline":
        flow = make_flow()
        flow.initialize(x)
        outcome = fit_schedule(flow, IIDCovariance(len(x)).to(device), x, x_val, config)
    elif method == "grid":
        outcome = fit_grid(make_flow, lambda rho: blocks(rho, shared=True), GRID, x, x_val, config)
    elif method == "joint":
        outcome = fit_joint(make_flow(), blocks(0.3, shared=False), x, x_val, config)
    else:
        raise ValueError(f"unknown method {method!r}")
    flow = outcome.flow.cpu().eval()
    outcome.dependence.cpu()
    dims = x.shape[1]
    test_nll = iid_nll(flow, torch.as_tensor(splits.test))
    one_nll = iid_nll(flow, torch.as_tensor(splits.test_one))
    record = {
        "method": method,
        "seed": seed,
        "val_nll": outcome.best_val_nll,
        "test_nll": test_nll,
        "test_bpd": bits_per_dim(test_nll, dims),
        "one_per_individual_nll": one_nll,
        "one_per_individual_bpd": bits_per_dim(one_nll, dims),
        "covariance": {k: v for k, v in outcome.dependence.describe().items() if k != "block_sizes"}
        if method != "joint"
        else {"rho_mean": float(np.mean(outcome.dependence.describe()["rho"]))},
        "grid": outcome.grid,
        "epochs_trained": len(outcome.epochs),
        "seconds": time.perf_counter() - started,
    }
    record.update(precision_recall(flow, splits.test, seed))
    return record, flow


@torch.no_grad()
def samples(flow: GlowFlow, count: int, seed: int, temperature: float = 1.0) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    dims = int(np.prod(flow.shape))
    return flow.inverse(temperature * torch.randn(count, dims, generator=generator)).clamp(0, 1).numpy()


def precision_recall(flow: GlowFlow, real: np.ndarray, seed: int, k: int = 3) -> dict[str, float]:
    """k-NN precision (samples inside the real manifold) and recall (real inside the sample manifold)."""
    fake = torch.as_tensor(samples(flow, len(real), seed + 1))
    real_t = torch.as_tensor(real)

    def radii(points: torch.Tensor) -> torch.Tensor:
        distances = torch.cdist(points, points)
        return distances.kthvalue(k + 1, dim=1).values  # the point itself is at distance 0

    real_radius, fake_radius = radii(real_t), radii(fake)
    cross = torch.cdist(fake, real_t)
    precision = (cross <= real_radius[None, :]).any(dim=1).float().mean()
    recall = (cross.T <= fake_radius[None, :]).any(dim=1).float().mean()
    return {"precision": float(precision), "recall": float(recall)}


def table(records: list[dict[str, Any]], splits: ImageSplits, command: str, wall: float, embedded: bool) -> str:
    frame = pd.DataFrame(records)
    c, h, w = splits.shape
    data = (
        "the embedded dataset (scikit-learn digits as individuals, see flowpheno/simulate/digits.py)"
        if embedded
        else "user images"
    )
    counts = splits.counts
    lines = [
        "# Images: test NLL and bits per dimension (lower is better)",
        "",
        f"`{command}` — wall time {wall / 60:.1f} min",
        "",
        f"Data: {data}; {counts['images']} images of {counts['individuals']} individuals at {c}x{h}x{w}; split by "
        f"image {counts['train']}/{counts['val']}/{counts['test']}; one-per-individual test set "
        f"{counts['test_one_per_individual']} images; largest training block {counts['largest_block_in_train']}.",
        "",
        "| method | NLL (nats/image) | bpd, test | bpd, one per individual "
        "| precision | recall | paper bpd LFW / ADNI | covariance (seed 0) |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cell(values: np.ndarray, digits: int = 3) -> str:
        if len(values) < 2:
            return f"{values.mean():.{digits}f} (1)"
        return f"{values.mean():.{digits}f} +- {values.std(ddof=1) / np.sqrt(len(values)):.{digits}f} ({len(values)})"

    for method in [m for m in METHODS if m in set(frame["method"])]:
        group = frame[frame["method"] == method]
        first = group.iloc[0]
        lines.append(
            f"| {method} | {cell(group['test_nll'].to_numpy(), 1)} | {cell(group['test_bpd'].to_numpy(), 4)} | "
            f"{cell(group['one_per_individual_bpd'].to_numpy(), 4)} | {group['precision'].mean():.3f} | "
            f"{group['recall'].mean():.3f} | {PAPER_BPD['LFW'][method]:.3f} "
            f"/ {PAPER_BPD['ADNI'][method]:.3f} | {first['covariance']} |"
        )
    wide = frame.pivot(index="seed", columns="method", values="test_bpd")
    wide_one = frame.pivot(index="seed", columns="method", values="one_per_individual_bpd")
    if "baseline" in wide:
        lines += [
            "",
            "| method - baseline | bpd difference, test | bpd difference, one per individual |",
            "|---|---|---|",
        ]
        for method in [m for m in METHODS if m in wide and m != "baseline"]:
            parts = []
            for table_ in (wide, wide_one):
                diff = (table_[method] - table_["baseline"]).dropna()
                se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
                parts.append(f"{diff.mean():+.4f} +- {se:.4f}")
            lines.append(f"| {method} | {parts[0]} | {parts[1]} |")
    lines += [
        "",
        "FID: not computed (needs Inception weights, unavailable offline); precision/recall are k-NN (k = 3) "
        "estimates in pixel space between as many model samples as test images and the test images.",
    ]
    return "\n".join(lines) + "\n"


def sample_figure(flows: dict[str, GlowFlow], splits: ImageSplits, path: Path, count: int = 36) -> None:
    """A grid of samples per method (temperature 1), beside real test images."""
    c, h, w = splits.shape
    panels = {"test images": splits.test[:count]}
    panels.update({method: samples(flow, count, 7) for method, flow in flows.items()})
    side = int(np.ceil(np.sqrt(count)))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for axis, (title, images) in zip(axes[0], panels.items(), strict=True):
        canvas = np.zeros((side * h, side * w, c))
        for k, image in enumerate(images[: side * side]):
            row, col = divmod(k, side)
            canvas[row * h : (row + 1) * h, col * w : (col + 1) * w] = image.reshape(c, h, w).transpose(1, 2, 0)
        axis.imshow(canvas.squeeze(), cmap="gray" if c == 1 else None, vmin=0, vmax=1)
        axis.set_title(title, fontsize=9)
        axis.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sizes_dict(sizes: ImageSizes) -> dict[str, Any]:
    return asdict(sizes)
