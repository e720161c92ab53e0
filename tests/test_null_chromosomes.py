"""Null chromosomes: simulated chromosomes that carry no causal and no polygenic SNP, and the
lambda GC over their SNPs that ``gwas evaluate --null-chromosomes`` reports (calibration without
polygenic signal, as BOLT-LMM's paper scored it: Loh et al. 2015, Nat Genet 47:284)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import invoke

from flowpheno.errors import FlowphenoError
from flowpheno.gwas.evaluate import lambda_gc, summarise
from flowpheno.gwas.steps import check_null_chromosomes
from flowpheno.simulate.genotypes import simulate_genotypes
from flowpheno.simulate.phenotypes import simulate_phenotypes

needs_binaries = pytest.mark.skipif(
    shutil.which("gemma") is None or shutil.which("plink1.9") is None, reason="apt-get install gemma plink1.9"
)


@pytest.fixture(scope="module")
def genotypes():  # noqa: ANN201
    return simulate_genotypes(150, chromosomes=3, snps=600, seed=5)


def _scrambled(genotypes, chromosome: str):  # noqa: ANN001, ANN202
    """The same genotypes with every SNP of ``chromosome`` shuffled across individuals."""
    dosage = genotypes.dosage.copy()
    on = np.flatnonzero(genotypes.bim["chrom"].to_numpy() == chromosome)
    rng = np.random.default_rng(0)
    dosage[:, on] = dosage[rng.permutation(len(dosage))][:, on]
    return dataclasses.replace(genotypes, dosage=dosage)


def test_null_chromosomes_carry_no_effect(genotypes) -> None:  # noqa: ANN001
    """The traits do not depend on a null chromosome's genotypes at all: shuffling them leaves
    every latent trait unchanged, while without null chromosomes the same shuffle changes them."""
    scrambled = _scrambled(genotypes, "3")
    kept = simulate_phenotypes(genotypes, causal=8, seed=9, null_chromosomes=1)
    assert kept.null_chromosomes == ("3",) and "3" not in set(kept.truth["chrom"]) and len(kept.truth) == 8
    unchanged = simulate_phenotypes(scrambled, causal=8, seed=9, null_chromosomes=1).latent
    np.testing.assert_allclose(unchanged, kept.latent, rtol=0, atol=1e-12)  # rounding of the matrix products only
    everywhere = simulate_phenotypes(genotypes, causal=8, seed=9)
    assert everywhere.null_chromosomes == ()
    assert np.abs(simulate_phenotypes(scrambled, causal=8, seed=9).latent - everywhere.latent).max() > 0.1


def test_simulate_refuses_null_chromosomes_without_a_chromosome_for_the_effects(tmp_path: Path) -> None:
    result = invoke("simulate", "--out", tmp_path / "cohort", "--chromosomes", "2", "--null-chromosomes", "2")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result
    assert "--null-chromosomes 2: give fewer than --chromosomes (2)" in result.stderr
    assert not (tmp_path / "cohort").exists()


def test_summarise_lambda_over_null_chromosomes_on_each_scale() -> None:
    """lambda GC over the null chromosomes' SNPs equals lambda GC of that subset computed alone,
    on the test's own scale (d-df mvLMM; mean of per-trait 1-df lambdas), with ``chr`` names alike."""
    rng = np.random.default_rng(1)
    chrom = np.repeat(["1", "2", "chr3"], 2000)
    p = rng.uniform(size=(len(chrom), 3))
    p[chrom != "chr3"] **= 2  # inflated where the effects are
    assoc = pd.DataFrame({"SNP": [f"s{i}" for i in range(len(chrom))], "CHR": chrom, "BP": np.arange(len(chrom))})
    loci = pd.DataFrame({"CHR": ["1", "chr3", "3"], "BP": [5, 4100, 5000], "P": [1e-9] * 3})
    on_null = chrom == "chr3"

    mv, _ = summarise(loci, assoc.assign(P=p[:, 0]), None, test="mvlmm", d=4, null_chromosomes=["3"])
    assert mv["lambda_gc_null_snps"] == pytest.approx(lambda_gc(p[on_null, 0], 4), rel=1e-12)
    assert mv["lambda_gc"] > 1.3 and abs(mv["lambda_gc_null_snps"] - 1) < 0.1
    assert mv["lambda_gc_null_per_chromosome"] == {"chr3": pytest.approx(mv["lambda_gc_null_snps"], rel=1e-12)}
    assert (
        mv["null_snps"] == 2000 and mv["loci_null_chromosomes"] == 2 and mv["null_chromosomes"] == ["chr3"]
    )  # as the table names it

    per_trait = assoc.assign(P=p.min(axis=1), P_1=p[:, 0], P_2=p[:, 1], P_3=p[:, 2])
    single, _ = summarise(loci, per_trait, None, test="per-trait", null_chromosomes=["chr3"])
    expected = np.mean([lambda_gc(p[on_null, j]) for j in range(3)])
    assert single["lambda_gc_null_snps"] == pytest.approx(expected, rel=1e-12)


