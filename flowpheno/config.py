"""The settings of a fit: their types, their one set of defaults, their checks, and the one table
(:data:`FLAGS`) that maps them to ``flowpheno fit`` flags and the workflow's ``fit:`` keys.

:class:`TrainConfig` (optimisation) and :class:`FitConfig` (everything else ``fit`` needs besides
the input files) are plain dataclasses: a notebook user writes ``FitConfig(mode="grid",
train=TrainConfig(epochs=50))``. Each checks itself on construction (and again when a fit starts,
in case a field was changed) and raises :class:`flowpheno.errors.OptionError` naming the setting as
the user wrote it::

    >>> TrainConfig(epochs=0)
    Traceback (most recent call last):
    flowpheno.errors.OptionError: TrainConfig.epochs: must be an integer >= 1, got 0

The command line and the workflow read their defaults from these dataclasses through
:data:`FLAGS` and word the same errors with their own names (:func:`worded`): ``--epochs 0: must
be an integer >= 1`` from ``flowpheno fit``, ``fit.epochs: ...`` from the workflow.

This module imports neither torch nor the rest of flowpheno, so the CLI's option declarations and
the workflow's configuration checks stay cheap.
"""

from __future__ import annotations

import json
import math
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from numbers import Integral, Real
from typing import Any, Literal, get_args

from flowpheno.errors import OptionError

Mode = Literal["iid", "grid", "alternating", "joint"]
"""``iid`` (no relatedness), ``grid`` (one fit per fixed ``s2``), ``alternating`` (flow stages at
fixed ``s2``, then an exact ``s2`` update), ``joint`` (``s2`` learned with the flow)."""
Objective = Literal["minibatch", "exact"]
Estimator = Literal["plain", "control_variate"]
Batching = Literal["uniform", "blocks", "stratified"]
MODES: tuple[str, ...] = get_args(Mode)
OBJECTIVES: tuple[str, ...] = get_args(Objective)
ESTIMATORS: tuple[str, ...] = get_args(Estimator)
BATCHINGS: tuple[str, ...] = get_args(Batching)


@dataclass
class TrainConfig:
    """Optimisation settings shared by every schedule (``epochs`` is per stage).

    Raises:
        OptionError: on construction (and from :meth:`validate`), a setting out of its range or set.
    """

    epochs: int = 25
    stages: int = 4
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-6
    lr_decay: float = 0.99
    covariance_lr: float = 0.03
    seed: int = 0
    patience: int | None = 15
    """Stop after this many epochs (counted over stages) without a better validation NLL, the
    selection score; 0 or None: never stop early. Over 5 seeds 15 kept a state 0.0017 nats worse
    than no early stopping on the HS1940 mice (after 24 of 100 epochs on average) and 0.011 on
    the example cohort (after 80); 10 lost 0.07 there (``benchmarks/results/patience.md``)."""
    max_grad_norm: float | None = 10.0
    """Clip the gradient norm: one outlying batch must not poison Adamax's running maximum."""
    estimator: Estimator = "plain"
    """Trace term for a fixed covariance: ``plain`` (Proposition 2.2) or ``control_variate``
    (lower variance, opt-in). Not for a low-rank biobank kinship: at n = 500,000 (rank 40) it
    drove ``alternating``'s s2 to 0.01-0.15 where ``plain`` kept 0.32 (one run)."""
    objective: Objective = "minibatch"
    """``minibatch`` (Proposition 2.2 per batch) or ``exact``: one full-data step per epoch, exact gradient."""
    chunk_size: int = 16_384
    """Rows per chunk of the exact objective's passes (autograd memory)."""
    profile_scale: bool | None = None
    """Kinship ``alternating`` and ``joint`` only: the exact ``s2`` step also fits each trait's
    latent scale (profiled likelihood) and folds it into the flow's final ActNorm (``joint``:
    one exact step at the kept state). None (the default): on wherever it applies (kinship
    ``alternating`` or ``joint`` with a flow that ends with an ActNorm), off elsewhere;
    :meth:`FitConfig.resolved` and ``fit.json`` give the value used. Measured
    (``benchmarks/results/scale.md``, ``validation.md``): with a rank-40 kinship at n = 10k-500k,
    ``s2`` within 0.043 of what a perfect flow reaches in both modes (without it 0.056 low at
    500k in ``alternating``, 0.054-0.079 high at 50k-100k in ``joint``) and, in ``alternating``,
    the best held-out NLL; on simulated families the same ``s2`` accuracy and a held-out NLL lower
    by 0.007 nats (28 of 40 runs); in the GWAS benchmark (``gwas_power.md``, 10 seeds) 0.20 +- 0.13
    more true loci and 0.50 +- 0.43 more false ones."""
    batching: Batching = "uniform"
    """``uniform`` random rows; ``blocks``: whole equicorrelated blocks per batch, exact Gaussian term;
    ``stratified``: large blocks dealt evenly over the batches and small blocks whole, so
    every batch's Gaussian term is bounded below (see ``EquicorrelatedBlocks.stratified_batches``)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every setting's range or allowed set.

        Raises:
            OptionError: one line naming the setting (``TrainConfig.lr``) and the allowed range.
        """
        check = Checks()
        check.integer("epochs", self.epochs, 1)
        check.integer("stages", self.stages, 1)
        check.integer("batch_size", self.batch_size, 2)
        check.number("lr", self.lr, "must be a positive finite number", 0.0, low_open=True)
        check.number("weight_decay", self.weight_decay, "must be a finite number >= 0", 0.0)
        check.number("lr_decay", self.lr_decay, "must be in (0, 1]", 0.0, 1.0, low_open=True, high_open=False)
        check.number("covariance_lr", self.covariance_lr, "must be a positive finite number", 0.0, low_open=True)
        check.integer("seed", self.seed, 0)
        if self.seed >= 2**63:
            raise refuse("seed", self.seed, "must be below 2^63")
        check.integer("patience", self.patience, 0, optional=True)
        check.number(
            "max_grad_norm",
            self.max_grad_norm,
            "must be a positive finite number (or None: no clipping)",
            0.0,
            low_open=True,
            optional=True,
        )
        check.choice("estimator", self.estimator, ESTIMATORS)
        check.choice("objective", self.objective, OBJECTIVES)
        check.integer("chunk_size", self.chunk_size, 1)
        check.boolean("profile_scale", self.profile_scale, optional=True)
        check.choice("batching", self.batching, BATCHINGS)


