"""``--out`` never destroys what flowpheno did not write, and a bad ``--out`` fails before any work."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import invoke, snapshot, write_table

from flowpheno.errors import FlowphenoError
from flowpheno.io.atomic import MANIFEST, _host, atomic_path, check_file_output

FAST = ["--mode", "iid", "--epochs", "1", "--stages", "1", "--layers", "2", "--hidden", "16", "--device", "cpu"]


def _cohort(folder: Path, n: int = 120) -> dict[str, Path]:
    """pheno.tsv, covar.tsv and kin.npz (with an eigendecomposition cache beside it) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    ids = [f"i{k}" for k in range(n)]
    pheno = write_table(
        folder / "pheno.tsv",
        pd.DataFrame({"FID": ids, "IID": ids, "a": rng.normal(size=n), "b": rng.gamma(2.0, size=n)}),
    )
    covar = write_table(folder / "covar.tsv", pd.DataFrame({"FID": ids, "IID": ids, "age": rng.normal(50, 5, size=n)}))
    kinship = folder / "kin.npz"
    np.savez(kinship, K=np.eye(n), ids=np.array(ids))
    cache = folder / ".kin.npz.eig-120-0123456789abcdef0123.npz"
    cache.write_bytes(b"cached eigendecomposition")
    return {"pheno": pheno, "covar": covar, "kin": kinship, "cache": cache}


def _fit(cohort: dict[str, Path], out: Path | str, *extra: str):
    return invoke(
        "fit",
        "--pheno",
        str(cohort["pheno"]),
        "--covar",
        str(cohort["covar"]),
        "--grm",
        str(cohort["kin"]),
        "--out",
        str(out),
        *FAST,
        *extra,
    )


