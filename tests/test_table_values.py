"""Values in phenotype and covariate tables: read exactly right, or stop with one line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import invoke, snapshot, write_table

from flowpheno.errors import FlowphenoError
from flowpheno.pipeline import OUTLIER_STOP_Z, _check_traits
from flowpheno.report import FitReport

N = 120
TINY = [
    "--mode",
    "iid",
    "--epochs",
    "1",
    "--stages",
    "1",
    "--layers",
    "2",
    "--hidden",
    "16",
    "--device",
    "cpu",
    "--quiet",
]


def _pheno() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return pd.DataFrame(
        {
            "FID": [f"f{i}" for i in range(N)],
            "IID": [f"i{i}" for i in range(N)],
            "t1": np.round(rng.normal(size=N), 4),
            "t2": np.round(np.exp(0.5 * rng.normal(size=N)), 4),
            "t3": np.round(rng.gamma(2.0, size=N), 4),
        }
    )


def _covar() -> pd.DataFrame:
    rng = np.random.default_rng(8)
    return pd.DataFrame(
        {
            "FID": [f"f{i}" for i in range(N)],
            "IID": [f"i{i}" for i in range(N)],
            "age": rng.integers(20, 70, N),
            "batch": rng.choice(["b1", "b2", "b3"], N),
        }
    )


def _lines(table: pd.DataFrame) -> list[str]:
    """The file as tab-separated text lines (header first), values as written."""
    return ["\t".join(table.columns)] + ["\t".join(map(str, row)) for row in table.itertuples(index=False)]


def _edit(table: pd.DataFrame, line: int, column: str, text: str) -> list[str]:
    """The file's lines with cell (line, column) replaced by ``text`` (line 1 is the header)."""
    lines = _lines(table)
    cells = lines[line - 1].split("\t")
    cells[list(table.columns).index(column)] = text
    lines[line - 1] = "\t".join(cells)
    return lines


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _fit(tmp_path: Path, pheno: Path, covar: Path | None, *extra: str, out: str = "run"):
    args = ["fit", "--pheno", str(pheno), "--out", str(tmp_path / out), *TINY, *extra]
    if covar is not None:
        args += ["--covar", str(covar)]
    return invoke(*args)


def _comma_column(table: pd.DataFrame, column: str) -> list[str]:
    lines = _lines(table)
    index = list(table.columns).index(column)
    out = [lines[0]]
    for line in lines[1:]:
        cells = line.split("\t")
        cells[index] = cells[index].replace(".", ",")
        out.append("\t".join(cells))
    return out


def _column(table: pd.DataFrame, column: str, values: list) -> pd.DataFrame:
    table = table.copy()
    table[column] = values
    return table


