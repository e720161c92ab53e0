"""Sample identity is the pair (FID, IID), as PLINK has it; IDs are text, compared exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import invoke, snapshot, write_table

from flowpheno.errors import FlowphenoError
from flowpheno.gwas.baseline import rint_after_covariates
from flowpheno.io.kinship import read_kinship, write_npz
from flowpheno.io.outputs import write_phenotypes
from flowpheno.io.tables import read_table

TINY = ["--mode", "iid", "--epochs", "1", "--stages", "1", "--layers", "2", "--hidden", "16", "--device", "cpu"]


def write_fam(path: Path, fids: list[str], iids: list[str]) -> Path:
    """A .fam (six columns) with these IDs, written as text exactly."""
    path.write_text("".join(f"{f} {i} 0 0 1 -9\n" for f, i in zip(fids, iids, strict=True)))
    return path


def pedigree(families: int = 20, size: int = 3, seed: int = 0) -> pd.DataFrame:
    """Families F1..Fk whose members are all called 1, 2, 3 (IIDs repeat across families)."""
    rng = np.random.default_rng(seed)
    fids = [f"F{f + 1}" for f in range(families) for _ in range(size)]
    iids = [str(i + 1) for _ in range(families) for i in range(size)]
    return pd.DataFrame(
        {"FID": fids, "IID": iids, "a": rng.gamma(2.0, size=len(fids)), "b": rng.normal(size=len(fids))}
    )


def gemma_rows(path: Path, fam: pd.DataFrame) -> pd.DataFrame:
    """A GEMMA -p file keyed by the .fam's (FID, IID), row for row."""
    values = pd.read_csv(path, sep="\t", header=None, na_values="NA")
    assert len(values) == len(fam)
    values.index = pd.MultiIndex.from_arrays([fam["FID"], fam["IID"]])
    return values


def test_write_gemma_repeated_iids_each_family_gets_its_own_value(tmp_path: Path) -> None:
    table = pedigree(families=5)
    shuffled = table.sample(frac=1.0, random_state=3).reset_index(drop=True)
    fam = table[["FID", "IID"]].iloc[::-1].reset_index(drop=True)  # another order again
    write_fam(tmp_path / "c.fam", list(fam["FID"]), list(fam["IID"]))
    written = write_phenotypes(shuffled, tmp_path / "z.txt", "gemma", tmp_path / "c.fam")
    out = gemma_rows(tmp_path / "z.txt", fam)
    expected = table.set_index(["FID", "IID"])
    for (fid, iid), row in out.iterrows():
        assert row[0] == pytest.approx(expected.loc[(fid, iid), "a"], rel=1e-7)
        assert row[1] == pytest.approx(expected.loc[(fid, iid), "b"], rel=1e-7)
    assert list(written["FID"]) == list(fam["FID"]) and list(written["IID"]) == list(fam["IID"])


def test_gwas_rint_repeated_iids(tmp_path: Path) -> None:
    table = pedigree(families=8)
    write_table(tmp_path / "pheno.tsv", table)
    fam = table[["FID", "IID"]].sample(frac=1.0, random_state=1).reset_index(drop=True)
    write_fam(tmp_path / "c.fam", list(fam["FID"]), list(fam["IID"]))
    result = invoke(
        "gwas", "rint", "--pheno", tmp_path / "pheno.tsv", "--fam", tmp_path / "c.fam", "--out", tmp_path / "r.txt"
    )
    assert result.returncode == 0, result
    assert f"{len(table)} of {len(table)} .fam individuals with values" in result.stderr
    rint = pd.DataFrame(
        rint_after_covariates(table[["a", "b"]].to_numpy(), None), index=pd.MultiIndex.from_frame(table[["FID", "IID"]])
    )
    out = gemma_rows(tmp_path / "r.txt", fam)
    np.testing.assert_allclose(out.to_numpy(), rint.loc[out.index].to_numpy(), rtol=1e-6)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame]:
    """A tiny iid model fitted on a pedigree whose IIDs repeat across families, and its
    transform of the same table (TSV, input order): the expected value per (FID, IID)."""
    root = tmp_path_factory.mktemp("fitted")
    table = pedigree(families=20)
    write_table(root / "pheno.tsv", table)
    result = invoke("fit", "--pheno", root / "pheno.tsv", "--out", root / "run", *TINY)
    assert result.returncode == 0, result
    result = invoke(
        "transform", "--model", root / "run", "--pheno", root / "pheno.tsv", "--out", root / "z.tsv", "--device", "cpu"
    )
    assert result.returncode == 0, result
    expected = pd.read_csv(root / "z.tsv", sep="\t", dtype={"FID": str, "IID": str}).set_index(["FID", "IID"])
    return root, root / "pheno.tsv", expected


