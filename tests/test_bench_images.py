"""Image folders, the embedded digits dataset, the Glow flow's exactness, and a quick images run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import invoke, run_cli
from PIL import Image

from flowpheno.bench.images import split_images
from flowpheno.errors import FlowphenoError
from flowpheno.flows.glow import GlowFlow, bits_per_dim
from flowpheno.io.images import read_image_folder
from flowpheno.simulate.digits import make_digit_individuals


def test_image_folder_layout_formats_and_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name, count in (("Ann_Lee", 3), ("Bo", 1)):
        (tmp_path / name).mkdir()
        for k in range(count):
            array = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
            suffix = ".JPG" if k == 1 else ".png"  # mixed formats and suffix case
            Image.fromarray(array).save(
                tmp_path / name / f"{name}_{k + 1:04d}{suffix}", format="JPEG" if k == 1 else "PNG"
            )
    (tmp_path / "Bo" / "notes.txt").write_text("not an image")
    images = read_image_folder(tmp_path, size=8)
    assert images.pixels.shape == (4, 3, 8, 8) and images.pixels.dtype == np.uint8
    assert images.names == ["Ann_Lee", "Bo"] and images.individuals.tolist() == [0, 0, 0, 1]
    assert read_image_folder(tmp_path, size=8, grayscale=True).pixels.shape == (4, 1, 8, 8)
    (tmp_path / "Bo" / "Bo_0002.png").write_bytes(b"broken")
    with pytest.raises(FlowphenoError, match=r"Bo_0002.png: cannot read this image"):
        read_image_folder(tmp_path, size=8)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FlowphenoError, match=r"no PNG or JPEG images in sub-folders; expected .*/<individual>/"):
        read_image_folder(empty)


def test_embedded_digits_are_skewed_repeats(tmp_path: Path) -> None:
    count = make_digit_individuals(tmp_path, individuals=120, size=16, seed=3)
    images = read_image_folder(tmp_path, size=16, grayscale=True)
    repeats = np.bincount(images.individuals)
    assert len(images.pixels) == count and len(repeats) == 120
    assert repeats.max() >= 10 and np.median(repeats) <= 3  # Pareto: a few large blocks, most small
    first = images.pixels[images.individuals == int(np.argmax(repeats))].astype(float)
    others = images.pixels[images.individuals != int(np.argmax(repeats))][:20].astype(float)
    within = np.mean([np.abs(a - first[0]).mean() for a in first[1:]])
    between = np.mean([np.abs(b - first[0]).mean() for b in others])
    assert within < between  # repeats resemble their base image more than other digits


def test_split_by_image_and_one_per_individual(tmp_path: Path) -> None:
    make_digit_individuals(tmp_path, individuals=60, size=8, seed=4)
    images = read_image_folder(tmp_path, size=8, grayscale=True)
    splits = split_images(images)
    assert len(splits.train) + len(splits.val) + len(splits.test) == len(images.pixels)
    assert splits.counts["test_one_per_individual"] == len(splits.test_one) <= len(splits.test)
    assert splits.train.min() >= 0 and splits.train.max() <= 1 and splits.train.dtype == np.float32
    assert np.all(np.floor(splits.train * 256) < 256)


def test_glow_is_invertible_with_exact_log_det() -> None:
    torch.manual_seed(0)
    flow = GlowFlow((1, 8, 8), levels=2, steps=2, hidden=8).double()
    x = torch.rand(3, 64, dtype=torch.float64)
    flow.initialize(x)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    z, log_det = flow(x)
    assert torch.allclose(flow.inverse(z), x, atol=1e-10)
    jacobian = torch.autograd.functional.jacobian(lambda row: flow(row[None])[0][0], x[0])
    assert float(torch.linalg.slogdet(jacobian)[1]) == pytest.approx(float(log_det[0].detach()), abs=1e-8)
    assert bits_per_dim(0.0, 64) == pytest.approx(8.0)


@pytest.mark.slow
def test_quick_images_run(tmp_path: Path) -> None:
    out = tmp_path / "images"
    result = run_cli("bench", "images", "--quick", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    table = (out / "table.md").read_text()
    assert "one per individual" in table and "3.012" in table and "FID: not computed" in table
    report = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in report["runs"]} == {"baseline", "grid", "joint"}
    for run in report["runs"]:
        assert np.isfinite(run["test_bpd"]) and 0 <= run["precision"] <= 1 and 0 <= run["recall"] <= 1
    assert (out / "samples.png").stat().st_size > 5_000


def test_images_folder_that_is_not_there_is_one_line(tmp_path: Path) -> None:
    bad = invoke("bench", "images", "--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"))
    assert bad.returncode == 1 and "not a folder" in bad.stdout + bad.stderr and not (tmp_path / "x").exists()


def test_repeat_shift_does_not_wrap_around() -> None:
    from flowpheno.simulate.digits import _shift

    image = np.zeros((6, 6))
    image[5, 2] = 1.0  # bottom row
    assert _shift(image, 1, 0).sum() == 0  # moved out of the frame, not back in at the top
    assert _shift(image, -1, 1)[4, 3] == 1.0
