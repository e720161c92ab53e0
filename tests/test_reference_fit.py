"""The run's seed fixes every random draw: a short fit reproduces committed reference numbers.

The split (numpy ``default_rng(seed)``), the flow's initial weights (drawn from the seed by
the flow builder, :func:`flowpheno.flows.seeded_init`) and the batch order (a
``torch.Generator`` seeded in the trainer) all come from ``TrainConfig.seed``, never from the
global random state. A change that reorders those draws, or changes the arithmetic of a
fit, moves these numbers: if that change is intended, regenerate the reference with

    PYTHONPATH=.:tests python tests/test_reference_fit.py

and say in the commit why the numbers moved (committed benchmark figures then differ by
seed noise only if the change is a reordering of draws).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import family_kinship, write_table

from flowpheno.io.kinship import write_npz
from flowpheno.pipeline import FitConfig, fit_phenotypes
from flowpheno.train import TrainConfig

REFERENCE = Path(__file__).parent / "reference" / "short_fit.json"
TOLERANCE = 1e-5
"""Absolute and relative: float32 training on one thread is bitwise repeatable on one machine;
the margin allows for another CPU's vector instructions, not for a changed random stream
(which moves these numbers by 1e-2 or more)."""


def short_fit(directory: Path) -> dict[str, Any]:
    """A 2-epoch alternating fit of 120 related individuals (2 skewed traits, families of 1-8)."""
    rng = np.random.default_rng(2024)
    n = 120
    kinship = family_kinship(n, rng, relatedness=0.5)
    z = np.linalg.cholesky(0.6 * kinship + 0.4 * np.eye(n)) @ rng.normal(size=(n, 2))
    ids = [f"i{k:03d}" for k in range(n)]
    table = pd.DataFrame(
        {"FID": ids, "IID": ids, "skewed": np.exp(z[:, 0] / 2), "mixed": np.sinh(z[:, 1]) + z[:, 0] / 2}
    )
    pheno = write_table(directory / "pheno.tsv", table)
    write_npz(directory / "kinship.npz", kinship, np.array(ids), np.array(ids))
    config = FitConfig(
        mode="alternating",
        layers=2,
        hidden=16,
        val_frac=0.2,
        threads=1,
        train=TrainConfig(epochs=2, stages=1, batch_size=32, seed=7, profile_scale=False),  # as when recorded
    )
    _, gaussianized, report = fit_phenotypes(pheno, grm=directory / "kinship.npz", config=config, progress=False)
    return {
        "s2": report.covariance["s2"],
        "s2_stage_0": report.stages[0]["s2"],
        "train_nll_epoch_1": report.epochs[0]["train_nll"],
        "best_validation_nll": report.best_validation_nll,
        "gaussianized_first_rows": gaussianized[["skewed", "mixed"]].to_numpy()[:4].tolist(),
    }


def test_short_fit_reproduces_the_reference(tmp_path: Path) -> None:
    expected = json.loads(REFERENCE.read_text())["values"]
    got = short_fit(tmp_path)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert np.asarray(got[key]) == pytest.approx(np.asarray(value), rel=TOLERANCE, abs=TOLERANCE), key


def test_the_fit_leaves_the_global_random_state_alone(tmp_path: Path) -> None:
    """The seed is handed down, not set globally: a fit neither depends on nor changes the caller's torch random state."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    torch.manual_seed(11)
    state = torch.random.get_rng_state()
    first = short_fit(tmp_path / "a")
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(12)
    assert short_fit(tmp_path / "b") == first


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        values = short_fit(Path(folder))
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(
        json.dumps(
            {
                "what": "tests/test_reference_fit.py::short_fit on the CPU, one thread",
                "torch": torch.__version__,
                "values": values,
            },
            indent=2,
        )
        + "\n"
    )
    print(json.dumps(values, indent=2))
