"""--threads: the count reaches torch and BLAS inside a run, the default follows the CPUs the
process may use; warnings point at the caller, say what to do, and do not depend on the cache."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import family_kinship, invoke, write_table
from threadpoolctl import threadpool_info

import flowpheno
from flowpheno.io.kinship import spectral_decomposition, write_npz
from flowpheno.pipeline import FitConfig, fit_phenotypes, transform_phenotypes
from flowpheno.threads import available_cpus, cpu_limit, per_worker, thread_limits
from flowpheno.train import TrainConfig

PACKAGE = str(Path(flowpheno.__file__).parent)
TINY = TrainConfig(epochs=2, stages=2, seed=1)


def _config(**changes: object) -> FitConfig:
    return FitConfig(layers=2, hidden=8, train=TINY, **changes)  # type: ignore[arg-type]


def _cohort(folder: Path, n: int = 120, kinship: np.ndarray | None = None) -> tuple[Path, Path]:
    """Two traits (n < 100 d^2 = 400: the mvLMM warning fires) and a family kinship."""
    rng = np.random.default_rng(0)
    ids = [f"i{k}" for k in range(n)]
    table = pd.DataFrame({"FID": "f", "IID": ids, "a": rng.gamma(2.0, size=n), "b": rng.normal(size=n)})
    write_npz(folder / "kin.npz", family_kinship(n, rng) if kinship is None else kinship, np.array(ids))
    return write_table(folder / "pheno.tsv", table), folder / "kin.npz"


def _observed_threads() -> tuple[list[int], object]:
    """A fit callback that records torch's intra-op thread count at every training event."""
    seen: list[int] = []
    return seen, lambda record: seen.append(torch.get_num_threads())


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 3])
def test_threads_reach_torch_and_blas_inside_a_fit_and_are_restored(threads: int, tmp_path: Path) -> None:
    pheno, kinship = _cohort(tmp_path)
    before = torch.get_num_threads()
    blas_before = [pool["num_threads"] for pool in threadpool_info()]
    seen, callback = _observed_threads()
    model, _, report = fit_phenotypes(
        pheno, kinship, config=_config(threads=threads), out=tmp_path / "run", callback=callback
    )
    assert seen and set(seen) == {threads}
    assert report.threads["used"] == threads and report.threads["requested"] == threads
    assert json.loads((tmp_path / "run" / "fit.json").read_text())["threads"]["used"] == threads
    assert torch.get_num_threads() == before  # the library caller's setting is back
    assert [pool["num_threads"] for pool in threadpool_info()] == blas_before
    with thread_limits(threads):
        assert {pool["num_threads"] for pool in threadpool_info()} == {threads}  # numpy/scipy BLAS and OpenMP too
    transform_phenotypes(model, pheno, threads=threads)
    assert torch.get_num_threads() == before


@pytest.mark.slow
def test_threads_flag_reaches_fit_json_and_a_bad_value_is_one_line(tmp_path: Path) -> None:
    pheno, kinship = _cohort(tmp_path)
    tiny = ["--epochs", "2", "--stages", "2", "--layers", "2", "--hidden", "8", "--quiet"]
    result = invoke("fit", "--pheno", pheno, "--grm", kinship, "--out", tmp_path / "run", "--threads", "1", *tiny)
    assert result.returncode == 0, result
    recorded = json.loads((tmp_path / "run" / "fit.json").read_text())
    assert recorded["threads"]["used"] == 1 and recorded["config"]["threads"] == 1
    bad = invoke("fit", "--pheno", pheno, "--grm", kinship, "--out", tmp_path / "bad", "--threads", "0", *tiny)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--threads" in bad.stderr
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match=r"^FitConfig\.threads: must be an integer >= 1 \(or unset\), got 0$"):
        FitConfig(threads=0)


