"""The embedded image dataset: scikit-learn's bundled 8x8 handwritten digits as "individuals".

Real images with no download: each individual is one digit image of
``sklearn.datasets.load_digits`` (1,797 scans, 16 grey levels). Its number of repeats
is ``1 + round(Pareto(alpha))`` clipped to ``max_repeats``, so a few individuals have
many images and most have one or two, like LFW. Each repeat is the base image
upscaled to ``size`` (bilinear), shifted by up to ``max_shift`` pixels, with Gaussian
noise, then quantised to 8 bits. Written as ``out/<id>/<id>_0001.png`` (the LFW layout).

    flowpheno bench images-data --out digits/   # what `bench images` uses by default
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flowpheno.errors import FlowphenoError

NOTE = (
    "Built by flowpheno (flowpheno.simulate.digits) from scikit-learn's bundled 8x8 digits: one folder per base\n"
    "image ('individual'), Pareto-distributed repeat counts, each repeat a shifted and noisy copy.\n"
)


def _shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate by (dy, dx) pixels, filling with background (0), without wrapping around."""
    out = np.zeros_like(image)
    h, w = image.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def make_digit_individuals(
    out: str | Path,
    individuals: int = 250,
    size: int = 16,
    alpha: float = 1.0,
    max_repeats: int = 40,
    max_shift: int = 1,
    noise: float = 8.0,
    seed: int = 0,
) -> int:
    """Write the dataset (module docstring) into ``out``; returns the number of images.

    ``individuals`` base images, each repeated ``1 + round(Pareto(alpha))`` times (at most
    ``max_repeats``), upscaled to ``size x size`` pixels, shifted by up to ``max_shift``
    pixels, with Gaussian noise of SD ``noise`` grey levels (of 255).

    Raises:
        FlowphenoError: scikit-learn or Pillow is not installed (``flowpheno[bench]``).
    """
    try:
        from PIL import Image
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise FlowphenoError(
            f"the embedded image dataset needs scikit-learn and Pillow ({error}): pip install 'flowpheno[bench]'"
        ) from None

    rng = np.random.default_rng(seed)
    digits = load_digits().images  # 0..16
    chosen = rng.choice(len(digits), size=individuals, replace=False)
    repeats = np.minimum(1 + np.round(rng.pareto(alpha, size=individuals)).astype(int), max_repeats)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "README.txt").write_text(NOTE)
    written = 0
    for k, (index, count) in enumerate(zip(chosen, repeats, strict=True)):
        name = f"digit{k:04d}"
        folder = out / name
        folder.mkdir(exist_ok=True)
        base = Image.fromarray((digits[index] * (255 / 16)).astype(np.uint8)).resize((size, size), Image.BILINEAR)
        base_array = np.asarray(base, dtype=np.float64)
        for r in range(count):
            dy, dx = rng.integers(-max_shift, max_shift + 1, size=2)
            shifted = _shift(base_array, int(dy), int(dx))
            noisy = np.clip(np.round(shifted + rng.normal(0, noise, size=shifted.shape)), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(folder / f"{name}_{r + 1:04d}.png")
            written += 1
    return written
