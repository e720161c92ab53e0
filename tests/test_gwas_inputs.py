"""The GWAS steps on real-world inputs: chromosome names PLINK calls non-standard, traits
missing for (nearly) everyone or constant, a per-trait run that fails half-way."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import EXAMPLES, invoke, snapshot, write_table

from flowpheno.errors import FlowphenoError
from flowpheno.gwas import steps
from flowpheno.gwas.clump import clump, plink_chromosome_codes
from flowpheno.gwas.plots import chromosome_order
from flowpheno.io.plink import read_fam, read_genotypes, write_plink

needs_binaries = pytest.mark.skipif(
    shutil.which("gemma") is None or shutil.which("plink1.9") is None, reason="apt-get install gemma plink1.9"
)

N, SNP_STEP = 300, 12
NAMES = {"1": "chr1", "2": "scaffold_12", "3": "chr2", "4": "27"}  # clean code -> a name PLINK calls non-standard


@pytest.fixture(scope="module")
def filesets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two PLINK filesets with the same genotypes (300 individuals, every 12th SNP of the
    example): ``clean`` with chromosomes 1-4, ``named`` with chr1, scaffold_12, chr2, 27."""
    root = tmp_path_factory.mktemp("filesets")
    genotypes = read_genotypes(EXAMPLES / "cohort")
    columns = np.arange(0, genotypes.shape[1], SNP_STEP)
    dosage = np.asarray(genotypes[:N, columns].values, dtype=float)
    fam = read_fam(EXAMPLES / "cohort.fam").iloc[:N]
    bim = (
        pd.read_csv(
            EXAMPLES / "cohort.bim",
            sep="\t",
            header=None,
            names=["chrom", "snp", "cm", "pos", "a0", "a1"],
            dtype={"chrom": str},
        )
        .iloc[columns]
        .reset_index(drop=True)
    )
    bim["chrom"] = ((bim["chrom"].astype(int) - 1) * 2 + 1 + (bim["pos"] >= 5_000_000)).astype(str)
    write_plink(root / "clean", dosage, fam, bim)
    write_plink(root / "named", dosage, fam, bim.assign(chrom=bim["chrom"].map(NAMES)))
    return root / "clean", root / "named"


def _assoc(prefix: Path) -> pd.DataFrame:
    """Association results over ``prefix``'s SNPs: a few strong hits with weaker neighbours."""
    bim = pd.read_csv(f"{prefix}.bim", sep="\t", header=None, dtype={0: str, 1: str})
    p = np.random.default_rng(0).uniform(size=len(bim))
    p[::40], p[1::40], p[2::40] = 1e-9, 1e-4, 1e-4
    return pd.DataFrame({"SNP": bim[1], "CHR": bim[0], "BP": bim[3], "P": p})


def test_plink_chromosome_codes() -> None:
    codes = pd.Series(["1", "chr22", "chrX", "MT", "26", "scaffold_12", "chrUn_gl000220", "27", "1_random"])
    renamed, changed = plink_chromosome_codes(codes)
    assert changed
    assert renamed.tolist() == [
        "1",
        "chr22",
        "chrX",
        "MT",
        "26",
        "scaffold_12",
        "chrUn_gl000220",
        "contig_27",
        "contig_1_random",
    ]
    assert plink_chromosome_codes(pd.Series(["chr1", "X", "scaffold_3"]))[1] is False  # accepted as they are


def test_chromosome_order_is_natural() -> None:
    names = pd.Series(["scaffold_12", "chr10", "chrX", "27", "scaffold_2", "chr2", "1", "MT"])
    assert names.iloc[np.argsort(chromosome_order(names).to_numpy(), kind="stable")].tolist() == [
        "1",
        "chr2",
        "chr10",
        "chrX",
        "MT",
        "27",
        "scaffold_2",
        "scaffold_12",
    ]


@needs_binaries
def test_clump_with_nonstandard_chromosome_names(filesets: tuple[Path, Path], tmp_path: Path) -> None:
    clean, named = filesets
    expected = clump(clean, _assoc(clean), 1e-6)
    assert len(expected) == 11 and expected["TOTAL"].sum() > 0  # clumps with LD partners: a real clumping
    loci = clump(named, _assoc(named), 1e-6, log=tmp_path / "clump.log")
    assert "--allow-extra-chr" in (tmp_path / "clump.log").read_text()
    # the same loci, under the .bim's own names (PLINK would write chr1 as 1)
    pd.testing.assert_frame_equal(loci, expected.assign(CHR=expected["CHR"].map(NAMES)))


