"""File formats: phenotype tables, kinship formats, PLINK round trip, output writers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import family_kinship

from flowpheno.errors import FlowphenoError
from flowpheno.io.kinship import read_kinship, spectral_decomposition, write_npz
from flowpheno.io.outputs import write_phenotypes
from flowpheno.io.plink import read_genotypes, write_plink
from flowpheno.io.tables import covariate_matrix, default_traits, numeric_columns, read_table


def _table() -> pd.DataFrame:
    return pd.DataFrame({"FID": ["f1", "f1", "f2"], "IID": ["a", "b", "c"], "x": [1.5, None, -9], "y": [2.0, 3.0, 4.0]})


@pytest.mark.parametrize(("sep", "suffix"), [("\t", ".tsv"), (",", ".csv"), (" ", ".txt"), (None, ".parquet")])
def test_read_table_formats_and_missing_codes(tmp_path: Path, sep: str | None, suffix: str) -> None:
    path = tmp_path / f"pheno{suffix}"
    table = _table()
    if sep is None:
        table.to_parquet(path)
    else:
        table.to_csv(path, sep=sep, index=False, na_rep="NA")
    read = read_table(path)
    values = numeric_columns(read, ["x", "y"], path, "trait")
    assert list(read["IID"]) == ["a", "b", "c"]
    assert values["x"].isna().tolist() == [False, True, True]  # NA and -9 are missing
    assert values["y"].tolist() == [2.0, 3.0, 4.0]


def test_plink2_header_and_iid_only(tmp_path: Path) -> None:
    (tmp_path / "p2.tsv").write_text("#FID\tIID\tx\nf\ta\t1\nf\tb\t2\n")
    assert list(read_table(tmp_path / "p2.tsv").columns) == ["FID", "IID", "x"]
    (tmp_path / "iid.tsv").write_text("#IID\tx\na\t1\nb\tnan\n")
    read = read_table(tmp_path / "iid.tsv")
    assert list(read["FID"]) == ["a", "b"] and read["x"].isna().tolist() == [False, True]


def test_duplicate_ids_named(tmp_path: Path) -> None:
    (tmp_path / "dup.tsv").write_text("FID\tIID\tx\nf\ta\t1\nf\tb\t2\nf\ta\t3\n")
    with pytest.raises(FlowphenoError, match=r"FID 'f' IID 'a' appears more than once \(lines 2, 4\)"):
        read_table(tmp_path / "dup.tsv")


def test_non_numeric_value_named(tmp_path: Path) -> None:
    (tmp_path / "bad.tsv").write_text("FID\tIID\tx\tsite\nf\ta\t1\tleeds\nf\tb\toops\tyork\n")
    table = read_table(tmp_path / "bad.tsv")
    traits, skipped = default_traits(table)
    assert traits == ["x"] and skipped == ["site"]
    with pytest.raises(FlowphenoError, match=r"'x' is not numeric \(line 3, IID b: 'oops'\)"):
        numeric_columns(table, traits, tmp_path / "bad.tsv", "trait")


def test_covariates_one_hot(tmp_path: Path) -> None:
    table = pd.DataFrame(
        {"FID": ["f"] * 4, "IID": list("abcd"), "age": [30, 40, None, 50], "batch": ["b1", "b2", "b1", None]}
    )
    matrix = covariate_matrix(table, "covar.tsv")
    assert list(matrix.columns) == ["age", "batch_b2"]
    assert matrix["batch_b2"].tolist()[:3] == [0.0, 1.0, 0.0] and np.isnan(matrix["batch_b2"].iloc[3])


def _kinship(n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    return family_kinship(n, np.random.default_rng(0), 0.4) * 0.9, np.array([f"i{k}" for k in range(n)])


def test_kinship_formats_agree(tmp_path: Path) -> None:
    matrix, ids = _kinship()
    write_npz(tmp_path / "k.npz", matrix, ids)
    np.savetxt(tmp_path / "k.cXX.txt", matrix, delimiter="\t")
    (tmp_path / "k.ids").write_text("\n".join(ids) + "\n")
    fam = pd.DataFrame({"FID": "f", "IID": ids, "PAT": 0, "MAT": 0, "SEX": 1, "PHENO": -9})
    fam.to_csv(tmp_path / "k.fam", sep=" ", header=False, index=False)
    rows, cols = np.tril_indices(len(ids))
    matrix[rows, cols].astype(np.float32).tofile(tmp_path / "g.grm.bin")
    pd.DataFrame({"FID": "f", "IID": ids}).to_csv(tmp_path / "g.grm.id", sep="\t", header=False, index=False)
    for kinship in (
        read_kinship(tmp_path / "k.npz"),
        read_kinship(tmp_path / "k.cXX.txt", tmp_path / "k.ids"),
        read_kinship(tmp_path / "k.cXX.txt", tmp_path / "k.fam"),
        read_kinship(tmp_path / "g.grm.bin"),
        read_kinship(tmp_path / "g"),
    ):
        assert list(kinship.ids) == list(ids)
        np.testing.assert_allclose(kinship.matrix, matrix, atol=1e-6)
    subset = read_kinship(tmp_path / "k.npz").subset(np.array(["i3", "i0"]))
    np.testing.assert_allclose(subset, matrix[np.ix_([3, 0], [3, 0])])


def test_kinship_errors(tmp_path: Path) -> None:
    matrix, ids = _kinship()
    write_npz(tmp_path / "rect.npz", matrix[:, :-1], ids)
    with pytest.raises(FlowphenoError, match="must be square"):
        read_kinship(tmp_path / "rect.npz")
    skew = matrix.copy()
    skew[0, 5] += 0.3
    write_npz(tmp_path / "skew.npz", skew, ids)
    with pytest.raises(FlowphenoError, match=r"not symmetric \(K\[i0,i5\]"):
        read_kinship(tmp_path / "skew.npz")
    np.savetxt(tmp_path / "noid.cXX.txt", matrix)
    with pytest.raises(FlowphenoError, match="--grm-ids"):
        read_kinship(tmp_path / "noid.cXX.txt")


def test_negative_eigenvalues(tmp_path: Path) -> None:
    matrix, _ = _kinship()
    indefinite = matrix - 0.5 * np.eye(len(matrix)) + 0.3  # pushes two eigenvalues well below 0
    indefinite[0, 1] = indefinite[1, 0] = 1.2
    with pytest.raises(FlowphenoError, match=r"has \d+ eigenvalues below"):
        spectral_decomposition(indefinite, "bad.npz")
    values, vectors = np.linalg.eigh(matrix)
    nearly = vectors @ np.diag(np.where(values == values.min(), -1e-12, values)) @ vectors.T
    with pytest.warns(UserWarning, match="clipped 1 tiny negative"):
        eigenvalues, _, _ = spectral_decomposition(nearly, "ok.npz")
    assert eigenvalues.min() >= 0


def test_eigendecomposition_cache(tmp_path: Path) -> None:
    matrix, _ = _kinship()
    first = spectral_decomposition(matrix, str(tmp_path / "k.npz"), tmp_path)
    second = spectral_decomposition(matrix, str(tmp_path / "k.npz"), tmp_path)
    assert (first[2], second[2]) == (False, True)
    np.testing.assert_array_equal(first[0], second[0])
    changed = spectral_decomposition(matrix * 1.01, str(tmp_path / "k.npz"), tmp_path)
    assert changed[2] is False


def test_plink_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    dosage = rng.integers(0, 3, size=(7, 9)).astype(float)
    dosage[rng.random(dosage.shape) < 0.1] = np.nan
    fam = pd.DataFrame(
        {"FID": "f", "IID": [f"s{i}" for i in range(7)], "PAT": "0", "MAT": "0", "SEX": "1", "PHENO": "-9"}
    )
    bim = pd.DataFrame(
        {"chrom": "1", "snp": [f"rs{j}" for j in range(9)], "cm": 0.0, "pos": np.arange(9) + 1, "a0": "A", "a1": "C"}
    )
    write_plink(tmp_path / "c", dosage, fam, bim)
    read = read_genotypes(tmp_path / "c").values
    np.testing.assert_array_equal(np.isnan(read), np.isnan(dosage))
    np.testing.assert_array_equal(read[~np.isnan(read)], dosage[~np.isnan(dosage)])


def test_plink_prefix_as_kinship(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    dosage = rng.binomial(2, 0.3, size=(20, 60)).astype(float)
    fam = pd.DataFrame(
        {"FID": "f", "IID": [f"s{i}" for i in range(20)], "PAT": "0", "MAT": "0", "SEX": "1", "PHENO": "-9"}
    )
    bim = pd.DataFrame(
        {"chrom": "1", "snp": [f"rs{j}" for j in range(60)], "cm": 0.0, "pos": np.arange(60) + 1, "a0": "A", "a1": "C"}
    )
    write_plink(tmp_path / "c", dosage, fam, bim)
    kinship = read_kinship(tmp_path / "c")
    centred = dosage - dosage.mean(axis=0)
    np.testing.assert_allclose(kinship.matrix, centred @ centred.T / 60, atol=1e-10)
    assert list(kinship.ids) == list(fam["IID"])


def test_output_formats(tmp_path: Path) -> None:
    table = pd.DataFrame({"FID": ["f", "f"], "IID": ["b", "a"], "t1": [0.5, np.nan], "t2": [1.0, 2.0]})
    write_phenotypes(table, tmp_path / "z.tsv")
    assert (tmp_path / "z.tsv").read_text().splitlines()[2] == "f\ta\tNA\t2"
    fam = pd.DataFrame({"FID": "f", "IID": ["a", "c", "b"], "PAT": 0, "MAT": 0, "SEX": 1, "PHENO": -9})
    fam.to_csv(tmp_path / "c.fam", sep=" ", header=False, index=False)
    write_phenotypes(table, tmp_path / "z.gemma.txt", "gemma", tmp_path / "c.fam")
    assert (tmp_path / "z.gemma.txt").read_text().splitlines() == ["NA\t2", "NA\tNA", "0.5\t1"]
    write_phenotypes(table, tmp_path / "z.parquet", "parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "z.parquet"), table)
    with pytest.raises(FlowphenoError, match="needs --fam"):
        write_phenotypes(table, tmp_path / "no.txt", "gemma")
    assert not (tmp_path / "no.txt").exists()


def test_read_pcs(tmp_path: Path) -> None:
    from flowpheno.io.kinship import read_pcs

    pcs = pd.DataFrame(
        {"FID": "f", "IID": ["a", "b", "c"], "PC1": [1.0, 2.0, -1.0], "PC2": [0.5, -1.0, 2.0], "PC3": [0.0, 1.0, 1.0]}
    )
    pcs.to_csv(tmp_path / "pcs.tsv", sep="\t", index=False)
    factor = read_pcs(tmp_path / "pcs.tsv")
    kinship = factor.factor @ factor.factor.T
    expected = np.corrcoef(pcs[["PC1", "PC2", "PC3"]].to_numpy())
    np.testing.assert_allclose(kinship, expected, atol=1e-12)
    pcs.loc[1, "PC2"] = np.nan
    pcs.to_csv(tmp_path / "bad.tsv", sep="\t", index=False, na_rep="NA")
    with pytest.raises(FlowphenoError, match="IID b has missing PC values"):
        read_pcs(tmp_path / "bad.tsv")


def _panel(n: int, m: int, seed: int) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    dosage = rng.binomial(2, rng.uniform(0.05, 0.5, size=m), size=(n, m)).astype(float)
    dosage[rng.random(dosage.shape) < 0.01] = np.nan
    fam = pd.DataFrame(
        {"FID": "f", "IID": [f"s{i}" for i in range(n)], "PAT": "0", "MAT": "0", "SEX": "1", "PHENO": "-9"}
    )
    bim = pd.DataFrame(
        {"chrom": "1", "snp": [f"rs{j}" for j in range(m)], "cm": 0.0, "pos": np.arange(m) + 1, "a0": "A", "a1": "C"}
    )
    return dosage, fam, bim


def test_genotype_factor_is_the_standardised_grm(tmp_path: Path) -> None:
    from flowpheno.io.kinship import read_genotype_factor

    dosage, fam, bim = _panel(80, 30, 5)
    dosage[:, 0] = 0.0  # monomorphic: filtered like GEMMA
    write_plink(tmp_path / "c", dosage, fam, bim)
    factor = read_genotype_factor(tmp_path / "c")
    kept = dosage[:, 1:]
    frequency = np.nanmean(kept, axis=0) / 2
    standardised = np.nan_to_num((kept - 2 * frequency) / np.sqrt(2 * frequency * (1 - frequency)))
    np.testing.assert_allclose(factor.factor @ factor.factor.T, standardised @ standardised.T / 29, atol=1e-5)
    assert factor.factor.shape == (80, 29) and list(factor.ids) == list(fam["IID"])
    dosage, fam, bim = _panel(20, 30, 6)
    write_plink(tmp_path / "wide", dosage, fam, bim)
    with pytest.raises(FlowphenoError, match=r"\d+ SNPs pass the filters for 20 individuals.*LD-prune"):
        read_genotype_factor(tmp_path / "wide")


def test_duplicate_fam_line_gets_the_plink_fix(tmp_path: Path) -> None:
    """A .fam line is a column of the .bed: the hint must not be "delete a row" but a renamed copy."""
    from flowpheno.io.plink import fam_keys, read_fam

    fam = tmp_path / "d.fam"
    fam.write_text("f a 0 0 1 -9\nf b 0 0 2 -9\nf a 0 0 1 -9\n")
    with pytest.raises(FlowphenoError) as caught:
        fam_keys(read_fam(fam), fam)
    prefix = str(tmp_path / "d")
    assert str(caught.value) == (
        f"{fam}: FID 'f' IID 'a' appears more than once (lines 1, 3); each .fam line is a column of the .bed, "
        "so do not delete a line: write a copy of the .fam that gives the repeats distinct IIDs, make a new "
        f"fileset from it (plink1.9 --bed {prefix}.bed --bim {prefix}.bim --fam COPY.fam --make-bed --out NEW), "
        "then drop a true duplicate with plink1.9 --remove"
    )
