"""Range checks for the numeric and categorical settings of ``TrainConfig`` and ``FitConfig``.

Every check raises :class:`flowpheno.errors.OptionError` with one line that names the
command-line flag (``--lr -1: must be a positive finite number``), or the dataclass field
for settings that have no flag (``TrainConfig.lr_decay 2: ...``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Integral, Real
from typing import Any

from flowpheno.errors import OptionError

FLAGS: dict[str, str] = {
    "epochs": "--epochs",
    "stages": "--stages",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "weight_decay": "--weight-decay",
    "seed": "--seed",
    "patience": "--patience",
    "objective": "--objective",
    "profile_scale": "--scale-step",
    "traits": "--traits",
    "mode": "--mode",
    "s2_grid": "--s2-grid",
    "layers": "--layers",
    "hidden": "--hidden",
    "val_frac": "--val-frac",
    "device": "--device",
    "threads": "--threads",
}
"""Field of ``TrainConfig``/``FitConfig`` -> the ``flowpheno fit`` flag that sets it."""


def option_name(owner: str, name: str) -> str:
    """How a message names a setting: its flag, else ``Owner.field``."""
    return FLAGS.get(name, f"{owner}.{name}")


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value) if isinstance(value, str) else str(value)


def _refuse(owner: str, name: str, value: Any, rule: str) -> OptionError:
    return OptionError(f"{option_name(owner, name)} {_show(value)}: {rule}")


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def check_int(owner: str, name: str, value: Any, minimum: int, optional: bool = False) -> None:
    """``value`` is an integer ``>= minimum`` (or None when ``optional``)."""
    if value is None and optional:
        return
    if not isinstance(value, Integral) or isinstance(value, bool) or value < minimum:
        raise _refuse(owner, name, value, f"must be an integer >= {minimum}" + (" (or unset)" if optional else ""))


def check_float(
    owner: str,
    name: str,
    value: Any,
    rule: str,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = True,
    optional: bool = False,
) -> None:
    """``value`` is a finite number in the interval from ``low`` to ``high`` (``rule`` says which, in words)."""
    if value is None and optional:
        return
    ok = _is_number(value) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        raise _refuse(owner, name, value, rule)


def check_choice(owner: str, name: str, value: Any, allowed: Iterable[str]) -> None:
    """``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise _refuse(owner, name, value, f"choose one of {', '.join(allowed)}")


def check_bool(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _refuse(owner, name, value, "must be True or False")
