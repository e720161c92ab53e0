"""`snakemake gwas_all` end to end on the real HS1940 mice of Debian's gemma-doc, as shipped: an
unsorted .bim with 1,926 SNPs at position -9, strong family structure, and two traits with
different missingness (CD8: 1,410 values, MCH: 1,580; GEMMA's own mvLMM example pair)."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT

from flowpheno.io.plink import plink_unsorted, read_bim, read_genotypes

HS1940 = Path("/usr/share/doc/gemma/example/mouse_hs1940")
LOCAL = Path(sys.executable).parent / "snakemake"
SNAKEMAKE = str(LOCAL) if LOCAL.exists() else shutil.which("snakemake")
METHODS = ("single", "flow_kinship")  # the other mvLMM arms run the same steps (tests/test_gwas.py runs all five)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(Path(f"{HS1940}{suffix}.gz").exists() for suffix in (".bed", ".bim", ".fam", ".pheno.txt")),
        reason="the HS1940 mice come with Debian's gemma-doc: apt-get install gemma-doc",
    ),
    pytest.mark.skipif(
        shutil.which("gemma") is None or shutil.which("plink1.9") is None, reason="apt-get install gemma plink1.9"
    ),
    pytest.mark.skipif(SNAKEMAKE is None, reason="pip install snakemake"),
]


def analysed_individuals(log: Path) -> int:
    """GEMMA's own count of the individuals an association run analysed (its -lmm log)."""
    return int(re.search(r"number of analyzed individuals = (\d+)", log.read_text()).group(1))


