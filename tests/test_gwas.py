"""GWAS pieces (baseline transform, calibration, truth matching, tool errors) and the whole
Snakemake workflow on a tiny simulated cohort with the real GEMMA and PLINK binaries."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import EXAMPLES, ROOT
from scipy.stats import norm, shapiro

from flowpheno.errors import FlowphenoError
from flowpheno.gwas.baseline import rank_inverse_normal, rint_after_covariates
from flowpheno.gwas.evaluate import genome_wide_threshold, lambda_gc, match_truth
from flowpheno.gwas.gemma import gemma_lmm, min_p_over_traits
from flowpheno.gwas.tools import require

needs_binaries = pytest.mark.skipif(
    shutil.which("gemma") is None or shutil.which("plink1.9") is None, reason="apt-get install gemma plink1.9"
)


def test_rank_inverse_normal() -> None:
    rng = np.random.default_rng(0)
    skewed = rng.exponential(size=500) ** 3
    skewed[[3, 40]] = np.nan
    out = rank_inverse_normal(skewed)
    assert np.isnan(out[[3, 40]]).all()
    present = out[np.isfinite(out)]
    assert np.argsort(present).tolist() == np.argsort(skewed[np.isfinite(skewed)]).tolist()  # monotone
    assert abs(present.mean()) < 1e-9 and shapiro(present).pvalue > 0.5


def test_rint_removes_covariates() -> None:
    rng = np.random.default_rng(1)
    age = rng.uniform(20, 80, 400)
    trait = 0.05 * age + rng.exponential(size=400)  # additive covariate effect, skewed noise
    out = rint_after_covariates(trait[:, None], age[:, None])
    assert abs(np.corrcoef(out[:, 0], age)[0, 1]) < 0.1 < np.corrcoef(trait, age)[0, 1]


def test_lambda_gc_and_threshold() -> None:
    rng = np.random.default_rng(2)
    assert lambda_gc(rng.uniform(size=20000)) == pytest.approx(1.0, abs=0.05)
    inflated = 2 * norm.sf(np.abs(rng.normal(size=20000) * 1.2))
    assert lambda_gc(inflated) == pytest.approx(1.44, abs=0.08)
    assert genome_wide_threshold("bonferroni", 1_000_000) == pytest.approx(5e-8)
    assert genome_wide_threshold("1e-6", 10) == 1e-6


def test_match_truth() -> None:
    truth = pd.DataFrame({"snp": ["a", "b", "c"], "chrom": ["1", "1", "2"], "pos": [1_000_000, 5_000_000, 1_000_000]})
    loci = pd.DataFrame({"CHR": ["1", "1", "2", "2"], "BP": [1_200_000, 3_000_000, 1_000_100, 1_100_000]})
    is_true, found = match_truth(loci, truth, window_kb=250)
    assert is_true.tolist() == [True, False, True, True] and found == 2


def test_min_p_over_traits() -> None:
    base = pd.DataFrame({"SNP": ["s1", "s2"], "CHR": ["1", "1"], "BP": [1, 2]})
    combined = min_p_over_traits([base.assign(P=[0.01, 0.5]), base.assign(P=[0.2, 0.4]), base.assign(P=[0.3, 0.9])])
    assert combined["P"].tolist() == pytest.approx([0.03, 1.0])
    assert combined["P_2"].tolist() == [0.2, 0.4]


def test_min_p_over_traits_on_different_snp_sets() -> None:
    """GEMMA filters SNPs per trait (MAF among that trait's individuals): the union is
    combined, and the Bonferroni factor counts only the traits tested at each SNP."""
    first = pd.DataFrame({"SNP": ["s1", "s2", "s3"], "CHR": ["1", "1", "2"], "BP": [1, 2, 5], "P": [0.01, 0.5, 0.2]})
    second = pd.DataFrame({"SNP": ["s2", "s4"], "CHR": ["1", "3"], "BP": [2, 9], "P": [0.1, 0.004]})
    combined = min_p_over_traits([first, second])
    assert combined["SNP"].tolist() == ["s1", "s2", "s3", "s4"]
    assert combined["CHR"].tolist() == ["1", "1", "2", "3"] and combined["BP"].tolist() == [1, 2, 5, 9]
    assert combined["P"].tolist() == pytest.approx([0.01, 0.2, 0.2, 0.004])
    assert combined["TRAITS_TESTED"].tolist() == [1, 2, 1, 1]
    assert np.isnan(combined["P_2"].iloc[0]) and combined["P_1"].iloc[3] != combined["P_1"].iloc[3]
    with pytest.raises(FlowphenoError, match=r"SNP ID '\.' appears more than once.*set-missing-var-ids"):
        min_p_over_traits([first.assign(SNP=["s1", ".", "."])])


def test_missing_binary_names_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(FlowphenoError, match=r"install the Debian package plink1\.9"):
        require("plink1.9")


@needs_binaries
def test_gemma_failure_shows_log_tail(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("1\n" * 1000)
    (tmp_path / "k.txt").write_text("1 0\n0 1\n")  # a kinship of the wrong size
    with pytest.raises(
        FlowphenoError, match=r"gemma failed \(exit -?\d+; log .*\):\n[\s\S]*kinship file does not match"
    ):
        gemma_lmm(EXAMPLES / "cohort", tmp_path / "k.txt", tmp_path / "p.txt", [1], tmp_path / "assoc.tsv")
    assert not (tmp_path / "assoc.tsv").exists()


@pytest.mark.slow
@needs_binaries
@pytest.mark.skipif(
    shutil.which("snakemake") is None and not (Path(sys.executable).parent / "snakemake").exists(),
    reason="pip install snakemake",
)
def test_workflow_end_to_end(tmp_path: Path) -> None:
    work = tmp_path / "work dir"  # a space in every path: the shell commands must quote them
    work.mkdir()
    config = ROOT / ".test" / "config" / "config.yaml"  # the tiny simulated cohort; gwas.loco at its default: true
    local = Path(sys.executable).parent / "snakemake"
    snakemake = str(local) if local.exists() else shutil.which("snakemake")
    result = subprocess.run(
        [
            snakemake,
            "-s",
            str(ROOT / "Snakefile"),
            "--directory",
            str(work),
            "--configfile",
            str(config),
            "--config",
            f"outdir={work / 'out'}",
            "-c2",
            "gwas_all",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=3600,  # a hang guard only: about 4 min idle (370 s of CPU on 2 cores), 10 min on a loaded machine
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["work dir"]  # no stray file beside it (e.g. "work")
    assert sorted(p.name for p in work.iterdir() if p.name != ".snakemake") == ["out"]
    out = work / "out"
    report = (out / "report.md").read_text()
    bim = pd.read_csv(out / "genotypes" / "cohort.bim", sep="\t", header=None, dtype={0: str, 1: str})
    for method in ("single", "rint_mv", "flow_iid", "flow_kinship", "oracle"):
        assert f"| {method}:all |" in report
        summary = json.loads((out / "all" / method / "evaluation" / "summary.json").read_text())
        assert summary["snps_tested"] == 3000 and summary["causal_snps"] == 10
        # LOCO leaves the tested chromosome's polygenic background out of the GRM: in these families every SNP of a
        # 10 Mb chromosome is linked to it, so lambda GC is above 1 genome-wide; chromosome 2 carries no effect, and
        # over its SNPs lambda GC (calibration alone) must be near 1 for every arm
        assert 0.8 < summary["lambda_gc"] < 3.5
        assert summary["null_chromosomes"] == ["2"] and summary["null_snps"] == (bim[0] == "2").sum()
        assert 0.85 < summary["lambda_gc_null_snps"] < 1.2, (method, summary["lambda_gc_null_snps"])
        assert summary["loci_null_chromosomes"] == 0, method
        assert summary["true_loci"] + summary["false_loci"] == summary["loci"]
        for plot in ("manhattan.png", "qq.png"):
            assert (out / "all" / method / "evaluation" / plot).stat().st_size > 10_000
        # LOCO: one GEMMA run per chromosome, each testing that chromosome's SNPs with the GRM leaving it out
        assoc = pd.read_csv(out / "all" / method / "assoc.tsv", sep="\t", dtype={"SNP": str, "CHR": str})
        assert assoc["SNP"].tolist() == bim[1].tolist()
        for chromosome in ("1", "2"):
            part = pd.read_csv(out / "all" / method / "loco" / f"{chromosome}.assoc.tsv", sep="\t", dtype={"CHR": str})
            assert set(part["CHR"]) == {chromosome} and len(part) == (bim[0] == chromosome).sum()
    for chromosome in ("1", "2"):
        log = (out / "grm" / "loco" / f"{chromosome}.cXX.log").read_text()  # GEMMA's own count
        assert int(re.search(r"number of analyzed SNPs\s+=\s+(\d+)", log).group(1)) == (bim[0] != chromosome).sum()
    rint = pd.read_csv(out / "all" / "rint_mv" / "pheno.gemma.txt", sep="\t", header=None, na_values="NA")
    assert rint.equals(pd.read_csv(out / "all" / "single" / "pheno.gemma.txt", sep="\t", header=None, na_values="NA"))
    assert "-n 1 2 3 -lmm 3" in (out / "all" / "rint_mv" / "loco" / "1.assoc.gemma.assoc.log").read_text()
    loci = pd.read_csv(out / "loci.tsv", sep="\t")
    assert set(loci.columns) >= {"CHR", "SNP", "BP", "P", "method", "true_locus"}
    fit = json.loads((out / "all" / "flow_kinship" / "run" / "fit.json").read_text())
    assert fit["config"]["mode"] == "alternating" and fit["n_used"] > 250
    # the fit's log shows its progress (a plain line per stage end at least), not bars or silence
    fit_log = (out / "logs" / "fit_all_flow_kinship.log").read_text()
    assert re.search(r"stage 1/2 epoch 1/4: train NLL -?\d", fit_log) and "stage 2/2 done" in fit_log, fit_log[-2000:]
    assert fit["threads"]["used"] == 2  # the rule's `threads: 2`
    gemma_pheno = pd.read_csv(out / "all" / "flow_kinship" / "pheno.gemma.txt", sep="\t", header=None, na_values="NA")
    assert gemma_pheno.shape == (300, 3)
    benchmarks = {path.name for path in (out / "benchmarks").iterdir()}
    assert {
        "prepare_genotypes.tsv",
        "gemma_grm_loco_1.tsv",
        "gemma_assoc_all_rint_mv_2.tsv",
        "fit_flow_all_flow_kinship.tsv",
        "report.tsv",
    } <= benchmarks
