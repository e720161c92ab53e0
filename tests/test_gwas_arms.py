"""The GWAS comparison's arms and its honesty: lambda GC on each test's own degrees of
freedom, the simulator's own inverse map (oracle), covariate residuals without the rank
step, covariates passed to GEMMA, n analysed, the truth window's share of the genome,
deeper simulated pedigrees and the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import EXAMPLES, invoke, snapshot, write_table
from scipy import linalg
from scipy.stats import chi2

from flowpheno.gwas.evaluate import genome_spans, lambda_gc, lambda_gc_standard_error, truth_window_share
from flowpheno.gwas.gemma import gemma_grm
from flowpheno.io.plink import read_fam, read_genotypes, write_plink
from flowpheno.simulate.genotypes import simulate_genotypes
from flowpheno.simulate.phenotypes import _anchor_index, simulate_phenotypes

needs_binaries = pytest.mark.skipif(
    shutil.which("gemma") is None or shutil.which("plink1.9") is None, reason="apt-get install gemma plink1.9"
)


# ---- lambda GC on the test's own scale ----------------------------------------------------


@pytest.mark.parametrize("df", [1, 2, 4])
def test_lambda_gc_of_null_p_values_is_one_on_its_own_df(df: int) -> None:
    m = 20000
    p = np.random.default_rng(df).uniform(size=m)
    assert abs(lambda_gc(p, df) - 1) < 4 * lambda_gc_standard_error(m, df)


@pytest.mark.parametrize("df, factor", [(1, 1.2), (4, 0.94), (4, 1.1), (3, 0.9)])
def test_lambda_gc_recovers_a_known_inflation_of_chi2_statistics(df: int, factor: float) -> None:
    m = 20000
    statistics = chi2.rvs(df, size=m, random_state=np.random.default_rng(10 + df)) * factor
    p = chi2.sf(statistics, df)
    assert abs(lambda_gc(p, df) - factor) < 4 * factor * lambda_gc_standard_error(m, df)
    if df > 1 and factor < 1:  # read as 1 df, a deflated d-df test looks more deflated than it is
        assert lambda_gc(p, 1) < factor - 4 * lambda_gc_standard_error(m, 1)


def test_lambda_gc_standard_error_matches_repeated_null_samples() -> None:
    rng = np.random.default_rng(3)
    m, df = 2000, 4
    draws = [lambda_gc(rng.uniform(size=m), df) for _ in range(400)]
    assert np.std(draws) == pytest.approx(lambda_gc_standard_error(m, df), rel=0.15)


# ---- truth windows --------------------------------------------------------------------------


def test_truth_window_share_is_the_covered_part_of_the_chromosome_spans() -> None:
    bim = pd.DataFrame({"chrom": ["chr1", "chr1", "2", "2", "3"], "pos": [100_000, 2_000_000, 50_000, 1_050_000, 500]})
    truth = pd.DataFrame(
        {
            "chrom": ["1", "1", "1", "chr2", "9"],  # two overlapping windows, one at a span's edge, one absent
            "pos": [1_000_000, 1_030_000, 120_000, 1_040_000, 10],
        }
    )
    window_kb = 40
    spans = genome_spans(bim)
    grid_covered, grid_total = 0, 0
    for chrom, (start, end) in spans.iterrows():  # dense check on a 10 bp grid
        grid = np.arange(start, end, 10)
        near = np.zeros(grid.size, dtype=bool)
        for c, pos in zip(truth["chrom"].str.replace("chr", ""), truth["pos"], strict=True):
            if c == chrom:
                near |= np.abs(grid - pos) <= window_kb * 1000
        grid_covered, grid_total = grid_covered + near.sum(), grid_total + grid.size
    assert truth_window_share(truth, spans, window_kb) == pytest.approx(grid_covered / grid_total, abs=1e-4)


# ---- the simulator's inverse map (oracle) ------------------------------------------------------


@pytest.fixture(scope="module")
def small_genotypes():  # noqa: ANN201
    return simulate_genotypes(150, chromosomes=1, snps=300, seed=5)


def test_oracle_recovers_the_simulated_latent_where_it_is_defined(small_genotypes) -> None:  # noqa: ANN001
    traits = 6  # every kind of map, and the pattern repeating from trait 5 on
    simulated = simulate_phenotypes(small_genotypes, traits=traits, causal=5, missing_rate=0.05, seed=9)
    names = [f"trait{j + 1}" for j in range(traits)]
    observed = simulated.pheno[names].to_numpy()
    oracle = simulated.oracle[names].to_numpy()
    pd.testing.assert_frame_equal(simulated.oracle[["FID", "IID"]], simulated.pheno[["FID", "IID"]])
    defined = np.isfinite(observed)
    for j in range(traits):  # a trait's map involves the latent of the trait before it
        if _anchor_index(j) != j:
            defined[:, j] &= defined[:, _anchor_index(j)]
    assert np.array_equal(np.isfinite(oracle), defined) and defined.mean() > 0.8
    np.testing.assert_allclose(oracle[defined], simulated.latent[defined], rtol=0, atol=1e-9)
    assert np.abs(observed[defined] - simulated.latent[defined]).max() > 0.5  # the observed traits are not the latent


def test_simulate_writes_oracle_beside_pheno(tmp_path: Path) -> None:
    result = invoke(
        "simulate",
        "--out",
        tmp_path / "c",
        "--n",
        "120",
        "--snps",
        "300",
        "--chromosomes",
        "1",
        "--causal",
        "5",
        "--traits",
        "3",
    )
    assert result.returncode == 0, result
    pheno = pd.read_csv(tmp_path / "c" / "pheno.tsv", sep="\t")
    oracle = pd.read_csv(tmp_path / "c" / "oracle.tsv", sep="\t")
    assert oracle.columns.tolist() == pheno.columns.tolist() and oracle[["FID", "IID"]].equals(pheno[["FID", "IID"]])
    assert oracle.isna().to_numpy()[pheno.isna().to_numpy()].all()  # missing where the observed trait is missing
    values = oracle[["trait1", "trait2", "trait3"]].stack()
    assert abs(values.mean()) < 0.2 and abs(values.std() - 1) < 0.2  # the standardised latent scale


# ---- gwas rint --no-rank -----------------------------------------------------------------------


def test_rint_no_rank_writes_the_covariate_residuals(tmp_path: Path) -> None:
    fam = read_fam(EXAMPLES / "cohort.fam")
    covar = pd.read_csv(EXAMPLES / "covar.tsv", sep="\t", dtype={"FID": str, "IID": str})
    pheno = pd.read_csv(EXAMPLES / "pheno.tsv", sep="\t", dtype={"FID": str, "IID": str})
    covar.loc[4, "age"] = np.nan  # one individual without a covariate
    pheno = pheno.iloc[::-1].reset_index(drop=True)  # rows in another order than the .fam
    write_table(tmp_path / "covar.tsv", covar)
    write_table(tmp_path / "pheno.tsv", pheno)
    result = invoke(
        "gwas",
        "rint",
        "--pheno",
        tmp_path / "pheno.tsv",
        "--covar",
        tmp_path / "covar.tsv",
        "--fam",
        EXAMPLES / "cohort.fam",
        "--traits",
        "trait1,trait2",
        "--out",
        tmp_path / "p.txt",
        "--no-rank",
    )
    assert result.returncode == 0, result
    written = np.loadtxt(tmp_path / "p.txt", dtype=str)
    written = np.where(written == "NA", "nan", written).astype(float)
    by_fam = pheno.set_index(["FID", "IID"]).loc[list(zip(fam["FID"], fam["IID"], strict=True))]
    design_table = covar.set_index(["FID", "IID"]).loc[list(zip(fam["FID"], fam["IID"], strict=True))]
    design = np.column_stack(
        [
            np.ones(len(fam)),
            design_table["age"],
            design_table["sex"],
            design_table["batch"] == "b2",
            design_table["batch"] == "b3",
        ]
    ).astype(float)
    for j, trait in enumerate(["trait1", "trait2"]):
        y = by_fam[trait].to_numpy(dtype=float)
        rows = np.isfinite(y) & np.isfinite(design).all(axis=1)
        beta, *_ = linalg.lstsq(design[rows], y[rows])
        expected = np.full(len(fam), np.nan)
        expected[rows] = y[rows] - design[rows] @ beta
        np.testing.assert_allclose(written[:, j], expected, rtol=1e-6, atol=1e-7)
    assert np.isnan(written[4]).all()


# ---- covariates to GEMMA ---------------------------------------------------------------------


N, M, HIT = 300, 400, 123


@pytest.fixture(scope="module")
def gemma_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A fileset (300 individuals of the example, 400 SNPs), its GRM, and two traits
    driven by SNP ``HIT``; ``carrier`` is a covariate that carries that SNP's dosage."""
    root = tmp_path_factory.mktemp("gemma_covar")
    genotypes = read_genotypes(EXAMPLES / "cohort")
    columns = np.arange(0, 5000, 12)[:M]
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
    write_plink(root / "geno", dosage, fam, bim)
    gemma_grm(root / "geno", root / "k.cXX.txt")
    rng = np.random.default_rng(4)
    hit = dosage[:, HIT] - dosage[:, HIT].mean()
    traits = np.column_stack([0.6 * hit + rng.normal(size=N), 0.4 * hit + rng.normal(size=N)])
    np.savetxt(root / "pheno.txt", traits, fmt="%.8f", delimiter="\t")
    covar = pd.DataFrame(
        {
            "FID": fam["FID"],
            "IID": fam["IID"],
            "carrier": dosage[:, HIT] + 0.05 * rng.normal(size=N),
            "age": rng.uniform(20, 80, N).round(1),
            "batch": rng.choice(["x", "y", "z"], N),
        }
    )
    write_table(root / "covar.tsv", covar)
    write_table(root / "shuffled.tsv", covar.drop(columns="carrier").sample(frac=1, random_state=1))
    write_table(root / "plain.tsv", covar.drop(columns="carrier"))
    missing = covar.drop(columns="carrier")
    missing.loc[[7, 30], "age"] = np.nan
    write_table(root / "missing.tsv", missing)
    return {
        "bfile": root / "geno",
        "kinship": root / "k.cXX.txt",
        "pheno": root / "pheno.txt",
        "covar": root / "covar.tsv",
        "shuffled": root / "shuffled.tsv",
        "plain": root / "plain.tsv",
        "missing": root / "missing.tsv",
        "fam": root / "geno.fam",
    }