def test_default_threads_follow_affinity_and_slurm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    mask = os.sched_getaffinity(0)
    assert cpu_limit() == (len(mask), "CPU affinity")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", str(len(mask) + 4))  # more than the mask allows: the mask wins
    assert available_cpus() == len(mask)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert cpu_limit() == (1, "SLURM_CPUS_PER_TASK")
    pheno, kinship = _cohort(tmp_path)
    seen, callback = _observed_threads()
    _, _, report = fit_phenotypes(pheno, kinship, config=_config(), callback=callback)
    assert set(seen) == {1} and report.threads["default_from"] == "SLURM_CPUS_PER_TASK"
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    one_cpu = {min(mask)}
    os.sched_setaffinity(0, one_cpu)  # this process may now run on one CPU only
    try:
        assert available_cpus() == 1
        with thread_limits() as used:
            assert used == 1 and torch.get_num_threads() == 1
    finally:
        os.sched_setaffinity(0, mask)


def test_default_threads_respect_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    cpus = len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpu_limit() == (1 if cpus > 1 else cpus, "OMP_NUM_THREADS" if cpus > 1 else "CPU affinity")
    monkeypatch.setenv("OMP_NUM_THREADS", str(cpus + 3))  # above the CPUs allowed: the affinity wins
    assert cpu_limit() == (cpus, "CPU affinity")


def test_jobs_share_the_threads() -> None:
    assert [per_worker(8, jobs) for jobs in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    assert per_worker(1, 4) == 1


def _recorded(call: object) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()  # type: ignore[operator]
    return [warning for warning in caught if issubclass(warning.category, UserWarning)]


def test_library_warnings_point_at_the_caller(tmp_path: Path) -> None:
    pheno, kinship = _cohort(tmp_path)
    model = None

    def fit() -> None:
        nonlocal model
        model, _, _ = fit_phenotypes(pheno, kinship, config=_config(threads=1))

    caught = _recorded(fit)
    assert any("GEMMA's mvLMM" in str(warning.message) for warning in caught)
    assert {warning.filename for warning in caught} == {__file__}
    table = pd.read_csv(pheno, sep="\t")
    table.loc[0, "b"] = table["b"].mean() + 30 * table["b"].std()  # beyond 15 training SDs: a warning
    far = write_table(tmp_path / "far.tsv", table)
    caught = _recorded(lambda: transform_phenotypes(model, far, keep_outliers=True))
    assert caught and all("training SDs" in str(w.message) and w.filename == __file__ for w in caught)
    assert not any(w.filename.startswith(PACKAGE) for w in caught)


@pytest.mark.parametrize(("n", "d", "largest"), [(1000, 4, 3), (120, 2, 1), (3000, 6, 5), (399, 2, 1), (400, 3, 2)])
def test_mvlmm_warning_says_what_to_do(n: int, d: int, largest: int, tmp_path: Path) -> None:
    from flowpheno.pipeline import _mvlmm_advice

    message = _mvlmm_advice(n, d)
    assert "\n" not in message and f"100 d^2 = {100 * d * d}" in message
    assert max(k for k in range(d + 1) if 100 * k * k <= n) == largest
    if largest >= 2:
        assert f"groups of at most {largest} traits" in message
        assert "--columns " + ",".join(map(str, range(1, largest + 1))) + ")" in message
    else:
        assert "one at a time (flowpheno gwas assoc --per-trait)" in message


def test_warning_is_one_whole_line_in_a_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "60")  # a narrow terminal or a log: rich would wrap at 60
    pheno, kinship = _cohort(tmp_path)
    result = invoke(
        "fit",
        "--pheno",
        pheno,
        "--grm",
        kinship,
        "--out",
        tmp_path / "run",
        "--threads",
        "1",
        "--epochs",
        "1",
        "--stages",
        "1",
        "--layers",
        "2",
        "--hidden",
        "8",
        "--quiet",
    )
    assert result.returncode == 0, result
    expected = json.loads((tmp_path / "run" / "fit.json").read_text())["warnings"]
    assert expected and all(f"warning: {message}" in result.stderr.splitlines() for message in expected)