def test_transform_gemma_fam_repeated_iids(fitted: tuple[Path, Path, pd.DataFrame], tmp_path: Path) -> None:
    root, pheno, expected = fitted
    fam = expected.reset_index()[["FID", "IID"]].sample(frac=1.0, random_state=2).reset_index(drop=True)
    write_fam(tmp_path / "c.fam", list(fam["FID"]), list(fam["IID"]))
    result = invoke(
        "transform",
        "--model",
        root / "run",
        "--pheno",
        pheno,
        "--out",
        tmp_path / "z.txt",
        "--format",
        "gemma",
        "--fam",
        tmp_path / "c.fam",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result
    out = gemma_rows(tmp_path / "z.txt", fam)
    np.testing.assert_allclose(out.to_numpy(), expected.loc[out.index, ["a", "b"]].to_numpy(), rtol=1e-6)
    assert f"{len(fam)} of {len(fam)} individuals Gaussianized" in result.stderr


def test_transform_partial_join_counts_rows_written(fitted: tuple[Path, Path, pd.DataFrame], tmp_path: Path) -> None:
    root, pheno, expected = fitted
    keys = expected.reset_index()[["FID", "IID"]]
    fids = list(keys["FID"][:30]) + ["X"] * 10  # 30 phenotyped, 10 not in the table
    iids = list(keys["IID"][:30]) + [f"x{k}" for k in range(10)]
    write_fam(tmp_path / "c.fam", fids, iids)
    result = invoke(
        "transform",
        "--model",
        root / "run",
        "--pheno",
        pheno,
        "--out",
        tmp_path / "z.txt",
        "--format",
        "gemma",
        "--fam",
        tmp_path / "c.fam",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result
    assert "30 of 40 individuals Gaussianized" in result.stderr
    assert "30 of 60 individuals of" in result.stderr and "left out" in result.stderr
    out = pd.read_csv(tmp_path / "z.txt", sep="\t", header=None, na_values="NA")
    assert out.iloc[:30].notna().all().all() and out.iloc[30:].isna().all().all()


@pytest.mark.slow
def test_kinship_joined_on_fid_iid(tmp_path: Path) -> None:
    """Repeated IIDs: a kinship with fids aligns each family's members; the rows of the
    kinship file in another order give exactly the same fit."""
    from conftest import family_kinship

    table = pedigree(families=20)
    write_table(tmp_path / "pheno.tsv", table)
    n = len(table)
    kinship = family_kinship(n, np.random.default_rng(0))
    order = np.random.default_rng(4).permutation(n)
    write_npz(tmp_path / "k.npz", kinship, table["IID"].to_numpy(), table["FID"].to_numpy())
    write_npz(
        tmp_path / "k_shuffled.npz",
        kinship[np.ix_(order, order)],
        table["IID"].to_numpy()[order],
        table["FID"].to_numpy()[order],
    )
    args = [
        "--mode",
        "alternating",
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
    ]
    for name in ("k", "k_shuffled"):
        result = invoke(
            "fit", "--pheno", tmp_path / "pheno.tsv", "--grm", tmp_path / f"{name}.npz", "--out", tmp_path / name, *args
        )
        assert result.returncode == 0, result
    first, second = (json.loads((tmp_path / name / "fit.json").read_text()) for name in ("k", "k_shuffled"))
    assert first["n_used"] == n and second["n_used"] == n
    assert first["covariance"] == second["covariance"]
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "k" / "gaussianized.tsv", sep="\t"),
        pd.read_csv(tmp_path / "k_shuffled" / "gaussianized.tsv", sep="\t"),
    )


