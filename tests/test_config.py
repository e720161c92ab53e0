"""The settings of a fit: typed dataclasses with one set of defaults, errors that name the setting
as its reader wrote it (``TrainConfig.epochs`` in code, ``--epochs`` on the command line), and the
one table (``flowpheno.config.FLAGS``) from which ``flowpheno fit`` takes its flags' defaults."""

from __future__ import annotations

import re
import typing
from dataclasses import fields
from typing import Literal, get_args

import pytest
import typer
from conftest import ROOT, invoke

from flowpheno import cli
from flowpheno.config import FLAGS, FitConfig, TrainConfig, fit_arguments, fit_config, flag_name, worded, workflow_name
from flowpheno.errors import OptionError

# (the refused settings, the library's message, the flowpheno fit arguments, the command line's message)
REFUSED = [
    (
        lambda: TrainConfig(epochs=0),
        "TrainConfig.epochs: must be an integer >= 1, got 0",
        ["--epochs", "0"],
        "--epochs 0: must be an integer >= 1",
    ),
    (lambda: TrainConfig(epochs=2.5), "TrainConfig.epochs: must be an integer >= 1, got 2.5", None, None),
    (
        lambda: TrainConfig(lr=-1),
        "TrainConfig.lr: must be a positive finite number, got -1",
        ["--lr", "-1"],
        "--lr -1: must be a positive finite number",
    ),
    (
        lambda: TrainConfig(lr=float("nan")),
        "TrainConfig.lr: must be a positive finite number, got nan",
        ["--lr", "nan"],
        "--lr nan: must be a positive finite number",
    ),
    (
        lambda: TrainConfig(batch_size=1),
        "TrainConfig.batch_size: must be an integer >= 2, got 1",
        ["--batch-size", "1"],
        "--batch-size 1: must be an integer >= 2",
    ),
    (
        lambda: TrainConfig(weight_decay=-1e-3),
        "TrainConfig.weight_decay: must be a finite number >= 0, got -0.001",
        ["--weight-decay", "-0.001"],
        "--weight-decay -0.001: must be a finite number >= 0",
    ),
    (
        lambda: TrainConfig(patience=-1),
        "TrainConfig.patience: must be an integer >= 0 (or unset), got -1",
        ["--patience", "-1"],
        "--patience -1: must be an integer >= 0 (or unset)",
    ),
    (
        lambda: TrainConfig(seed=-1),
        "TrainConfig.seed: must be an integer >= 0, got -1",
        ["--seed", "-1"],
        "--seed -1: must be an integer >= 0",
    ),
    (
        lambda: TrainConfig(seed=2**63),
        f"TrainConfig.seed: must be below 2^63, got {2**63}",
        ["--seed", str(2**63)],
        f"--seed {2**63}: must be below 2^63",
    ),
    (
        lambda: TrainConfig(objective="full"),
        "TrainConfig.objective: choose one of minibatch, exact, got 'full'",
        ["--objective", "full"],
        "--objective 'full': choose one of minibatch, exact",
    ),
    (lambda: TrainConfig(lr_decay=1.5), "TrainConfig.lr_decay: must be in (0, 1], got 1.5", None, None),
    (
        lambda: TrainConfig(covariance_lr=0.0),
        "TrainConfig.covariance_lr: must be a positive finite number, got 0.0",
        None,
        None,
    ),
    (
        lambda: TrainConfig(max_grad_norm=0.0),
        "TrainConfig.max_grad_norm: must be a positive finite number (or None: no clipping), got 0.0",
        None,
        None,
    ),
    (
        lambda: TrainConfig(estimator="exact"),
        "TrainConfig.estimator: choose one of plain, control_variate, got 'exact'",
        None,
        None,
    ),
    (
        lambda: TrainConfig(batching="random"),
        "TrainConfig.batching: choose one of uniform, blocks, stratified, got 'random'",
        None,
        None,
    ),
    (
        lambda: TrainConfig(profile_scale=1),
        "TrainConfig.profile_scale: must be True or False (or None: automatic), got 1",
        None,
        None,
    ),
    (
        lambda: FitConfig(mode="bogus"),
        "FitConfig.mode: choose one of iid, grid, alternating, joint, got 'bogus'",
        ["--mode", "bogus"],
        "--mode 'bogus': choose one of iid, grid, alternating, joint",
    ),
    (
        lambda: FitConfig(s2_grid=[0.0, 1.5]),
        "FitConfig.s2_grid: every s2 value must be in [0, 1), got 1.5",
        ["--s2-grid", "0,1.5"],
        "--s2-grid 1.5: every s2 value must be in [0, 1)",
    ),
    (
        lambda: FitConfig(val_frac=0.9),
        "FitConfig.val_frac: must be in [0, 0.9), got 0.9",
        ["--val-frac", "0.9"],
        "--val-frac 0.9: must be in [0, 0.9)",
    ),
    (
        lambda: FitConfig(layers=0),
        "FitConfig.layers: must be an integer >= 1, got 0",
        ["--layers", "0"],
        "--layers 0: must be an integer >= 1",
    ),
    (
        lambda: FitConfig(hidden=0),
        "FitConfig.hidden: must be an integer >= 1, got 0",
        ["--hidden", "0"],
        "--hidden 0: must be an integer >= 1",
    ),
    (
        lambda: FitConfig(traits=["a", "a"]),
        "FitConfig.traits: names 'a' twice; name each trait column once, got ['a', 'a']",
        ["--traits", "a,a"],
        "--traits a,a: names 'a' twice; name each trait column once",
    ),
    (
        lambda: FitConfig(mode="grid", val_frac=0.0),
        "FitConfig.val_frac: must be above 0 when FitConfig.mode is 'grid' (the grid picks s2 by validation NLL), got 0.0",
        ["--mode", "grid", "--val-frac", "0"],
        "--val-frac 0: must be above 0 when --mode is 'grid' (the grid picks s2 by validation NLL)",
    ),
    (
        lambda: FitConfig(mode="iid", train=TrainConfig(profile_scale=True)),
        "TrainConfig.profile_scale: a step of FitConfig.mode 'alternating' or 'joint' only, not of 'iid': leave it out, or use FitConfig.mode 'alternating', got True",
        ["--mode", "iid", "--scale-step"],
        "--scale-step: a step of --mode 'alternating' or 'joint' only, not of 'iid': leave it out, or use --mode 'alternating'",
    ),
    (lambda: FitConfig(train={"epochs": 3}), "FitConfig.train: must be a TrainConfig, got 'dict'", None, None),
    (
        lambda: FitConfig(s2_grid=[0.5, 0.5]),
        "FitConfig.s2_grid: gives 0.5 twice; give each s2 value once, got [0.5, 0.5]",
        ["--s2-grid", "0.5,0.5"],
        "--s2-grid 0.5,0.5: gives 0.5 twice; give each s2 value once",
    ),
    (
        lambda: FitConfig(device="tpu"),
        "FitConfig.device: must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'",
        ["--device", "tpu"],
        "--device 'tpu': use cpu or cuda",
    ),
    (
        lambda: FitConfig(categorical="batch"),
        "FitConfig.categorical: must be a list of covariate column names, e.g. ['batch'], got 'batch'",
        None,
        None,
    ),
    (lambda: FitConfig(keep_outliers="yes"), "FitConfig.keep_outliers: must be True or False, got 'yes'", None, None),
]


