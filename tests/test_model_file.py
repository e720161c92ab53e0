"""The saved model: covariate levels, output columns in trait order, and a file that means
the same thing forever (or stops with one line)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import invoke, snapshot, write_table
from safetensors.torch import load_file, save_file

from flowpheno.errors import FlowphenoError
from flowpheno.model import PhenotypeModel
from flowpheno.pipeline import transform_phenotypes

N = 200
FIT = [
    "--mode",
    "iid",
    "--epochs",
    "3",
    "--stages",
    "1",
    "--layers",
    "16",
    "--hidden",
    "16",
    "--device",
    "cpu",
    "--quiet",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four independent traits with different marginals (normal, skewed, heavy-tailed,
    bimodal-ish), covariates age and batch (b1 reference, b2, b3)."""
    root = tmp_path_factory.mktemp("model")
    rng = np.random.default_rng(3)
    ids = {"FID": [f"f{i}" for i in range(N)], "IID": [f"i{i}" for i in range(N)]}
    batch = rng.choice(["b1", "b2", "b3"], N)
    shift = pd.Series(batch).map({"b1": 0.0, "b2": 0.8, "b3": -0.5}).to_numpy()
    pheno = pd.DataFrame(
        {
            **ids,
            "t1": rng.normal(size=N) + shift,
            "t2": np.exp(0.7 * rng.normal(size=N)),
            "t3": rng.standard_t(4, size=N),
            "t4": rng.normal(size=N) + 3 * rng.integers(0, 2, N) + shift,
        }
    ).round(5)
    covar = pd.DataFrame({**ids, "age": rng.integers(20, 70, N), "batch": batch})
    write_table(root / "pheno.tsv", pheno)
    write_table(root / "covar.tsv", covar)
    result = invoke("fit", "--pheno", root / "pheno.tsv", "--covar", root / "covar.tsv", "--out", root / "run", *FIT)
    assert result.returncode == 0, result
    return root


def _gaussianized(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "gaussianized.tsv", sep="\t")


@pytest.mark.slow
def test_levels_stored(data: Path) -> None:
    meta = json.loads((data / "run" / "model.json").read_text())
    assert meta["format"] == 2
    assert meta["levels"] == {"batch": ["b1", "b2", "b3"]}
    assert meta["covariates"] == ["age", "batch_b2", "batch_b3"]


def test_transform_without_reference_level_matches_fit(data: Path, tmp_path: Path) -> None:
    pheno = pd.read_csv(data / "pheno.tsv", sep="\t")
    covar = pd.read_csv(data / "covar.tsv", sep="\t")
    keep = (covar["batch"] != "b1").to_numpy()
    write_table(tmp_path / "p.tsv", pheno[keep])
    write_table(tmp_path / "c.tsv", covar[keep])
    result = invoke(
        "transform",
        "--model",
        data / "run",
        "--pheno",
        tmp_path / "p.tsv",
        "--covar",
        tmp_path / "c.tsv",
        "--out",
        tmp_path / "z.tsv",
    )
    assert result.returncode == 0, result
    expected = _gaussianized(data / "run")[keep].reset_index(drop=True)
    got = pd.read_csv(tmp_path / "z.tsv", sep="\t")
    assert list(got["IID"]) == list(expected["IID"])
    np.testing.assert_allclose(got[["t1", "t2", "t3", "t4"]], expected[["t1", "t2", "t3", "t4"]], rtol=0, atol=1e-6)


def test_unseen_level_stops(data: Path, tmp_path: Path) -> None:
    covar = pd.read_csv(data / "covar.tsv", sep="\t")
    covar.loc[4, "batch"] = "b9"
    write_table(tmp_path / "c.tsv", covar)
    result = invoke(
        "transform",
        "--model",
        data / "run",
        "--pheno",
        data / "pheno.tsv",
        "--covar",
        tmp_path / "c.tsv",
        "--out",
        tmp_path / "z.tsv",
    )
    assert result.returncode == 1
    assert (
        "c.tsv: covariate column 'batch' has level 'b9' at line 6 (IID i4) that the model was not fitted on"
        in result.stderr
    )
    assert not (tmp_path / "z.tsv").exists()


