"""Leave-one-chromosome-out association and the fileset every GWAS step reads, with the real
GEMMA and PLINK 1.9 binaries: the LOCO GRM against GEMMA on a fileset of the other chromosomes,
per-chromosome tests against GEMMA on that chromosome alone, the gathered table, and the sorted
fileset against PLINK's own --clump requirement."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import invoke, snapshot

from flowpheno.errors import FlowphenoError
from flowpheno.gwas.clump import clump
from flowpheno.gwas.gemma import read_gemma_assoc
from flowpheno.io.plink import plink_unsorted, read_bim, write_plink

pytestmark = pytest.mark.skipif(
    shutil.which("gemma") is None or shutil.which("plink1.9") is None, reason="apt-get install gemma plink1.9"
)

CHROMOSOMES = {"1": 140, "2": 110, "scaffold_7": 90}
"""Chromosome code -> SNPs of the test fileset (a name PLINK knows only with --allow-extra-chr)."""
N = 160
"""Individuals of the test fileset: 40 families of four."""


def write_fileset(prefix: Path, n: int = N, seed: int = 0) -> pd.DataFrame:
    """Families of four (two parents, two children) with SNPs on :data:`CHROMOSOMES`; returns the .bim."""
    rng = np.random.default_rng(seed)
    m = sum(CHROMOSOMES.values())
    frequency = rng.uniform(0.15, 0.5, m)
    parents = rng.binomial(1, frequency, size=(n // 2, 2, m))  # two haplotypes per parent
    dosage = np.zeros((n, m))
    fids = []
    for family in range(n // 4):
        mother, father = parents[2 * family], parents[2 * family + 1]
        dosage[4 * family] = mother.sum(axis=0)
        dosage[4 * family + 1] = father.sum(axis=0)
        for child in (2, 3):
            pick = rng.integers(0, 2, size=(2, m))
            dosage[4 * family + child] = (
                np.take_along_axis(mother, pick[:1], 0)[0] + np.take_along_axis(father, pick[1:], 0)[0]
            )
        fids += [f"F{family}"] * 4
    dosage[:, 5][rng.random(n) < 0.05] = np.nan  # a few missing calls
    fam = pd.DataFrame(
        {"FID": fids, "IID": [f"I{i}" for i in range(n)], "PAT": "0", "MAT": "0", "SEX": "0", "PHENO": "-9"}
    )
    chrom = np.repeat(list(CHROMOSOMES), list(CHROMOSOMES.values()))
    position = np.concatenate(
        [np.sort(rng.choice(np.arange(1, 10_000_000), size, replace=False)) for size in CHROMOSOMES.values()]
    )
    bim = pd.DataFrame(
        {"chrom": chrom, "snp": [f"s{j}" for j in range(m)], "cm": 0, "pos": position, "a0": "A", "a1": "G"}
    )
    write_plink(prefix, dosage, fam, bim)
    return bim


def write_gemma_pheno(path: Path, n: int, seed: int = 1) -> Path:
    """Two traits, GEMMA -p layout (no header, NA missing), some values missing."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, 2))
    values[rng.random((n, 2)) < 0.1] = np.nan
    pd.DataFrame(values).to_csv(path, sep="\t", header=False, index=False, na_rep="NA")
    return path


def plink(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        ["plink1.9", *args, "--allow-extra-chr", "--keep-allele-order"], cwd=cwd, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-2000:]


