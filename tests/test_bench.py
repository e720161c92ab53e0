"""`flowpheno bench synthetic`: data generators and the --quick run end to end."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import invoke, run_cli

from flowpheno.bench.shapes import SHAPES, iid_sample, pareto_block_sizes, sparse_spd_correlation, true_log_density
from flowpheno.bench.synthetic import BenchSizes
from flowpheno.dependence import IIDCovariance
from flowpheno.errors import FlowphenoError
from flowpheno.flows import spline_coupling_flow
from flowpheno.train import TrainConfig, fit_schedule


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_true_density_integrates_to_one_and_matches_samples(shape: str) -> None:
    xs, ys = np.meshgrid(np.linspace(-9, 9, 900), np.linspace(-9, 9, 900))
    grid = np.column_stack([xs.ravel(), ys.ravel()])
    mass = np.exp(true_log_density(shape, grid)).sum() * (18 / 899) ** 2
    assert mass == pytest.approx(1.0, abs=0.01)
    sample = iid_sample(shape, 4000, np.random.default_rng(0))
    # samples fall where the density is high: mean log density well above that of a broad Gaussian
    assert true_log_density(shape, sample).mean() > -3.2


def test_block_sizes_and_correlation() -> None:
    rng = np.random.default_rng(1)
    sizes = pareto_block_sizes(10_000, rng)
    assert sizes.sum() == 10_000 and sizes.max() <= 1000 and sizes.min() >= 1
    correlation = sparse_spd_correlation(300, rng)
    assert np.allclose(np.diag(correlation), 1.0) and np.allclose(correlation, correlation.T)
    assert np.linalg.eigvalsh(correlation).min() > -1e-8
    off = correlation[np.triu_indices(300, 1)]
    assert 0.3 < off.mean() < 0.95  # dense and strongly correlated, as in the paper


@pytest.mark.slow
def test_early_stopping_stops() -> None:
    x = torch.randn(300, 2)
    flow = spline_coupling_flow(2, layers=1, hidden=8, bins=4)
    flow.initialize(x)
    config = TrainConfig(
        epochs=20, stages=3, lr=1e-30, patience=2, batch_size=100
    )  # steps below float32 resolution: no epoch improves
    outcome = fit_schedule(flow, IIDCovariance(300), x, torch.randn(100, 2), config)
    assert len(outcome.epochs) == 3  # epoch 1 is best, two more without improvement, then stop
    assert len(outcome.stages) == 1


@pytest.mark.slow
def test_quick_bench(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    result = run_cli("bench", "synthetic", "--quick", "--protocol", "fast", "--jobs", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    table = (out / "table1.md").read_text()
    assert "| blocks | grid |" in table and "| kinship | alternating |" in table
    for name in ("figure_blocks_crescent.png", "figure_kinship_crescent.png"):
        assert (out / name).stat().st_size > 10_000
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert len(runs) == 2 * (
        6 + 4
    )  # 2 shapes x (blocks: baseline, grid, joint, joint_blockbatch, 2 alternating; kinship: 4)
    nll = {(r["setting"], r["shape"], r["method"]): r["test_nll"] for r in runs}
    assert nll[("blocks", "crescent", "grid")] < nll[("blocks", "crescent", "baseline")]
    assert all(np.isfinite(r["test_nll"]) and r["lr"] > 0 for r in runs)
    per_block = [r for r in runs if r["setting"] == "blocks" and r["method"].startswith("alternating")]
    assert len(per_block) == 4 and all(0 <= r["rho_mae_repeated"] < 0.5 for r in per_block)
    # resumable: a second call finds every run done and trains nothing
    again = run_cli("bench", "synthetic", "--quick", "--protocol", "fast", "--jobs", "2", "--out", str(out))
    assert again.returncode == 0 and json.loads((out / "results.json").read_text())["wall_seconds_this_call"] < 20


def test_bench_synthetic_rejects_a_method_the_setting_lacks(tmp_path: Path) -> None:
    result = invoke(
        "bench", "synthetic", "--setting", "kinship", "--methods", "baseline,joint", "--out", str(tmp_path / "b")
    )
    assert result.returncode != 0
    assert result.stderr == "error: --methods 'joint' is a method of the blocks setting; add --setting blocks\n"
    assert not (tmp_path / "b" / "runs").exists()
    fast_only = invoke(
        "bench", "synthetic", "--setting", "kinship", "--methods", "alternating_scaled", "--out", str(tmp_path / "c")
    )
    assert fast_only.returncode == 2 and fast_only.stderr.strip().splitlines() == [
        "error: --methods 'alternating_scaled' is a kinship method of --protocol fast only; "
        "drop it or add --protocol fast"
    ]
    assert not (tmp_path / "c").exists()
    for methods in (",", " "):
        nothing = invoke("bench", "synthetic", "--setting", "blocks", "--methods", methods, "--out", tmp_path / "d")
        assert nothing.returncode == 2 and nothing.stderr.startswith(f"error: --methods {methods!r}: name at least one")
    assert not (tmp_path / "d").exists()


def test_bench_synthetic_refuses_a_users_folder_that_looks_like_an_old_one(tmp_path: Path) -> None:
    """A folder without flowpheno's manifest is taken as an earlier bench folder only when every
    file in it, and in its runs/, has a name the bench writes; else it is refused untouched."""
    from conftest import snapshot

    mine = tmp_path / "mine"
    (mine / "runs").mkdir(parents=True)
    (mine / "runs" / "experiment1.json").write_text("{}")
    (mine / "table1.md").write_text("my notes\n")
    before = snapshot(mine)
    result = invoke("bench", "synthetic", "--quick", "--setting", "blocks", "--out", mine)
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        f"error: --out {mine} is a folder flowpheno did not write (it holds runs/experiment1.json); "
        "choose a new or empty folder"
    ]
    assert snapshot(mine) == before


def test_table_pairs_each_method_with_the_baseline_on_its_own_seeds() -> None:
    from flowpheno.bench.report import table1

    rng = np.random.default_rng(0)
    records = []
    for seed in range(6):
        base = 2.0 + 0.1 * rng.normal()
        records.append({"setting": "kinship", "shape": "abs", "method": "baseline", "seed": seed, "test_nll": base})
        records.append(
            {
                "setting": "kinship",
                "shape": "abs",
                "method": "grid",
                "seed": seed,
                "test_nll": base - 0.1 + 0.01 * rng.normal(),
            }
        )
        if seed < 3:  # a method run on fewer seeds must not shrink the other methods' comparisons
            records.append(
                {"setting": "kinship", "shape": "abs", "method": "alternating", "seed": seed, "test_nll": base + 0.05}
            )
    rows = {
        line.split("|")[3].strip(): line
        for line in table1(records).splitlines()
        if line.startswith("| kinship | abs |")
    }
    grid = [cell.strip() for cell in rows["grid"].split("|")]
    assert (grid[4], grid[5], grid[7]) == ("-0.100", "6", "yes") and float(grid[6]) < 1e-6
    alternating = [cell.strip() for cell in rows["alternating"].split("|")]
    assert (alternating[4], alternating[5], alternating[7]) == ("+0.050", "3", "")


def _tiny(**changes: object) -> BenchSizes:
    base = BenchSizes(
        n_blocks=80,
        n_kinship=60,
        n_eval=60,
        epochs=1,
        stages=1,
        patience=1,
        batch_size=40,
        optimisers=[(2e-3, 0.0)],
        layers=1,
        hidden=4,
        bins=4,
    )
    return dataclasses.replace(base, **changes)


@pytest.mark.slow
def test_stored_runs_are_reused_only_for_the_same_sizes(tmp_path: Path) -> None:
    from flowpheno.bench.synthetic import run_all, run_hash, run_identity

    trained: list[dict] = []
    args = (["blocks"], ["crescent"], {"blocks": ["baseline"]}, [0])
    first = run_all(tmp_path, *args, _tiny(), on_result=trained.append)
    again = run_all(tmp_path, *args, _tiny(), on_result=trained.append)
    assert len(trained) == 1 and again == first  # resumed: the stored record, nothing trained
    other = run_all(tmp_path, *args, _tiny(epochs=2), on_result=trained.append)
    assert len(trained) == 2 and len(other) == 1  # other sizes: trained anew, only the run asked for
    assert other[0]["run_hash"] == run_hash(run_identity("blocks", "crescent", "baseline", 0, _tiny(epochs=2)))
    assert other[0]["identity"]["sizes"]["epochs"] == 2 and other[0]["run_hash"] != first[0]["run_hash"]
    assert len(list((tmp_path / "runs").glob("*.json"))) == 2


@pytest.mark.slow
def test_bench_cli_full_sizes_do_not_reuse_quick_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import flowpheno.bench.synthetic as synthetic
    from flowpheno.bench.synthetic import BenchSizes, run_hash, run_identity

    @dataclasses.dataclass
    class Sizes(BenchSizes):  # "full" and "quick" both tiny here, and different
        n_blocks: int = 100
        n_kinship: int = 60
        n_eval: int = 60
        epochs: int = 2
        stages: int = 1
        patience: int = 1
        batch_size: int = 50
        layers: int = 1
        hidden: int = 4
        bins: int = 4

        @classmethod
        def quick(cls) -> BenchSizes:
            return cls(n_blocks=80, epochs=1)

    monkeypatch.setattr(synthetic, "BenchSizes", Sizes)
    out = tmp_path / "bench"
    common = ("bench", "synthetic", "--protocol", "fast", "--setting", "blocks", "--out", out)
    quick = invoke(*common, "--quick")  # every blocks method, crescent and sinewave
    assert quick.returncode == 0, quick
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 2 * 6
    full = invoke(*common, "--methods", "baseline,grid", "--shapes", "crescent", "--seeds", "1")
    assert full.returncode == 0, full
    results = json.loads((out / "results.json").read_text())
    assert results["sizes"] == json.loads(json.dumps(dataclasses.asdict(Sizes())))
    assert [(r["method"], r["n_train"], r["run_hash"]) for r in results["runs"]] == [
        (m, 100, run_hash(run_identity("blocks", "crescent", m, 0, Sizes()))) for m in ("baseline", "grid")
    ]
    assert len(list((out / "runs").glob("*.json"))) == 12 + 2  # trained, not reused
    # only the methods asked for, though the folder holds all six
    only = invoke(*common, "--quick", "--methods", "baseline")
    assert only.returncode == 0, only
    table = (out / "table1.md").read_text()
    assert "| blocks | baseline |" in table and "| blocks | grid |" not in table and "| blocks | joint |" not in table
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert {(r["method"], r["n_train"]) for r in runs} == {("baseline", 80)} and len(runs) == 2
    assert len(list((out / "runs").glob("*.json"))) == 14  # the quick runs were reused
    # --quick keeps the shapes asked for (it used to replace them with crescent and sinewave silently)
    sine = invoke(*common, "--quick", "--methods", "baseline", "--shapes", "sinewave")
    assert sine.returncode == 0, sine
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [(r["shape"], r["method"], r["n_train"]) for r in runs] == [("sinewave", "baseline", 80)]
    assert sorted(p.name for p in out.glob("figure_*.png")) == ["figure_blocks_sinewave.png"]  # this call's only
    # without a baseline there is no figure, and none of an earlier call is left to pass for this one's
    joint = invoke(*common, "--quick", "--methods", "joint", "--shapes", "sinewave")
    assert joint.returncode == 0 and "no figure (it needs a seed-0 baseline run)" in joint.stderr, joint
    assert not list(out.glob("figure_*.png"))
    assert "## Adjusted methods vs baseline" not in (out / "table1.md").read_text()  # nothing to pair
    # --stored-only trains nothing: the table of what is done, and how much is not
    stored_files = sorted(p.name for p in (out / "runs").glob("*.json"))
    partial = invoke(*common, "--methods", "baseline,grid", "--shapes", "crescent", "--seeds", "3", "--stored-only")
    assert partial.returncode == 0 and "4 of the 6 asked for not run yet" in partial.stderr, partial
    assert sorted(p.name for p in (out / "runs").glob("*.json")) == stored_files
    results = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["seed"]) for r in results["runs"]] == [("baseline", 0), ("grid", 0)]
    assert results["runs_asked"] == 6 and "wall time" not in (out / "table1.md").read_text()
    # a shape named twice counts once; the figure is of a shape whose seed-0 baseline is stored
    twice = invoke(
        *common, "--methods", "baseline", "--shapes", "abs,crescent,crescent", "--seeds", "1", "--stored-only"
    )
    assert twice.returncode == 0 and "1 of the 2 asked for not run yet" in twice.stderr, twice
    assert sorted(p.name for p in out.glob("figure_*.png")) == ["figure_blocks_crescent.png"]
    (tmp_path / "emptyruns" / "runs").mkdir(parents=True)
    none_stored = invoke(*common[:-1], tmp_path / "emptyruns", "--methods", "baseline", "--seeds", "1", "--stored-only")
    assert none_stored.returncode == 1 and "none of the 5 runs asked for is stored there" in none_stored.stderr
    assert [p.name for p in (tmp_path / "emptyruns").iterdir()] == ["runs"]  # refused: nothing written
    fresh = invoke(*common[:-1], tmp_path / "fresh", "--stored-only")
    assert fresh.returncode == 2 and "holds no runs/ folder of finished runs" in fresh.stderr
    assert not (tmp_path / "fresh").exists()


def test_results_are_written_whole_with_command_and_versions(tmp_path: Path) -> None:
    """The one writer of every benchmark: JSON for a mapping, text for a string, no temporary
    file left; the command as typed after the program's own words."""
    from flowpheno.bench.results import command_line, package_versions, write_results

    command = command_line("flowpheno bench stocks", ["flowpheno", "bench", "stocks", "--quick", "--out", "x"], skip=3)
    assert command == "flowpheno bench stocks --quick --out x"
    spaced = ["flowpheno", "bench", "stocks", "--out", "my runs", "--prices", "a;b.csv"]
    assert command_line("flowpheno bench stocks", spaced, skip=3) == (
        "flowpheno bench stocks --out 'my runs' --prices 'a;b.csv'"
    )  # reruns as written in a shell
    written = write_results(
        tmp_path / "new",
        {"r.json": {"command": command, "versions": package_versions(), "x": np.float32(0.5)}, "r.md": "# table\n"},
        default=float,
    )
    assert [p.name for p in written] == ["r.json", "r.md"] and sorted(p.name for p in (tmp_path / "new").iterdir()) == [
        "r.json",
        "r.md",
    ]
    content = json.loads((tmp_path / "new" / "r.json").read_text())
    assert (
        content["command"] == command
        and content["x"] == 0.5
        and {"python", "flowpheno", "torch"} <= set(content["versions"])
    )
    assert (tmp_path / "new" / "r.md").read_text() == "# table\n"


