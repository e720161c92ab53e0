"""What the user sees: progress of a fit (log lines, bars, callback records), the diagnostics
figure, Mardia's tests of joint Gaussianity and the Manhattan plot's axis and legend."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import EXAMPLES, invoke

from flowpheno.diagnostics import final_state_note, mardia_test
from flowpheno.pipeline import FitConfig
from flowpheno.progress import FitLines
from flowpheno.report import FitReport

FAST = ["--epochs", "3", "--stages", "2", "--layers", "4", "--hidden", "32", "--device", "cpu", "--seed", "3"]
EPOCH_KEYS = {"event", "stage", "epoch", "train_nll", "val_nll", "non_finite_batches", "seconds"}


# --- Mardia's tests ---------------------------------------------------------------------------


def test_mardia_matches_the_mvn_package_on_iris_setosa() -> None:
    """R's MVN 5.9, ``mvn(iris[iris$Species == "setosa", 1:4], mvnTest = "mardia")``, prints
    skewness 25.6643445196298 (p 0.177185884467652) and kurtosis 1.29499223711605 (p 0.195322907441935)."""
    from sklearn.datasets import load_iris

    setosa = load_iris().data[:50]
    test = mardia_test(setosa)
    assert test.skewness_statistic == pytest.approx(25.6643445196298, rel=1e-10)
    assert test.skewness_p == pytest.approx(0.177185884467652, rel=1e-8)
    assert test.kurtosis_z == pytest.approx(1.29499223711605, rel=1e-10)
    assert test.kurtosis_p == pytest.approx(0.195322907441935, rel=1e-8)
    assert test.skewness_df == 20


def test_mardia_equals_the_dense_formula() -> None:
    """``b1 = sum_ij d_ij^3 / n^2`` and ``b2 = sum_i d_ii^2 / n`` with ``D = Xc S^-1 Xc^T``
    (Mardia 1970, eq. 2.5 and 2.6), formed as the n x n matrix."""
    rng = np.random.default_rng(4)
    x = np.column_stack([rng.exponential(size=300), rng.standard_t(4, size=300), rng.normal(size=300)])
    x[:, 1] += 0.5 * x[:, 0]
    centred = x - x.mean(axis=0)
    dense = centred @ np.linalg.inv(centred.T @ centred / len(x)) @ centred.T
    test = mardia_test(x)
    assert test.skewness == pytest.approx((dense**3).sum() / len(x) ** 2, rel=1e-10)
    assert test.kurtosis == pytest.approx(np.mean(np.diag(dense) ** 2), rel=1e-10)
    assert test.skewness_p < 1e-10 and test.kurtosis_p < 1e-10  # skewed and heavy-tailed: rejected


def test_mardia_null_distribution_means() -> None:
    """Under Gaussianity ``E[b2] = d(d+2)(n-1)/(n+1)`` exactly (Mardia 1970) and ``n b1 / 6``
    has mean close to its chi-square degrees of freedom; p-values are uniform (mean 1/2)."""
    rng = np.random.default_rng(5)
    n, d, reps = 400, 3, 300
    tests = [mardia_test(rng.normal(size=(n, d)) @ np.array([[1, 0, 0], [0.8, 1, 0], [0, -2, 3]])) for _ in range(reps)]
    kurtosis = np.array([t.kurtosis for t in tests])
    statistic = np.array([t.skewness_statistic for t in tests])
    assert abs(kurtosis.mean() - d * (d + 2) * (n - 1) / (n + 1)) < 4 * kurtosis.std() / math.sqrt(reps)
    assert abs(statistic.mean() - d * (d + 1) * (d + 2) / 6) < 4 * math.sqrt(2 * 10 / reps)
    for p in ([t.skewness_p for t in tests], [t.kurtosis_p for t in tests]):
        assert abs(np.mean(p) - 0.5) < 4 * math.sqrt(1 / 12 / reps)


def test_mardia_refuses_a_singular_sample() -> None:
    x = np.random.default_rng(0).normal(size=(100, 2))
    with pytest.raises(ValueError, match="singular"):
        mardia_test(np.column_stack([x, x[:, 0] + x[:, 1]]))


# --- progress lines ---------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_log_lines_at_a_modest_rate_with_time_left() -> None:
    """100 epochs of 1 s in 4 stages: the plan, the first epoch and then one epoch line per 15 s
    at most, and every stage's end; the time left is epochs left x mean epoch time."""
    clock, lines = _Clock(), []
    progress = FitLines(lines.append, interval=15.0, clock=clock)
    progress({"event": "plan", "stages": 4, "epochs": 25, "runs": 1})
    progress({"event": "stage", "stage": 0, "s2_seconds": 0.1, "s2": 0.3})
    for epoch in range(1, 101):
        clock.now = float(epoch)
        stage = (epoch - 1) // 25 + 1
        progress(
            {
                "event": "epoch",
                "stage": stage,
                "epoch": epoch,
                "train_nll": 3.0 - epoch / 100,
                "val_nll": 3.1,
                "s2": 0.3,
                "seconds": 1.0,
                "extra_key": "ignored",
            }
        )
        if epoch % 25 == 0:
            progress({"event": "stage", "stage": stage, "flow_seconds": 25.0, "s2_seconds": 0.1, "s2": 0.35})
    epoch_lines = [line for line in lines if " epoch " in line and "done" not in line]
    assert len(epoch_lines) == len(range(1, 101, 15))  # epochs 1, 16, 31, ...
    assert (
        epoch_lines[1]
        == "stage 1/4 epoch 16/100: train NLL 2.8400, validation NLL 3.1000, s2 0.300; 0:00:16 elapsed, about 0:01:24 left"
    )
    done = [line for line in lines if " done" in line]
    assert [line.split(" done")[0] for line in done] == [f"stage {k}/4" for k in range(1, 5)]
    assert "s2 0.350 refitted on all latents" in done[0] and "left" not in done[-1]
    assert lines[0].startswith("training: 4 stages x 25 epochs") and lines[1].startswith("stage 0: initial s2 0.300")