def _assoc(inputs: dict[str, Path], out: Path, covar: str | None, per_trait: bool = False) -> pd.DataFrame:
    args = [
        "gwas",
        "assoc",
        "--bfile",
        inputs["bfile"],
        "--kinship",
        inputs["kinship"],
        "--pheno",
        inputs["pheno"],
        "--columns",
        "1,2",
        "--out",
        out,
    ]
    result = invoke(*args, *(["--covar", inputs[covar]] if covar else []), *(["--per-trait"] if per_trait else []))
    assert result.returncode == 0, result
    return pd.read_csv(out, sep="\t", dtype={"SNP": str, "CHR": str})


@needs_binaries
@pytest.mark.parametrize("per_trait", [False, True], ids=["mvlmm", "per-trait"])
def test_a_covariate_carrying_a_snps_effect_removes_its_association(
    gemma_inputs: dict[str, Path], tmp_path: Path, per_trait: bool
) -> None:
    plain = _assoc(gemma_inputs, tmp_path / "plain" / "assoc.tsv", None, per_trait)
    adjusted = _assoc(gemma_inputs, tmp_path / "adjusted" / "assoc.tsv", "covar", per_trait)
    assert plain["P"].iloc[HIT] < 1e-8  # the SNP drives both traits
    assert (
        adjusted["P"].iloc[HIT] > 1e3 * plain["P"].iloc[HIT] and adjusted["P"].iloc[HIT] > 1e-4
    )  # carried by the covariate
    others = np.arange(M) != HIT
    assert (
        np.median(np.abs(np.log10(adjusted["P"][others]) - np.log10(plain["P"][others]))) < 0.3
    )  # the rest barely moves


