"""The workflow's configuration: a --configfile is the whole configuration (never merged with the
example's), a key it leaves out means "none" or the command's default, typed `fit:` keys reach
flowpheno fit as its flags, and bad configurations stop before any job with the key named. Checked
on the jobs and shell commands `snakemake -n -p` plans, with the .test/ configurations where they fit,
and `snakemake --lint` finds nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import EXAMPLES, ROOT

from flowpheno.config import MODES, OBJECTIVES, WORKFLOW_KEYS

LOCAL = Path(sys.executable).parent / "snakemake"
SNAKEMAKE = str(LOCAL) if LOCAL.exists() else shutil.which("snakemake")
pytestmark = pytest.mark.skipif(SNAKEMAKE is None, reason="pip install snakemake")
yaml = pytest.importorskip("yaml")  # PyYAML: a dependency of snakemake
TEST_CONFIGS = ROOT / ".test"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def dry_run(work: Path, config: dict | Path | None = None) -> subprocess.CompletedProcess[str]:
    """`snakemake -n -p gwas_all` in ``work`` with ``config`` (a file, or a dict written to one) as
    its --configfile (none: the default)."""
    command = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(work), "-n", "-p", "-c1", "gwas_all"]
    if isinstance(config, dict):
        (work / "user.json").write_text(json.dumps(config))
        config = work / "user.json"
    if config is not None:
        command += ["--configfile", str(config)]
    # the timeout guards against a hang only: a dry run takes about 4 s of CPU
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=work, check=False)


def ci_config(name: str) -> dict:
    """A configuration of .test/ (as CI runs it)."""
    return yaml.safe_load((TEST_CONFIGS / name / "config.yaml").read_text())


def shell_commands(output: str) -> list[str]:
    return [
        line.split("Shell command: ", 1)[1]
        for line in output.splitlines()
        if line.startswith("Shell command: ") and "None" != line.split("Shell command: ", 1)[1]
    ]


def user_config(work: Path) -> dict:
    """A cohort of its own: the example genotypes, two traits under other names, no covariates, no truth."""
    pheno = pd.read_csv(EXAMPLES / "pheno.tsv", sep="\t")
    pheno.rename(columns={"trait1": "height", "trait3": "weight"})[["FID", "IID", "height", "weight"]].to_csv(
        work / "body.tsv", sep="\t", index=False
    )
    return {
        "outdir": str(work / "out"),
        "cohort": {"bfile": str(EXAMPLES / "cohort"), "pheno": str(work / "body.tsv")},
        "trait_groups": {"body": ["height", "weight"]},
        "methods": ["single", "rint_mv", "flow_kinship"],
    }


@pytest.mark.slow
def test_user_config_is_not_merged_with_the_example(tmp_path: Path) -> None:
    result = dry_run(tmp_path, user_config(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    planned = result.stdout + result.stderr
    commands = shell_commands(result.stdout)
    assert commands, planned[-3000:]
    for example_only in (
        "examples/pheno.tsv",
        "examples/covar.tsv",
        "examples/truth.tsv",
        "results/example",
        "trait1",
        "/all/",
        "flow_iid",
    ):
        assert example_only not in planned, example_only
    assert not any("--covar" in command or "--truth" in command for command in commands)
    rint = [command for command in commands if command.startswith("flowpheno gwas rint")]
    assert len(rint) == 2 and all("--traits height,weight" in command for command in rint)
    assert all(f"{tmp_path / 'body.tsv'}" in command for command in rint)
    fit = next(command for command in commands if command.startswith("(flowpheno fit"))
    assert "--traits height,weight" in fit and "--mode alternating" in fit
    assert "--epochs" not in fit and "--layers" not in fit  # fit settings left out keep flowpheno fit's defaults
    evaluate = [command for command in commands if command.startswith("flowpheno gwas evaluate")]
    assert len(evaluate) == 3 and not any("--threshold" in command or "--kb" in command for command in evaluate)
    prepare = next(command for command in commands if command.startswith("flowpheno gwas prepare"))
    assert f"--bfile {EXAMPLES / 'cohort'}" in prepare
    assert "checkpoint" in planned  # the per-chromosome (LOCO) jobs follow from the prepared .bim


@pytest.mark.slow
def test_loco_off_tests_every_snp_with_the_full_grm(tmp_path: Path) -> None:
    """.test/config-noloco: one chromosome, gwas.loco false, a fixed threshold and clump r2."""
    result = dry_run(tmp_path, TEST_CONFIGS / "config-noloco" / "config.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    commands = shell_commands(result.stdout)
    assoc = [command for command in commands if command.startswith("flowpheno gwas assoc")]
    assert len(assoc) == 4 and all("--kinship results-noloco/grm/kinship.cXX.txt" in command for command in assoc)
    assert not any(" --chr " in command or " --loco " in command or "gwas gather" in command for command in commands)
    assert sum("--per-trait" in command for command in assoc) == 1
    evaluate = [command for command in commands if command.startswith("flowpheno gwas evaluate")]
    assert len(evaluate) == 4 and all("--threshold 5e-08 --r2 0.2 " in command for command in evaluate)
    assert not any(
        "--alpha" in command or "--kb" in command for command in evaluate
    )  # left out: the command's defaults


def test_typed_fit_keys_reach_the_fit_commands(tmp_path: Path) -> None:
    """Each `fit:` key of .test/config-noloco is its flag on flowpheno fit; flow_iid gets no kinship-mode setting."""
    result = dry_run(tmp_path, TEST_CONFIGS / "config-noloco" / "config.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    fits = {
        command.split("/run ", 1)[0].rsplit("/", 1)[1]: command
        for command in shell_commands(result.stdout)
        if command.startswith("(flowpheno fit")
    }
    shared = (
        "--epochs 2 --stages 1 --layers 4 --hidden 32 --batch-size 128 --lr 0.002 --weight-decay 0 --val-frac 0.2 "
        "--patience 3 --seed 1 --device cpu --out"
    )
    assert "--traits trait1,trait2 --mode grid --s2-grid 0.1,0.4 " + shared in fits["flow_kinship"]
    assert "--traits trait1,trait2 --mode iid " + shared in fits["flow_iid"]


@pytest.mark.parametrize(("value", "flag"), [(False, "--no-scale-step"), (True, "--scale-step"), (None, None)])
def test_scale_step_key_reaches_the_kinship_fit_only(tmp_path: Path, value: bool | None, flag: str | None) -> None:
    """`fit.scale_step: false` turns off the automatic scale step (`--no-scale-step`), true asks for it,
    and a key left out (or null) passes nothing; `flow_iid` never gets it."""
    config = ci_config("config")
    config["fit"] = {**(config.get("fit") or {}), "scale_step": value}
    result = dry_run(tmp_path, config)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    fits = {
        command.split("/run ", 1)[0].rsplit("/", 1)[1]: command
        for command in shell_commands(result.stdout)
        if command.startswith("(flowpheno fit")
    }
    assert set(fits) >= {"flow_iid", "flow_kinship"}
    assert "scale-step" not in fits["flow_iid"]
    if flag is None:
        assert "scale-step" not in fits["flow_kinship"]
    else:
        assert f" {flag} " in fits["flow_kinship"] and fits["flow_kinship"].count("scale-step") == 1


def test_typed_fit_keys_are_the_flag_table(tmp_path: Path) -> None:
    """The schema's `fit:` keys are the flag table's workflow keys, choices from the Literal types, and
    restate no default (a key left out is flowpheno fit's default)."""
    fit = yaml.safe_load(SCHEMA.read_text())["properties"]["fit"]
    assert set(fit["properties"]) == set(WORKFLOW_KEYS)
    assert fit["properties"]["mode"]["enum"] == [mode for mode in MODES if mode != "iid"]  # flow_iid is --mode iid
    assert fit["properties"]["objective"]["enum"] == list(OBJECTIVES)
    assert all("default" not in spec for spec in fit["properties"].values())
    assert "extra" not in fit["properties"]


EXTRA = "error: config fit.extra: free text is no longer pasted into flowpheno fit; delete it and set typed keys under fit: "


@pytest.mark.parametrize(
    ("fit", "message"),
    [
        ({"extra": "--lr 0.01 --scale-step --s2-grid 0,0.5"}, EXTRA + "lr: 0.01; scale_step: true; s2_grid: [0,0.5]"),
        ({"extra": "--no-scale-step --epochs 3"}, EXTRA + "scale_step: false; epochs: 3"),
        ({"extra": ""}, EXTRA + "mode, epochs, lr, patience, ... (workflow/schemas/config.schema.yaml)"),
        (
            {"extra": "--grm-pcs pcs.tsv --patience=4"},
            EXTRA + "--grm-pcs has no key (the workflow sets it, or it is not a workflow setting); patience: 4",
        ),
        ({"epochs": 0}, "error: config fit.epochs: must be an integer >= 1, got 0"),
        ({"val_frac": 0.95}, "error: config fit.val_frac: must be in [0, 0.9), got 0.95"),
        (
            {"mode": "grid", "scale_step": True},
            "error: config fit.scale_step: a step of fit.mode 'alternating' or 'joint' only, not of 'grid': leave it out, or use fit.mode 'alternating', got true",
        ),
    ],
)
def test_bad_fit_settings_stop_with_one_line(tmp_path: Path, fit: dict, message: str) -> None:
    config = ci_config("config")
    config["fit"] |= fit
    result = dry_run(tmp_path, config)
    assert result.returncode == 1
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert lines == [message]
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("name", ["config", "config-noloco"])
def test_lint_finds_nothing(tmp_path: Path, name: str) -> None:
    result = subprocess.run(
        [
            SNAKEMAKE,
            "-s",
            str(ROOT / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(TEST_CONFIGS / name / "config.yaml"),
            "--lint",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert "Lints for" not in result.stdout + result.stderr


@pytest.mark.slow
def test_default_configuration_is_the_example(tmp_path: Path) -> None:
    work = tmp_path / "repo"
    work.mkdir()
    (work / "examples").symlink_to(EXAMPLES)
    result = dry_run(work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    commands = shell_commands(result.stdout)
    assert any(
        "--covar examples/covar.tsv" in command and "--traits trait1,trait2,trait3,trait4" in command
        for command in commands
    )
    assert any("--truth examples/truth.tsv" in command for command in commands)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda config: config.pop("methods"), "'methods' is a required property"),
        (lambda config: config.update(trait_group=config.pop("trait_groups")), "'trait_group' was unexpected"),
        (lambda config: config.update(methods=["single", "oracle"]), "oracle needs the simulator's own inverse map"),
        (lambda config: config.update(methods=["single", "rint"]), "'rint' is not one of"),
        (lambda config: config["cohort"].pop("bfile"), "cohort.bfile is required"),
        (lambda config: config["trait_groups"]["body"].append("bmi"), "config trait_groups.body: "),
        (
            lambda config: config.update(fit={"epoch": 3}),
            "error: config fit: Additional properties are not allowed ('epoch' was unexpected)",
        ),
        (lambda config: config.update(fit={"lr": "fast"}), "error: config fit.lr: 'fast' is not of type 'number'"),
        (
            lambda config: config.update(fit={"s2_grid": [0.1, 0.5]}),
            "error: config fit.s2_grid: the values of mode: grid, not of mode: alternating; delete it or set mode: grid",
        ),
        (
            lambda config: config.update(fit={"device": "gpu"}),
            "error: config fit.device: must be 'cpu', 'cuda' or 'cuda:N', got 'gpu'",
        ),
        (
            lambda config: config.update(simulate={"chromosomes": 3, "null_chromosomes": 3}),
            "error: config simulate.null_chromosomes: must be 0 to 2 (fewer than simulate.chromosomes, 3), got 3",
        ),
    ],
)
@pytest.mark.slow
def test_bad_configuration_stops_before_any_job(tmp_path: Path, change, message: str) -> None:
    """One line that names the key (never the whole schema, a traceback or Snakemake's own frames)."""
    config = user_config(tmp_path)
    change(config)
    result = dry_run(tmp_path, config)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert message in output
    assert "Traceback" not in output and 'File "' not in output and "Error validating" not in output
    assert len([line for line in output.splitlines() if message in line]) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_loco_with_one_chromosome_stops_before_any_job(tmp_path: Path) -> None:
    """Known from the .bim before any job (LOCO needs two chromosomes with placed SNPs)."""
    bim = pd.read_csv(EXAMPLES / "cohort.bim", sep="\t", header=None)
    for suffix in (".bed", ".fam"):
        (tmp_path / f"one{suffix}").symlink_to(EXAMPLES / f"cohort{suffix}")
    bim[0] = 1
    bim.to_csv(tmp_path / "one.bim", sep="\t", header=False, index=False)
    config = user_config(tmp_path)
    config["cohort"]["bfile"] = str(tmp_path / "one")
    result = dry_run(tmp_path, config)
    assert result.returncode != 0 and "every placed SNP is on chromosome 1" in result.stdout + result.stderr
    assert "set gwas.loco: false" in result.stdout + result.stderr and not (tmp_path / "out").exists()
    config["gwas"] = {"loco": False}
    assert dry_run(tmp_path, config).returncode == 0