def test_transform_refuses_a_value_far_outside_the_fit(data: Path, tmp_path: Path) -> None:
    """One data-entry error (1e6 where values are near 1) would be extrapolated by the flow and
    carry the individual's other traits with it: stopped as in fit, unless --keep-outliers."""
    pheno = pd.read_csv(data / "pheno.tsv", sep="\t")
    pheno.loc[7, "t2"] = 1e6
    write_table(tmp_path / "p.tsv", pheno)
    args = [
        "transform",
        "--model",
        data / "run",
        "--pheno",
        tmp_path / "p.tsv",
        "--covar",
        data / "covar.tsv",
        "--out",
        tmp_path / "z.tsv",
    ]
    result = invoke(*args)
    assert (
        result.returncode == 1 and "IID i7 trait 't2' = 1e+06" in result.stderr and "--keep-outliers" in result.stderr
    ), result
    assert not (tmp_path / "z.tsv").exists()
    kept = invoke(*args, "--keep-outliers")
    assert kept.returncode == 0, kept
    expected = _gaussianized(data / "run").drop(index=7)
    got = pd.read_csv(tmp_path / "z.tsv", sep="\t").drop(index=7)
    np.testing.assert_allclose(got[["t1", "t2", "t3", "t4"]], expected[["t1", "t2", "t3", "t4"]], rtol=0, atol=1e-6)


def test_output_columns_follow_input_traits(data: Path) -> None:
    """With 16 layers of permutations, output column j is still the image of trait j."""
    pheno = pd.read_csv(data / "pheno.tsv", sep="\t")
    out = _gaussianized(data / "run")
    traits = ["t1", "t2", "t3", "t4"]
    corr = np.corrcoef(pheno[traits].to_numpy().T, out[traits].to_numpy().T)[:4, 4:]
    assert (np.abs(corr).argmax(axis=1) == np.arange(4)).all(), corr
    assert (np.diag(corr) > 0.8).all(), corr


def test_round_trip_identical(data: Path, tmp_path: Path) -> None:
    model = PhenotypeModel.load(data / "run")
    model.save(tmp_path / "again")
    again = PhenotypeModel.load(tmp_path / "again")
    first = transform_phenotypes(model, data / "pheno.tsv", data / "covar.tsv")
    second = transform_phenotypes(again, data / "pheno.tsv", data / "covar.tsv")
    pd.testing.assert_frame_equal(first, second)
    fitted = _gaussianized(data / "run")
    np.testing.assert_allclose(first[["t1", "t2", "t3", "t4"]], fitted[["t1", "t2", "t3", "t4"]], rtol=0, atol=1e-6)


def _json_edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        meta = json.loads((run / "model.json").read_text())
        change(meta)
        (run / "model.json").write_text(json.dumps(meta))

    return edit


def _weights_edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        state = load_file(str(run / "model.safetensors"))
        change(state)
        save_file(state, str(run / "model.safetensors"))

    return edit


def _first_float(state: dict) -> str:
    return next(key for key, value in state.items() if value.is_floating_point())


