"""FitReport: the typed content of fit.json, and the steps of a fit called one by one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES

from flowpheno.pipeline import FitConfig, fit_phenotypes, fit_report, prepare_fit, train_fit
from flowpheno.report import DroppedRows, FitReport, KinshipSummary, jsonable
from flowpheno.train import TrainConfig


def _config(**train: object) -> FitConfig:
    return FitConfig(layers=2, hidden=8, train=TrainConfig(epochs=1, stages=1, seed=2, **train))


def test_fit_json_is_the_report_and_reads_back(tmp_path: Path, example_kinship: Path) -> None:
    """fit.json holds exactly ``report.to_json()`` (every key, in order, same values), and
    ``FitReport.from_json`` of the file gives the same report back, typed."""
    _, _, report = fit_phenotypes(
        EXAMPLES / "pheno.tsv", example_kinship, EXAMPLES / "covar.tsv", _config(), out=tmp_path / "run", progress=False
    )
    written = json.loads((tmp_path / "run" / "fit.json").read_text())
    assert written == json.loads(json.dumps(report.to_json(), default=jsonable))
    assert list(written)[-1] == "final_state" and written["final_state"] == report.final_state
    assert list(written["config"])[-1] == "train" and written["config"]["train"]["seed"] == 2

    again = FitReport.from_json(written)
    assert isinstance(again.kinship, KinshipSummary) and again.kinship.rank == report.kinship.rank
    assert isinstance(again.dropped["missing trait value"], DroppedRows)
    assert again.dropped_count == report.dropped_count == report.n_rows - report.n_used > 0
    assert again.config == report.config and again.mode == "alternating"
    assert json.loads(json.dumps(again.to_json(), default=jsonable)) == written


def test_steps_one_by_one_and_the_report_keeps_its_config() -> None:
    """prepare_fit gives standardised residuals of the used rows and a split of them; train_fit
    Gaussianizes exactly the complete rows; changing the config after the fit leaves the report
    (and so fit.json) as it was."""
    iid = FitConfig(mode="iid", layers=2, hidden=8, val_frac=0.3, train=TrainConfig(epochs=1, stages=1, seed=2))
    data = prepare_fit(EXAMPLES / "pheno.tsv", None, None, iid)
    assert data.n_used + sum(len(rows) for rows in data.dropped.values()) == len(data.phenotypes.values)
    assert data.standardised.shape == (data.n_used, len(data.phenotypes.traits))
    np.testing.assert_allclose(data.standardised.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(data.standardised.std(axis=0), 1.0, rtol=1e-9)
    assert len(data.train_rows) + len(data.val_rows) == data.n_used and data.dependence is None

    trained = train_fit(data, iid)
    report = fit_report(data, trained, iid, command=["fit"])
    iid.train.seed = 99
    iid.layers = 5
    assert report.config.train.seed == 2 and report.config.layers == 2 and report.seed == 2
    assert report.n_validation == round(0.3 * data.n_used) and report.kinship is None and report.covariance == {}
    assert np.isnan(trained.latent[~data.keep]).all() and np.isfinite(trained.latent[data.keep]).all()


@pytest.mark.parametrize("content", [{}, {"config": {"mode": "no such mode"}}, {"unknown_key": 1, "n_used": 3}])
def test_from_json_tolerates_partial_and_foreign_content(content: dict) -> None:
    """A partial fit.json (or one of another version) still reads: unknown keys are ignored, an
    invalid config becomes None, absent fields keep their empty defaults."""
    report = FitReport.from_json(content)
    assert report.config is None and report.mode is None
    assert report.n_used == content.get("n_used", 0) and report.epochs == [] and report.kinship is None