@pytest.mark.parametrize(
    ("make", "message"), [case[:2] for case in REFUSED], ids=[case[1].split(":")[0] for case in REFUSED]
)
def test_library_errors_name_the_setting_as_written_in_code(make, message: str) -> None:
    with pytest.raises(OptionError) as error:
        make()
    assert str(error.value) == message


CLI_CASES = [case[2:] for case in REFUSED if case[2] is not None]


@pytest.mark.parametrize(("args", "message"), CLI_CASES, ids=[case[1].split(":")[0] for case in CLI_CASES])
def test_command_line_errors_name_the_flag(args: list[str], message: str, tmp_path) -> None:
    """The same refusal from ``flowpheno fit``: one line naming the flag, exit code 2, nothing written."""
    pheno = tmp_path / "pheno.tsv"
    pheno.write_text("FID\tIID\ta\nf\ti1\t1.0\n")
    result = invoke("fit", "--pheno", pheno, "--out", tmp_path / "run", *args)
    assert result.returncode == 2, result
    assert result.stderr == f"error: {message}\n"
    assert not (tmp_path / "run").exists()


def test_an_empty_grid_value_is_refused_not_dropped(tmp_path) -> None:
    """``--s2-grid 0,,0.5`` is a typo, not a two-value grid."""
    pheno = tmp_path / "pheno.tsv"
    pheno.write_text("FID\tIID\ta\nf\ti1\t1.0\n")
    result = invoke("fit", "--pheno", pheno, "--out", tmp_path / "run", "--mode", "grid", "--s2-grid", "0,,0.5")
    assert result.returncode == 2
    assert result.stderr == (
        "error: --s2-grid '0,,0.5': an empty value between commas; give comma-separated numbers, e.g. 0,0.1,0.5\n"
    )
    assert not (tmp_path / "run").exists()


