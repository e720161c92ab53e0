"""The workflow's configuration: a --configfile is the whole configuration (never merged with the
example's), a key it leaves out means "none" or the command's default, and bad configurations stop
before any job with the key named. Checked on the jobs and shell commands `snakemake -n -p` plans."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import EXAMPLES, ROOT

LOCAL = Path(sys.executable).parent / "snakemake"
SNAKEMAKE = str(LOCAL) if LOCAL.exists() else shutil.which("snakemake")
pytestmark = pytest.mark.skipif(SNAKEMAKE is None, reason="pip install snakemake")


def dry_run(work: Path, config: dict | None = None) -> subprocess.CompletedProcess[str]:
    """`snakemake -n -p gwas_all` in ``work`` with ``config`` as its --configfile (none: the default)."""
    command = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(work), "-n", "-p", "-c1", "gwas_all"]
    if config is not None:
        (work / "user.json").write_text(json.dumps(config))
        command += ["--configfile", str(work / "user.json")]
    # the timeout guards against a hang only: a dry run takes about 4 s of CPU
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=work)


def shell_commands(output: str) -> list[str]:
    return [line.split("Shell command: ", 1)[1] for line in output.splitlines() if line.startswith("Shell command: ")
            and "None" != line.split("Shell command: ", 1)[1]]


def user_config(work: Path) -> dict:
    """A cohort of its own: the example genotypes, two traits under other names, no covariates, no truth."""
    pheno = pd.read_csv(EXAMPLES / "pheno.tsv", sep="\t")
    pheno.rename(columns={"trait1": "height", "trait3": "weight"})[["FID", "IID", "height", "weight"]].to_csv(
        work / "body.tsv", sep="\t", index=False)
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
    for example_only in ("examples/pheno.tsv", "examples/covar.tsv", "examples/truth.tsv", "results/example", "trait1",
                         "/all/", "flow_iid"):
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
    config = user_config(tmp_path) | {"gwas": {"loco": False, "p_threshold": 5e-8}}
    result = dry_run(tmp_path, config)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    commands = shell_commands(result.stdout)
    assoc = [command for command in commands if command.startswith("flowpheno gwas assoc")]
    assert len(assoc) == 3 and all(f"--kinship {tmp_path / 'out' / 'grm' / 'kinship.cXX.txt'}" in command for command in assoc)
    assert not any("--chr" in command or "--loco" in command or "gwas gather" in command for command in commands)
    assert sum("--per-trait" in command for command in assoc) == 1
    assert all("--threshold 5e-08" in command for command in commands if command.startswith("flowpheno gwas evaluate"))


@pytest.mark.slow
def test_default_configuration_is_the_example(tmp_path: Path) -> None:
    work = tmp_path / "repo"
    work.mkdir()
    (work / "examples").symlink_to(EXAMPLES)
    result = dry_run(work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    commands = shell_commands(result.stdout)
    assert any("--covar examples/covar.tsv" in command and "--traits trait1,trait2,trait3,trait4" in command
               for command in commands)
    assert any("--truth examples/truth.tsv" in command for command in commands)


@pytest.mark.parametrize(("change", "message"), [
    (lambda config: config.pop("methods"), "'methods' is a required property"),
    (lambda config: config.update(trait_group=config.pop("trait_groups")), "'trait_group' was unexpected"),
    (lambda config: config.update(methods=["single", "oracle"]), "oracle needs the simulator's own inverse map"),
    (lambda config: config.update(methods=["single", "rint"]), "'rint' is not one of"),
    (lambda config: config["cohort"].pop("bfile"), "cohort.bfile is required"),
    (lambda config: config["trait_groups"]["body"].append("bmi"), "config trait_groups.body: "),
])
@pytest.mark.slow
def test_bad_configuration_stops_before_any_job(tmp_path: Path, change, message: str) -> None:  # noqa: ANN001
    config = user_config(tmp_path)
    change(config)
    result = dry_run(tmp_path, config)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
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