# --- the fit, through the CLI and the Python API -------------------------------------------------


@pytest.mark.slow
def test_fit_to_a_log_file_writes_progress_lines_and_quiet_writes_none(tmp_path: Path, example_kinship: Path) -> None:
    """Output to a non-terminal (as a workflow's log): plain progress lines with stage, epoch and
    losses; ``--quiet``: none, only the summary line, which says which state and s2 were kept."""
    args = [
        "fit",
        "--pheno",
        EXAMPLES / "pheno.tsv",
        "--covar",
        EXAMPLES / "covar.tsv",
        "--grm",
        example_kinship,
        *FAST,
    ]
    result = invoke(*args, "--out", tmp_path / "run")
    assert result.returncode == 0, result
    assert "stage 1/2 epoch 1/6: train NLL" in result.stderr and "validation NLL" in result.stderr
    assert "stage 2/2 done" in result.stderr and "elapsed" in result.stderr
    assert "\x1b[" not in result.stderr  # no terminal control codes in a log
    report = json.loads((tmp_path / "run" / "fit.json").read_text())
    assert report["final_state"] in " ".join(result.stderr.split())

    quiet = invoke(*args, "--out", tmp_path / "quiet", "--quiet", "--mode", "iid", "--epochs", "1")
    assert quiet.returncode == 0, quiet
    summary = [line for line in quiet.stderr.splitlines() if line.startswith("fitted 4 traits")]
    assert summary and "kept the flow of stage 2, epoch 2" in summary[0] and "iid model: no s2" in summary[0]
    assert not any(
        word in line for line in quiet.stderr.splitlines() if line not in summary for word in ("epoch", "stage", "NLL")
    )