@dataclass
class FitConfig:
    """Everything ``fit`` needs besides the input files (written to ``fit.json``).

    Raises:
        OptionError: on construction (and from :meth:`validate`), a setting out of its range or set.
    """

    traits: list[str] | None = None
    """Trait columns to model (None: every numeric column)."""
    mode: Mode = "alternating"
    s2_grid: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    """``mode="grid"``: one fit per value. Steps of 0.1 up to 0.9 reach highly heritable traits
    and leave the grid's own error (<= 0.05) below the held-out score's resolution
    (``benchmarks/results/validation.md``)."""
    layers: int = 16
    hidden: int = 128
    val_frac: float = 0.15
    device: str = "cpu"
    categorical: list[str] | None = None
    keep_outliers: bool = False
    threads: int | None = None
    """CPU threads for torch and BLAS/OpenMP during the fit (None: the CPUs this process may
    use, see :func:`flowpheno.threads.cpu_limit`); fit.json records the count used."""
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every setting (and ``train``'s).

        Raises:
            OptionError: one line naming the setting (``FitConfig.mode``) and the allowed range or set.
        """
        check = Checks()
        if self.traits is not None and (not isinstance(self.traits, list) or not self.traits):
            raise refuse(
                "traits",
                self.traits,
                "give at least one trait column name, or leave it out (None) for every numeric column",
            )
        if self.traits is not None and len(set(self.traits)) != len(self.traits):
            twice = next(trait for trait in self.traits if self.traits.count(trait) > 1)
            raise refuse("traits", self.traits, f"names {twice!r} twice; name each trait column once")
        check.choice("mode", self.mode, MODES)
        if not isinstance(self.s2_grid, (list, tuple)) or (self.mode == "grid" and not self.s2_grid):
            raise refuse("s2_grid", self.s2_grid, "give at least one s2 value in [0, 1), e.g. 0,0.1,0.5")
        for value in self.s2_grid:
            check.number("s2_grid", value, "every s2 value must be in [0, 1)", 0.0, 1.0)
        if len(set(self.s2_grid)) != len(self.s2_grid):
            twice = next(value for value in self.s2_grid if list(self.s2_grid).count(value) > 1)
            raise refuse("s2_grid", self.s2_grid, f"gives {twice:g} twice; give each s2 value once")
        check.integer("layers", self.layers, 1)
        check.integer("hidden", self.hidden, 1)
        check.integer("threads", self.threads, 1, optional=True)
        if not isinstance(self.device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise refuse("device", self.device, "must be 'cpu', 'cuda' or 'cuda:N'")
        if self.categorical is not None and (
            not isinstance(self.categorical, list) or not all(isinstance(name, str) for name in self.categorical)
        ):
            raise refuse("categorical", self.categorical, "must be a list of covariate column names, e.g. ['batch']")
        check.boolean("keep_outliers", self.keep_outliers)
        check.number("val_frac", self.val_frac, "must be in [0, 0.9)", 0.0, 0.9)
        if self.mode == "grid" and self.val_frac == 0:
            raise refuse(
                "val_frac", self.val_frac, "must be above 0 when {mode} is 'grid' (the grid picks s2 by validation NLL)"
            )
        if not isinstance(self.train, TrainConfig):
            raise refuse("train", type(self.train).__name__, "must be a TrainConfig")
        self.train.validate()
        if self.train.profile_scale and self.mode not in ("alternating", "joint"):
            raise refuse(
                "profile_scale",
                True,
                f"a step of {{mode}} 'alternating' or 'joint' only, not of {self.mode!r}: "
                "leave it out, or use {mode} 'alternating'",
            )

    def resolved(self) -> FitConfig:
        """A copy with every automatic setting decided: ``train.profile_scale`` None becomes
        True for ``mode`` ``alternating`` and ``joint`` (the kinship model; the flow ends with an
        ActNorm) and False otherwise. ``fit.json`` records the resolved config."""
        train = self.train
        if train.profile_scale is None:
            train = replace(train, profile_scale=self.mode in ("alternating", "joint"))
        return replace(self, train=train)


# --- The one table: dataclass field -> flowpheno fit flag (and workflow key) ----------------------------------------

FIELD_DEFAULT: Any = object()
"""``Flag.cli_default`` when the flag's default is the field's."""


@dataclass(frozen=True)
class Flag:
    """How one dataclass field is set from ``flowpheno fit`` (and from the workflow's ``fit:`` block).

    ``help`` is the text ``--help`` shows (a choice field's choices are added from its
    ``Literal`` type); ``cli_default`` is the flag's default when it is not the field's own
    (``--device``: detected at run time); ``workflow``: the field has a key under the workflow's
    ``fit:`` block, named after the flag (``--scale-step`` -> ``scale_step``); ``negative``: the
    flag that sets a switch whose default is automatic (None) to False (``--no-scale-step``).
    """

    owner: type
    field: str
    flag: str
    help: str
    workflow: bool = True
    cli_default: Any = FIELD_DEFAULT
    negative: str | None = None

    @property
    def switch(self) -> bool:
        """The field is True/False (or None: automatic); set by a bare flag, not by a value."""
        return isinstance(self.default, bool) or self.negative is not None

    @property
    def declaration(self) -> str:
        """The flag as click declares it (``--scale-step/--no-scale-step`` for a switch with a negative)."""
        return f"{self.flag}/{self.negative}" if self.negative else self.flag

    @property
    def key(self) -> str:
        """The workflow's key under ``fit:``."""
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def default(self) -> Any:
        """The field's default, read from the dataclass."""
        spec = next(f for f in fields(self.owner) if f.name == self.field)
        return spec.default_factory() if spec.default_factory is not MISSING else spec.default

    @property
    def choices(self) -> tuple[str, ...]:
        """The values of a ``Literal`` field (empty for other fields)."""
        kind = typing.get_type_hints(self.owner)[self.field]
        return get_args(kind) if typing.get_origin(kind) is Literal else ()

    @property
    def command_line_default(self) -> Any:
        """The default ``flowpheno fit`` declares: the field's, as command-line text for a list."""
        if self.cli_default is not FIELD_DEFAULT:
            return self.cli_default
        value = self.default
        return ",".join(_show_cli(item) for item in value) if isinstance(value, list) else value

    @property
    def full_help(self) -> str:
        return f"{' | '.join(self.choices)}: {self.help}" if self.choices else self.help


FLAGS: dict[str, Flag] = {
    flag.field: flag
    for flag in (
        Flag(
            FitConfig,
            "traits",
            "--traits",
            "comma-separated trait columns (default: every numeric column)",
            workflow=False,
        ),
        Flag(
            FitConfig,
            "categorical",
            "--categorical",
            "comma-separated covariate columns to one-hot encode whatever "
            "their values (needed for text columns with more than 50 levels)",
            workflow=False,
        ),
        Flag(
            FitConfig,
            "keep_outliers",
            "--keep-outliers",
            "fit even when a trait value lies beyond robust |z| 100 (median/MAD)",
            workflow=False,
        ),
        Flag(FitConfig, "mode", "--mode", "how relatedness enters the fit (iid: not at all)"),
        Flag(FitConfig, "s2_grid", "--s2-grid", "s2 values tried by --mode grid"),
        Flag(TrainConfig, "epochs", "--epochs", "flow epochs per stage"),
        Flag(TrainConfig, "stages", "--stages", "stages (alternating: flow epochs then an s2 update)"),
        Flag(FitConfig, "layers", "--layers", "coupling layers"),
        Flag(FitConfig, "hidden", "--hidden", "hidden units of each conditioner layer"),
        Flag(TrainConfig, "batch_size", "--batch-size", "mini-batch size"),
        Flag(TrainConfig, "lr", "--lr", "Adamax learning rate of the flow"),
        Flag(TrainConfig, "weight_decay", "--weight-decay", "weight decay on flow weights (never on s2)"),
        Flag(FitConfig, "val_frac", "--val-frac", "share of individuals held out for validation NLL"),
        Flag(FitConfig, "device", "--device", "cpu or cuda (default: cuda when available)", cli_default=None),
        Flag(TrainConfig, "seed", "--seed", "random seed (same seed on CPU gives the same numbers)"),
        Flag(
            TrainConfig,
            "patience",
            "--patience",
            "stop after this many epochs without a better validation NLL (0: never stop early)",
        ),
        Flag(
            TrainConfig,
            "objective",
            "--objective",
            "mini-batches with the unbiased batch estimator, or one full-data step per epoch (no estimator variance)",
        ),
        Flag(
            TrainConfig,
            "profile_scale",
            "--scale-step",
            "alternating, joint: fit each trait's latent scale with s2 exactly "
            "(corrects the s2 bias a flow's trait scale causes); "
            "default: on with --mode alternating and joint, --no-scale-step turns it off",
            negative="--no-scale-step",
        ),
        Flag(FitConfig, "threads", "--threads", "CPU threads for torch and BLAS/OpenMP", workflow=False),
    )
}
"""Field of :class:`FitConfig`/:class:`TrainConfig` -> the ``flowpheno fit`` flag that sets it.
Fields without a flag (``TrainConfig.lr_decay``, ``estimator``, ``batching``, ...) are library-only."""

WORKFLOW_KEYS: dict[str, Flag] = {flag.key: flag for flag in FLAGS.values() if flag.workflow}
"""Key of the workflow's ``fit:`` block -> its flag (``traits``, ``threads``, ... are set by the workflow itself)."""


def fit_arguments(settings: Mapping[str, Any]) -> list[str]:
    """``flowpheno fit`` arguments (one list item per word) for the workflow keys ``settings`` sets.

    A key set to None is left out (the flag's default); ``True`` gives a bare switch, ``False``
    the negative switch where the flag has one (``--no-scale-step``) and nothing otherwise; a
    list is written comma-separated (``s2_grid: [0, 0.5]`` -> ``--s2-grid 0,0.5``).

    Raises:
        KeyError: a key that is not one of :data:`WORKFLOW_KEYS`.
    """
    words: list[str] = []
    for key, value in settings.items():
        flag = WORKFLOW_KEYS[key].flag
        if value is None or (value is False and WORKFLOW_KEYS[key].negative is None):
            continue
        if value is False:
            words.append(WORKFLOW_KEYS[key].negative)
        elif value is True:
            words.append(flag)
        elif isinstance(value, (list, tuple)):
            words += [flag, ",".join(_show_cli(item) for item in value)]
        else:
            words += [flag, _show_cli(value)]
    return words


def fit_config(settings: Mapping[str, Any], **given: Any) -> FitConfig:
    """The :class:`FitConfig` that workflow keys ``settings`` (and fields ``given``) describe: checks
    a workflow configuration as ``flowpheno fit`` will (word its errors with :func:`worded`).

    Raises:
        OptionError: a value out of its range or set.
    """
    values: dict[type, dict[str, Any]] = {FitConfig: dict(given), TrainConfig: {}}
    for key, value in settings.items():
        if value is not None:
            flag = WORKFLOW_KEYS[key]
            values[flag.owner][flag.field] = list(value) if isinstance(value, tuple) else value
    return FitConfig(**values[FitConfig], train=TrainConfig(**values[TrainConfig]))


# --- Wording an OptionError for the library, the command line or the workflow -------------------------------------


def _owner_of(name: str) -> str:
    for owner in (FitConfig, TrainConfig):
        if any(f.name == name for f in fields(owner)):
            return owner.__name__
    return "FitConfig"


def api_name(name: str) -> str:
    """A setting as a library user writes it: ``TrainConfig.epochs``."""
    return f"{_owner_of(name)}.{name}"


def flag_name(name: str) -> str:
    """A setting as ``flowpheno fit`` takes it: its flag, else (no flag) ``TrainConfig.lr_decay``."""
    return FLAGS[name].flag if name in FLAGS else api_name(name)


def workflow_name(name: str) -> str:
    """A setting as the workflow's configuration writes it: ``fit.epochs`` (else as the library does)."""
    flag = FLAGS.get(name)
    return f"fit.{flag.key}" if flag is not None and flag.workflow else api_name(name)


def _show_cli(value: Any) -> str:
    """``value`` as a command line writes it: ``1e-06``, ``0.002``, ``a,b``; a float exactly (``:g``
    when that reads back as the same number, else its full ``repr``)."""
    if isinstance(value, float):
        short = f"{value:g}"
        return short if math.isnan(value) or float(short) == value else repr(value)
    if isinstance(value, (list, tuple)):
        return ",".join(_show_cli(item) for item in value)
    return str(value)


def worded(
    error: OptionError, names: Callable[[str], str] = api_name, command_line: bool = False, yaml: bool = False
) -> str:
    """The message of ``error`` with each setting named by ``names``.

    ``command_line``: as a command line writes it (``--lr -1: must be a positive finite number``;
    a switch without its value: ``--scale-step: ...``); else as code writes it
    (``TrainConfig.lr: must be a positive finite number, got -1``), with ``yaml`` the value as
    a YAML configuration writes it (``got true``, ``got null``).
    """
    if error.setting is None:
        return str(error)
    rule = error.rule.format_map({name: names(name) for name in _named_in(error.rule)})
    value = error.value
    if command_line:
        shown = "" if isinstance(value, bool) else " " + (repr(value) if isinstance(value, str) else _show_cli(value))
        return f"{names(error.setting)}{shown}: {rule}"
    shown = json.dumps(value) if yaml and (value is None or isinstance(value, bool)) else repr(value)
    return f"{names(error.setting)}: {rule}, got {shown}"


def _named_in(rule: str) -> list[str]:
    import string

    return [name for _, name, _, _ in string.Formatter().parse(rule) if name]


def refuse(name: str, value: Any, rule: str, owner: str | None = None) -> OptionError:
    """The OptionError refusing ``value`` for the field ``name`` of :class:`FitConfig` or
    :class:`TrainConfig` (field names are unique across the two), or for the parameter ``name``
    of the function ``owner``; ``rule`` may name other settings as ``{field}``, each then named
    as the reader writes it."""
    error = OptionError("", setting=name, value=value, rule=rule)
    error.args = (worded(error, lambda field: f"{owner}.{field}" if owner and field == name else api_name(field)),)
    return error


class Checks:
    """Range checks of the dataclasses' fields (or of the parameters of the function ``owner``);
    each raises :func:`refuse`'s OptionError."""

    def __init__(self, owner: str | None = None) -> None:
        self.owner = owner

    def integer(self, name: str, value: Any, minimum: int, optional: bool = False) -> None:
        """``value`` is an integer ``>= minimum`` (or None when ``optional``)."""
        if value is None and optional:
            return
        if not isinstance(value, Integral) or isinstance(value, bool) or value < minimum:
            raise refuse(
                name, value, f"must be an integer >= {minimum}" + (" (or unset)" if optional else ""), self.owner
            )

    def number(
        self,
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
        ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
        if ok:
            ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not ok:
            raise refuse(name, value, rule, self.owner)

    def choice(self, name: str, value: Any, allowed: Iterable[str]) -> None:
        """``value`` is one of ``allowed``."""
        allowed = tuple(allowed)
        if value not in allowed:
            raise refuse(name, value, f"choose one of {', '.join(allowed)}", self.owner)

    def boolean(self, name: str, value: Any, optional: bool = False) -> None:
        if not (isinstance(value, bool) or (optional and value is None)):
            allowed = "must be True or False" + (" (or None: automatic)" if optional else "")
            raise refuse(name, value, allowed, self.owner)
