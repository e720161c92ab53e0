"""PLINK filesets read the way PLINK reads them; tables as spreadsheet programs save them."""

from __future__ import annotations

import codecs
import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import invoke, snapshot

from flowpheno.errors import FlowphenoError
from flowpheno.io.kinship import read_kinship
from flowpheno.io.plink import check_bed, read_fam, write_plink
from flowpheno.io.tables import read_table

HS1940 = Path("/usr/share/doc/gemma/example/mouse_hs1940")


def fileset(prefix: Path, n: int = 40, m: int = 30, seed: int = 0, fam: pd.DataFrame | None = None) -> Path:
    """A tiny PLINK fileset written with write_plink."""
    rng = np.random.default_rng(seed)
    dosage = rng.binomial(2, rng.uniform(0.2, 0.8, size=m), size=(n, m)).astype(float)
    if fam is None:
        fam = pd.DataFrame(
            {
                "FID": [f"f{i // 4}" for i in range(n)],
                "IID": [str(i % 4 + 1) for i in range(n)],
                "PAT": "0",
                "MAT": "0",
                "SEX": "1",
                "PHENO": "-9",
            }
        )
    bim = pd.DataFrame(
        {
            "chrom": "1",
            "snp": [f"rs{j}" for j in range(m)],
            "cm": 0,
            "pos": np.arange(1, m + 1) * 1000,
            "a0": "A",
            "a1": "G",
        }
    )
    write_plink(prefix, dosage, fam, bim)
    return prefix


def hs1940_fam_lines(count: int) -> list[str]:
    if not Path(f"{HS1940}.fam.gz").exists():
        pytest.skip("gemma-doc's HS1940 example is not installed")
    with gzip.open(f"{HS1940}.fam.gz", "rt") as handle:
        return [next(handle) for _ in range(count)]


def test_hs1940_fam_extra_columns_read_by_position(tmp_path: Path) -> None:
    lines = hs1940_fam_lines(40)
    assert len(lines[0].split()) > 6  # GEMMA's multi-phenotype layout
    prefix = fileset(tmp_path / "hs")
    (tmp_path / "hs.fam").write_text("".join(lines))
    fam = read_fam(tmp_path / "hs.fam")
    assert list(fam["FID"]) == [line.split()[0] for line in lines]
    assert list(fam["IID"]) == [line.split()[1] for line in lines]
    result = invoke("grm", "--bfile", prefix, "--out", tmp_path / "k.npz")
    assert result.returncode == 0, result
    with np.load(tmp_path / "k.npz") as archive:
        assert list(archive["ids"]) == [line.split()[1] for line in lines]
        assert list(archive["fids"]) == [line.split()[0] for line in lines]
    result = invoke("grm", "--bfile", prefix, "--out", tmp_path / "k.txt")
    assert result.returncode == 0, result
    assert (tmp_path / "k.txt.ids").read_text().splitlines() == ["\t".join(line.split()[:2]) for line in lines]
    kinship = read_kinship(tmp_path / "k.txt", tmp_path / "k.txt.ids")
    assert list(kinship.ids) == list(fam["IID"]) and list(kinship.fids) == list(fam["FID"])
    beside = read_kinship(tmp_path / "k.txt")  # the .ids file written beside it is found without --grm-ids
    assert list(beside.ids) == list(fam["IID"]) and list(beside.fids) == list(fam["FID"])


def test_hs1940_real_fileset_passes_the_size_check(tmp_path: Path) -> None:
    if not Path(f"{HS1940}.bed.gz").exists():
        pytest.skip("gemma-doc's HS1940 example is not installed")
    for suffix in (".bed", ".bim", ".fam"):
        with gzip.open(f"{HS1940}{suffix}.gz", "rb") as source, open(tmp_path / f"hs{suffix}", "wb") as target:
            shutil.copyfileobj(source, target)
    n, m = check_bed(tmp_path / "hs")
    assert n == 1940 and m == sum(1 for line in open(tmp_path / "hs.bim") if line.strip())
    assert read_fam(tmp_path / "hs.fam")["IID"].iloc[0] == "A048005080"


def _truncated_fam(prefix: Path) -> str:
    lines = Path(f"{prefix}.fam").read_text().splitlines(keepends=True)
    Path(f"{prefix}.fam").write_text("".join(lines[:-4]))
    return "303 bytes, but 36 individuals in s.fam and 30 variants in s.bim need 3 + ceil(36/4) * 30 = 273 bytes"


def _wrong_magic(prefix: Path) -> str:
    data = bytearray(Path(f"{prefix}.bed").read_bytes())
    data[0] = 0x00
    Path(f"{prefix}.bed").write_bytes(bytes(data))
    return "not a PLINK 1 .bed file (first bytes 00 1b, expected 6c 1b)"