@pytest.mark.slow
def test_dropped_individuals_reported_with_their_family(tmp_path: Path) -> None:
    """fit.json names a dropped individual by (FID, IID): IID '2' alone would not say who."""
    from conftest import family_kinship

    table = pedigree(families=20)
    write_table(tmp_path / "pheno.tsv", table)
    absent = (table["FID"] == "F7") & (table["IID"] == "2")
    kept = table[~absent]
    kinship = family_kinship(len(kept), np.random.default_rng(0))
    write_npz(tmp_path / "k.npz", kinship, kept["IID"].to_numpy(), kept["FID"].to_numpy())
    args = [
        "--mode",
        "alternating",
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
    ]
    result = invoke(
        "fit", "--pheno", tmp_path / "pheno.tsv", "--grm", tmp_path / "k.npz", "--out", tmp_path / "run", *args
    )
    assert result.returncode == 0, result
    report = json.loads((tmp_path / "run" / "fit.json").read_text())
    assert report["dropped"] == {f"not in {tmp_path / 'k.npz'}": {"count": 1, "fids": ["F7"], "iids": ["2"]}}
    assert report["n_used"] == len(table) - 1


def test_leading_zero_iids_text_table(tmp_path: Path) -> None:
    iids = [f"{k:06d}" for k in range(1, 61)]
    table = pd.DataFrame({"FID": iids, "IID": iids, "a": np.arange(60.0)})
    write_table(tmp_path / "pheno.tsv", table)
    write_fam(tmp_path / "c.fam", iids[::-1], iids[::-1])
    assert list(read_table(tmp_path / "pheno.tsv")["IID"]) == iids
    result = invoke(
        "gwas", "rint", "--pheno", tmp_path / "pheno.tsv", "--fam", tmp_path / "c.fam", "--out", tmp_path / "r.txt"
    )
    assert result.returncode == 0, result
    out = pd.read_csv(tmp_path / "r.txt", header=None, na_values="NA")[0].to_numpy()
    expected = rint_after_covariates(table[["a"]].to_numpy(), None)[::-1, 0]
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_integer_iid_parquet(tmp_path: Path) -> None:
    """IIDs stored as integers: read as text with a warning; against a .fam of 000001...
    no one matches, and the run stops instead of writing an all-NA file."""
    n = 60
    table = pd.DataFrame({"FID": np.arange(1, n + 1), "IID": np.arange(1, n + 1), "a": np.arange(float(n))})
    table.to_parquet(tmp_path / "pheno.parquet", index=False)
    write_fam(tmp_path / "plain.fam", [str(k) for k in range(1, n + 1)], [str(k) for k in range(1, n + 1)])
    result = invoke(
        "gwas",
        "rint",
        "--pheno",
        tmp_path / "pheno.parquet",
        "--fam",
        tmp_path / "plain.fam",
        "--out",
        tmp_path / "ok.txt",
    )
    assert result.returncode == 0, result
    assert "leading zeros" in result.stderr
    expected = rint_after_covariates(table[["a"]].to_numpy(), None)[:, 0]
    np.testing.assert_allclose(pd.read_csv(tmp_path / "ok.txt", header=None)[0].to_numpy(), expected, rtol=1e-6)

    zeros = [f"{k:06d}" for k in range(1, n + 1)]
    write_fam(tmp_path / "zeros.fam", zeros, zeros)
    result = invoke(
        "gwas",
        "rint",
        "--pheno",
        tmp_path / "pheno.parquet",
        "--fam",
        tmp_path / "zeros.fam",
        "--out",
        tmp_path / "r.txt",
    )
    assert result.returncode == 1, result
    assert "share no (FID, IID) pair" in result.stderr
    assert "FID '000001' IID '000001'" in result.stderr and "FID '1' IID '1'" in result.stderr
    assert not (tmp_path / "r.txt").exists()