@needs_binaries
def test_gemma_and_evaluate_keep_the_bim_names(filesets: tuple[Path, Path], tmp_path: Path) -> None:
    _, named = filesets
    before = snapshot(named.parent)
    pheno = tmp_path / "pheno.gemma.txt"
    np.savetxt(pheno, np.random.default_rng(1).normal(size=(N, 2)), fmt="%.6f", delimiter="\t")
    assert invoke("gwas", "grm", "--bfile", named, "--out", tmp_path / "k.cXX.txt").returncode == 0
    result = invoke(
        "gwas",
        "assoc",
        "--bfile",
        named,
        "--kinship",
        tmp_path / "k.cXX.txt",
        "--pheno",
        pheno,
        "--columns",
        "1,2",
        "--out",
        tmp_path / "assoc.tsv",
    )
    assert result.returncode == 0, result
    assoc = pd.read_csv(tmp_path / "assoc.tsv", sep="\t", dtype={"CHR": str, "SNP": str})
    bim = pd.read_csv(f"{named}.bim", sep="\t", header=None, dtype={0: str, 1: str})
    assert assoc["CHR"].tolist() == bim[0].tolist() and assoc["SNP"].tolist() == bim[1].tolist()
    # evaluation (clumping and the Manhattan plot) on association results with strong hits
    write_table(tmp_path / "hits.tsv", _assoc(named))
    result = invoke(
        "gwas",
        "evaluate",
        "--bfile",
        named,
        "--assoc",
        tmp_path / "hits.tsv",
        "--out-dir",
        tmp_path / "eval",
        "--name",
        "hits",
        "--threshold",
        "1e-6",
    )
    assert result.returncode == 0, result
    loci = pd.read_csv(tmp_path / "eval" / "loci.tsv", sep="\t", dtype={"CHR": str})
    assert loci["CHR"].tolist() == ["chr1"] * 3 + ["scaffold_12"] * 3 + ["chr2"] * 2 + ["27"] * 3
    assert (tmp_path / "eval" / "manhattan.png").stat().st_size > 10_000
    assert snapshot(named.parent) == before


# ---- traits GEMMA cannot test -------------------------------------------------------------


def _pheno_table(fam: pd.DataFrame) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    return pd.DataFrame(
        {
            "FID": fam["FID"],
            "IID": fam["IID"],
            "good": rng.gamma(2.0, size=len(fam)),
            "other": rng.normal(size=len(fam)),
        }
    )


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda t: t.assign(other=np.nan), "trait 'other' has 0 value(s); GEMMA needs at least 10"),
        (
            lambda t: t.assign(other=np.where(np.arange(len(t)) < 9, 1.0 + np.arange(len(t)), np.nan)),
            "trait 'other' has 9 value(s); GEMMA needs at least 10",
        ),
        (lambda t: t.assign(other=3.5), "trait 'other' is 3.5 for all 300 individuals"),
    ],
    ids=["all-missing", "nine-values", "constant"],
)
def test_rint_refuses_a_trait_gemma_cannot_test(
    filesets: tuple[Path, Path], tmp_path: Path, edit, fragment: str
) -> None:
    clean, _ = filesets
    pheno = write_table(tmp_path / "pheno.tsv", edit(_pheno_table(read_fam(f"{clean}.fam"))))
    before = snapshot(tmp_path)
    result = invoke("gwas", "rint", "--pheno", pheno, "--fam", f"{clean}.fam", "--out", tmp_path / "out.txt")
    assert result.returncode == 1
    assert f"error: {pheno}: {fragment}" in " ".join(result.stderr.split())
    assert snapshot(tmp_path) == before  # no output, nothing else touched


def test_rint_constant_after_missing_covariates(filesets: tuple[Path, Path], tmp_path: Path) -> None:
    """A trait that varies only among individuals without covariates is constant where it is used."""
    clean, _ = filesets
    fam = read_fam(f"{clean}.fam")
    table = _pheno_table(fam)
    table.loc[20:, "other"] = 1.0
    pheno = write_table(tmp_path / "pheno.tsv", table)
    covar = write_table(
        tmp_path / "covar.tsv",
        pd.DataFrame(
            {"FID": fam["FID"], "IID": fam["IID"], "age": np.where(np.arange(N) < 20, np.nan, 40.0 + np.arange(N))}
        ),
    )
    result = invoke(
        "gwas", "rint", "--pheno", pheno, "--covar", covar, "--fam", f"{clean}.fam", "--out", tmp_path / "out.txt"
    )
    assert result.returncode == 1
    assert f"trait 'other' is 1 for all 280 individuals with every covariate of {covar} present" in " ".join(
        result.stderr.split()
    )
    assert not (tmp_path / "out.txt").exists()


def _gemma_file(path: Path, values: np.ndarray) -> Path:
    np.savetxt(path, values, fmt="%.6g", delimiter="\t")
    path.write_text(path.read_text().replace("nan", "NA"))
    return path


def _two_traits() -> np.ndarray:
    return np.random.default_rng(3).normal(size=(N, 2))