@needs_binaries
def test_evaluate_reports_null_chromosomes_and_refuses_an_absent_one(tmp_path: Path) -> None:
    from flowpheno.simulate.cohort import write_simulated_cohort

    structure = write_simulated_cohort(tmp_path / "cohort", n=150, snps=600, chromosomes=3, causal=5, seed=2)
    assert structure["null_chromosomes"] == []
    bfile = tmp_path / "cohort" / "cohort"
    bim = pd.read_csv(f"{bfile}.bim", sep="\t", header=None, dtype={0: str, 1: str})
    p = np.random.default_rng(3).uniform(size=len(bim))
    p[np.flatnonzero(bim[0].to_numpy() == "3")[::50]] = 1e-12  # a few hits on the null chromosome
    assoc = tmp_path / "assoc.tsv"
    pd.DataFrame({"SNP": bim[1], "CHR": bim[0], "BP": bim[3], "P": p}).to_csv(assoc, sep="\t", index=False)
    args = ["gwas", "evaluate", "--bfile", bfile, "--assoc", assoc, "--name", "m", "--null-chromosomes"]

    result = invoke(*args, "3", "--out-dir", tmp_path / "ev")
    assert result.returncode == 0, result
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    loci = pd.read_csv(tmp_path / "ev" / "loci.tsv", sep="\t", dtype={"CHR": str})
    on_null = bim[0].to_numpy() == "3"
    assert summary["lambda_gc_null_snps"] == pytest.approx(lambda_gc(p[on_null]), rel=1e-9)
    assert summary["null_snps"] == on_null.sum()
    assert summary["loci_null_chromosomes"] == (loci["CHR"] == "3").sum() >= 1

    refused = invoke(*args, "3,7", "--out-dir", tmp_path / "ev7")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused
    assert f"{assoc}: no SNP on chromosome 7 of --null-chromosomes" in refused.stderr
    assert not (tmp_path / "ev7").exists()


def test_null_chromosomes_are_checked_against_the_table_and_the_truth() -> None:
    """Named as the table names them; refused when absent, untested (every P NA), all of the
    table, or holding a causal SNP of the truth; a warning when too few SNPs are tested there."""
    chrom = np.repeat(["chr1", "chr2", "chr3"], 200)
    assoc = pd.DataFrame({"CHR": chrom, "P": np.linspace(0.001, 1, len(chrom))})
    assert check_null_chromosomes(["3", "chr3", "CHR3"], assoc, "a.tsv") == ["chr3"]
    assert check_null_chromosomes(["chr2", "3"], assoc, "a.tsv") == ["chr2", "chr3"]  # the table's order
    with pytest.raises(FlowphenoError, match=r"^a.tsv: no SNP on chromosome 7 of --null-chromosomes"):
        check_null_chromosomes(["3", "7"], assoc, "a.tsv")
    with pytest.raises(FlowphenoError, match=r"^--null-chromosomes names every chromosome with association results"):
        check_null_chromosomes(["1", "2", "3"], assoc, "a.tsv")
    first_untested = assoc.assign(P=np.where(chrom == "chr1", np.nan, assoc["P"]))  # the rest would be genome-wide
    with pytest.raises(FlowphenoError, match=r"^--null-chromosomes names every chromosome with association results"):
        check_null_chromosomes(["2", "3"], first_untested, "a.tsv")
    untested = assoc.assign(P=np.where(chrom == "chr3", np.nan, assoc["P"]))
    with pytest.raises(FlowphenoError, match=r"^a.tsv: chromosome 3 of --null-chromosomes has no tested SNP"):
        check_null_chromosomes(["3"], untested, "a.tsv")
    truth = pd.DataFrame({"snp": ["rs1", "rs9"], "chrom": ["1", "3"], "pos": [10, 20]})
    with pytest.raises(FlowphenoError, match=r"^truth.tsv: causal SNP rs9 is on chromosome 3, named by"):
        check_null_chromosomes(["2", "3"], assoc, "a.tsv", truth, "truth.tsv")
    assert check_null_chromosomes(["2"], assoc, "a.tsv", truth, "truth.tsv") == ["chr2"]
    few = assoc[(chrom != "chr3") | (np.arange(len(chrom)) % 10 == 0)]
    with pytest.warns(UserWarning, match=r"only 20 tested SNPs on those chromosomes"):
        check_null_chromosomes(["3"], few, "a.tsv")