def _nearly_psd_kinship(n: int, negatives: int) -> np.ndarray:
    """A family kinship with ``negatives`` eigenvalues replaced by -1e-9 x the largest (round-off
    size: clipped with a warning, not refused)."""
    values, vectors = np.linalg.eigh(family_kinship(n, np.random.default_rng(3)))
    values[:negatives] = -1e-9 * values.max()
    return (vectors * values) @ vectors.T


@pytest.mark.slow
def test_clipped_eigenvalue_warning_is_the_same_when_read_from_the_cache(tmp_path: Path) -> None:
    pheno, kinship = _cohort(tmp_path, kinship=_nearly_psd_kinship(120, 2))
    config = _config(threads=1, val_frac=0.0)  # every individual trains: the cached matrix is the whole kinship
    _, _, first = fit_phenotypes(pheno, kinship, config=config, out=tmp_path / "one")
    _, _, second = fit_phenotypes(pheno, kinship, config=config, out=tmp_path / "two")
    assert (first.kinship.eigendecomposition_cached, second.kinship.eigendecomposition_cached) == (False, True)
    written = [json.loads((tmp_path / run / "fit.json").read_text())["warnings"] for run in ("one", "two")]
    assert written[0] == written[1]
    assert sum("clipped 2 tiny negative eigenvalues" in message for message in written[0]) == 1


def test_cache_without_the_clipped_count_is_recomputed_silently(tmp_path: Path) -> None:
    matrix = _nearly_psd_kinship(80, 1)
    source = str(tmp_path / "kin.npz")
    caught = _recorded(lambda: spectral_decomposition(matrix, source, tmp_path))
    assert [str(w.message) for w in caught] == [
        f"{source}: clipped 1 tiny negative eigenvalues (round-off, above -1e-06 x the largest) to 0"
    ]
    (cache,) = tmp_path.glob(".kin.npz.eig-80-*.npz")
    with np.load(cache) as archive:
        values, vectors = archive["eigenvalues"], archive["eigenvectors"]
    np.savez(cache, eigenvalues=values, eigenvectors=vectors)  # the layout written before the count was stored
    outcome: list[bool] = []
    caught = _recorded(lambda: outcome.append(spectral_decomposition(matrix, source, tmp_path)[2]))
    assert outcome == [False] and [str(w.message) for w in caught] == [
        f"{source}: clipped 1 tiny negative eigenvalues (round-off, above -1e-06 x the largest) to 0"
    ]
    with np.load(cache) as archive:
        assert int(archive["clipped"]) == 1  # replaced: the next run reads it
    caught = _recorded(lambda: outcome.append(spectral_decomposition(matrix, source, tmp_path)[2]))
    assert outcome[-1] is True and len(caught) == 1 and "clipped 1 tiny" in str(caught[0].message)


@pytest.mark.parametrize("command", [["fit"], ["transform"], ["grm"], ["simulate"], ["bench", "synthetic"], ["--"]])
def test_flags_read_as_flags_in_help(command: list[str]) -> None:
    result = invoke(*(command if command != ["--"] else []), "--help")
    assert result.returncode == 0, result
    assert "<bool>" not in result.stdout and "--help" in result.stdout
    if command != ["--"]:
        assert "--threads" in result.stdout


def test_gemma_and_plink_get_the_thread_count(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """GEMMA reads the BLAS/OpenMP variables, PLINK 1.9 its --threads; `gwas ... --threads N` sets them."""
    import shutil

    from flowpheno.gwas.tools import run_logged

    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    log = tmp_path / "env.log"
    run_logged(["sh", "-c", "echo threads $OMP_NUM_THREADS $OPENBLAS_NUM_THREADS"], log)
    assert "threads 1 1" in log.read_text()
    plink = shutil.which("plink1.9") or shutil.which("plink")
    if plink is None:
        pytest.skip("apt-get install plink1.9")
    run_logged([plink, "--version"], tmp_path / "plink.log")
    assert (tmp_path / "plink.log").read_text().splitlines()[0].endswith("--version --threads 1")