@pytest.mark.parametrize(
    ("values", "columns", "fragment"),
    [
        (_two_traits(), "1,3", "--columns 3: the file has 2 phenotype column(s); choose from 1-2"),
        (
            np.column_stack([_two_traits()[:, 0], np.full(N, np.nan)]),
            "1,2",
            "column 2 has 0 non-missing value(s); GEMMA needs at least 10",
        ),
        (
            np.column_stack([_two_traits()[:, 0], np.where(np.arange(N) < 4, 1.0, np.nan)]),
            "2",
            "column 2 has 4 non-missing value(s)",
        ),
        (np.column_stack([_two_traits()[:, 0], np.full(N, -0.25)]), "1,2", "column 2 is constant (-0.25 for all 300)"),
        (
            np.column_stack(
                [
                    np.where(np.arange(N) < 150, 1.0, np.nan) * np.arange(N),
                    np.where(np.arange(N) >= 145, 1.0, np.nan) * np.arange(N),
                ]
            ),
            "1,2",
            "only 5 individual(s) have every one of columns 1,2; the mvLMM needs at least 10",
        ),
        (_two_traits()[:-1], "1", "299 rows but the .fam has 300"),
    ],
    ids=["no-such-column", "all-missing", "four-values", "constant", "few-complete", "short"],
)
def test_assoc_checks_columns_before_gemma(
    filesets: tuple[Path, Path], tmp_path: Path, values: np.ndarray, columns: str, fragment: str
) -> None:
    clean, _ = filesets
    pheno = _gemma_file(tmp_path / "pheno.gemma.txt", values)
    kinship = tmp_path / "k.cXX.txt"
    kinship.write_text("unused\n")
    before = snapshot(tmp_path)
    result = invoke(
        "gwas",
        "assoc",
        "--bfile",
        clean,
        "--kinship",
        kinship,
        "--pheno",
        pheno,
        "--columns",
        columns,
        "--per-trait",
        "--out",
        tmp_path / "assoc.tsv",
    )
    assert result.returncode == 1
    assert f"error: {pheno}: {fragment}" in " ".join(result.stderr.split())
    assert snapshot(tmp_path) == before  # GEMMA never started: no output, no log


def test_assoc_names_the_line_of_a_bad_value(filesets: tuple[Path, Path], tmp_path: Path) -> None:
    clean, _ = filesets
    pheno = _gemma_file(tmp_path / "pheno.gemma.txt", _two_traits())
    lines = pheno.read_text().splitlines()
    lines[6] = lines[6].split("\t")[0] + "\tabc"
    pheno.write_text("\n".join(lines) + "\n")
    result = invoke(
        "gwas",
        "assoc",
        "--bfile",
        clean,
        "--kinship",
        pheno,
        "--pheno",
        pheno,
        "--columns",
        "1,2",
        "--out",
        tmp_path / "assoc.tsv",
    )
    assert result.returncode == 1
    assert f"error: {pheno}, line 7, column 2: 'abc' is not a number; use NA for a missing value" in result.stderr
    assert not (tmp_path / "assoc.tsv").exists()