@pytest.mark.slow
@needs_binaries
def test_gemma_covariate_file_follows_the_fam_and_drops_missing_rows_as_gemma_does(
    gemma_inputs: dict[str, Path], tmp_path: Path
) -> None:
    ordered = _assoc(gemma_inputs, tmp_path / "a" / "assoc.tsv", "plain")
    shuffled = _assoc(gemma_inputs, tmp_path / "b" / "assoc.tsv", "shuffled")
    pd.testing.assert_frame_equal(ordered, shuffled)  # the covariate file's row order does not matter
    design = np.loadtxt(tmp_path / "b" / "assoc.covariates.txt")
    fam = read_fam(gemma_inputs["fam"])
    covar = pd.read_csv(gemma_inputs["plain"], sep="\t", dtype={"FID": str, "IID": str}).set_index(["FID", "IID"])
    by_fam = covar.loc[list(zip(fam["FID"], fam["IID"], strict=True))]
    expected = np.column_stack([np.ones(N), by_fam["age"], by_fam["batch"] == "y", by_fam["batch"] == "z"]).astype(
        float
    )
    np.testing.assert_allclose(design, expected)

    result = invoke(
        "gwas",
        "assoc",
        "--bfile",
        gemma_inputs["bfile"],
        "--kinship",
        gemma_inputs["kinship"],
        "--pheno",
        gemma_inputs["pheno"],
        "--columns",
        "1,2",
        "--out",
        tmp_path / "m" / "assoc.tsv",
        "--covar",
        gemma_inputs["missing"],
    )
    assert result.returncode == 0 and f"{N - 2} individuals analysed" in " ".join(result.stderr.split()), result
    log = (tmp_path / "m" / "assoc.gemma.assoc.log").read_text()
    assert f"number of analyzed individuals = {N - 2}" in log
    rows = (tmp_path / "m" / "assoc.covariates.txt").read_text().splitlines()
    assert rows[7].split("\t")[1] == "NA" and rows[30].split("\t")[0] == "NA"
    evaluated = invoke(
        "gwas",
        "evaluate",
        "--bfile",
        gemma_inputs["bfile"],
        "--assoc",
        tmp_path / "m" / "assoc.tsv",
        "--out-dir",
        tmp_path / "m" / "evaluation",
        "--name",
        "m",
        "--pheno",
        gemma_inputs["pheno"],
        "--columns",
        "1,2",
        "--test",
        "mvlmm",
        "--covar",
        gemma_inputs["missing"],
    )
    assert evaluated.returncode == 0, evaluated
    assert json.loads((tmp_path / "m" / "evaluation" / "summary.json").read_text())["n"] == N - 2