def _paper_crescent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, methods: str, **sizes: object
) -> tuple[Path, BenchSizes, dict[str, dict]]:
    """``bench synthetic --protocol paper`` on blocks crescent, 1 seed, at tiny sizes with the
    paper's 12-setting sweep; the output folder, the sizes and the runs by method."""
    import flowpheno.bench.protocols as protocols
    from flowpheno.bench.protocols import PaperSetup

    pairs = [(lr, wd) for lr in PaperSetup().lrs for wd in PaperSetup().weight_decays]
    tiny = _tiny(optimisers=pairs, patience=None, **sizes)
    monkeypatch.setattr(protocols, "paper_sizes", lambda quick=False: tiny)
    out = tmp_path / "paper"
    result = invoke(
        "bench",
        "synthetic",
        "--setting",
        "blocks",
        "--shapes",
        "crescent",
        "--methods",
        methods,
        "--seeds",
        "1",
        "--out",
        out,
    )
    assert result.returncode == 0, result
    return out, tiny, {r["method"]: r for r in json.loads((out / "results.json").read_text())["runs"]}


def test_paper_protocol_sweeps_every_setting_as_batched_members(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flowpheno.bench.protocols as protocols
    from flowpheno.bench.protocols import PaperSetup

    out, _, runs = _paper_crescent(tmp_path, monkeypatch, "baseline,grid")
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"] == "paper"
    assert "Protocol `paper`" in (out / "table1.md").read_text()
    assert runs["baseline"]["members"] == 12 and runs["grid"]["members"] == 13 * 12
    assert runs["baseline"]["flow_config"]["actnorm"] is False and runs["grid"]["flow_config"]["tail_bound"] == 8.0
    # the reported member is the one with the best validation NLL, and the grid includes the baseline's settings
    assert runs["grid"]["val_nll"] == min(m["val_nll"] for m in runs["grid"]["sweep"])
    assert runs["grid"]["val_nll"] <= runs["baseline"]["val_nll"] + 1e-6
    assert [g["value"] for g in runs["grid"]["grid"]] == list(PaperSetup().grid)
    chosen = runs["grid"]["covariance"]["rho"]
    assert (
        f"| blocks | grid | crescent | 1 | rho {chosen:.3f} (range {chosen:g}-{chosen:g}) |"
        in (out / "table1.md").read_text()
    )
    stored = [json.loads(path.read_text()) for path in (out / "runs").glob("*.json")]
    assert len(stored) == 2 and {r["identity"]["protocol"] for r in stored} == {f"paper-{protocols.PAPER_VERSION}"}


def test_paper_protocol_runs_our_blocks_methods_as_separate_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ours under the paper's flow, sweep and schedule: ``alternating`` (exact per-block rho
    before each stage), ``alternating_strat`` (the same on stratified batches) and
    ``joint_blockbatch`` (joint on whole blocks); their own rows of the table."""
    from flowpheno.bench.protocols import PaperSetup
    from flowpheno.bench.synthetic import make_data

    methods = "baseline,alternating,alternating_strat,joint_blockbatch"
    out, tiny, runs = _paper_crescent(tmp_path, monkeypatch, methods, epochs=4, stages=2)
    assert {m: runs[m]["members"] for m in runs} == {
        "baseline": 12,
        "alternating": 12,
        "alternating_strat": 12,
        "joint_blockbatch": 48,
    }
    data = make_data("blocks", "crescent", 0, tiny, out / "cache")
    repeated = np.bincount(data["block_ids"]) > 1
    for method in ("alternating", "alternating_strat"):
        rho = np.array(runs[method]["covariance"]["rho"])
        assert len(runs[method]["rho_mae_stages"]) == 2  # one exact step before each of the 2 stages
        assert np.all(rho[~repeated] == pytest.approx(0.5)) and not np.allclose(rho[repeated], 0.5)
        assert runs[method]["steps"] == 2 * 1 * 2  # 2 stages of epochs // 4 = 1 epoch, 2 batches of 40
    assert runs["joint_blockbatch"]["rho_start"] in PaperSetup().joint_rho_starts
    table = (out / "table1.md").read_text()
    assert all(f"| blocks | {method} |" in table for method in runs)
    stages = " -> ".join(f"{v:.3f}" for v in runs["alternating"]["rho_mae_stages"])
    assert f"| blocks | alternating | crescent | 1 | rho MAE {stages} |" in table  # what validation chose


def test_blocks_diagnosis_rebuilds_the_truth_of_each_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`benchmarks/blocks_diagnosis.py` reads a paper-protocol results.json: the block truth it
    rebuilds from the recorded sizes gives the rho error the run itself recorded, and the
    grid's validation curve bottoms out at the value the grid chose."""
    import sys

    from conftest import ROOT

    out, _, runs = _paper_crescent(tmp_path, monkeypatch, "baseline,grid,alternating", epochs=4, stages=2)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import blocks_diagnosis
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    found = blocks_diagnosis.diagnose(*blocks_diagnosis.load_runs(out, "crescent", 0))
    rows = {row["method"]: row for row in found["rows"]}
    assert rows["baseline"]["vs_baseline"] == 0.0
    assert rows["grid"]["vs_baseline"] == pytest.approx(runs["grid"]["test_nll"] - runs["baseline"]["test_nll"])
    assert rows["alternating"]["rho_mae"] == pytest.approx(runs["alternating"]["rho_mae_repeated"], abs=1e-9)
    best = min(found["grid_curve"], key=lambda point: point["val_nll"])
    assert best["rho"] == rows["grid"]["rho"] and best["val_nll"] == runs["grid"]["val_nll"]
    with pytest.raises(FlowphenoError, match="has no blocks sinewave baseline run of seed 0"):
        blocks_diagnosis.load_runs(out, "sinewave", 0)