def _truncate(name: str) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        raw = (run / name).read_bytes()
        (run / name).write_bytes(raw[: len(raw) // 2])

    return edit


def _swap_traits(meta: dict) -> None:
    meta["traits"][0], meta["traits"][1] = meta["traits"][1], meta["traits"][0]


def _set(key: str, value) -> Callable[[dict], None]:
    def change(meta: dict) -> None:
        meta[key] = value

    return change


def _scale(value: float) -> Callable[[dict], None]:
    def change(meta: dict) -> None:
        meta["scale"][2] = value

    return change


TAMPER: list[tuple[str, Callable[[Path], None], list[str]]] = [
    (
        "truncated-weights",
        _truncate("model.safetensors"),
        ["model.safetensors: not a readable safetensors file", "truncated or corrupted"],
    ),
    (
        "garbage-weights",
        lambda run: (run / "model.safetensors").write_bytes(b"\x00garbage" * 50),
        ["model.safetensors: not a readable safetensors file"],
    ),
    (
        "wrong-shape",
        _weights_edit(lambda s: s.__setitem__(_first_float(s), torch.zeros(7))),
        ["model.safetensors: tensor ", "the flow needs torch.float32 (4,)"],
    ),
    (
        "missing-key",
        _weights_edit(lambda s: s.pop(_first_float(s))),
        ["model.safetensors: tensors do not match the flow in model.json (missing "],
    ),
    ("nan-weight", _weights_edit(lambda s: s[_first_float(s)].fill_(float("nan"))), ["holds NaN or infinite weights"]),
    (
        "edited-weight",
        _weights_edit(lambda s: s[_first_float(s)].add_(0.01)),
        ["model.safetensors: checksum does not match model.json", "edited or corrupted"],
    ),
    ("truncated-json", _truncate("model.json"), ["model.json: not valid JSON", "truncated or corrupted"]),
    ("json-list", lambda run: (run / "model.json").write_text("[1, 2]"), ["model.json: not a flowpheno model"]),
    ("no-format", _json_edit(lambda m: m.pop("format")), ["model.json: no 'format' field"]),
    ("format-1", _json_edit(_set("format", 1)), ["model.json: model format 1 is no longer read", "refit"]),
    (
        "format-99",
        _json_edit(_set("format", 99)),
        ["model.json: model format 99 is unknown to this flowpheno (it reads format 2)"],
    ),
    ("missing-field", _json_edit(lambda m: m.pop("center")), ["model.json: missing field(s) center"]),
    (
        "unknown-kind",
        _json_edit(lambda m: m["flow"].__setitem__("kind", "maf")),
        ["model.json: unknown flow kind 'maf'"],
    ),
    (
        "other-actnorm-bound",
        _json_edit(lambda m: m["flow_constants"].__setitem__("actnorm_slope", 0.01)),
        ["model.json: flow constant(s) actnorm_slope differ"],
    ),
    ("zero-scale", _json_edit(_scale(0.0)), ["model.json: 'scale' of trait 't3' is 0, not positive"]),
    ("negative-scale", _json_edit(_scale(-1.0)), ["model.json: 'scale' of trait 't3' is -1, not positive"]),
    (
        "nan-beta",
        _json_edit(lambda m: m["beta"][1].__setitem__(0, float("nan"))),
        ["model.json: 'beta' holds NaN or infinite values"],
    ),
    ("beta-shape", _json_edit(lambda m: m["beta"].pop()), ["model.json: 'beta' must be numbers of shape (4, 4)"]),
    (
        "swapped-traits",
        _json_edit(_swap_traits),
        ["model.json: checksum of traits, covariates, levels", "edited or corrupted"],
    ),
    (
        "edited-level",
        _json_edit(lambda m: m["levels"]["batch"].reverse()),
        ["model.json: checksum of traits", "edited or corrupted"],
    ),
]


@pytest.mark.parametrize(("tamper", "fragments"), [case[1:] for case in TAMPER], ids=[case[0] for case in TAMPER])
def test_tampered_model_one_line(
    data: Path, tmp_path: Path, tamper: Callable[[Path], None], fragments: list[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(data / "run", run)
    tamper(run)
    before = snapshot(tmp_path)
    result = invoke(
        "transform",
        "--model",
        run,
        "--pheno",
        data / "pheno.tsv",
        "--covar",
        data / "covar.tsv",
        "--out",
        tmp_path / "z.tsv",
    )
    assert result.returncode == 1, result
    errors = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert not (tmp_path / "z.tsv").exists()
    assert snapshot(tmp_path) == before


def test_changed_transform_formula_detected(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the library's transform meant something else on load, the stored probe catches it."""
    import flowpheno.flows.base as base

    monkeypatch.setattr(base, "ACTNORM_SLOPE", 1e-2)  # the bound changes what every ActNorm weight means
    monkeypatch.setattr(
        base, "flow_constants", lambda flow: {**json.loads((data / "run" / "model.json").read_text())["flow_constants"]}
    )
    import flowpheno.model as model_module

    monkeypatch.setattr(model_module, "flow_constants", base.flow_constants)
    with pytest.raises(FlowphenoError, match="maps its check input differently than when it was saved"):
        PhenotypeModel.load(data / "run")


@pytest.mark.slow
def test_transform_refuses_covariates_a_model_does_not_use(data: Path, tmp_path: Path) -> None:
    """Covariates given to a model fitted without them would be silently ignored."""
    run = tmp_path / "nocov"
    assert invoke("fit", "--pheno", data / "pheno.tsv", "--out", run, *FIT).returncode == 0
    result = invoke(
        "transform",
        "--model",
        run,
        "--pheno",
        data / "pheno.tsv",
        "--covar",
        data / "covar.tsv",
        "--out",
        tmp_path / "z.tsv",
    )
    assert result.returncode == 1 and "the model was fitted without covariates" in result.stderr, result
    assert not (tmp_path / "z.tsv").exists()
