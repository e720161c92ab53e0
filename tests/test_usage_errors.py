"""Usage errors: one non-empty stderr line, exit code 2, no traceback, nothing written.

Click's own checks (missing or unknown option, a value of the wrong type, out of a declared
range, an extra argument, an unknown command) and the values refused by ``TrainConfig`` /
``FitConfig`` (``OptionError``) end the same way: exit code 2.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import invoke, snapshot

CASES = {
    "missing_out": (["fit", "--pheno", "{pheno}"], "Missing option '--out'"),
    "epochs_not_a_number": (
        ["fit", "--epochs", "two"],
        "Invalid value for '--epochs': Input should be a valid integer",
    ),
    "epochs_zero": (["fit", "--epochs", "0"], "--epochs 0: must be an integer >= 1"),
    "extra_argument": (["fit", "extra"], "Got unexpected extra argument(s) (extra)"),
    "unknown_option": (["fit", "--learning-rate", "1"], "No such option: --learning-rate"),
    "unknown_command": (["fitt"], "No such command 'fitt'"),
    "lr_negative": (["fit", "--lr", "-1"], "--lr -1: must be a positive finite number"),
    "lr_nan": (["fit", "--lr", "nan"], "--lr nan: must be a positive finite number"),
    "lr_zero": (["fit", "--lr", "0"], "--lr 0: must be a positive finite number"),
    "mode_bogus": (["fit", "--mode", "bogus"], "--mode 'bogus': choose one of iid, grid, alternating, joint"),
    "s2_grid_out_of_range": (["fit", "--s2-grid", "0,1.5"], "--s2-grid 1.5: every s2 value must be in [0, 1)"),
    "s2_grid_not_numbers": (["fit", "--s2-grid", "0,a"], "--s2-grid '0,a': give comma-separated numbers"),
    "val_frac": (["fit", "--val-frac", "0.95"], "--val-frac 0.95: must be in [0, 0.9)"),
    "weight_decay": (["fit", "--weight-decay", "-1"], "--weight-decay -1: must be a finite number >= 0"),
    "objective": (["fit", "--objective", "full"], "--objective 'full': choose one of minibatch, exact"),
    "seed": (["fit", "--seed", "-3"], "--seed -3: must be an integer >= 0"),
    "batch_size": (["fit", "--batch-size", "1"], "--batch-size 1: must be an integer >= 2"),
    "patience": (["fit", "--patience", "-1"], "--patience -1: must be an integer >= 0 (or unset)"),
    "traits_twice": (["fit", "--traits", "a,a"], "--traits a,a: names 'a' twice; name each trait column once"),
    "val_frac_grid": (
        ["fit", "--mode", "grid", "--val-frac", "0"],
        "--val-frac 0: must be above 0 when --mode is 'grid' (the grid picks s2 by validation NLL)",
    ),
    "scale_step_both_ways": (
        ["fit", "--scale-step", "--no-scale-step"],
        "--scale-step and --no-scale-step both given; give one (see 'flowpheno fit --help')",
    ),
    "scale_step_grid": (
        ["fit", "--mode", "grid", "--scale-step"],
        "--scale-step: a step of --mode 'alternating' or 'joint' only, not of 'grid': leave it out, or use --mode 'alternating'",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_usage_error_is_one_line_exit_2(case: str, tmp_path: Path) -> None:
    pheno = tmp_path / "pheno.tsv"
    pheno.write_text("FID\tIID\ta\nf\ti1\t1.0\n")
    out = tmp_path / "run"
    args, message = CASES[case]
    args = [arg.format(pheno=pheno) for arg in args]
    if args[0] == "fit" and case != "missing_out":
        args = [*args, "--pheno", str(pheno), "--out", str(out)]
    before = snapshot(tmp_path)
    result = invoke(*args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not out.exists() and snapshot(tmp_path) == before


def test_refused_input_prints_exactly_one_line(tmp_path: Path) -> None:
    """No blank line from progress bars that never drew, and click names the program."""
    result = invoke("fit", "--pheno", tmp_path / "absent.tsv", "--out", tmp_path / "run", "--mode", "iid")
    assert result.returncode == 1 and result.stderr == f"error: {tmp_path / 'absent.tsv'}: file not found\n", result
    result = invoke("fit", "--epochs", "two")
    assert result.returncode == 2 and "(see 'flowpheno fit --help')" in result.stderr, result