@needs_binaries
def test_per_trait_failure_removes_earlier_trait_files(
    filesets: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean, _ = filesets
    pheno = _gemma_file(tmp_path / "pheno.gemma.txt", _two_traits())
    assert invoke("gwas", "grm", "--bfile", clean, "--out", tmp_path / "k.cXX.txt").returncode == 0
    real = steps.gemma_lmm

    def second_fails(bfile, kinship, pheno, columns, out, **options):  # noqa: ANN001, ANN003, ANN202
        if columns == [2]:
            raise FlowphenoError("gemma failed (exit 1; log x.log)")
        return real(bfile, kinship, pheno, columns, out, **options)

    monkeypatch.setattr(steps, "gemma_lmm", second_fails)
    result = invoke(
        "gwas",
        "assoc",
        "--bfile",
        clean,
        "--kinship",
        tmp_path / "k.cXX.txt",
        "--pheno",
        pheno,
        "--columns",
        "1,2",
        "--per-trait",
        "--out",
        tmp_path / "assoc.tsv",
    )
    assert result.returncode == 1 and "error: gemma failed" in result.stderr
    assert (tmp_path / "assoc.trait1.assoc.log").exists()  # trait 1 did run; its log is kept
    assert not list(tmp_path.glob("*.assoc.txt")) and not (tmp_path / "assoc.tsv").exists()


def _write_assoc(path: Path, table: pd.DataFrame) -> Path:
    table.to_csv(path, sep="\t", index=False, float_format="%.6g", na_rep="NA")
    return path


@needs_binaries
def test_evaluate_and_report_never_replace_a_users_files(filesets: tuple[Path, Path], tmp_path: Path) -> None:
    clean, _ = filesets
    assoc = _write_assoc(tmp_path / "assoc.tsv", _assoc(clean))
    mine = tmp_path / "paper"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    (mine / "report.md").write_text("my handwritten report\n")
    before = snapshot(mine)
    refused = invoke(
        "gwas", "evaluate", "--bfile", clean, "--assoc", assoc, "--out-dir", mine, "--name", "m", "--threshold", "1e-6"
    )
    assert refused.returncode == 1 and "flowpheno did not write" in refused.stderr, refused
    assert snapshot(mine) == before

    first = invoke(
        "gwas",
        "evaluate",
        "--bfile",
        clean,
        "--assoc",
        assoc,
        "--out-dir",
        tmp_path / "ev",
        "--name",
        "m",
        "--threshold",
        "1e-6",
    )
    assert first.returncode == 0, first
    written = snapshot(tmp_path / "ev")
    again = invoke(
        "gwas",
        "evaluate",
        "--bfile",
        clean,
        "--assoc",
        assoc,
        "--out-dir",
        tmp_path / "ev",
        "--name",
        "m",
        "--threshold",
        "1e-6",
    )
    assert again.returncode == 1 and "--overwrite" in again.stderr and snapshot(tmp_path / "ev") == written
    assert (
        invoke(
            "gwas",
            "evaluate",
            "--bfile",
            clean,
            "--assoc",
            assoc,
            "--out-dir",
            tmp_path / "ev",
            "--name",
            "m",
            "--threshold",
            "1e-6",
            "--overwrite",
        ).returncode
        == 0
    )

    report = invoke("gwas", "report", tmp_path / "ev", "--out-dir", mine)
    assert report.returncode == 1 and f"{mine / 'report.md'} exists" in report.stderr and "--overwrite" in report.stderr
    assert snapshot(mine) == before
    twice = invoke("gwas", "report", tmp_path / "ev", tmp_path / "ev", "--out-dir", tmp_path / "rep")
    assert twice.returncode == 1 and "is given twice" in twice.stderr
    shutil.copytree(tmp_path / "ev", tmp_path / "ev2")  # another evaluation under the same --name
    same_name = invoke("gwas", "report", tmp_path / "ev", tmp_path / "ev2", "--out-dir", tmp_path / "rep")
    assert same_name.returncode == 1 and same_name.stderr.splitlines() == [
        f"error: {tmp_path / 'ev2'}/summary.json: method 'm' is also the method of {tmp_path / 'ev'}; evaluate "
        "each with its own name (flowpheno gwas evaluate --name)"
    ]
    assert not (tmp_path / "rep").exists()
    summary = json.loads((tmp_path / "ev2" / "summary.json").read_text())
    (tmp_path / "ev2" / "summary.json").write_text(json.dumps(summary | {"method": "m2"}))  # loci.tsv still says m
    relabelled = invoke("gwas", "report", tmp_path / "ev", tmp_path / "ev2", "--out-dir", tmp_path / "rep")
    assert relabelled.returncode == 1 and relabelled.stderr.splitlines() == [
        f"error: {tmp_path / 'ev2' / 'loci.tsv'}: loci of method 'm', but its summary.json is of 'm2' (an edited or "
        "copied file?); rerun flowpheno gwas evaluate for that folder"
    ]
    absent = invoke("gwas", "report", tmp_path / "nothere", "--out-dir", tmp_path / "rep")
    assert absent.returncode == 1 and absent.stderr.splitlines() == [
        f"error: {tmp_path / 'nothere'}: no such folder; give folders written by flowpheno gwas evaluate --out-dir"
    ]
    assert not (tmp_path / "rep").exists()
    not_evaluated = invoke("gwas", "report", mine, "--out-dir", tmp_path / "rep")
    assert not_evaluated.returncode == 1 and f"{mine}: no summary.json" in not_evaluated.stderr
    ok = invoke("gwas", "report", tmp_path / "ev", "--out-dir", tmp_path / "rep")
    assert ok.returncode == 0, ok
    # a flow fit beside two evaluations (not the workflow's one run/ per method) is nobody's: left out
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "fit.json").write_text(json.dumps({"covariance": {"s2": 0.5}, "epochs": []}))
    shutil.rmtree(tmp_path / "ev2")
    shutil.copytree(tmp_path / "ev", tmp_path / "ev2")
    summary = json.loads((tmp_path / "ev2" / "summary.json").read_text())
    (tmp_path / "ev2" / "summary.json").write_text(json.dumps(summary | {"method": "a|b"}))
    loci = pd.read_csv(tmp_path / "ev2" / "loci.tsv", sep="\t")
    loci.assign(method="a|b").to_csv(tmp_path / "ev2" / "loci.tsv", sep="\t", index=False)
    shared = invoke("gwas", "report", tmp_path / "ev", tmp_path / "ev2", "--out-dir", tmp_path / "rep2")
    assert shared.returncode == 0, shared
    rows = [line for line in (tmp_path / "rep2" / "report.md").read_text().splitlines() if line.startswith("| m ")]
    rows += [line for line in (tmp_path / "rep2" / "report.md").read_text().splitlines() if line.startswith("| a\\|b ")]
    assert len(rows) == 2 and all(" - (run/ shared) |" in row and "s2 0.500" not in row for row in rows), rows
    assert (
        "](../ev/manhattan.png)" in (tmp_path / "rep" / "report.md").read_text()
    )  # links work from the report's folder