def test_a_grid_given_without_mode_grid_is_refused(tmp_path) -> None:
    """``--s2-grid`` is read by ``--mode grid`` only: given with another mode it would be ignored."""
    pheno = tmp_path / "pheno.tsv"
    pheno.write_text("FID\tIID\ta\nf\ti1\t1.0\n")
    result = invoke("fit", "--pheno", pheno, "--out", tmp_path / "run", "--s2-grid", "0.1,0.5")
    assert result.returncode == 2
    assert result.stderr == (
        "error: --s2-grid 0.1,0.5: the values of --mode grid, not of --mode alternating; drop it or add --mode grid\n"
    )
    assert not (tmp_path / "run").exists()


def test_fit_phenotypes_refuses_a_config_that_is_not_a_fit_config(tmp_path) -> None:
    from flowpheno.pipeline import fit_phenotypes

    with pytest.raises(OptionError) as error:
        fit_phenotypes(tmp_path / "pheno.tsv", config=TrainConfig(epochs=3), progress=False)
    assert str(error.value) == (
        "fit_phenotypes(config=...): must be a FitConfig (training settings go in "
        "FitConfig(train=TrainConfig(...))), got TrainConfig"
    )


def test_a_config_changed_after_construction_names_the_flag_from_the_command_line() -> None:
    config = FitConfig()
    config.train.epochs = 0
    with pytest.raises(OptionError) as error:
        config.validate()
    assert str(error.value) == "TrainConfig.epochs: must be an integer >= 1, got 0"
    assert worded(error.value, flag_name, command_line=True) == "--epochs 0: must be an integer >= 1"
    assert worded(error.value, workflow_name) == "fit.epochs: must be an integer >= 1, got 0"


def _fit_parameters() -> dict[str, typing.Any]:
    command = typer.main.get_command(cli.app).commands["fit"]  # type: ignore[attr-defined]
    return {param.opts[0]: param for param in command.params if param.opts}


def test_every_fit_flag_default_is_the_dataclass_default() -> None:
    """Each flag of the table is declared by ``flowpheno fit`` with the dataclass's default (the
    command-line text of it: ``--s2-grid`` comma-separated) and the table's help."""
    parameters = _fit_parameters()
    defaults = {
        **{f.name: getattr(FitConfig(), f.name) for f in fields(FitConfig)},
        **{f.name: getattr(TrainConfig(), f.name) for f in fields(TrainConfig)},
    }
    for name, flag in FLAGS.items():
        assert flag.flag in parameters, flag.flag
        declared = parameters[flag.flag].default
        assert flag.default == defaults[name]
        if name == "device":  # the one flag whose default is not the field's: cuda when available, found at run time
            assert declared is None and "default: cuda when available" in flag.help
        elif name == "s2_grid":
            assert [float(value) for value in declared.split(",")] == defaults[name]
        else:
            assert declared == defaults[name] and type(declared) is type(defaults[name]), name
        if name != "threads":  # --threads: one declaration shared by every command
            assert parameters[flag.flag].help == flag.full_help


