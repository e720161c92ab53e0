"""The command line end to end on the embedded example, and its errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import EXAMPLES, family_kinship, invoke, run_cli, write_table

from flowpheno.io.kinship import write_npz

FAST = ["--epochs", "2", "--stages", "2", "--layers", "4", "--hidden", "32", "--device", "cpu", "--seed", "3"]


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory, example_kinship: Path) -> Path:
    out = tmp_path_factory.mktemp("fit") / "run"
    result = run_cli(
        "fit",
        "--pheno",
        str(EXAMPLES / "pheno.tsv"),
        "--covar",
        str(EXAMPLES / "covar.tsv"),
        "--grm",
        str(example_kinship),
        "--out",
        str(out),
        *FAST,
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.slow
def test_fit_writes_everything(example_run: Path) -> None:
    for name in ("model.safetensors", "model.json", "fit.json", "gaussianized.tsv", "split.tsv", "diagnostics.png"):
        assert (example_run / name).stat().st_size > 0, name
    report = json.loads((example_run / "fit.json").read_text())
    pheno = pd.read_csv(EXAMPLES / "pheno.tsv", sep="\t")
    assert report["traits"] == ["trait1", "trait2", "trait3", "trait4"]
    assert report["covariates"] == ["age", "sex", "batch_b2", "batch_b3"]
    incomplete = int(pheno.drop(columns=["FID", "IID"]).isna().any(axis=1).sum())
    assert report["dropped"]["missing trait value"]["count"] == incomplete
    assert report["n_used"] == len(pheno) - incomplete
    assert 0.0 <= report["covariance"]["s2"] < 1.0
    assert [s["stage"] for s in report["stages"]] == [0, 1, 2, "final"]
    assert len(report["epochs"]) == 4 and all(e["val_nll"] is not None for e in report["epochs"])
    assert {"torch", "zuko", "numpy"} <= set(report["versions"]) and report["seed"] == 3
    assert {"read_and_align", "eigendecomposition", "training", "transform", "write"} <= set(report["seconds"])

    out = pd.read_csv(example_run / "gaussianized.tsv", sep="\t")
    assert list(out["IID"]) == list(pheno["IID"])  # input order
    traits = out.drop(columns=["FID", "IID"])
    assert (traits.isna().any(axis=1) == pheno.drop(columns=["FID", "IID"]).isna().any(axis=1)).all()
    complete = traits.dropna()
    assert np.allclose(complete.mean(), 0, atol=0.25) and np.allclose(complete.std(), 1, atol=0.3)


@pytest.mark.slow
def test_transform_reproduces_fit(example_run: Path, tmp_path: Path) -> None:
    result = run_cli(
        "transform",
        "--model",
        str(example_run),
        "--pheno",
        str(EXAMPLES / "pheno.tsv"),
        "--covar",
        str(EXAMPLES / "covar.tsv"),
        "--out",
        str(tmp_path / "z.tsv"),
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    fitted = pd.read_csv(example_run / "gaussianized.tsv", sep="\t")
    again = pd.read_csv(tmp_path / "z.tsv", sep="\t")
    pd.testing.assert_frame_equal(fitted, again, atol=1e-6)

    result = run_cli(
        "transform",
        "--model",
        str(example_run),
        "--pheno",
        str(EXAMPLES / "pheno.tsv"),
        "--covar",
        str(EXAMPLES / "covar.tsv"),
        "--out",
        str(tmp_path / "z.gemma.txt"),
        "--format",
        "gemma",
        "--fam",
        str(EXAMPLES / "cohort.fam"),
    )
    assert result.returncode == 0, result.stderr
    gemma = pd.read_csv(tmp_path / "z.gemma.txt", sep="\t", header=None, na_values="NA")
    fam = pd.read_csv(EXAMPLES / "cohort.fam", sep=" ", header=None, dtype=str)
    expected = fitted.set_index("IID").loc[fam[1]].drop(columns="FID").to_numpy()
    np.testing.assert_allclose(gemma.to_numpy(), expected, atol=1e-6)

    result = invoke(
        "transform",
        "--model",
        str(example_run),
        "--pheno",
        str(EXAMPLES / "pheno.tsv"),
        "--out",
        str(tmp_path / "x.tsv"),
    )
    assert result.returncode == 1 and "--covar" in result.stderr and not (tmp_path / "x.tsv").exists()


@pytest.mark.slow
def test_same_seed_same_numbers_and_cached_eigendecomposition(
    example_run: Path, example_kinship: Path, tmp_path: Path
) -> None:
    again = tmp_path / "again"
    result = run_cli(
        "fit",
        "--pheno",
        str(EXAMPLES / "pheno.tsv"),
        "--covar",
        str(EXAMPLES / "covar.tsv"),
        "--grm",
        str(example_kinship),
        "--out",
        str(again),
        *FAST,
    )
    assert result.returncode == 0, result.stderr
    assert (again / "gaussianized.tsv").read_text() == (example_run / "gaussianized.tsv").read_text()
    assert json.loads((again / "fit.json").read_text())["kinship"]["eigendecomposition_cached"] is True


@pytest.mark.parametrize("mode", ["iid", "grid", "joint", "alternating_scaled"])
def test_other_modes(mode: str, tmp_path: Path) -> None:
    pheno, kinship = _small_cohort(tmp_path)
    args = [
        "fit",
        "--pheno",
        str(pheno),
        "--out",
        str(tmp_path / "run"),
        "--mode",
        mode.removesuffix("_scaled"),
        "--epochs",
        "1",
        "--stages",
        "1",
        "--layers",
        "2",
        "--hidden",
        "8",
    ]
    if mode == "grid":
        args += ["--s2-grid", "0,0.5"]
    if mode == "alternating_scaled":
        args.append("--scale-step")
    if mode != "iid":
        args += ["--grm", str(kinship)]
    result = invoke(*args)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "run" / "fit.json").read_text())
    if mode == "grid":
        assert [g["value"] for g in report["grid"]] == [0.0, 0.5]
        assert report["covariance"]["s2"] == pytest.approx(
            min(report["grid"], key=lambda g: g["val_nll"])["value"], abs=1e-5
        )
    if mode == "iid":
        assert report["covariance"] == {} and report["kinship"] is None
    assert report["config"]["train"]["profile_scale"] is (mode in ("alternating_scaled", "joint"))
    if mode in ("alternating_scaled", "joint"):  # the scale step: on by default in joint
        assert 0.0 <= report["covariance"]["s2"] < 1.0
        final = report["stages"][-1]
        assert final["stage"] == "final" and final["s2"] == report["covariance"]["s2"]
        assert len(final["latent_scale"]) == report["d"]
    if mode == "joint":
        assert "learned jointly with it" in result.stderr and "(--scale-step)" in result.stderr


def test_scale_step_is_on_by_default_in_alternating(tmp_path: Path) -> None:
    """No flag: the scale step runs (the same numbers as --scale-step) and fit.json says so;
    --no-scale-step turns it off and changes s2."""
    pheno, kinship = _small_cohort(tmp_path)
    small = ["--epochs", "1", "--stages", "2", "--layers", "2", "--hidden", "8"]
    reports, tables = {}, {}
    for name, flags in (("default", []), ("on", ["--scale-step"]), ("off", ["--no-scale-step"])):
        out = tmp_path / name
        result = invoke("fit", "--pheno", str(pheno), "--grm", str(kinship), "--out", str(out), *small, *flags)
        assert result.returncode == 0, result.stderr
        reports[name] = json.loads((out / "fit.json").read_text())
        tables[name] = (out / "gaussianized.tsv").read_text()
    assert [reports[name]["config"]["train"]["profile_scale"] for name in ("default", "on", "off")] == [
        True,
        True,
        False,
    ]
    assert tables["default"] == tables["on"]
    assert reports["default"]["covariance"]["s2"] == reports["on"]["covariance"]["s2"]
    assert abs(reports["default"]["covariance"]["s2"] - reports["off"]["covariance"]["s2"]) > 1e-4


def test_scale_step_needs_alternating(tmp_path: Path) -> None:
    pheno, kinship = _small_cohort(tmp_path)
    result = invoke(
        "fit",
        "--pheno",
        str(pheno),
        "--grm",
        str(kinship),
        "--out",
        str(tmp_path / "run"),
        "--mode",
        "grid",
        "--scale-step",
    )
    assert (
        result.returncode != 0
        and "--scale-step: a step of --mode 'alternating' or 'joint' only, not of 'grid'" in result.stderr
    )
    assert not (tmp_path / "run").exists()


def test_a_validation_fraction_that_rounds_to_nobody_is_said(tmp_path: Path) -> None:
    """``--val-frac 0.001`` of 80 individuals holds out none: the fit runs (as with 0) but says
    that early stopping and the held-out score are off, instead of turning them off silently."""
    pheno, kinship = _small_cohort(tmp_path)
    settings = ["--epochs", "1", "--stages", "1", "--layers", "2", "--hidden", "8", "--threads", "1"]
    result = invoke(
        "fit", "--pheno", pheno, "--grm", kinship, "--out", tmp_path / "run", "--val-frac", "0.001", *settings
    )
    assert result.returncode == 0, result.stderr
    assert "--val-frac 0.001 of 80 individuals rounds to none held out" in result.stderr
    report = json.loads((tmp_path / "run" / "fit.json").read_text())
    assert report["n_validation"] == 0 and any("rounds to none held out" in w for w in report["warnings"])


def _small_cohort(tmp_path: Path, n: int = 80) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    ids = [f"i{k}" for k in range(n)]
    table = pd.DataFrame({"FID": "f", "IID": ids, "a": rng.gamma(2.0, size=n), "b": rng.normal(size=n)})
    write_npz(tmp_path / "kin.npz", family_kinship(n, rng), np.array(ids))
    return write_table(tmp_path / "pheno.tsv", table), tmp_path / "kin.npz"


def _broken_inputs(tmp_path: Path, case: str) -> tuple[list[str], str]:
    """(fit arguments, text the one-line error must contain) for each kind of bad input."""
    pheno, kinship = _small_cohort(tmp_path)
    table = pd.read_csv(pheno, sep="\t", dtype={"IID": str})
    n = len(table)
    ids = table["IID"].to_numpy()
    matrix = np.load(kinship)["K"]
    if case == "no_overlap":
        write_npz(kinship, matrix, np.array([f"x{k}" for k in range(n)]))
        return [], "share no IID"
    if case == "duplicate_id":
        table.loc[5, "IID"] = "i2"
        write_table(pheno, table)
        return [], "IID 'i2' appears more than once (lines 4, 7)"
    if case == "non_numeric":
        table["b"] = table["b"].astype(object)
        table.loc[9, "b"] = "high"
        write_table(pheno, table)
        return [], "trait column 'b' is not numeric (line 11, IID i9: 'high')"
    if case == "not_square":
        write_npz(kinship, matrix[:, :-1], ids)
        return [], "kinship must be square"
    if case == "not_symmetric":
        matrix[3, 4] += 0.2
        write_npz(kinship, matrix, ids)
        return [], "kinship is not symmetric (K[i3,i4]"
    if case == "negative_eigenvalues":
        write_npz(kinship, matrix - 0.8 * np.eye(n) + 0.5 * (np.arange(n)[:, None] % 2 == np.arange(n) % 2), ids)
        return [], "eigenvalues below -1e-06 x the largest"
    if case == "too_few_rows":
        table.loc[: n - 40, "a"] = np.nan
        write_table(pheno, table)
        return [], "only 39 individuals have every trait"
    if case == "zero_variance":
        table["b"] = 1.25
        write_table(pheno, table)
        return [], "trait 'b' has zero variance"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "no_overlap",
        "duplicate_id",
        "non_numeric",
        "not_square",
        "not_symmetric",
        "negative_eigenvalues",
        "too_few_rows",
        "zero_variance",
    ],
)
def test_bad_input_is_one_clear_line(case: str, tmp_path: Path) -> None:
    extra, message = _broken_inputs(tmp_path, case)
    out = tmp_path / "run"
    result = invoke(
        "fit",
        "--pheno",
        str(tmp_path / "pheno.tsv"),
        "--grm",
        str(tmp_path / "kin.npz"),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--stages",
        "1",
        "--layers",
        "2",
        "--hidden",
        "8",
        *extra,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]


@pytest.mark.slow
def test_failed_refit_keeps_previous_run(tmp_path: Path) -> None:
    pheno, kinship = _small_cohort(tmp_path)
    args = [
        "fit",
        "--pheno",
        str(pheno),
        "--grm",
        str(kinship),
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        "--stages",
        "1",
        "--layers",
        "2",
        "--hidden",
        "8",
    ]
    assert run_cli(*args).returncode == 0
    before = (tmp_path / "run" / "gaussianized.tsv").read_text()
    assert invoke(*args, "--overwrite", "--traits", "a,missing_column").returncode == 1
    assert (tmp_path / "run" / "gaussianized.tsv").read_text() == before


@pytest.mark.slow
def test_low_rank_pcs_agree_with_dense_kinship(tmp_path: Path) -> None:
    """--grm-pcs (thin SVD, no n x n matrix) and the same kinship as a dense .npz give one s2."""
    rng = np.random.default_rng(7)
    n = 400
    ids = np.array([f"i{k}" for k in range(n)])
    pcs = rng.normal(size=(n, 6)) + np.repeat(rng.normal(size=(8, 6)) * 2, n // 8, axis=0)  # 8 clusters
    pd.DataFrame({"FID": "f", "IID": ids, **{f"PC{j + 1}": pcs[:, j] for j in range(6)}}).to_csv(
        tmp_path / "pcs.tsv", sep="\t", index=False
    )
    centred = pcs - pcs.mean(axis=1, keepdims=True)
    factor = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    kinship = factor @ factor.T
    write_npz(tmp_path / "dense.npz", kinship, ids)
    latent = np.linalg.cholesky(0.5 * kinship + 0.5 * np.eye(n) + 1e-9 * np.eye(n)) @ rng.normal(size=(n, 2))
    write_table(
        tmp_path / "pheno.tsv", pd.DataFrame({"FID": "f", "IID": ids, "a": np.exp(latent[:, 0]), "b": latent[:, 1]})
    )
    common = [
        "fit",
        "--pheno",
        str(tmp_path / "pheno.tsv"),
        "--epochs",
        "1",
        "--stages",
        "1",
        "--layers",
        "2",
        "--hidden",
        "8",
    ]
    low = invoke(*common, "--grm-pcs", str(tmp_path / "pcs.tsv"), "--out", str(tmp_path / "low"))
    dense = invoke(*common, "--grm", str(tmp_path / "dense.npz"), "--out", str(tmp_path / "dense"))
    assert low.returncode == 0 and dense.returncode == 0, low.stderr + dense.stderr
    low_report = json.loads((tmp_path / "low" / "fit.json").read_text())
    dense_report = json.loads((tmp_path / "dense" / "fit.json").read_text())
    assert low_report["kinship"]["low_rank"] and low_report["kinship"]["rank"] <= 6
    assert not dense_report["kinship"]["low_rank"]
    assert low_report["stages"][0]["s2"] == pytest.approx(dense_report["stages"][0]["s2"], abs=1e-4)
    assert low_report["stages"][0]["s2"] > 0.2  # the simulated relatedness is found
    low_z = pd.read_csv(tmp_path / "low" / "gaussianized.tsv", sep="\t")
    dense_z = pd.read_csv(tmp_path / "dense" / "gaussianized.tsv", sep="\t")
    np.testing.assert_allclose(low_z[["a", "b"]], dense_z[["a", "b"]], atol=1e-3)


@pytest.mark.slow
def test_grm_factor_agrees_with_dense_and_trains_exactly(tmp_path: Path) -> None:
    """--grm-factor (standardised genotypes, M < n) equals the dense GRM of the same panel;
    --objective exact runs joint training on it."""
    from flowpheno.io.kinship import read_genotype_factor
    from flowpheno.io.plink import write_plink

    rng = np.random.default_rng(8)
    n, m = 300, 40
    founders = rng.binomial(2, rng.uniform(0.1, 0.5, size=m), size=(n // 3, m))
    dosage = np.repeat(founders, 3, axis=0).astype(float)  # trios of identical genotypes: strong relatedness
    ids = np.array([f"i{k}" for k in range(n)])
    fam = pd.DataFrame({"FID": "f", "IID": ids, "PAT": "0", "MAT": "0", "SEX": "1", "PHENO": "-9"})
    bim = pd.DataFrame(
        {"chrom": "1", "snp": [f"rs{j}" for j in range(m)], "cm": 0.0, "pos": np.arange(m) + 1, "a0": "A", "a1": "C"}
    )
    write_plink(tmp_path / "panel", dosage, fam, bim)
    factor = read_genotype_factor(tmp_path / "panel").factor.astype(np.float64)
    kinship = factor @ factor.T
    write_npz(tmp_path / "dense.npz", kinship, ids)
    scaled = kinship * n / np.trace(kinship)
    latent = np.linalg.cholesky(0.5 * scaled + 0.5 * np.eye(n)) @ rng.normal(size=(n, 2))
    write_table(
        tmp_path / "pheno.tsv", pd.DataFrame({"FID": "f", "IID": ids, "a": np.exp(latent[:, 0]), "b": latent[:, 1]})
    )
    common = [
        "fit",
        "--pheno",
        str(tmp_path / "pheno.tsv"),
        "--epochs",
        "1",
        "--stages",
        "1",
        "--layers",
        "2",
        "--hidden",
        "8",
    ]
    np.savetxt(tmp_path / "gemma.cXX.txt", kinship, fmt="%.10g", delimiter="\t")  # GEMMA -gk's 10 digits
    low = invoke(*common, "--grm-factor", str(tmp_path / "panel"), "--out", str(tmp_path / "low"))
    dense = invoke(*common, "--grm", str(tmp_path / "dense.npz"), "--out", str(tmp_path / "dense"))
    text = invoke(
        *common, "--grm", str(tmp_path / "gemma.cXX.txt"), "--fam", str(tmp_path / "panel.fam"), "--out",
        str(tmp_path / "text"),
    )  # fmt: skip
    assert low.returncode == 0 and dense.returncode == 0 and text.returncode == 0, (
        low.stderr + dense.stderr + text.stderr
    )
    low_report = json.loads((tmp_path / "low" / "fit.json").read_text())
    dense_report = json.loads((tmp_path / "dense" / "fit.json").read_text())
    text_report = json.loads((tmp_path / "text" / "fit.json").read_text())
    assert low_report["kinship"]["low_rank"] and low_report["kinship"]["rank"] <= m
    assert not dense_report["kinship"]["low_rank"]  # every eigenvalue stored, the round-off ones not counted:
    ranks = [report["kinship"]["rank"] for report in (low_report, dense_report, text_report)]
    assert ranks == [np.linalg.matrix_rank(factor)] * 3
    assert low_report["stages"][0]["s2"] == pytest.approx(dense_report["stages"][0]["s2"], abs=1e-4)
    assert low_report["stages"][0]["s2"] > 0.2
    exact = invoke(
        *common,
        "--grm-factor",
        str(tmp_path / "panel"),
        "--mode",
        "joint",
        "--objective",
        "exact",
        "--epochs",
        "5",
        "--out",
        str(tmp_path / "exact"),
    )
    assert exact.returncode == 0, exact.stderr
    exact_report = json.loads((tmp_path / "exact" / "fit.json").read_text())
    assert len(exact_report["epochs"]) == 5 and 0 < exact_report["covariance"]["s2"] < 1
    both = invoke(
        *common,
        "--grm-factor",
        str(tmp_path / "panel"),
        "--grm",
        str(tmp_path / "dense.npz"),
        "--out",
        str(tmp_path / "both"),
    )
    assert both.returncode == 1 and "give one kinship" in both.stderr + both.stdout