@needs_binaries
@pytest.mark.parametrize(
    "case, fragment",
    [
        ("absent", "file not found"),
        ("gemma_p_file", "no column SNP, CHR, BP, P"),
        ("truncated", "line 7: a field is empty"),
        ("p_above_one", "line 4: P '1.5' is not a p-value"),
        ("all_na", "no SNP has a p-value"),
        ("cut_in_last_p", "the last line is cut (no newline at the end"),
        ("other_fileset", "line 2: SNP 'x_"),
        ("moved", "SNP"),
        ("twice", "is on lines 2, 42; give one row per SNP"),
        ("plink_covariate_tests", "keep the ADD rows (plink --hide-covar)"),
        ("recoded", "at the same positions): the chromosomes are coded differently; give the table the .bim's"),
        ("csv", "comma- or semicolon-separated; give a tab- or whitespace-separated table"),
        ("header_only", "a header and no SNP"),
    ],
)
def test_evaluate_checks_the_association_table(
    filesets: tuple[Path, Path], tmp_path: Path, case: str, fragment: str
) -> None:
    clean, _ = filesets
    table = _assoc(clean).iloc[:40]
    path = tmp_path / "assoc.tsv"
    if case == "gemma_p_file":
        path.write_text("0.1\t0.2\n0.3\tNA\n")
    elif case == "truncated":
        text = _write_assoc(path, table).read_text()
        lines = text.splitlines()
        path.write_text("\n".join(lines[:6] + [lines[6].split("\t")[0][:3]]) + "\n")
    elif case == "p_above_one":
        _write_assoc(path, table.assign(P=[0.5, 0.2, 1.5] + [0.3] * (len(table) - 3)))
    elif case == "all_na":
        _write_assoc(path, table.assign(P=np.nan))
    elif case == "cut_in_last_p":  # "... 0.953677" cut to "... 0." would read as P = 0, a top locus
        text = _write_assoc(path, table).read_text()
        path.write_text(text[: text.rindex("\t") + 3])
    elif case == "other_fileset":  # IDs the .bim does not hold: PLINK would clump nothing, 0 loci
        _write_assoc(path, table.assign(SNP="x_" + table["SNP"]))
    elif case == "moved":  # positions of another build: loci would be reported where they are not
        moved = table.assign(BP=table["BP"] + 1000)
        snp, chrom, bp = moved.iloc[0][["SNP", "CHR", "BP"]]
        fragment = (
            f"line 2: SNP {snp!r} is at CHR {chrom} BP {bp}, but at {chrom} {bp - 1000} in {clean}.bim (40 SNPs differ)"
        )
        _write_assoc(path, moved)
    elif case == "twice":
        _write_assoc(path, pd.concat([table, table.iloc[:1]]))
    elif case == "recoded":  # mouse X written as 20 by plink --mouse, X in the table
        _write_assoc(path, table.assign(CHR=table["CHR"].replace({"1": "20"})))
    elif case == "csv":
        table.to_csv(path, index=False)
    elif case == "header_only":
        path.write_text("SNP\tCHR\tBP\tP\n")
    elif case == "plink_covariate_tests":
        _write_assoc(path, pd.concat([table.assign(TEST="ADD"), table.assign(TEST="COV1")]))
    before = snapshot(tmp_path)
    result = invoke("gwas", "evaluate", "--bfile", clean, "--assoc", path, "--out-dir", tmp_path / "ev", "--name", "m")
    assert result.returncode == 1 and fragment in result.stderr, result
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "ev").exists() and snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("absent", "k.cXX.txt: file not found"),
        ("npz", "k.cXX.txt: a .npz archive; GEMMA reads a text matrix"),
        ("other_cohort", "k.cXX.txt, line 1: 299 values, but the .fam lists 300 individuals"),
        ("truncated", "k.cXX.txt: 120 rows, but the .fam lists 300 individuals"),
        ("repeated_column", "--columns '1,1': column 1 is named twice"),
        ("text_cell", "k.cXX.txt, line 3, value 3: 'abc' is not a finite number"),
    ],
)
def test_assoc_checks_the_kinship_before_gemma(
    filesets: tuple[Path, Path], tmp_path: Path, case: str, fragment: str
) -> None:
    clean, _ = filesets
    pheno = _gemma_file(tmp_path / "pheno.gemma.txt", _two_traits())
    kinship = tmp_path / "k.cXX.txt"
    identity = "\n".join("\t".join("1" if i == j else "0" for j in range(N)) for i in range(N)) + "\n"
    if case == "npz":
        np.savez(tmp_path / "k.npz", K=np.eye(N))
        (tmp_path / "k.npz").rename(kinship)
    elif case == "other_cohort":
        kinship.write_text("\n".join("\t".join("0" for _ in range(N - 1)) for _ in range(N - 1)) + "\n")
    elif case == "text_cell":
        lines = identity.splitlines()
        cells = lines[2].split("\t")
        cells[2] = "abc"
        lines[2] = "\t".join(cells)
        kinship.write_text("\n".join(lines) + "\n")
    elif case in ("truncated", "repeated_column"):
        kinship.write_text(
            "\n".join(identity.splitlines()[:120] if case == "truncated" else identity.splitlines()) + "\n"
        )
    before = snapshot(tmp_path)
    result = invoke(
        "gwas",
        "assoc",
        "--bfile",
        clean,
        "--kinship",
        kinship,
        "--pheno",
        pheno,
        "--columns",
        "1,1" if case == "repeated_column" else "1,2",
        "--out",
        tmp_path / "assoc.tsv",
    )
    assert result.returncode == 1 and fragment in " ".join(result.stderr.split()), result
    assert len(result.stderr.strip().splitlines()) == 1 and snapshot(tmp_path) == before