@needs_binaries
def test_a_covariate_constant_among_the_analysed_is_refused_before_gemma(
    gemma_inputs: dict[str, Path], tmp_path: Path
) -> None:
    covar = pd.read_csv(gemma_inputs["plain"], sep="\t", dtype={"FID": str, "IID": str}).assign(site=2.0)
    write_table(tmp_path / "covar.tsv", covar)
    before = snapshot(tmp_path)
    result = invoke(
        "gwas",
        "assoc",
        "--bfile",
        gemma_inputs["bfile"],
        "--kinship",
        gemma_inputs["kinship"],
        "--pheno",
        gemma_inputs["pheno"],
        "--columns",
        "1,2",
        "--out",
        tmp_path / "assoc.tsv",
        "--covar",
        tmp_path / "covar.tsv",
    )
    assert result.returncode == 1 and "covariate 'site' is 2 for all 300 individuals" in " ".join(
        result.stderr.split()
    ), result
    assert len(result.stderr.strip().splitlines()) == 1 and snapshot(tmp_path) == before


# ---- gwas evaluate: test, df, n; gwas report ---------------------------------------------------------


@pytest.mark.slow
@needs_binaries
def test_evaluate_records_n_and_the_tests_df_and_report_shows_them(
    gemma_inputs: dict[str, Path], tmp_path: Path
) -> None:
    mv = _assoc(gemma_inputs, tmp_path / "all" / "flow_kinship" / "assoc.tsv", None)
    _assoc(gemma_inputs, tmp_path / "all" / "single" / "assoc.tsv", None, per_trait=True)
    bim = pd.read_csv(f"{gemma_inputs['bfile']}.bim", sep="\t", header=None, dtype={0: str, 1: str})
    truth = pd.DataFrame(
        {"snp": [bim[1][HIT], bim[1][10]], "chrom": [bim[0][HIT], bim[0][10]], "pos": [bim[3][HIT], bim[3][10]]}
    )
    write_table(tmp_path / "truth.tsv", truth)
    oracle = mv.assign(P=np.where(np.arange(M) == 10, 1e-12, mv["P"]))  # a second true locus
    (tmp_path / "all" / "oracle").mkdir()
    write_table(tmp_path / "all" / "oracle" / "assoc.tsv", oracle)
    common = [
        "--bfile",
        gemma_inputs["bfile"],
        "--truth",
        tmp_path / "truth.tsv",
        "--pheno",
        gemma_inputs["pheno"],
        "--columns",
        "1,2",
    ]
    for arm, test in (("single", "per-trait"), ("flow_kinship", "mvlmm"), ("oracle", "mvlmm")):
        result = invoke(
            "gwas",
            "evaluate",
            "--assoc",
            tmp_path / "all" / arm / "assoc.tsv",
            "--out-dir",
            tmp_path / "all" / arm / "evaluation",
            "--name",
            f"{arm}:all",
            "--test",
            test,
            *common,
        )
        assert result.returncode == 0, result
    summaries = {
        arm: json.loads((tmp_path / "all" / arm / "evaluation" / "summary.json").read_text())
        for arm in ("single", "flow_kinship", "oracle")
    }
    assert summaries["flow_kinship"]["n"] == N and summaries["flow_kinship"]["lambda_gc_df"] == 2
    assert summaries["flow_kinship"]["lambda_gc"] == pytest.approx(lambda_gc(mv["P"].to_numpy(), 2))
    assert summaries["single"]["n_per_trait"] == [N, N] and summaries["single"]["lambda_gc_df"] == 1
    assert 0 < summaries["oracle"]["truth_window_genome_share"] < 0.2

    wrong = invoke(
        "gwas",
        "evaluate",
        "--assoc",
        tmp_path / "all" / "single" / "assoc.tsv",
        "--out-dir",
        tmp_path / "wrong",
        "--name",
        "x",
        "--test",
        "mvlmm",
        *common,
    )
    assert (
        wrong.returncode == 1
        and "evaluate it with --test per-trait" in wrong.stderr
        and not (tmp_path / "wrong").exists()
    )
    partial = invoke(
        "gwas",
        "evaluate",
        "--assoc",
        tmp_path / "all" / "oracle" / "assoc.tsv",
        "--out-dir",
        tmp_path / "wrong",
        "--name",
        "x",
        "--bfile",
        gemma_inputs["bfile"],
        "--test",
        "mvlmm",
    )
    assert partial.returncode == 1 and "--pheno, --columns and --test go together" in partial.stderr

    (tmp_path / "all" / "flow_kinship" / "run").mkdir()
    epochs = [
        {"stage": s, "epoch": 3 * (s - 1) + e, "train_nll": 1.0, "val_nll": v}
        for s, e, v in [(1, 1, 3.0), (1, 2, 2.5), (1, 3, 2.6), (2, 1, 2.2), (2, 2, 2.4), (2, 3, 2.3)]
    ]
    (tmp_path / "all" / "flow_kinship" / "run" / "fit.json").write_text(
        json.dumps({"covariance": {"s2": 0.3125}, "epochs": epochs})
    )
    dirs = [tmp_path / "all" / arm / "evaluation" for arm in ("single", "flow_kinship", "oracle")]
    result = invoke("gwas", "report", *dirs, "--out-dir", tmp_path / "report")
    assert result.returncode == 0, result
    rows = {
        line.split(" | ")[0].lstrip("| "): line.split(" | ")
        for line in (tmp_path / "report" / "report.md").read_text().splitlines()
        if line.startswith("| ") and ":all" in line
    }
    header = next(
        line for line in (tmp_path / "report" / "report.md").read_text().splitlines() if line.startswith("| method")
    )
    column = [cell.strip() for cell in header.strip("|").split("|")].index
    assert rows["flow_kinship:all"][column("n")] == str(N)
    assert rows["single:all"][column("n")] == f"{N} ({N}-{N})"
    assert rows["flow_kinship:all"][column("lambda GC [1]")].endswith("(2 df)")
    assert rows["flow_kinship:all"][column("fit [2]")] == "s2 0.312; kept epoch 4 of 6 (stage 2 of 2)"
    true = {arm: summaries[arm]["true_loci"] for arm in summaries}
    assert true["oracle"] > true["single"]
    share = (true["flow_kinship"] - true["single"]) / (true["oracle"] - true["single"])
    gained, gap = true["flow_kinship"] - true["single"], true["oracle"] - true["single"]
    assert (
        rows["flow_kinship:all"][column("single -> oracle gap closed [3]")]
        == f"{share:.0%} ({gained:+d} of {gap} loci)"
    )
    assert rows["oracle:all"][column("single -> oracle gap closed [3]")] == f"100% ({gap:+d} of {gap} loci)"


# ---- deeper pedigrees ------------------------------------------------------------------------------


def test_deeper_pedigrees_make_larger_families_and_more_related_pairs(small_genotypes) -> None:  # noqa: ANN001
    deep = simulate_genotypes(150, chromosomes=1, snps=300, seed=5, generations=4, family_size=3)
    classic_sizes = pd.Series(small_genotypes.family).value_counts()
    deep_sizes = pd.Series(deep.family).value_counts()
    assert classic_sizes.max() <= 6 + 3 * 3  # 4 children + 2 spouses, 1-3 grandchildren for each of 3 couples
    assert deep_sizes.iloc[:-1].min() > classic_sizes.max()  # every complete deep family is larger

    def related_share(family: np.ndarray) -> float:  # pairs within a family
        return float(((pd.Series(family).value_counts() ** 2).sum() - len(family)) / (len(family) * (len(family) - 1)))

    assert related_share(deep.family) > 3 * related_share(small_genotypes.family)