def _individual_major(prefix: Path) -> str:
    data = bytearray(Path(f"{prefix}.bed").read_bytes())
    data[2] = 0x00
    Path(f"{prefix}.bed").write_bytes(bytes(data))
    return "mode byte 00 is not SNP-major (01)"


def _truncated_bed(prefix: Path) -> str:
    data = Path(f"{prefix}.bed").read_bytes()
    Path(f"{prefix}.bed").write_bytes(data[:-10])
    return "293 bytes, but 40 individuals in s.fam and 30 variants in s.bim need 3 + ceil(40/4) * 30 = 303 bytes"


def _first_fam_line_deleted(prefix: Path) -> str:
    """40 -> 39 individuals keeps the .bed size (ceil(39/4) = ceil(40/4)): only the padding tells."""
    lines = Path(f"{prefix}.fam").read_text().splitlines(keepends=True)
    Path(f"{prefix}.fam").write_text("".join(lines[1:]))
    return "the unused bits after individual 39 are set in"


BROKEN = {
    "truncated-fam": _truncated_fam,
    "wrong-magic": _wrong_magic,
    "individual-major": _individual_major,
    "truncated-bed": _truncated_bed,
    "first-fam-line-deleted": _first_fam_line_deleted,
}


@pytest.mark.parametrize("case", list(BROKEN))
@pytest.mark.parametrize("reader", ["grm", "fit-grm", "fit-grm-factor"])
def test_broken_bed_stops_before_reading(tmp_path: Path, case: str, reader: str) -> None:
    prefix = fileset(tmp_path / "s")
    expected = BROKEN[case](prefix)
    pd.DataFrame({"FID": ["f0"], "IID": ["1"], "a": [1.0]}).to_csv(tmp_path / "p.tsv", sep="\t", index=False)
    before = snapshot(tmp_path)
    tiny = ["--epochs", "1", "--stages", "1", "--layers", "2", "--hidden", "16", "--device", "cpu"]
    args = {
        "grm": ["grm", "--bfile", prefix, "--out", tmp_path / "out" / "k.npz"],
        "fit-grm": ["fit", "--pheno", tmp_path / "p.tsv", "--grm", prefix, "--out", tmp_path / "out", *tiny],
        "fit-grm-factor": [
            "fit",
            "--pheno",
            tmp_path / "p.tsv",
            "--grm-factor",
            prefix,
            "--out",
            tmp_path / "out",
            *tiny,
        ],
    }[reader]
    result = invoke(*args)
    assert result.returncode == 1, result
    message = " ".join(result.stderr.split())
    assert expected in message, message
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()


def test_short_fam_line_named(tmp_path: Path) -> None:
    (tmp_path / "c.fam").write_text("f a 0 0 1 -9\nf b 0 0\n")
    with pytest.raises(FlowphenoError, match=r"c.fam: line 2 has 4 fields; a .fam line has six"):
        read_fam(tmp_path / "c.fam")


def test_object_dtype_npz_says_how_to_save(tmp_path: Path) -> None:
    ids = np.array(["a", "b", "c"], dtype=object)  # what fam.IID.values gives
    np.savez(tmp_path / "k.npz", K=np.eye(3), ids=ids)
    pd.DataFrame({"FID": "f", "IID": list("abc"), "x": [1.0, 2.0, 3.0]}).to_csv(
        tmp_path / "p.tsv", sep="\t", index=False
    )
    result = invoke(
        "fit",
        "--pheno",
        tmp_path / "p.tsv",
        "--grm",
        tmp_path / "k.npz",
        "--out",
        tmp_path / "run",
        "--epochs",
        "1",
        "--stages",
        "1",
        "--device",
        "cpu",
    )
    assert result.returncode == 1, result
    message = " ".join(result.stderr.split())
    assert "k.npz: array 'ids' holds Python objects" in message
    assert "ids=fam.IID.astype(str).to_numpy()" in message
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_old_npz_with_iids_only_still_reads(tmp_path: Path) -> None:
    np.savez(tmp_path / "k.npz", K=np.eye(3), ids=np.array(["a", "b", "c"]))
    kinship = read_kinship(tmp_path / "k.npz")
    assert list(kinship.ids) == ["a", "b", "c"] and kinship.fids is None


# --- tables as spreadsheet programs save them -------------------------------------------

CLEAN = "FID\tIID\theight\tsite\nf1\t000001\t1.5\tZürich\nf1\t000002\tNA\tMálaga\nf2\t1\t-2.25\tOslo\n"


def _rows(text: str) -> list[list[str]]:
    return [line.split("\t") for line in text.splitlines()]