@needs_binaries
def test_report_checks_its_folders_and_never_replaces_a_foreign_report(
    filesets: tuple[Path, Path], tmp_path: Path
) -> None:
    clean, _ = filesets
    assoc = _write_assoc(tmp_path / "assoc.tsv", _assoc(clean))
    assert (
        invoke(
            "gwas",
            "evaluate",
            "--bfile",
            clean,
            "--assoc",
            assoc,
            "--out-dir",
            tmp_path / "ev",
            "--name",
            "m",
            "--threshold",
            "1e-6",
        ).returncode
        == 0
    )
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "report.md").write_text("my notes\n")
    before = snapshot(tmp_path / "mine")
    foreign = invoke("gwas", "report", tmp_path / "ev", "--out-dir", tmp_path / "mine", "--overwrite")
    assert foreign.returncode == 1 and "was not written by flowpheno gwas report" in foreign.stderr, foreign
    assert snapshot(tmp_path / "mine") == before
    assert invoke("gwas", "report", tmp_path / "ev", "--out-dir", tmp_path / "rep").returncode == 0
    assert (
        invoke("gwas", "report", tmp_path / "ev", "--out-dir", tmp_path / "rep", "--overwrite").returncode == 0
    )  # ours
    for name, content, fragment in [
        ("summary.json", "{}", "summary.json: no method, loci, lambda_gc"),
        ("summary.json", "[1, 2]", "summary.json: no method"),
        ("loci.tsv", None, "not the loci table its summary.json describes"),
    ]:
        broken = tmp_path / f"broken_{name}_{len(content or '')}"
        shutil.copytree(tmp_path / "ev", broken)
        target = broken / name
        target.write_text(content if content is not None else target.read_text()[:60])
        if content is None:
            target.write_text(target.read_text() + "\n")  # whole lines, but rows missing
        result = invoke("gwas", "report", broken, "--out-dir", tmp_path / "rep2")
        assert result.returncode == 1 and fragment in result.stderr, result
        assert not (tmp_path / "rep2").exists() or not any((tmp_path / "rep2").iterdir())


@needs_binaries
def test_evaluate_refuses_a_repeated_snp_id_before_plink(filesets: tuple[Path, Path], tmp_path: Path) -> None:
    """A `.bim` giving one SNP ID twice (PLINK 1.9 --clump stops on it, and loci are joined by
    ID) is refused by `gwas evaluate` in one line naming the file, the ID, its lines and the fix;
    exit 1, no output folder."""
    clean, _ = filesets
    twice = tmp_path / "twice"
    for suffix in (".bed", ".fam"):
        shutil.copyfile(f"{clean}{suffix}", f"{twice}{suffix}")
    bim = pd.read_csv(f"{clean}.bim", sep="\t", header=None, dtype=str)
    bim.loc[5, 1] = bim.loc[4, 1]
    bim.to_csv(f"{twice}.bim", sep="\t", header=False, index=False)
    assoc = _write_assoc(tmp_path / "assoc.tsv", _assoc(clean))
    out = tmp_path / "ev"
    result = invoke("gwas", "evaluate", "--bfile", twice, "--assoc", assoc, "--out-dir", out, "--name", "m")
    assert result.returncode == 1 and result.stderr.splitlines() == [
        f"error: {twice}.bim: SNP ID {bim.loc[4, 1]!r} is on lines 5, 6; every SNP needs a unique ID: rename the "
        "repeats in column 2 of the .bim (e.g. to CHR:BP:A1:A2; the .bed and .fam do not change); PLINK's "
        "--set-missing-var-ids renames only IDs given as '.'"
    ], result.stderr
    assert not out.exists()


def test_a_failing_tool_names_its_log_only_when_it_is_kept(tmp_path: Path) -> None:
    """`run_logged` shows the tool's last lines; it names the log unless the log lies in a folder
    the failure removes (gwas evaluate's staging folder), so no error points at a vanished file."""
    from flowpheno.gwas.tools import run_logged

    failing = ["sh", "-c", "echo reading; echo 'ERROR: bad input'; exit 3"]
    log = tmp_path / "tool.log"
    with pytest.raises(FlowphenoError) as kept:
        run_logged(failing, log)
    shown = ["$ " + " ".join(failing), "reading", "ERROR: bad input"]  # the log: the command, then its output
    assert str(kept.value).splitlines() == [f"sh failed (exit 3; log {log}):", *shown]
    with pytest.raises(FlowphenoError) as removed:
        run_logged(failing, log, log_kept=False)
    assert str(removed.value).splitlines() == ["sh failed (exit 3; its log is not kept):", *shown]