def test_na_and_minus9_ids_are_text(tmp_path: Path) -> None:
    path = tmp_path / "pheno.tsv"
    path.write_text("FID\tIID\ta\nNA\tNA\t1.5\n-9\t-9\t2.5\nf\tnan\t3.5\n")
    table = read_table(path)
    assert list(table["FID"]) == ["NA", "-9", "f"] and list(table["IID"]) == ["NA", "-9", "nan"]
    write_fam(tmp_path / "c.fam", ["f", "-9", "NA"], ["nan", "-9", "NA"])
    written = write_phenotypes(table, tmp_path / "z.txt", "gemma", tmp_path / "c.fam")
    assert [float(v) for v in written["a"]] == [3.5, 2.5, 1.5]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("FID\tIID\ta\nf\ta\t1\nf\t\t2\n", "pheno.tsv: line 3 has an empty IID"),
        ("FID,IID,a\nf,a,1\n\n,b,2\n", "pheno.tsv: line 4 has an empty FID"),
        ("FID\tIID\ta\nf\ta\t1\nf\tb\t2\nf\ta\t3\n", "pheno.tsv: FID 'f' IID 'a' appears more than once (lines 2, 4)"),
    ],
    ids=["empty-iid", "empty-fid-after-blank-line", "duplicated-pair"],
)
def test_bad_ids_stop_naming_the_line(tmp_path: Path, text: str, fragment: str) -> None:
    (tmp_path / "pheno.tsv").write_text(text)
    before = snapshot(tmp_path)
    result = invoke(
        "gwas", "rint", "--pheno", tmp_path / "pheno.tsv", "--fam", tmp_path / "c.fam", "--out", tmp_path / "r.txt"
    )
    assert result.returncode == 1, result
    assert fragment in " ".join(result.stderr.split()), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before and not (tmp_path / "r.txt").exists()


def test_iid_only_table_against_repeated_iids_stops(tmp_path: Path) -> None:
    table = pedigree(families=4, size=12).drop(columns="FID").iloc[:12]  # IIDs 1..12 without families
    write_table(tmp_path / "pheno.tsv", table)
    full = pedigree(families=4, size=12)
    write_fam(tmp_path / "c.fam", list(full["FID"]), list(full["IID"]))
    result = invoke(
        "gwas", "rint", "--pheno", tmp_path / "pheno.tsv", "--fam", tmp_path / "c.fam", "--out", tmp_path / "r.txt"
    )
    assert result.returncode == 1, result
    message = " ".join(result.stderr.split())
    assert "c.fam: IID '1' is used in several families (F1, F2, F3, F4)" in message
    assert not (tmp_path / "r.txt").exists()


def test_iid_only_table_with_unique_iids_is_matched_on_iid(tmp_path: Path) -> None:
    table = pd.DataFrame({"IID": ["a", "b", "c"], "x": [1.0, 2.0, 3.0]})
    write_table(tmp_path / "pheno.tsv", table)
    write_fam(tmp_path / "c.fam", ["fc", "fa", "fb"], ["c", "a", "b"])
    written = write_phenotypes(read_table(tmp_path / "pheno.tsv"), tmp_path / "z.txt", "gemma", tmp_path / "c.fam")
    assert [float(v) for v in written["x"]] == [3.0, 1.0, 2.0] and list(written["FID"]) == ["fc", "fa", "fb"]