# (id, pheno lines, covar lines or None, extra args, fragments of the one error line)
BAD: list[tuple[str, Callable[[], list[str]], Callable[[], list[str]] | None, list[str], list[str]]] = [
    (
        "trait-text-cell",
        lambda: _edit(_pheno(), 5, "t1", "oops"),
        None,
        [],
        ["p.tsv: trait column 't1' is not numeric (line 5, IID i3: 'oops')", "--traits"],
    ),
    (
        "trait-decimal-commas",
        lambda: _comma_column(_pheno(), "t2"),
        None,
        [],
        ["trait column 't2' is not numeric (line 2, IID i0: ", "decimal comma", "1.23, not 1,23"],
    ),
    (
        "trait-one-decimal-comma",
        lambda: _edit(_pheno(), 9, "t3", "1,25"),
        None,
        [],
        ["trait column 't3' is not numeric (line 9, IID i7: '1,25')", "decimal comma"],
    ),
    (
        "trait-inf",
        lambda: _edit(_pheno(), 7, "t2", "inf"),
        None,
        [],
        ["trait column 't2' holds an infinite value (line 7, IID i5: 'inf')"],
    ),
    (
        "trait-minus-inf",
        lambda: _edit(_pheno(), 3, "t1", "-Inf"),
        None,
        [],
        ["trait column 't1' holds an infinite value (line 3, IID i1: '-Inf')"],
    ),
    (
        "covar-text-cell-in-age",
        lambda: _lines(_pheno()),
        lambda: _edit(_covar(), 4, "age", "unknown"),
        [],
        ["c.tsv: covariate column 'age' is not numeric (line 4, IID i2: 'unknown')"],
    ),
    (
        "covar-decimal-comma",
        lambda: _lines(_pheno()),
        lambda: _edit(_covar(), 6, "age", "41,5"),
        [],
        ["covariate column 'age' is not numeric (line 6, IID i4: '41,5')", "decimal comma"],
    ),
    (
        "covar-inf",
        lambda: _lines(_pheno()),
        lambda: _edit(_covar(), 8, "age", "-inf"),
        [],
        ["covariate column 'age' holds an infinite value (line 8, IID i6: '-inf')"],
    ),
    (
        "covar-many-levels",
        lambda: _lines(_pheno()),
        lambda: _lines(_column(_covar(), "site", [f"s{i}" for i in range(N)])),
        [],
        ["covariate column 'site' is text with 120 distinct values among 120 individuals", "--categorical site"],
    ),
    (
        "covar-few-per-level",
        lambda: _lines(_pheno()),
        lambda: _lines(_column(_covar(), "site", [f"s{i % 45}" for i in range(N)])),
        [],
        ["covariate column 'site' is text with 45 distinct values among 120 individuals", "--categorical site"],
    ),
    (
        "categorical-absent-column",
        lambda: _lines(_pheno()),
        lambda: _lines(_covar()),
        ["--categorical", "site"],
        ["c.tsv: --categorical names column(s) site that the file lacks"],
    ),
    (
        "binary-trait",
        lambda: _lines(_column(_pheno(), "t3", [i % 2 for i in range(N)])),
        None,
        [],
        ["trait 't3' has 2 distinct values among 120 complete rows", "leave it out with --traits"],
    ),
    (
        "spike-trait",
        lambda: _lines(_column(_pheno(), "t2", [0.0] * 70 + list(np.linspace(1, 2, N - 70)))),
        None,
        [],
        ["trait 't2' has 51 distinct values among 120 complete rows (0 holds 70)"],
    ),
    (
        "constant-trait",
        lambda: _lines(_column(_pheno(), "t1", [3.5] * N)),
        None,
        [],
        ["trait 't1' has zero variance (every complete row is 3.5)"],
    ),
    (
        "all-missing-trait",
        lambda: _lines(_column(_pheno(), "t2", ["NA"] * N)),
        None,
        [],
        ["trait 't2' is missing for every individual", "--traits"],
    ),
    (
        "one-value-dwarfs-constant",
        lambda: _lines(_column(_pheno(), "t1", [5.0] * 18 + [1e13] + [5.0] * (N - 19))),
        None,
        [],
        ["trait 't1' has 2 distinct values among 120 complete rows (5 holds 119; the others: IID i18 = 1e+13)"],
    ),
    (
        "covar-all-missing",
        lambda: _lines(_pheno()),
        lambda: _lines(_column(_covar(), "age", ["NA"] * N)),
        [],
        ["c.tsv: covariate column 'age' is missing for every individual"],
    ),
    (
        "gross-outlier",
        lambda: _edit(_pheno(), 12, "t2", "250000"),
        None,
        [],
        ["FID f10 IID i10 (line 12) trait 't2' = 250000 (robust z ", "--keep-outliers"],
    ),
]


@pytest.mark.parametrize(
    ("pheno", "covar", "extra", "fragments"), [case[1:] for case in BAD], ids=[case[0] for case in BAD]
)
def test_bad_values_stop_with_one_line(tmp_path: Path, pheno, covar, extra: list[str], fragments: list[str]) -> None:
    pheno_path = _write(tmp_path / "p.tsv", pheno())
    covar_path = _write(tmp_path / "c.tsv", covar()) if covar is not None else None
    before = snapshot(tmp_path)
    result = _fit(tmp_path, pheno_path, covar_path, *extra)
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert not (tmp_path / "run").exists()
    assert snapshot(tmp_path) == before


def _gaussianized(tmp_path: Path, out: str) -> str:
    return (tmp_path / out / "gaussianized.tsv").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("code", [".", "-9", "NA", ""])