def test_gwas_all_on_hs1940(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for suffix in (".bed", ".bim", ".fam"):  # decompressed as shipped: no sorting, no SNP removed
        with gzip.open(f"{HS1940}{suffix}.gz", "rb") as source, open(data / f"mouse_hs1940{suffix}", "wb") as target:
            shutil.copyfileobj(source, target)
    fam = pd.read_csv(data / "mouse_hs1940.fam", sep=r"\s+", header=None, usecols=[0, 1], dtype=str)
    values = pd.read_csv(f"{HS1940}.pheno.txt.gz", sep="\t", header=None, na_values="NA")  # rows follow the .fam
    pheno = pd.DataFrame({"FID": fam[0], "IID": fam[1], "CD8": values[0], "MCH": values[5]})
    pheno.to_csv(data / "pheno.tsv", sep="\t", index=False, na_rep="NA")
    raw_bim = read_bim(data / "mouse_hs1940.bim")
    assert (
        plink_unsorted(raw_bim) is not None and (raw_bim["pos"] < 0).sum() == 1926
    )  # the cohort as the review found it
    config = {
        "outdir": str(tmp_path / "out"),
        "cohort": {"bfile": str(data / "mouse_hs1940"), "pheno": str(data / "pheno.tsv")},
        "trait_groups": {"cd8_mch": ["CD8", "MCH"]},
        "methods": list(METHODS),
        "fit": {"epochs": 2, "stages": 2, "layers": 4, "hidden": 32, "batch_size": 256, "seed": 1, "device": "cpu"},
        "gwas": {"loco": True},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = subprocess.run(
        [
            SNAKEMAKE,
            "-s",
            str(ROOT / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(tmp_path / "config.json"),
            "-c2",
            "gwas_all",
        ],
        capture_output=True,
        text=True,
        timeout=3 * 3600,  # a hang guard only: about 10 min idle (1,140 s of CPU on 2 cores), 35 min loaded
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check_outputs(tmp_path / "out", raw_bim, pheno)


def check_outputs(out: Path, raw_bim: pd.DataFrame, pheno: pd.DataFrame) -> None:
    """What a finished `gwas_all` on HS1940 (trait group cd8_mch, arms :data:`METHODS`, LOCO) must hold."""
    # one fileset for every step: the 10,300 SNPs with a position, sorted; the others listed, and said in the log
    bim = read_bim(out / "genotypes" / "cohort.bim")
    assert len(bim) == 10300 and plink_unsorted(bim) is None
    assert set(bim["snp"]) == set(raw_bim.loc[raw_bim["pos"] >= 0, "snp"])
    excluded = pd.read_csv(out / "genotypes" / "cohort.excluded.tsv", sep="\t", dtype=str)
    assert set(excluded["SNP"]) == set(raw_bim.loc[raw_bim["pos"] < 0, "snp"])
    assert "1926 SNPs left out of the GRM, association, clumping and counts" in " ".join(
        (out / "logs" / "prepare_genotypes.log").read_text().split()
    )
    chromosomes = [str(c) for c in range(1, 20)]
    assert list(dict.fromkeys(bim["chrom"])) == chromosomes

    complete = {
        "CD8": int(pheno["CD8"].notna().sum()),
        "MCH": int(pheno["MCH"].notna().sum()),
        "both": int(pheno[["CD8", "MCH"]].notna().all(axis=1).sum()),
    }
    assert complete == {"CD8": 1410, "MCH": 1580, "both": 1197}
    genotypes = np.asarray(read_genotypes(out / "genotypes" / "cohort").values, dtype=float)
    report = (out / "report.md").read_text()
    for method in METHODS:
        arm = out / "cd8_mch" / method
        assert f"| {method}:cd8_mch |" in report
        gemma_p = pd.read_csv(arm / "pheno.gemma.txt", sep="\t", header=None, na_values="NA")
        assert len(gemma_p) == 1940
        # n analysed: GEMMA's own count in every per-chromosome run equals the complete rows of the arm's traits
        for chromosome in chromosomes:
            if method == "single":
                for column, trait in ((1, "CD8"), (2, "MCH")):
                    assert int(gemma_p[column - 1].notna().sum()) == complete[trait]
                    log = arm / "loco" / f"{chromosome}.assoc.trait{column}.assoc.log"
                    assert analysed_individuals(log) == complete[trait], (method, chromosome, trait)
            else:
                assert int(gemma_p.notna().all(axis=1).sum()) == complete["both"]
                log = arm / "loco" / f"{chromosome}.assoc.gemma.assoc.log"
                assert analysed_individuals(log) == complete["both"], (method, chromosome)
        # every SNP of the sorted autosomes tested once, by its own chromosome's run: those GEMMA can test
        # among the analysed individuals (MAF >= 0.01, missingness <= 0.05), union over the traits for single
        assoc = pd.read_csv(arm / "assoc.tsv", sep="\t", dtype={"SNP": str, "CHR": str})
        if method == "single":
            per_trait = [gemma_testable(genotypes, bim, gemma_p[column].notna().to_numpy()) for column in (0, 1)]
            expected = per_trait[0] | per_trait[1]
            assert set(assoc.loc[assoc["P_1"].notna(), "SNP"]) == per_trait[0]
            assert set(assoc.loc[assoc["P_2"].notna(), "SNP"]) == per_trait[1]
            # GEMMA keeps different SNPs for the two traits' individuals: combined on the union
            assert ((assoc["TRAITS_TESTED"] == 1).sum() == len(per_trait[0] ^ per_trait[1])) and per_trait[
                0
            ] != per_trait[1]
        else:
            expected = gemma_testable(genotypes, bim, gemma_p.notna().all(axis=1).to_numpy())
        assert assoc["SNP"].tolist() == [snp for snp in bim["snp"] if snp in expected]  # once each, in .bim order
        assert (
            assoc["CHR"].tolist() == bim.set_index("snp").loc[assoc["SNP"], "chrom"].tolist()
            and assoc["P"].notna().all()
        )
        summary = json.loads((arm / "evaluation" / "summary.json").read_text())
        assert summary["snps_tested"] == len(expected) > 9000
        # LOCO leaves each chromosome's share of these highly heritable traits (CD8: PVE 0.6) out of its GRM, and HS
        # mice have long-range LD: lambda GC is about 1.8-2.5 (with the full GRM, deflated by proximal contamination,
        # about 0.7-0.8). Below 1 would mean the tested SNPs were in the GRM.
        assert 1.0 < summary["lambda_gc"] < 4.0, (method, summary["lambda_gc"])
    # the strongest signal of these traits lies on chromosome 17 (the H2 region): a locus there for every arm
    loci = pd.read_csv(out / "loci.tsv", sep="\t", dtype={"CHR": str})
    for method in METHODS:
        assert "17" in set(loci.loc[loci["method"] == f"{method}:cd8_mch", "CHR"]), method


def gemma_testable(genotypes: np.ndarray, bim: pd.DataFrame, analysed: np.ndarray) -> set[str]:
    """SNPs GEMMA tests among the ``analysed`` individuals: minor allele frequency >= 0.01 and at most
    5% missing calls (its defaults, ``-maf 0.01 -miss 0.05``; GEMMA manual 4.2)."""
    dosage = genotypes[analysed]
    called = np.isfinite(dosage).sum(axis=0)
    frequency = np.nansum(dosage, axis=0) / (2 * called)
    keep = (np.minimum(frequency, 1 - frequency) >= 0.01) & (1 - called / len(dosage) <= 0.05)
    return set(bim.loc[keep, "snp"])