def test_choice_fields_are_literal_types_listed_in_the_help() -> None:
    for owner, name, choices in [
        (FitConfig, "mode", ("iid", "grid", "alternating", "joint")),
        (TrainConfig, "objective", ("minibatch", "exact")),
        (TrainConfig, "estimator", ("plain", "control_variate")),
        (TrainConfig, "batching", ("uniform", "blocks", "stratified")),
    ]:
        kind = typing.get_type_hints(owner)[name]
        assert typing.get_origin(kind) is Literal and get_args(kind) == choices
    parameters = _fit_parameters()
    assert parameters["--mode"].help.startswith("iid | grid | alternating | joint: ")
    assert parameters["--objective"].help.startswith("minibatch | exact: ")


def test_field_names_are_unique_across_the_dataclasses() -> None:
    """An error names a field without its class (the wording looks the class up by name)."""
    assert not {f.name for f in fields(FitConfig)} & {f.name for f in fields(TrainConfig)}


def test_workflow_keys_become_fit_arguments_and_configs() -> None:
    settings = {
        "epochs": 3,
        "lr": 0.002,
        "s2_grid": [0, 0.25],
        "scale_step": True,
        "patience": None,
        "objective": "exact",
    }
    assert fit_arguments(settings) == [
        "--epochs",
        "3",
        "--lr",
        "0.002",
        "--s2-grid",
        "0,0.25",
        "--scale-step",
        "--objective",
        "exact",
    ]
    assert fit_arguments({"scale_step": False}) == ["--no-scale-step"]  # off, not the automatic default
    assert fit_arguments({"scale_step": None}) == []
    assert fit_arguments({"lr": 1.23456789e-4, "weight_decay": 1e-6}) == [
        "--lr",
        "0.000123456789",
        "--weight-decay",
        "1e-06",
    ]
    config = fit_config(settings)
    assert (
        config.train.epochs,
        config.train.lr,
        config.s2_grid,
        config.train.profile_scale,
        config.train.objective,
    ) == (3, 0.002, [0, 0.25], True, "exact")
    assert config.train.patience == TrainConfig().patience and config.layers == FitConfig().layers
    with pytest.raises(OptionError) as error:
        fit_config({"epochs": 0})
    assert worded(error.value, workflow_name) == "fit.epochs: must be an integer >= 1, got 0"


def test_readme_fit_table_defaults_are_the_dataclass_defaults() -> None:
    """README's ``flowpheno fit`` table shows defaults; each is the dataclass's."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("### `flowpheno fit`", 1)[1].split("\n\n", 2)[1]
    checked = set()
    for row in table.splitlines()[2:]:
        cells = [cell.strip() for cell in row.strip("|").split(" | ")]
        names = re.findall(r"`(--[a-z0-9-]+)", cells[0])
        shown = [value.strip(" `") for value in cells[1].split(", ")] if len(names) > 1 else [cells[1].strip("`")]
        for flag, text in zip(names, shown, strict=True):
            field = next((name for name, entry in FLAGS.items() if entry.flag == flag), None)
            if field is None or field in ("device", "threads", "traits"):
                continue  # not a dataclass default (cuda when available; the CPUs this process may use; every column)
            default = FLAGS[field].default
            if isinstance(default, bool):
                assert text == "off" and default is False, flag
            elif FLAGS[field].switch and default is None:  # decided per fit (FitConfig.resolved)
                assert text == "auto", flag
            elif default is None:
                assert text == "none", flag
            elif isinstance(default, list):
                assert [float(value) for value in text.split(",")] == default, flag
            elif isinstance(default, str):
                assert text == default, flag
            else:
                assert float(text) == default, flag
            checked.add(field)
    assert checked == set(FLAGS) - {"device", "threads", "traits"}