def test_missing_codes_equal_na(tmp_path: Path, code: str) -> None:
    clean = _write(tmp_path / "clean.tsv", _edit(_pheno(), 6, "t2", "NA"))
    coded = _write(tmp_path / "coded.tsv", _edit(_pheno(), 6, "t2", code))
    assert _fit(tmp_path, clean, None, out="a").returncode == 0
    result = _fit(tmp_path, coded, None, out="b")
    assert result.returncode == 0, result
    assert _gaussianized(tmp_path, "b") == _gaussianized(tmp_path, "a")
    report = json.loads((tmp_path / "b" / "fit.json").read_text())
    assert report["dropped"]["missing trait value"]["iids"] == ["i4"]


@pytest.mark.slow
def test_text_trait_column_skipped_with_warning(tmp_path: Path) -> None:
    clean = write_table(tmp_path / "clean.tsv", _pheno())
    with_site = write_table(tmp_path / "site.tsv", _column(_pheno(), "site", ["leeds", "york"] * (N // 2)))
    assert _fit(tmp_path, clean, None, out="a").returncode == 0
    result = _fit(tmp_path, with_site, None, out="b")
    assert result.returncode == 0, result
    assert "warning: " in result.stderr and "text column(s) 'site' are not traits and were skipped" in result.stderr
    assert _gaussianized(tmp_path, "b") == _gaussianized(tmp_path, "a")


@pytest.mark.slow
def test_declared_categorical_accepted(tmp_path: Path) -> None:
    pheno = write_table(tmp_path / "p.tsv", _pheno())
    covar = write_table(tmp_path / "c.tsv", _column(_covar(), "site", [f"s{i % 60:02d}" for i in range(N)]))
    assert _fit(tmp_path, pheno, covar).returncode == 1  # 60 levels: undeclared stops
    result = _fit(tmp_path, pheno, covar, "--categorical", "site,batch")
    assert result.returncode == 0, result
    model = json.loads((tmp_path / "run" / "model.json").read_text())
    assert model["levels"] == {"batch": ["b1", "b2", "b3"], "site": [f"s{i:02d}" for i in range(60)]}
    assert model["covariates"] == ["age", "batch_b2", "batch_b3", *[f"site_s{i:02d}" for i in range(1, 60)]]


@pytest.mark.slow
def test_numeric_coded_categorical(tmp_path: Path) -> None:
    """A batch coded 1/2/3 is a number unless declared: then it is one-hot like b1/b2/b3."""
    pheno = write_table(tmp_path / "p.tsv", _pheno())
    covar = _covar()
    text = write_table(tmp_path / "text.tsv", covar)
    coded = write_table(tmp_path / "coded.tsv", covar.assign(batch=covar["batch"].str[1:]))
    assert _fit(tmp_path, pheno, text, out="a").returncode == 0
    assert _fit(tmp_path, pheno, coded, "--categorical", "batch", out="b").returncode == 0
    assert _gaussianized(tmp_path, "b") == _gaussianized(tmp_path, "a")


def test_zero_variance_judged_per_trait() -> None:
    """A tiny-scale healthy trait is not blamed because another trait has huge values."""
    rng = np.random.default_rng(0)
    values = np.column_stack([1e-9 * rng.normal(size=N), 1e12 * (1 + rng.random(N)), np.full(N, 2.0)])
    with pytest.raises(FlowphenoError, match=r"trait 'c' has zero variance \(every complete row is 2\)"):
        _check_traits(values, ["a", "b", "c"], "p.tsv")
    _check_traits(values[:, :2], ["a", "b"], "p.tsv")  # no error


def test_barcode_value_names_its_own_trait(tmp_path: Path) -> None:
    table = _pheno()
    table["t1"] = np.round(table["t1"] * 1e-3, 8)
    lines = _edit(table, 20, "t3", "4006381333931")  # a barcode pasted into t3
    result = _fit(tmp_path, _write(tmp_path / "p.tsv", lines), None)
    assert result.returncode == 1
    assert "FID f18 IID i18 (line 20) trait 't3' = 4.00638e+12" in result.stderr and "'t1'" not in result.stderr


def _robust_z(values: pd.Series, iid: str, table: pd.DataFrame) -> float:
    x = values.to_numpy(dtype=float)
    med = np.median(x)
    mad = 1.4826 * np.median(np.abs(x - med))
    return round(float((x[list(table["IID"]).index(iid)] - med) / mad), 1)


@pytest.mark.slow
def test_outlier_warned_and_recorded(tmp_path: Path) -> None:
    table = _pheno()
    table.loc[10, "t1"] = 30.0  # robust z about 30: above the warning bound, below the stop bound
    z = _robust_z(table["t1"], "i10", table)
    assert 15 < z < OUTLIER_STOP_Z
    result = _fit(tmp_path, write_table(tmp_path / "p.tsv", table), None)
    assert result.returncode == 0, result
    assert f"FID f10 IID i10 (line 12) trait 't1' = 30 (robust z {z:g})" in result.stderr
    report = json.loads((tmp_path / "run" / "fit.json").read_text())
    assert report["outliers"] == [{"fid": "f10", "iid": "i10", "line": 12, "trait": "t1", "value": 30.0, "robust_z": z}]


@pytest.mark.slow
def test_gross_outlier_kept_on_request(tmp_path: Path) -> None:
    table = _pheno()
    table.loc[10, "t2"] = 250000.0
    z = _robust_z(table["t2"], "i10", table)
    result = _fit(tmp_path, write_table(tmp_path / "p.tsv", table), None, "--keep-outliers")
    assert result.returncode == 0, result
    report = json.loads((tmp_path / "run" / "fit.json").read_text())
    assert report["outliers"] == [
        {"fid": "f10", "iid": "i10", "line": 12, "trait": "t2", "value": 250000.0, "robust_z": z}
    ]
    assert z > OUTLIER_STOP_Z


def test_sparse_trait_named_when_too_few_complete(tmp_path: Path) -> None:
    table = _column(_pheno(), "t3", [1.5 + 0.1 * i if i < 20 else "NA" for i in range(N)])
    result = _fit(tmp_path, write_table(tmp_path / "p.tsv", table), None)
    assert result.returncode == 1
    assert (
        "only 20 individuals have every trait" in result.stderr
        and "trait 't3' has a value for only 20 of 120" in result.stderr
    )


def test_missing_codes_whatever_the_reader() -> None:
    """Cells holding a missing code are NA even when a reader (parquet) kept them as text."""
    from flowpheno.io.tables import covariate_matrix, numeric_columns

    table = pd.DataFrame(
        {
            "FID": list("abcdef"),
            "IID": list("abcdef"),
            "x": ["1.5", ".", " NA ", "-9", None, "2"],
            "batch": ["b1", ".", "b2", "b1", "NA", "b2"],
        }
    )
    assert numeric_columns(table, ["x"], "t.parquet", "trait")["x"].tolist()[::5] == [1.5, 2.0]
    assert numeric_columns(table, ["x"], "t.parquet", "trait")["x"].isna().tolist() == [
        False,
        True,
        True,
        True,
        True,
        False,
    ]
    dummies = covariate_matrix(table[["FID", "IID", "batch"]], "c.parquet")
    assert list(dummies.columns) == ["batch_b2"]
    assert dummies["batch_b2"].isna().tolist() == [False, True, False, False, True, False]


def test_diagnostics_mark_outliers() -> None:
    """Every scatter panel gets a red cross layer holding exactly the flagged individual."""
    from flowpheno.plots import diagnostics_figure

    rng = np.random.default_rng(1)
    values = rng.normal(size=(50, 3))
    iids = np.array([f"i{k}" for k in range(50)])
    report = FitReport(outliers=[{"iid": "i7", "trait": "b", "value": 1.0, "robust_z": 20.0}])
    figure = diagnostics_figure(values, values, ["a", "b", "c"], report, iids)
    panels = [axis for axis in figure.axes if axis.collections]
    assert len(panels) == 6
    for axis in panels:
        marks = axis.collections[1].get_offsets()
        assert marks.shape == (1, 2)
    assert [
        c.get_offsets().shape[0]
        for c in diagnostics_figure(values, values, ["a", "b", "c"], FitReport(), iids).axes[0].collections
    ] == [50]


@pytest.mark.slow
def test_outlier_named_and_marked_by_family_when_iids_repeat(tmp_path: Path) -> None:
    """IIDs 1..k inside every family (as PLINK allows): the outlier is one individual, named by
    FID, IID and line, and only it is marked in the diagnostics."""
    from flowpheno.plots import diagnostics_figure

    table = _pheno().assign(FID=[f"fam{i // 4}" for i in range(N)], IID=[str(i % 4 + 1) for i in range(N)])
    table.loc[10, "t1"] = 30.0  # FID fam2, IID 3, line 12
    result = _fit(tmp_path, write_table(tmp_path / "p.tsv", table), None)
    assert result.returncode == 0, result
    assert "FID fam2 IID 3 (line 12) trait 't1' = 30 (robust z " in result.stderr
    report = json.loads((tmp_path / "run" / "fit.json").read_text())
    assert [(o["fid"], o["iid"], o["line"]) for o in report["outliers"]] == [("fam2", "3", 12)]
    ids = table[["FID", "IID"]].to_numpy(dtype=str)
    figure = diagnostics_figure(
        table[["t1", "t2", "t3"]].to_numpy(),
        table[["t1", "t2", "t3"]].to_numpy(),
        ["t1", "t2", "t3"],
        FitReport.from_json(report),
        ids,
    )
    crosses = [
        axis.collections[1].get_offsets()
        for axis in figure.axes
        if len(axis.collections) > 1 and axis.get_gid() != "qq"
    ]
    assert crosses and all(marks.shape == (1, 2) for marks in crosses)


@pytest.mark.slow
@pytest.mark.parametrize("declared", [False, True])
def test_covariate_level_held_by_one_individual_stops(tmp_path: Path, declared: bool) -> None:
    """With the intercept each level gets its own mean: a level of one individual would set
    that individual's residuals to 0 and erase its phenotype, silently."""
    pheno = write_table(tmp_path / "pheno.tsv", _pheno())
    covar = _covar().assign(rare=["A"] * (N - 1) + ["B"])
    path = write_table(tmp_path / "covar.tsv", covar)
    before = snapshot(tmp_path)
    result = _fit(tmp_path, pheno, path, *(["--categorical", "rare"] if declared else []))
    assert result.returncode == 1, result
    assert f"level 'B' of covariate 'rare' is held by 1 of the {N} individuals used (IID i{N - 1})" in " ".join(
        result.stderr.split()
    )
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()
    # the same level given to two individuals keeps their difference: accepted with a warning
    covar = _covar().assign(rare=["A"] * (N - 2) + ["B"] * 2)
    two = _fit(
        tmp_path, pheno, write_table(tmp_path / "covar2.tsv", covar), *(["--categorical", "rare"] if declared else [])
    )
    assert two.returncode == 0 and "level 'B' of covariate 'rare' is held by 2 individuals" in " ".join(
        two.stderr.split()
    ), two


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, fragment",
    [
        ("one_person_dummy", "the covariates of IID i37 (most unusual: pilot = 1) alone determine its fit"),
        ("mistyped_age", "the covariates of IID i37 (most unusual: age = 99999) alone determine its fit"),
    ],
)
def test_covariate_that_erases_one_individual_stops(tmp_path: Path, case: str, fragment: str) -> None:
    """A numeric covariate can erase a person's phenotype too: a 0/1 column set for one
    individual, or one mistyped value, gives that row leverage ~1 (residuals ~0)."""
    pheno = write_table(tmp_path / "pheno.tsv", _pheno())
    covar = _covar()
    if case == "one_person_dummy":
        covar["pilot"] = [1 if i == 37 else 0 for i in range(N)]
    else:
        covar.loc[37, "age"] = 99999
    path = write_table(tmp_path / "covar.tsv", covar)
    before = snapshot(tmp_path)
    result = _fit(tmp_path, pheno, path)
    assert result.returncode == 1 and fragment in " ".join(result.stderr.split()), result
    assert snapshot(tmp_path) == before
    assert _fit(tmp_path, pheno, path, "--keep-outliers").returncode == 0  # the user's call, explicitly


def test_one_trait_twice_stops(tmp_path: Path) -> None:
    """Two identical columns (as in HS1940's own phenotype file) are one trait twice."""
    pheno = write_table(tmp_path / "pheno.tsv", _pheno().assign(t1_copy=lambda t: t["t1"]))
    result = _fit(tmp_path, pheno, None)
    assert result.returncode == 1 and "traits 't1' and 't1_copy' have correlation 1.0000" in result.stderr, result
    named_twice = _fit(tmp_path, pheno, None, "--traits", "t1,t1")
    assert named_twice.returncode == 2 and "--traits t1,t1: names 't1' twice" in named_twice.stderr, named_twice