def _error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*.tmp")]


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record whether inputs were read or training started (a refused --out must come first)."""
    from flowpheno import pipeline

    calls: list[str] = []
    real_read, real_run = pipeline.read_phenotypes, pipeline._run_mode

    def read(*args, **kwargs):
        calls.append("read")
        return real_read(*args, **kwargs)

    def run(*args, **kwargs):
        calls.append("train")
        return real_run(*args, **kwargs)

    monkeypatch.setattr(pipeline, "read_phenotypes", read)
    monkeypatch.setattr(pipeline, "_run_mode", run)
    return calls


def _refused_cases(tmp_path: Path, cohort: dict[str, Path]) -> dict[str, tuple[str, str]]:
    """--out and the expected error fragment for every refused run folder."""
    foreign = tmp_path / "mine"
    (foreign / "sub").mkdir(parents=True)
    (foreign / "notes.txt").write_text("my notes\n")
    (foreign / "sub" / "data.csv").write_text("x,y\n1,2\n")
    data = cohort["pheno"].parent
    return {
        "foreign_folder": (
            str(foreign),
            f"--out {foreign} is a folder flowpheno did not write (it holds notes.txt, sub); choose a new or empty folder",
        ),
        "inputs_folder": (
            str(data),
            f"--out {data} contains the --pheno input {cohort['pheno']}: choose a new folder for --out",
        ),
        "pheno_file": (
            str(cohort["pheno"]),
            f"--out {cohort['pheno']} is the --pheno input {cohort['pheno']}: writing there would destroy it",
        ),
        "covar_file": (str(cohort["covar"]), f"--out {cohort['covar']} is the --covar input"),
        "kinship_file": (str(cohort["kin"]), f"--out {cohort['kin']} is the --grm input"),
        "eigen_cache": (str(cohort["cache"]), f"--out {cohort['cache']} is the --grm input"),
        "ancestor_of_inputs": (str(data.parent), f"--out {data.parent} contains the --pheno input"),
        "under_a_file": (
            str(cohort["pheno"] / "run"),
            f"--out {cohort['pheno'] / 'run'}: {cohort['pheno']} is a file, not a folder",
        ),
        "current_folder": (".", "--out . is the current folder or holds it; name a new folder, e.g. --out run"),
    }


CASES = [
    "foreign_folder",
    "inputs_folder",
    "pheno_file",
    "covar_file",
    "kinship_file",
    "eigen_cache",
    "ancestor_of_inputs",
    "under_a_file",
    "current_folder",
]


@pytest.mark.parametrize("case", CASES)
def test_refused_out_touches_nothing_and_fails_before_reading(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_training: list[str]
) -> None:
    cohort = _cohort(tmp_path / "project" / "data")
    out, message = _refused_cases(tmp_path, cohort)[case]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    listing = sorted(p for p in tmp_path.rglob("*"))
    result = _fit(cohort, out)
    assert result.returncode == 1
    assert message in _error(result)
    assert no_training == []  # refused before any input was read
    assert snapshot(tmp_path) == before
    assert sorted(p for p in tmp_path.rglob("*")) == listing  # nothing created: no run folder, no temporary


@pytest.mark.slow
def test_earlier_run_needs_overwrite_and_is_then_replaced(tmp_path: Path, no_training: list[str]) -> None:
    cohort = _cohort(tmp_path / "data")
    out = tmp_path / "run"
    first = _fit(cohort, out)
    assert first.returncode == 0, first.stderr
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["command"] == "fit"
    assert sorted(manifest["files"]) == [
        "diagnostics.png",
        "fit.json",
        "gaussianized.tsv",
        "model.json",
        "model.safetensors",
        "split.tsv",
    ]
    no_training.clear()
    before = snapshot(tmp_path)
    again = _fit(cohort, out, "--seed", "5")
    assert again.returncode == 1
    assert f"--out {out} holds an earlier flowpheno run; pass --overwrite to replace it" in _error(again)
    assert no_training == [] and snapshot(tmp_path) == before
    replaced = _fit(cohort, out, "--seed", "5", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads((out / "fit.json").read_text())["seed"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run"]  # no backup or temporary left


def test_overwrite_never_removes_a_file_added_to_a_run(tmp_path: Path) -> None:
    cohort = _cohort(tmp_path / "data")
    out = tmp_path / "run"
    assert _fit(cohort, out).returncode == 0
    (out / "notes.txt").write_text("interpretation\n")
    before = snapshot(tmp_path)
    result = _fit(cohort, out, "--overwrite")
    assert result.returncode == 1
    assert f"--out {out} holds an earlier flowpheno run and also notes.txt, which flowpheno did not write" in _error(
        result
    )
    assert snapshot(tmp_path) == before


def test_overwrite_does_not_make_a_foreign_folder_replaceable(tmp_path: Path) -> None:
    cohort = _cohort(tmp_path / "data")
    out, message = _refused_cases(tmp_path, cohort)["foreign_folder"]
    before = snapshot(tmp_path)
    result = _fit(cohort, out, "--overwrite")
    assert result.returncode == 1 and message in _error(result)
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_run_written_before_manifests_is_recognised(tmp_path: Path) -> None:
    cohort = _cohort(tmp_path / "data")
    out = tmp_path / "run"
    assert _fit(cohort, out).returncode == 0
    for name in (MANIFEST, "split.tsv"):  # as written by earlier versions: fit.json and the run's files only
        (out / name).unlink()
    assert "holds an earlier flowpheno run; pass --overwrite" in _error(_fit(cohort, out))
    assert _fit(cohort, out, "--overwrite").returncode == 0


def test_empty_existing_folder_is_used(tmp_path: Path) -> None:
    cohort = _cohort(tmp_path / "data")
    out = tmp_path / "empty"
    out.mkdir()
    result = _fit(cohort, out)
    assert result.returncode == 0, result.stderr
    assert (out / "gaussianized.tsv").is_file()


def test_unwritable_parent_fails_before_reading(tmp_path: Path, no_training: list[str]) -> None:
    cohort = _cohort(tmp_path / "data")
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        out = locked / "run"
    else:  # root ignores permission bits; /sys refuses new entries even to root (EPERM or EROFS)
        out = Path("/sys/flowpheno-run")
        try:
            os.mkdir(out)
        except OSError:
            pass
        else:
            os.rmdir(out)
            pytest.skip("/sys accepts new folders here: no unwritable folder to test with")
    before = snapshot(tmp_path)
    result = _fit(cohort, out)
    assert result.returncode == 1
    line = _error(result)
    assert f"cannot write --out {out}: " in line and line.endswith("--out")
    assert no_training == [] and not out.exists() and snapshot(tmp_path) == before


def test_full_disk_at_write_time_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flowpheno import pipeline

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pipeline, "write_phenotypes", full)
    cohort = _cohort(tmp_path / "data")
    out = tmp_path / "new" / "run"
    before = snapshot(tmp_path)
    result = _fit(cohort, out)
    assert result.returncode == 1
    assert f"cannot write --out {out}: the disk is full: free some space or choose another --out" in _error(result)
    assert not (tmp_path / "new").exists()  # the temporary folder and the parent made for it are gone
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_leftovers_of_ended_runs_are_removed_and_reported(tmp_path: Path) -> None:
    cohort = _cohort(tmp_path / "data")
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(ended.stdout)
    leftover = tmp_path / f".run.{_host()}-{dead}.abcd1234.tmp"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"\0" * 2_500_000)
    alive = tmp_path / f".run.{_host()}-{os.getppid()}.efgh5678.tmp"  # a live process: left alone
    alive.mkdir()
    other = tmp_path / ".other.host-1.ijkl9012.tmp"  # another target: not looked at
    other.mkdir()
    result = _fit(cohort, tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert f"removed {leftover} (2.5 MB), left by an interrupted flowpheno run (process {dead} has ended)" in " ".join(
        result.stderr.split()
    )
    assert not leftover.exists() and alive.is_dir() and other.is_dir()
    assert f"{alive} is being written by process {os.getppid()}, still running; left as it is" in " ".join(
        result.stderr.split()
    )


@pytest.mark.slow
def test_library_api_refuses_and_overwrites(tmp_path: Path) -> None:
    from flowpheno.pipeline import FitConfig, fit_phenotypes
    from flowpheno.train import TrainConfig

    cohort = _cohort(tmp_path / "data")
    config = FitConfig(mode="iid", layers=2, hidden=16, train=TrainConfig(epochs=1, stages=1))
    with pytest.raises(FlowphenoError, match="contains the --pheno input"):
        fit_phenotypes(cohort["pheno"], out=tmp_path / "data", config=config)
    fit_phenotypes(cohort["pheno"], out=tmp_path / "run", config=config)
    with pytest.raises(FlowphenoError, match="pass --overwrite"):
        fit_phenotypes(cohort["pheno"], out=tmp_path / "run", config=config)
    _, table, _ = fit_phenotypes(cohort["pheno"], out=tmp_path / "run", config=config, overwrite=True)
    assert pd.read_csv(tmp_path / "run" / "gaussianized.tsv", sep="\t").shape == table.shape


@pytest.fixture
def fitted(tmp_path: Path) -> tuple[dict[str, Path], Path]:
    cohort = _cohort(tmp_path / "data")
    run = tmp_path / "run"
    result = invoke("fit", "--pheno", str(cohort["pheno"]), "--out", str(run), *FAST)
    assert result.returncode == 0, result.stderr
    return cohort, run


@pytest.mark.parametrize("case", ["folder", "pheno", "model_folder", "inside_model", "under_file"])
def test_transform_out_refused_before_loading(
    case: str, fitted: tuple[dict[str, Path], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flowpheno import pipeline

    cohort, run = fitted
    folder = run.parent / "outputs"
    folder.mkdir()
    out, message = {
        "folder": (folder, f"--out {folder} is a folder; give a file name, e.g. {folder / 'output.tsv'}"),
        "pheno": (
            cohort["pheno"],
            f"--out {cohort['pheno']} is the --pheno input {cohort['pheno']}: writing there would destroy it",
        ),
        "model_folder": (run, f"--out {run} is a folder; give a file name"),
        "inside_model": (
            run / "fit.json",
            f"--out {run / 'fit.json'} lies inside the --model folder {run}: choose an --out outside it",
        ),
        "under_file": (
            cohort["pheno"] / "z.tsv",
            f"--out {cohort['pheno'] / 'z.tsv'}: {cohort['pheno']} is a file, not a folder",
        ),
    }[case]
    loaded: list[str] = []
    monkeypatch.setattr(pipeline.PhenotypeModel, "load", lambda *a, **k: loaded.append("model") or None)
    before = snapshot(run.parent)
    result = invoke(
        "transform", "--model", str(run), "--pheno", str(cohort["pheno"]), "--out", str(out), "--device", "cpu"
    )
    assert result.returncode == 1
    assert message in _error(result)
    assert loaded == []
    assert snapshot(run.parent) == before
    assert not _temporaries(run.parent)


@pytest.mark.slow
def test_transform_writes_a_new_file(fitted: tuple[dict[str, Path], Path]) -> None:
    cohort, run = fitted
    out = run.parent / "z.tsv"
    result = invoke(
        "transform", "--model", str(run), "--pheno", str(cohort["pheno"]), "--out", str(out), "--device", "cpu"
    )
    assert result.returncode == 0, result.stderr
    expected = pd.read_csv(run / "gaussianized.tsv", sep="\t")
    pd.testing.assert_frame_equal(pd.read_csv(out, sep="\t"), expected)


def test_grm_out_refused_at_an_input_or_folder(tmp_path: Path) -> None:
    from conftest import EXAMPLES

    before = snapshot(EXAMPLES)
    result = invoke("grm", "--bfile", str(EXAMPLES / "cohort"), "--out", str(EXAMPLES / "cohort.fam"))
    assert result.returncode == 1
    assert f"--out {EXAMPLES / 'cohort.fam'} is the --bfile input" in _error(result)
    result = invoke("grm", "--bfile", str(EXAMPLES / "cohort"), "--out", str(tmp_path))
    assert result.returncode == 1 and f"--out {tmp_path} is a folder; give a file name" in _error(result)
    assert snapshot(EXAMPLES) == before


def test_atomic_path_names_target_on_write_errors(tmp_path: Path) -> None:
    target = tmp_path / "z.tsv"
    with pytest.raises(FlowphenoError, match=rf"cannot write --out {target}: the disk is full"):
        with atomic_path(target):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []
    target.write_text("x")
    with pytest.raises(FlowphenoError, match=f"--out {target / 'x.tsv'}: {target} is a file, not a folder"):
        check_file_output(target / "x.tsv")


@pytest.mark.parametrize(
    "command", [["bench", "stocks", "--quick"], ["bench", "images", "--quick"], ["bench", "synthetic", "--quick"]]
)
def test_bench_refuses_a_foreign_folder_before_running(command: list[str], tmp_path: Path) -> None:
    prices = tmp_path / "prices"
    prices.mkdir()
    (prices / "AAPL.csv").write_text("Date,Close\n2020-01-02,1.0\n")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("my notes\n")
    extra = ["--prices", str(prices)] if command[1] == "stocks" else []
    before = snapshot(tmp_path)
    result = invoke(*command, *extra, "--out", str(foreign))
    assert result.returncode == 1
    assert (
        f"--out {foreign} is a folder flowpheno did not write (it holds notes.txt); choose a new or empty folder"
        in _error(result)
    )
    assert snapshot(tmp_path) == before and sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    if command[1] == "stocks":
        inside = invoke(*command, *extra, "--out", str(prices / "results"))
        assert inside.returncode == 1
        assert (
            f"--out {prices / 'results'} lies inside the --prices folder {prices}: choose an --out outside it"
            in _error(inside)
        )
        assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "command",
    [
        ["simulate", "--n", "20", "--snps", "100", "--traits", "2", "--causal", "2", "--chromosomes", "1"],
        ["bench", "stocks-data"],
        ["bench", "images-data", "--individuals", "3", "--size", "8"],
    ],
    ids=["simulate", "stocks-data", "images-data"],
)
def test_data_writers_never_write_into_a_users_folder(command: list[str], tmp_path: Path) -> None:
    """simulate and the bench data writers use the same rules as fit: a folder of the user's
    (here holding a pheno.tsv that simulate would otherwise overwrite) is refused untouched;
    a new folder is written, and a second run needs --overwrite."""
    users = tmp_path / "mine"
    users.mkdir()
    (users / "pheno.tsv").write_text("FID\tIID\tx\nf\ti\t1\n")
    (users / "README.txt").write_text("my notes\n")
    before = snapshot(users)
    result = invoke(*command, "--out", users)
    assert result.returncode == 1 and "--overwrite" not in result.stderr.split("error:")[0], result
    assert len(result.stderr.strip().splitlines()) == 1 and str(users) in result.stderr, result
    assert snapshot(users) == before
    fresh = tmp_path / "new"
    assert invoke(*command, "--out", fresh).returncode == 0
    written = snapshot(fresh)
    again = invoke(*command, "--out", fresh)
    assert again.returncode == 1 and "--overwrite" in again.stderr, again
    assert snapshot(fresh) == written
    assert invoke(*command, "--out", fresh, "--overwrite").returncode == 0
    assert snapshot(fresh).keys() == written.keys()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left beside


def test_overwrite_replaces_only_the_same_commands_output(tmp_path: Path) -> None:
    """--overwrite replaces this command's own earlier output, never another command's results."""
    images = tmp_path / "imgs"
    assert invoke("bench", "images-data", "--individuals", "3", "--size", "8", "--out", images).returncode == 0
    before = snapshot(images)
    result = invoke("bench", "stocks-data", "--out", images, "--overwrite")
    assert result.returncode == 1 and "holds the output of flowpheno bench images-data" in result.stderr, result
    assert snapshot(images) == before