def gemma(*args: str, cwd: Path) -> None:
    result = subprocess.run(["gemma", *args], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


@pytest.fixture(scope="module")
def fileset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("loco")
    write_fileset(folder / "cohort")
    return folder / "cohort"


@pytest.mark.parametrize("left_out", list(CHROMOSOMES))
def test_loco_grm_is_gemma_grm_of_the_other_chromosomes(fileset: Path, tmp_path: Path, left_out: str) -> None:
    # the reference: PLINK writes a fileset without that chromosome, GEMMA -gk 1 reads it
    plink("--bfile", str(fileset), "--not-chr", left_out, "--make-bed", "--out", "others", cwd=tmp_path)
    assert read_bim(tmp_path / "others.bim")["chrom"].isin([c for c in CHROMOSOMES if c != left_out]).all()
    (tmp_path / "ones.txt").write_text("1\n" * N)
    gemma("-bfile", "others", "-p", "ones.txt", "-gk", "1", "-o", "reference", "-outdir", "gemma", cwd=tmp_path)
    reference = np.loadtxt(tmp_path / "gemma" / "reference.cXX.txt")

    done = invoke("gwas", "grm", "--bfile", str(fileset), "--loco", left_out, "--out", str(tmp_path / "loco.cXX.txt"))
    assert done.returncode == 0, done
    assert f"every chromosome but {left_out}" in " ".join(done.stderr.split())
    loco = np.loadtxt(tmp_path / "loco.cXX.txt")
    assert loco.shape == (N, N)
    np.testing.assert_array_equal(loco, reference)  # same numbers to GEMMA's printed digits

    done = invoke("gwas", "grm", "--bfile", str(fileset), "--out", str(tmp_path / "all.cXX.txt"))
    assert done.returncode == 0, done
    assert np.abs(np.loadtxt(tmp_path / "all.cXX.txt") - loco).max() > 1e-3  # the left-out SNPs mattered


def test_assoc_chr_tests_exactly_that_chromosome(fileset: Path, tmp_path: Path) -> None:
    pheno = write_gemma_pheno(tmp_path / "pheno.txt", N)
    assert (
        invoke("gwas", "grm", "--bfile", str(fileset), "--loco", "2", "--out", str(tmp_path / "k.cXX.txt")).returncode
        == 0
    )
    out = tmp_path / "chr2.assoc.tsv"
    done = invoke(
        "gwas",
        "assoc",
        "--bfile",
        str(fileset),
        "--kinship",
        str(tmp_path / "k.cXX.txt"),
        "--pheno",
        str(pheno),
        "--columns",
        "1,2",
        "--chr",
        "2",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done
    table = pd.read_csv(out, sep="\t", dtype={"SNP": str, "CHR": str})
    bim = read_bim(f"{fileset}.bim")
    assert table["SNP"].tolist() == bim.loc[bim["chrom"] == "2", "snp"].tolist()
    assert (table["CHR"] == "2").all()

    # the same test by GEMMA on a fileset holding only chromosome 2, with the same kinship
    plink("--bfile", str(fileset), "--chr", "2", "--make-bed", "--out", "chr2", cwd=tmp_path)
    gemma(
        "-bfile",
        "chr2",
        "-k",
        "k.cXX.txt",
        "-p",
        "pheno.txt",
        "-n",
        "1",
        "2",
        "-lmm",
        "3",
        "-o",
        "ref",
        "-outdir",
        "gemma",
        cwd=tmp_path,
    )
    reference = read_gemma_assoc(tmp_path / "gemma" / "ref.assoc.txt")
    ours = read_gemma_assoc(tmp_path / "chr2.assoc.gemma.assoc.txt")
    assert ours["SNP"].tolist() == reference["SNP"].tolist()
    np.testing.assert_array_equal(ours["P"].to_numpy(), reference["P"].to_numpy())


@pytest.mark.slow
def test_gathered_table_has_every_snp_once(fileset: Path, tmp_path: Path) -> None:
    pheno = write_gemma_pheno(tmp_path / "pheno.txt", N)
    parts = []
    for chromosome in CHROMOSOMES:
        kinship = tmp_path / f"{chromosome}.cXX.txt"
        assert (
            invoke("gwas", "grm", "--bfile", str(fileset), "--loco", chromosome, "--out", str(kinship)).returncode == 0
        )
        parts.append(tmp_path / f"{chromosome}.assoc.tsv")
        done = invoke(
            "gwas",
            "assoc",
            "--bfile",
            str(fileset),
            "--kinship",
            str(kinship),
            "--pheno",
            str(pheno),
            "--columns",
            "1,2",
            "--per-trait",
            "--chr",
            chromosome,
            "--out",
            str(parts[-1]),
        )
        assert done.returncode == 0, done
    out = tmp_path / "assoc.tsv"
    done = invoke("gwas", "gather", *map(str, reversed(parts)), "--bfile", str(fileset), "--out", str(out))
    assert done.returncode == 0, done
    gathered = pd.read_csv(out, sep="\t", dtype={"SNP": str, "CHR": str})
    # every SNP once, in .bim order: the SNPs one GEMMA run over the whole fileset tests (s5, missing in
    # more than 5% of trait 1's individuals, is tested for trait 2 only)
    assert invoke("gwas", "grm", "--bfile", str(fileset), "--out", str(tmp_path / "all.cXX.txt")).returncode == 0
    done = invoke(
        "gwas",
        "assoc",
        "--bfile",
        str(fileset),
        "--kinship",
        str(tmp_path / "all.cXX.txt"),
        "--pheno",
        str(pheno),
        "--columns",
        "1,2",
        "--per-trait",
        "--out",
        str(tmp_path / "whole.tsv"),
    )
    assert done.returncode == 0, done
    whole = pd.read_csv(tmp_path / "whole.tsv", sep="\t", dtype={"SNP": str, "CHR": str})
    assert gathered["SNP"].tolist() == whole["SNP"].tolist() and not gathered["SNP"].duplicated().any()
    assert gathered["CHR"].tolist() == whole["CHR"].tolist() and set(gathered["CHR"]) == set(CHROMOSOMES)
    assert gathered["SNP"].tolist() == [snp for snp in read_bim(f"{fileset}.bim")["snp"] if snp in set(whole["SNP"])]
    assert {"P_1", "P_2", "TRAITS_TESTED"} <= set(gathered.columns)

    before = snapshot(tmp_path)
    done = invoke("gwas", "gather", *map(str, parts[:2]), "--bfile", str(fileset), "--out", str(tmp_path / "x.tsv"))
    assert done.returncode == 1 and "2 tables for the 3 chromosomes" in done.stderr and "scaffold_7" in done.stderr
    done = invoke(
        "gwas",
        "gather",
        *map(str, [parts[0], parts[0], parts[1]]),
        "--bfile",
        str(fileset),
        "--out",
        str(tmp_path / "x.tsv"),
    )
    assert done.returncode == 1 and "chromosome '1' is given twice" in done.stderr
    assert snapshot(tmp_path) == before  # no output on failure


def test_loco_chromosome_errors(fileset: Path, tmp_path: Path) -> None:
    done = invoke("gwas", "grm", "--bfile", str(fileset), "--loco", "chr2", "--out", str(tmp_path / "k.cXX.txt"))
    assert done.returncode == 1
    assert "no SNP on chromosome 'chr2'; its chromosomes: 1, 2, scaffold_7" in done.stderr
    assert "Traceback" not in done.stderr and not list(tmp_path.iterdir())

    single = tmp_path / "single"
    write_plink(
        single,
        np.tile([0.0, 1.0, 2.0], (30, 4))[:, :10],
        pd.DataFrame(
            {
                "FID": [f"F{i}" for i in range(30)],
                "IID": [f"I{i}" for i in range(30)],
                "PAT": "0",
                "MAT": "0",
                "SEX": "0",
                "PHENO": "-9",
            }
        ),
        pd.DataFrame(
            {
                "chrom": "1",
                "snp": [f"s{j}" for j in range(10)],
                "cm": 0,
                "pos": np.arange(1, 11) * 100,
                "a0": "A",
                "a1": "G",
            }
        ),
    )
    done = invoke("gwas", "grm", "--bfile", str(single), "--loco", "1", "--out", str(tmp_path / "k.cXX.txt"))
    assert done.returncode == 1 and "every SNP is on chromosome '1'" in done.stderr
    assert not (tmp_path / "k.cXX.txt").exists()


def test_prepare_sorts_and_leaves_out_unplaced_snps(fileset: Path, tmp_path: Path) -> None:
    """What PLINK 1.9 --clump needs (a sorted .bim) and how SNPs without a place are handled."""
    for suffix in (".bed", ".fam"):
        shutil.copyfile(f"{fileset}{suffix}", tmp_path / f"raw{suffix}")
    bim = read_bim(f"{fileset}.bim")
    raw = bim.copy()
    raw.loc[[10, 11], "pos"] = raw.loc[[11, 10], "pos"].to_numpy()  # two positions swapped
    raw.loc[[20, 150], "pos"] = -9  # unknown positions
    raw.loc[339, "chrom"] = "0"  # unplaced
    raw.to_csv(tmp_path / "raw.bim", sep="\t", header=False, index=False)
    assets = pd.DataFrame({"SNP": raw["snp"], "P": np.linspace(1e-9, 1, len(raw))})
    with pytest.raises(
        FlowphenoError,
        match=r"raw\.bim is not sorted \(line 12: position .* of s11 on chromosome '1' comes after "
        r"a larger one\).*flowpheno gwas prepare",
    ):
        clump(tmp_path / "raw", assets, p1=1e-4)
    # the same fileset is what PLINK itself refuses to clump
    assets.to_csv(tmp_path / "p.tsv", sep="\t", index=False)
    refused = subprocess.run(
        ["plink1.9", "--bfile", "raw", "--clump", "p.tsv", "--allow-extra-chr", "--out", "c"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0 and "--clump requires a sorted .bim" in refused.stdout + refused.stderr

    user_files = snapshot(tmp_path)
    done = invoke("gwas", "prepare", "--bfile", str(tmp_path / "raw"), "--out", str(tmp_path / "work" / "cohort"))
    assert done.returncode == 0, done
    assert snapshot(*user_files) == user_files  # the user's fileset is untouched
    sorted_bim = read_bim(tmp_path / "work" / "cohort.bim")
    assert plink_unsorted(sorted_bim) is None
    left_out = {"s20": "negative position", "s150": "negative position", "s339": "chromosome 0"}
    assert sorted(sorted_bim["snp"]) == sorted(set(raw["snp"]) - set(left_out))
    assert list(dict.fromkeys(sorted_bim["chrom"])) == list(CHROMOSOMES)  # names as the .bim spells them
    excluded = pd.read_csv(tmp_path / "work" / "cohort.excluded.tsv", sep="\t", dtype=str)
    assert dict(zip(excluded["SNP"], excluded["reason"], strict=True)) == left_out
    assert "3 SNPs left out of the GRM, association, clumping and counts (2 at a negative position" in " ".join(
        done.stderr.split()
    )
    log = (tmp_path / "work" / "cohort.log").read_text()
    assert "sorted by PLINK (the .bim was not: line 12" in log and "PLINK v1.9" in log

    # genotypes follow their SNPs: PLINK's own recode of both filesets agrees SNP by SNP
    plink("--bfile", "raw", "--recode", "A", "--out", "raw_codes", cwd=tmp_path)
    plink("--bfile", "work/cohort", "--recode", "A", "--out", "sorted_codes", cwd=tmp_path)
    before = pd.read_csv(tmp_path / "raw_codes.raw", sep=r"\s+")
    after = pd.read_csv(tmp_path / "sorted_codes.raw", sep=r"\s+")
    shared = list(after.columns[6:])
    assert len(shared) == len(sorted_bim)
    pd.testing.assert_frame_equal(after[shared], before[shared])

    loci = clump(tmp_path / "work" / "cohort", assets, p1=1e-4)  # PLINK clumps the sorted copy
    assert len(loci) >= 1 and set(loci["SNP"]) <= set(sorted_bim["snp"])

    # a split chromosome (PLINK: "Use --make-bed by itself to remedy this") comes out in one block
    raw.loc[50, "chrom"] = "2"
    raw.to_csv(tmp_path / "raw.bim", sep="\t", header=False, index=False)
    assert "chromosome '1' is split: it appears again at line 52" in plink_unsorted(read_bim(tmp_path / "raw.bim"))
    done = invoke(
        "gwas", "prepare", "--bfile", str(tmp_path / "raw"), "--out", str(tmp_path / "work" / "cohort"), "--overwrite"
    )
    assert done.returncode == 0, done
    rejoined = read_bim(tmp_path / "work" / "cohort.bim")
    assert plink_unsorted(rejoined) is None and rejoined["chrom"].value_counts()["2"] == 110