@pytest.mark.slow
def test_hs1940_benchmark_never_empties_a_folder_it_did_not_write(tmp_path: Path) -> None:
    """`benchmarks/hs1940_workflow.py --workdir` replaces an earlier run's files only: a user's
    folder is refused before anything is written or removed."""
    import subprocess
    import sys

    from conftest import ROOT, snapshot

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me\n")
    before = snapshot(folder)
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "hs1940_workflow.py"),
            "--workdir",
            str(folder),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,  # a hang guard only: it stops in a few seconds
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: --workdir {folder} is a folder flowpheno did not write (it holds notes.txt); choose a new or empty folder"
    ]
    assert snapshot(folder) == before and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_benchmark_scripts_refuse_bad_options_before_any_work(tmp_path: Path) -> None:
    """A bad option value of a `benchmarks/*.py` script ends it with click's usage error (exit 2,
    one `Error:` line naming the option) before anything is run or written."""
    import subprocess
    import sys

    from conftest import ROOT

    cases = [
        ("batched_training.py", ["--steps", "-1"], "'--steps': Input should be greater than or equal to 1"),
        (
            "blocks_diagnosis.py",
            ["--results", "x", "--shapes", "moon"],
            "'--shapes': 'moon': choose from abs, crescent, crescentcubed, sign, sinewave",
        ),
        (
            "blocks_diagnosis.py",
            ["--results", "x", "--seeds", "0,a"],
            "'--seeds': 'a': each seed is a whole number >= 0",
        ),
        ("batched_training.py", ["--device", "tpu"], "'--device': 'tpu': choose cpu, cuda or cuda:N"),
        ("batched_training.py", ["--members", "4,abc"], "'--members': 'abc': each K is a whole number >= 1"),
        ("bench_scale.py", ["--sizes", "1000,0"], "'--sizes': '0': each n is a whole number of at least 100"),
        (
            "bench_scale.py",
            ["--methods", "joint,foo"],
            "'--methods': 'foo': choose from alternating, alternating_scale, joint, joint_scale, joint_exact",
        ),
        ("patience.py", ["--seeds", "1,x"], "'--seeds': 'x': each is a whole number of at least 1"),
        ("patience.py", ["--patience", "15,15"], "'--patience': '15' is given twice"),
        ("patience.py", ["--cohorts", "hs1940,ukb"], "'--cohorts': 'ukb': choose from hs1940, example"),
        ("bench_overhead.py", ["--batch-size", "1"], "'--batch-size': Input should be greater than or equal to 2"),
        ("bench_overhead.py", ["--n", "100"], "'--batch-size': 256 is more than --n 100"),
        (
            "gwas_power.py",
            ["--arms", "flow_kinship,foo"],
            "'--arms': 'foo': choose from single, rint_mv, flow_iid, flow_kinship, flow_kinship_scale, oracle",
        ),
        (
            "gpu_check.py",
            ["--only", "overhead,foo"],
            "'--only': 'foo': choose from "
            + ", ".join(
                ["example_fit", "overhead", "exact_objective", "images", "host_syncs", "batch_profile", "batch_sizes"]
            ),
        ),
    ]
    for script_name, arguments, message in cases:
        out = tmp_path / "out"
        result = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / script_name), *arguments, "--out", str(out)],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,  # a hang guard only: each stops in seconds
        )
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
        assert (script_name, result.returncode, errors) == (script_name, 2, [f"Error: Invalid value for {message}"])
        assert "Traceback" not in result.stderr and result.stdout == ""
        assert not out.exists(), f"{script_name} {arguments} wrote {out}"