VARIANTS = {
    "utf8-bom": lambda: codecs.BOM_UTF8 + CLEAN.encode("utf-8"),
    "utf16-bom-crlf": lambda: CLEAN.replace("\n", "\r\n").encode("utf-16"),  # Excel "Unicode text"
    "cp1252": lambda: CLEAN.encode("cp1252"),
    "latin1-crlf": lambda: CLEAN.replace("\n", "\r\n").encode("latin-1"),
    "cr-only": lambda: CLEAN.replace("\n", "\r").encode("utf-8"),
    "trailing-empty-lines": lambda: (CLEAN + "\n\n").encode("utf-8"),
    "quoted-csv": lambda: "\n".join(",".join(f'"{field}"' for field in row) for row in _rows(CLEAN)).encode("utf-8"),
    "semicolon-csv-bom-crlf": lambda: (
        codecs.BOM_UTF8 + "\r\n".join(";".join(row) for row in _rows(CLEAN)).encode("utf-8")
    ),
    "whitespace": lambda: "\n".join("  ".join(row) for row in _rows(CLEAN)).encode("utf-8"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_spreadsheet_encodings_read_like_the_clean_file(tmp_path: Path, variant: str) -> None:
    (tmp_path / "clean.tsv").write_text(CLEAN, encoding="utf-8")
    suffix = ".csv" if "csv" in variant else ".txt"
    (tmp_path / f"saved{suffix}").write_bytes(VARIANTS[variant]())
    clean = read_table(tmp_path / "clean.tsv")
    saved = read_table(tmp_path / f"saved{suffix}")
    assert list(clean["IID"]) == ["000001", "000002", "1"] and clean["site"].iloc[0] == "Zürich"
    pd.testing.assert_frame_equal(saved, clean)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("FID\tIID\ta\nf\tx\t1\nf\ty\t2\t9\n", "line 3 has 4 fields but the header has 3 (tab-separated)"),
        ("FID,IID,a\nf,x,1\n\nf,y\n", "line 4 has 2 fields but the header has 3 (comma-separated)"),
        ("FID IID a\nf x 1\nf y\n", "line 3 has 2 fields but the header has 3 (whitespace-separated)"),
        ("FID\tIID\tIID\nf\tx\t1\n", "header names column 'IID' twice"),
    ],
    ids=["too-many", "too-few-after-blank", "whitespace-short", "duplicate-header"],
)
def test_ragged_table_stops_naming_the_line(tmp_path: Path, text: str, fragment: str) -> None:
    (tmp_path / "p.tsv").write_text(text)
    with pytest.raises(FlowphenoError) as raised:
        read_table(tmp_path / "p.tsv")
    assert f"p.tsv: {fragment}" in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.slow
def test_transform_fam_is_checked_and_its_fileset_protected(tmp_path: Path) -> None:
    """transform --fam: the .fam must still belong to its .bed (GEMMA reads them together), and
    --out may not replace the .bed/.bim beside it, even with --overwrite."""
    prefix = fileset(tmp_path / "s")
    fam = read_fam(f"{prefix}.fam")
    rng = np.random.default_rng(1)
    table = pd.DataFrame(
        {"FID": fam["FID"], "IID": fam["IID"], "a": rng.gamma(2.0, size=len(fam)), "b": rng.normal(size=len(fam))}
    )
    table = pd.concat([table] * 2, ignore_index=True).assign(FID=lambda t: [f"x{i}" for i in range(len(t))])
    table.iloc[: len(fam), 0] = fam["FID"].to_numpy()
    table.to_csv(tmp_path / "p.tsv", sep="\t", index=False)
    run = tmp_path / "run"
    assert (
        invoke(
            "fit",
            "--pheno",
            tmp_path / "p.tsv",
            "--out",
            run,
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
        ).returncode
        == 0
    )
    for target in ("s.bed", "s.bim"):
        result = invoke(
            "transform",
            "--model",
            run,
            "--pheno",
            tmp_path / "p.tsv",
            "--format",
            "gemma",
            "--fam",
            f"{prefix}.fam",
            "--out",
            tmp_path / target,
            "--overwrite",
        )
        assert result.returncode == 1 and "is the --fam input" in result.stderr, result
    lines = Path(f"{prefix}.fam").read_text().splitlines(keepends=True)
    Path(f"{prefix}.fam").write_text("".join(lines[1:]))
    before = snapshot(tmp_path)
    result = invoke(
        "transform",
        "--model",
        run,
        "--pheno",
        tmp_path / "p.tsv",
        "--format",
        "gemma",
        "--fam",
        f"{prefix}.fam",
        "--out",
        tmp_path / "z.txt",
    )
    assert result.returncode == 1 and "the unused bits after individual 39 are set in" in " ".join(
        result.stderr.split()
    ), result
    assert snapshot(tmp_path) == before