@needs_binaries
def test_evaluate_reads_plink_tables_and_names_chromosomes_either_way(
    filesets: tuple[Path, Path], tmp_path: Path
) -> None:
    """PLINK 1.9's own whitespace-aligned association table (as `--linear` writes it) gives the
    loci of the same table written tab-separated; `chr1` in the table and `1` in the `.bim` (or
    the reverse) are one chromosome, not a mismatch."""
    clean, named = filesets
    table = _assoc(clean)
    tab = _write_assoc(tmp_path / "tab.tsv", table)
    plink_style = tmp_path / "cohort.assoc.linear"
    columns = table.assign(A1="A", TEST="ADD", NMISS=N)[["CHR", "SNP", "BP", "A1", "TEST", "NMISS", "P"]]
    plink_style.write_text(
        "\n".join(
            " " + " ".join(f"{value:>12}" for value in row) for row in [columns.columns, *columns.astype(str).values]
        )
        + "\n"
    )
    unprefixed = _write_assoc(  # the named .bim's chromosomes without its chr prefix: chr1 -> 1, 27 stays
        tmp_path / "unprefixed.tsv", table.assign(CHR=table["CHR"].map(NAMES).str.replace("chr", ""))
    )
    loci = {}
    for name, path, bfile in (("tab", tab, clean), ("plink", plink_style, clean), ("prefixed", unprefixed, named)):
        result = invoke(
            "gwas", "evaluate", "--bfile", bfile, "--assoc", path, "--out-dir", tmp_path / name, "--name", "m",
            "--threshold", "1e-6",
        )  # fmt: skip
        assert result.returncode == 0, result
        loci[name] = pd.read_csv(tmp_path / name / "loci.tsv", sep="\t", dtype={"CHR": str})
    assert len(loci["tab"]) > 3 and loci["plink"].equals(loci["tab"])
    assert loci["prefixed"]["SNP"].tolist() == loci["tab"]["SNP"].tolist()  # the .bim says chr1, the table 1


@needs_binaries
def test_evaluate_reads_gemmas_own_assoc_txt(filesets: tuple[Path, Path], tmp_path: Path) -> None:
    """GEMMA's own assoc.txt (rs, chr, ps, p_wald: `-lmm 1`, run here) gives the loci of the same
    results renamed to SNP, CHR, BP, P by hand; `-lmm 4`'s three tests are refused, nothing
    written, and the command the message gives makes a table that is read."""
    import subprocess

    clean, _ = filesets
    dosage = np.asarray(read_genotypes(clean).values, dtype=float)
    rng = np.random.default_rng(3)
    causal = [10, 200, 350]
    trait = np.nan_to_num(dosage[:, causal]).sum(axis=1) + rng.normal(size=N)
    second = trait + rng.normal(size=N)
    (tmp_path / "pheno.txt").write_text("".join(f"{a:.6f}\t{b:.6f}\n" for a, b in zip(trait, second, strict=True)))
    gemma = ["gemma", "-bfile", str(clean), "-p", "pheno.txt", "-outdir", "out"]
    subprocess.run([*gemma, "-gk", "1", "-o", "kin"], cwd=tmp_path, check=True, capture_output=True)
    kinship = ["-k", "out/kin.cXX.txt"]
    for lmm, name, traits in (("1", "wald", "1"), ("4", "all", "1"), ("1", "mv", "1 2")):
        command = [*gemma, *kinship, "-lmm", lmm, "-n", *traits.split(), "-o", name]
        subprocess.run(command, cwd=tmp_path, check=True, capture_output=True)
    raw = tmp_path / "out" / "wald.assoc.txt"
    by_hand = pd.read_csv(raw, sep="\t", dtype=str)[["rs", "chr", "ps", "p_wald"]]
    renamed = _write_assoc(tmp_path / "renamed.tsv", by_hand.set_axis(["SNP", "CHR", "BP", "P"], axis=1))
    loci = {}
    for name, path in (("raw", raw), ("renamed", renamed)):
        result = invoke(
            "gwas", "evaluate", "--bfile", clean, "--assoc", path, "--out-dir", tmp_path / name, "--name", "m"
        )
        assert result.returncode == 0, result
        loci[name] = pd.read_csv(tmp_path / name / "loci.tsv", sep="\t", dtype={"CHR": str})
    assert len(loci["raw"]) >= 2 and loci["raw"].equals(loci["renamed"])
    assert "mvLMM" not in result.stderr  # a univariate table: no warning

    mv = tmp_path / "out" / "mv.assoc.txt"  # GEMMA's 2-trait mvLMM: read, with the 1-df reading said
    result = invoke("gwas", "evaluate", "--bfile", clean, "--assoc", mv, "--out-dir", tmp_path / "mv", "--name", "m")
    assert result.returncode == 0, result
    assert "GEMMA's mvLMM table of 2 traits (beta_1 .. beta_2), evaluated without --test" in result.stderr
    wrong = invoke(
        "gwas", "evaluate", "--bfile", clean, "--assoc", mv, "--out-dir", tmp_path / "mv1", "--name", "m",
        "--pheno", tmp_path / "pheno.txt", "--columns", "1", "--test", "mvlmm",
    )  # fmt: skip
    assert (
        wrong.returncode == 1 and "GEMMA's mvLMM table of 2 traits (beta_1 .. beta_2) for 1 --columns" in wrong.stderr
    )

    four = tmp_path / "user's files" / "lmm 4.assoc.txt"  # a path the pasted command must quote
    four.parent.mkdir()
    shutil.copy(tmp_path / "out" / "all.assoc.txt", four)
    before = snapshot(tmp_path)
    refused = invoke(
        "gwas", "evaluate", "--bfile", clean, "--assoc", four, "--out-dir", tmp_path / "ev4", "--name", "m"
    )
    message = refused.stderr.strip()
    assert refused.returncode == 1 and len(message.splitlines()) == 1, refused
    assert "GEMMA's assoc.txt with 3 tests (p_wald, p_lrt, p_score; -lmm 4): keep one p-value column" in message
    assert snapshot(tmp_path) == before
    command = message[message.index("(set -o noclobber") :]
    subprocess.run(["bash", "-c", command], cwd=tmp_path, check=True)
    kept_path = four.with_name("lmm 4.p_score.tsv")
    kept = pd.read_csv(kept_path, sep="\t", dtype=str)
    assert kept.columns.tolist() == ["CHR", "SNP", "BP", "P"]
    assert kept["P"].tolist() == pd.read_csv(four, sep="\t", dtype=str)["p_score"].tolist()
    again = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True)
    assert again.returncode != 0 and pd.read_csv(kept_path, sep="\t", dtype=str).equals(kept)  # never overwritten
    result = invoke("gwas", "evaluate", "--bfile", clean, "--assoc", kept_path, "--out-dir", tmp_path / "ev4",
                    "--name", "m")  # fmt: skip
    assert result.returncode == 0, result