def test_fit_report_records_the_kept_state_and_gaussianity(
    tmp_path: Path, example_kinship: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The callback's records carry the documented keys; ``best_epoch``/``best_stage`` are the
    epoch with the lowest validation NLL; the final s2 is the refit on the kept flow's latents;
    Mardia's tests show the Gaussianized traits far closer to Gaussian; ``progress=False`` prints nothing."""
    from flowpheno.pipeline import FitConfig, fit_phenotypes
    from flowpheno.train import TrainConfig

    records: list[dict] = []
    config = FitConfig(layers=4, hidden=32, train=TrainConfig(epochs=4, stages=2, seed=3))
    _, _, report = fit_phenotypes(
        EXAMPLES / "pheno.tsv", example_kinship, EXAMPLES / "covar.tsv", config, callback=records.append, progress=False
    )
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""

    assert records[0] == {"event": "plan", "stages": 2, "epochs": 4, "runs": 1}
    epochs = [r for r in records if r["event"] == "epoch"]
    assert len(epochs) == 8 and all(EPOCH_KEYS | {"s2", "kinship_scale"} <= set(r) for r in epochs)
    stages = [r for r in records if r["event"] == "stage"]
    assert [r["stage"] for r in stages] == [0, 1, 2] and all({"s2", "s2_seconds"} <= set(r) for r in stages)

    best = min(epochs, key=lambda r: r["val_nll"])
    assert (report.best_epoch, report.best_stage) == (best["epoch"], best["stage"])
    final = report.stages[-1]
    assert final["stage"] == "final" and final["s2_before_refit"] == pytest.approx(best["s2"])
    assert report.covariance["s2"] == final["s2"]
    assert f"stage {best['stage']}, epoch {best['epoch']}" in report.final_state
    assert f"s2 = {final['s2']:.3f} refitted exactly with each trait's latent scale" in report.final_state

    before, after = report.gaussianity["before"], report.gaussianity["after"]
    assert before["n"] == after["n"] == report.n_used and before["d"] == 4
    assert after["skewness"] < 0.8 * before["skewness"] and after["kurtosis_z"] < 0.8 * before["kurtosis_z"]


def test_fit_phenotypes_shows_progress_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    """A notebook or script gets progress without asking (plain lines where stderr is not a
    terminal); without validation rows the last state is kept and said so."""
    from flowpheno.pipeline import FitConfig, fit_phenotypes
    from flowpheno.train import TrainConfig

    config = FitConfig(
        mode="iid",
        layers=2,
        hidden=16,
        val_frac=0.0,
        traits=["trait1", "trait2"],
        train=TrainConfig(epochs=2, stages=2, seed=1),
    )
    _, _, report = fit_phenotypes(EXAMPLES / "pheno.tsv", config=config)
    err = capsys.readouterr().err
    assert "stage 1/2 epoch 1/4: train NLL" in err and "stage 2/2 done" in err
    assert report.best_epoch is None and report.best_stage is None
    assert report.final_state == "no validation rows: the last epoch's flow was kept; iid model: no s2"


# --- the diagnostics figure -----------------------------------------------------------------------


def _report(d: int, stages: int = 3, epochs: int = 4, **extra: object) -> FitReport:
    history = [
        {
            "stage": s,
            "epoch": (s - 1) * epochs + e,
            "train_nll": 3.0 - 0.01 * e,
            "val_nll": 3.2 - 0.02 * e + 0.01 * s,
            "s2": 0.2 + 0.05 * s,
            "val_conditional_nll": 3.0,
            **extra,
        }
        for s in range(1, stages + 1)
        for e in range(1, epochs + 1)
    ]
    best = min(history, key=lambda r: r["val_nll"])
    return FitReport(
        config=FitConfig(mode="alternating"),
        n_used=300,
        covariates=["age", "sex"],
        epochs=history,
        stages=[{"stage": 0, "s2": 0.25}]
        + [{"stage": s, "s2": 0.2 + 0.05 * (s + 1)} for s in range(1, stages + 1)]
        + [{"stage": "final", "s2_before_refit": best["s2"], "s2": 0.31}],
        covariance={"s2": 0.31},
        best_epoch=best["epoch"],
        best_stage=best["stage"],
        best_validation_nll=best["val_nll"],
    )


@pytest.mark.parametrize("d", [1, 2, 4, 10])
def test_diagnostics_figure_panels(d: int) -> None:
    """A QQ panel per trait (at most 8), stage boundaries and the kept epoch on the loss curves,
    the s2 panel, joint Gaussianity with Mardia's tests in the legend, a caption that explains
    the before panels and the final s2, and no empty panel."""
    from flowpheno.plots import MAX_QQ, diagnostics_figure

    rng = np.random.default_rng(d)
    before = rng.exponential(size=(300, d))
    after = rng.normal(size=(300, d))
    traits = [f"t{j}" for j in range(d)]
    report = _report(d)
    figure = diagnostics_figure(before, after, traits, report)
    qq = [axis for axis in figure.axes if axis.get_gid() == "qq"]
    assert [axis.get_title() for axis in qq] == [f"t{j}: QQ against N(0, 1)" for j in range(min(d, MAX_QQ))]
    loss = next(axis for axis in figure.axes if axis.get_title(loc="left").startswith("training curves"))
    boundaries = [line.get_xdata()[0] for line in loss.get_lines() if line.get_gid() == "stage-boundary"]
    assert boundaries == [4.5, 8.5]
    kept = [line.get_xdata()[0] for line in loss.get_lines() if line.get_gid() == "kept-epoch"]
    assert kept == [report.best_epoch]
    labels = [text.get_text() for text in loss.get_legend().get_texts()]
    assert labels[0].startswith("training objective (kinship model") and labels[1].startswith("validation (held-out")
    joint = next(axis for axis in figure.axes if axis.get_gid() == "mahalanobis")
    legend = [text.get_text() for text in joint.get_legend().get_texts()]
    assert legend[0].startswith("before: Mardia skewness") and legend[1].startswith("after: Mardia skewness")
    caption = next(axis for axis in figure.axes if axis.get_gid() == "caption").texts[0].get_text()
    assert "covariates (age, sex)" in caption and "covariate effects are removed" in caption
    assert final_state_note(report) in " ".join(caption.split())
    assert ("first 8 of 10 traits" in caption) == (d == 10)
    for axis in figure.axes:  # every panel shows something
        assert axis.get_gid() == "caption" or axis.collections or axis.get_lines(), axis.get_title()
    assert len(figure.axes) == 2 * min(math.comb(d, 2), 6) + min(d, MAX_QQ) + 3 + 1


def test_diagnostics_figure_tolerates_missing_validation_and_iid() -> None:
    """History records without ``val_nll`` (and with unknown keys) draw the training curve only;
    an iid fit has no s2 panel."""
    from flowpheno.plots import diagnostics_figure

    report = _report(3)
    for record in report.epochs:
        del record["val_nll"], record["s2"]
    report = replace(report, config=FitConfig(mode="iid"), covariance={}, best_epoch=None, best_stage=None)
    values = np.random.default_rng(0).normal(size=(100, 3))
    figure = diagnostics_figure(values, values, ["a", "b", "c"], report)
    loss = next(axis for axis in figure.axes if axis.get_title(loc="left").startswith("training curves"))
    assert [text.get_text() for text in loss.get_legend().get_texts()] == [
        "training objective (iid model, training rows)"
    ]
    assert not any(axis.get_title(loc="left").startswith("s2") for axis in figure.axes)


# --- Manhattan plot ---------------------------------------------------------------------------------


def test_manhattan_chromosome_axis_and_legend_off_the_data() -> None:
    """Cumulative positions in chromosome order, a label at each chromosome's centre, colours
    alternating between neighbours, and the legend above the axes (never over the threshold line)."""
    from matplotlib.colors import to_hex

    from flowpheno.gwas.plots import manhattan

    rng = np.random.default_rng(2)
    chromosomes = ["10", "2", "X", "1"]
    assoc = pd.concat(
        [
            pd.DataFrame(
                {
                    "SNP": [f"{c}_{k}" for k in range(50)],
                    "CHR": c,
                    "BP": np.sort(rng.integers(1, 5_000_000, 50)),
                    "P": rng.uniform(size=50),
                }
            )
            for c in chromosomes
        ],
        ignore_index=True,
    )
    assoc.loc[3, "P"] = 1e-12
    figure = manhattan(assoc, 1e-6, "test", truth=pd.DataFrame({"snp": ["10_3"]}))
    axis = figure.axes[0]
    ticks = [label.get_text() for label in axis.get_xticklabels()]
    assert ticks == ["1", "2", "10", "X"]
    points = axis.collections[0]
    x = points.get_offsets()[:, 0]
    colours = [to_hex(c) for c in points.get_facecolors()]
    spans = np.cumsum([0] + [50] * 4)
    for k, tick in enumerate(axis.get_xticks()):
        part = x[spans[k] : spans[k + 1]]
        assert part.min() <= tick <= part.max() and (k == 0 or part.min() > x[spans[k] - 1])
        assert len(set(colours[spans[k] : spans[k + 1]])) == 1
        assert k == 0 or colours[spans[k]] != colours[spans[k] - 1]
    figure.canvas.draw()
    legend = axis.get_legend().get_window_extent()
    assert legend.y0 >= axis.get_window_extent().y1 - 1  # above the plotting area
    assert [text.get_text() for text in axis.get_legend().get_texts()] == ["threshold 1e-06", "causal SNP"]