def test_no_overlap_shows_both_first_ids(tmp_path: Path) -> None:
    iids = [f"i{k}" for k in range(12)]
    write_table(tmp_path / "pheno.tsv", pd.DataFrame({"FID": ["fa"] * 12, "IID": iids, "x": np.arange(12.0)}))
    write_fam(tmp_path / "c.fam", ["ga"] * 12, iids)  # same IIDs, another family: other people
    result = invoke(
        "gwas", "rint", "--pheno", tmp_path / "pheno.tsv", "--fam", tmp_path / "c.fam", "--out", tmp_path / "r.txt"
    )
    assert result.returncode == 1, result
    message = " ".join(result.stderr.split())
    assert "share no (FID, IID) pair (first: FID 'ga' IID 'i0' vs FID 'fa' IID 'i0')" in message
    assert not (tmp_path / "r.txt").exists()


def test_gwas_rint_partial_join_count(tmp_path: Path) -> None:
    table = pedigree(families=10)  # 30 rows
    write_table(tmp_path / "pheno.tsv", table.iloc[:20])
    write_fam(tmp_path / "c.fam", list(table["FID"]), list(table["IID"]))
    result = invoke(
        "gwas", "rint", "--pheno", tmp_path / "pheno.tsv", "--fam", tmp_path / "c.fam", "--out", tmp_path / "r.txt"
    )
    assert result.returncode == 0, result
    assert "20 of 30 .fam individuals with values" in " ".join(result.stderr.split())
    out = pd.read_csv(tmp_path / "r.txt", sep="\t", header=None, na_values="NA")
    assert out.iloc[:20].notna().all().all() and out.iloc[20:].isna().all().all()


def test_grm_ids_keyed_by_fid_iid(tmp_path: Path) -> None:
    """GCTA .grm.id and two-column ID lists carry FID IID; repeated IIDs are fine."""
    n = 4
    matrix = np.eye(n) + 0.1
    fids, iids = ["F1", "F1", "F2", "F2"], ["1", "2", "1", "2"]
    pd.DataFrame({"FID": fids, "IID": iids}).to_csv(tmp_path / "g.grm.id", sep="\t", header=False, index=False)
    rows, cols = np.tril_indices(n)
    matrix[rows, cols].astype(np.float32).tofile(tmp_path / "g.grm.bin")
    kinship = read_kinship(tmp_path / "g.grm.bin")
    assert list(kinship.fids) == fids and list(kinship.ids) == iids
    np.savetxt(tmp_path / "k.cXX.txt", matrix)
    write_fam(tmp_path / "c.fam", fids, iids)
    kinship = read_kinship(tmp_path / "k.cXX.txt", tmp_path / "c.fam")
    assert list(kinship.fids) == fids and list(kinship.ids) == iids
    (tmp_path / "dup.grm.id").write_text("F1\t1\nF1\t1\nF2\t1\nF2\t2\n")
    matrix[rows, cols].astype(np.float32).tofile(tmp_path / "dup.grm.bin")
    with pytest.raises(FlowphenoError, match=r"dup.grm.id: FID 'F1' IID '1' appears more than once \(lines 1, 2\)"):
        read_kinship(tmp_path / "dup.grm.bin")


def test_repeated_iids_without_fid_suggest_adding_fid(tmp_path: Path) -> None:
    """IIDs 1, 2, 3 in every family and no FID column: the fix is to add FID, not to delete rows."""
    write_table(tmp_path / "pheno.tsv", pedigree(families=20).drop(columns="FID"))
    before = snapshot(tmp_path)
    result = invoke("fit", "--pheno", tmp_path / "pheno.tsv", "--out", tmp_path / "run", "--mode", "iid")
    message = " ".join(result.stderr.split())
    assert result.returncode == 1 and "IID '1' appears more than once (lines 2, 5," in message, result
    assert "add a FID column" in message and snapshot(tmp_path) == before