@pytest.mark.parametrize(
    "option, message",
    [
        (["--threshold", "abc"], "--threshold 'abc': give a p-value in (0, 1], e.g. 5e-8, or bonferroni"),
        (["--threshold", "nan"], "--threshold 'nan': give a p-value in (0, 1], e.g. 5e-8, or bonferroni"),
        (["--alpha", "5"], "--alpha 5: give a family-wise error rate in (0, 1), e.g. 0.05"),
        (["--r2", "1"], "--r2 1: give an LD r2 in [0, 1) (PLINK 1.9 --clump-r2), e.g. 0.1"),
        (["--kb", "0"], "--kb 0: give a clumping window of at least 1 kb (PLINK 1.9 --clump-kb), e.g. 250"),
        (["--truth-window-kb", "-1"], "--truth-window-kb -1: give a distance of 0 kb or more, e.g. 40"),
        (["--test", "foo"], "--test 'foo': choose mvlmm or per-trait"),
    ],
)
def test_evaluate_refuses_bad_numbers_before_any_work(tmp_path: Path, option: list[str], message: str) -> None:
    """Values PLINK would refuse late, or that would give a meaningless count (a NaN threshold:
    0 loci and NaN in summary.json), stop at once: one usage line, exit 2, nothing written."""
    result = invoke(
        "gwas", "evaluate", "--bfile", tmp_path / "absent", "--assoc", tmp_path / "absent.tsv", "--out-dir",
        tmp_path / "ev", "--name", "m", *option,
    )  # fmt: skip
    assert (result.returncode, result.stderr.splitlines()) == (2, [f"error: {message}"])
    assert list(tmp_path.iterdir()) == []


@needs_binaries
def test_clumping_does_not_depend_on_what_the_chromosomes_are_called(
    filesets: tuple[Path, Path], tmp_path: Path
) -> None:
    """Chromosomes numbered 23 and 24 (autosomes of cattle, dogs, chickens) or called X are
    clumped as autosomes: the loci, and the SNPs each absorbs (TOTAL), are those of the same
    genotypes numbered 1-3. PLINK's human mode would treat them as sex chromosomes (male
    heterozygous calls set missing) and change the LD."""
    clean, _ = filesets
    renamed = tmp_path / "renamed"
    codes = {"1": "23", "2": "24", "3": "X"}
    bim = pd.read_csv(f"{clean}.bim", sep="\t", header=None, dtype=str)
    bim[0] = bim[0].replace(codes)
    bim.to_csv(f"{renamed}.bim", sep="\t", header=False, index=False)
    for suffix in (".bed", ".fam"):
        shutil.copyfile(f"{clean}{suffix}", f"{renamed}{suffix}")
    table = _assoc(clean)
    loci = {}
    for name, bfile, assoc in (
        ("clean", clean, table),
        ("renamed", renamed, table.assign(CHR=table["CHR"].replace(codes))),
    ):
        path = _write_assoc(tmp_path / f"{name}.tsv", assoc)
        result = invoke(
            "gwas", "evaluate", "--bfile", bfile, "--assoc", path, "--out-dir", tmp_path / name, "--name", "m",
            "--threshold", "1e-3", "--r2", "0.05",
        )  # fmt: skip
        assert result.returncode == 0, result
        loci[name] = pd.read_csv(tmp_path / name / "loci.tsv", sep="\t", dtype={"CHR": str})
    assert len(loci["clean"]) > 5 and set(loci["clean"]["CHR"]) >= {"1", "2", "3"}
    assert loci["renamed"][["SNP", "BP", "P", "TOTAL"]].equals(loci["clean"][["SNP", "BP", "P", "TOTAL"]])
    assert loci["renamed"]["CHR"].tolist() == loci["clean"]["CHR"].replace(codes).tolist()
