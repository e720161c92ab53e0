"""What a fit reports: :class:`FitReport`, the typed content of ``fit.json``.

:func:`flowpheno.pipeline.fit_phenotypes` returns one; ``cli``, :mod:`flowpheno.plots` and
:mod:`flowpheno.diagnostics` read its attributes. :meth:`FitReport.to_json` gives the
``fit.json`` mapping (keys in the file's order), :meth:`FitReport.from_json` reads one back.
No I/O here: writing the file is :func:`flowpheno.pipeline.write_fit_outputs`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the report records the config; pipeline imports this module
    from flowpheno.pipeline import FitConfig


@dataclass
class FitInputs:
    """The files a fit read (``fit.json`` ``inputs``): ``grm`` is the kinship's source (a file,
    a PC table or a PLINK prefix), None for ``--mode iid``; ``covar`` None without covariates."""

    pheno: str
    grm: str | None = None
    covar: str | None = None


@dataclass
class DroppedRows:
    """Individuals of the phenotype file left out for one reason (``fit.json`` ``dropped``):
    their number and their FIDs and IIDs in file order."""

    count: int
    fids: list[str] = field(default_factory=list)
    iids: list[str] = field(default_factory=list)


@dataclass
class KinshipSummary:
    """The kinship model of the training rows (``fit.json`` ``kinship``).

    ``scale_to_unit_mean_diagonal``: the factor ``n / trace K`` the kinship was multiplied
        by so that ``s2`` is a share of variance (DESIGN.md section 1a); ``rank``: the training
    rows' kinship rank, eigenvalues above round-off (:attr:`KinshipCovariance.numerical_rank`;
    a GRM of centred genotypes has at most ``n - 1`` and at most the number of SNPs);
    ``low_rank``: True when only part of the spectrum is stored (a PC table or a genotype
    factor: the rest is 0); ``eigendecomposition_cached``:
    whether the dense eigendecomposition came from the cache beside the kinship file (None
    for a low-rank factor, which is decomposed by a thin SVD every time).
    """

    scale_to_unit_mean_diagonal: float
    rank: int
    low_rank: bool
    eigendecomposition_cached: bool | None = None


@dataclass
class FitReport:
    """Everything a fit records, in ``fit.json``'s order: how it ran, what it used, what it learned.

    Every field has an empty default, so a partial report (a figure drawn from a few fields,
    a ``fit.json`` of an earlier version) is still a FitReport; a report of
    :func:`~flowpheno.pipeline.fit_phenotypes` sets them all.

    How it ran: ``command`` (argv), ``inputs``, ``config`` (the :class:`FitConfig`), ``seed``,
    ``versions`` (:func:`flowpheno.versions.package_versions`), ``device``, ``threads``
    (:func:`flowpheno.threads.thread_report`), ``seconds`` (wall time of each step, in s:
    ``read_and_align``, ``eigendecomposition`` or ``thin_svd``, ``held_out_kinship``,
    ``training``, ``transform``, ``write``), ``warnings`` (every warning the fit raised, in order).

    What it used: ``n_rows`` (individuals in the phenotype file), ``n_used`` (with every
    trait, covariate and kinship entry), ``n_train`` + ``n_validation`` = ``n_used``, ``d``
    traits named ``traits``, ``skipped_columns`` (text columns left out of the default
    traits), ``covariates`` (design columns, one-hot encoded), ``categorical_levels``,
    ``outliers`` (values beyond robust ``|z|`` 15: the individual's ``fid``/``iid``/``line``,
    ``trait``, ``value``, ``robust_z``, largest first) and ``dropped`` (by reason).

    What it learned: ``kinship`` (None for ``--mode iid``), ``covariance`` (the dependence
    model's parameters: ``s2``, ``kinship_scale`` for a kinship model; empty for iid),
    the training history ``stages``, ``grid`` and ``epochs`` (the callback's records, see
    :func:`~flowpheno.pipeline.fit_phenotypes`), the held-out score that chose the kept state
    (``validation_score``: ``val_nll_conditional`` or ``val_nll_iid``) with its best value
    ``best_validation_nll`` (NLL per individual, nats) and both scores of that state, the
    kept ``best_epoch``/``best_stage`` (None without validation rows), ``stopped_early``
    (``{"epoch": last epoch run, "patience": p}`` when ``--patience`` ended training), ``gaussianity``
    (Mardia's tests before and after, :func:`flowpheno.diagnostics.gaussianity_report`) and
    ``non_finite_batches`` (training steps skipped). :attr:`final_state` says in one sentence
    which state was kept.
    """

    command: list[str] = field(default_factory=list)
    inputs: FitInputs | None = None
    config: FitConfig | None = None
    seed: int | None = None
    versions: dict[str, str] = field(default_factory=dict)
    device: str | None = None
    threads: dict[str, Any] = field(default_factory=dict)
    n_rows: int = 0
    n_used: int = 0
    n_train: int = 0
    n_validation: int = 0
    d: int = 0
    traits: list[str] = field(default_factory=list)
    skipped_columns: list[str] = field(default_factory=list)
    covariates: list[str] = field(default_factory=list)
    categorical_levels: dict[str, list[str]] = field(default_factory=dict)
    outliers: list[dict[str, Any]] = field(default_factory=list)
    dropped: dict[str, DroppedRows] = field(default_factory=dict)
    kinship: KinshipSummary | None = None
    covariance: dict[str, Any] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    grid: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    validation_score: str | None = None
    best_validation_nll: float | None = None
    best_validation_nll_iid: float | None = None
    best_validation_nll_conditional: float | None = None
    best_epoch: int | None = None
    best_stage: int | None = None
    stopped_early: dict[str, int] | None = None
    gaussianity: dict[str, Any] = field(default_factory=dict)
    non_finite_batches: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        """A short summary for a notebook (the full record: :meth:`to_json`).

        Example:
            >>> FitReport(traits=["CD8", "MCH"], n_used=1197, covariance={"s2": 0.623}, best_epoch=30)
            FitReport(mode=None, traits=['CD8', 'MCH'], n_used=1197, s2=0.623, best_validation_nll=None, best_epoch=30,
            epochs_run=0, stopped_early=None, warnings=0)
        """
        s2 = self.covariance.get("s2")
        nll = self.best_validation_nll
        parts = [
            f"mode={self.mode!r}",
            f"traits={self.traits!r}",
            f"n_used={self.n_used}",
            f"s2={s2:.4g}" if isinstance(s2, (int, float)) else "s2=None",
            f"best_validation_nll={nll:.5g}" if isinstance(nll, (int, float)) else "best_validation_nll=None",
            f"best_epoch={self.best_epoch}",
            f"epochs_run={len(self.epochs)}",
            f"stopped_early={self.stopped_early}",
            f"warnings={len(self.warnings)}",
        ]
        return f"FitReport({', '.join(parts)})"

    @property
    def mode(self) -> str | None:
        """The fit's ``--mode`` (None when the report has no config)."""
        return None if self.config is None else self.config.mode

    @property
    def dropped_count(self) -> int:
        """Individuals of the phenotype file not used, over every reason."""
        return sum(entry.count for entry in self.dropped.values())

    @property
    def final_state(self) -> str:
        """Where the returned flow and its ``s2`` come from, in one sentence
        (:func:`flowpheno.diagnostics.final_state_note`)."""
        from flowpheno.diagnostics import final_state_note

        return final_state_note(self)

    def to_json(self) -> dict[str, Any]:
        """The ``fit.json`` mapping: every field in order (nested records as dicts, ``config``
        with ``train`` last) and ``final_state`` at the end. Values are as computed (numpy
        scalars included): :func:`json.dumps` them with :func:`jsonable` as ``default``."""
        content: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "config":
                value = (
                    None
                    if value is None
                    else {**{k: v for k, v in asdict(value).items() if k != "train"}, "train": asdict(value.train)}
                )
            elif item.name == "dropped":
                value = {reason: asdict(entry) for reason, entry in value.items()}
            elif item.name in ("inputs", "kinship"):
                value = None if value is None else asdict(value)
            content[item.name] = value
        content["final_state"] = self.final_state
        return content

    @classmethod
    def from_json(cls, content: dict[str, Any]) -> FitReport:
        """A report from a ``fit.json`` mapping (``json.loads`` of the file). Keys this
        version does not know are ignored, absent ones keep their defaults, and so does a
        ``config`` that is not a valid :class:`FitConfig` of this version.
        """
        known = {item.name for item in fields(cls)}
        values = {key: value for key, value in content.items() if key in known}
        if isinstance(values.get("inputs"), dict):
            values["inputs"] = FitInputs(**values["inputs"])
        if isinstance(values.get("kinship"), dict):
            values["kinship"] = KinshipSummary(**values["kinship"])
        if isinstance(values.get("dropped"), dict):
            values["dropped"] = {reason: DroppedRows(**entry) for reason, entry in values["dropped"].items()}
        values["config"] = _config(values.get("config"))
        return cls(**values)


def _config(content: Any) -> FitConfig | None:
    """``fit.json``'s ``config`` as a :class:`FitConfig`, or None when it is not one of this version."""
    if not isinstance(content, dict):
        return None
    from flowpheno.errors import FlowphenoError
    from flowpheno.pipeline import FitConfig
    from flowpheno.train import TrainConfig

    def build(kind: type, given: dict[str, Any]) -> Any:
        names = {item.name for item in fields(kind) if item.init}
        return kind(**{key: value for key, value in given.items() if key in names})

    try:
        train = build(TrainConfig, content.get("train") or {})
        return build(FitConfig, {**{k: v for k, v in content.items() if k != "train"}, "train": train})
    except (FlowphenoError, TypeError, ValueError):
        return None


def jsonable(value: Any) -> Any:
    """``default`` for :func:`json.dumps` of a report: numpy scalars and arrays as Python
    numbers and lists, anything else as its ``str``."""
    import numpy as np

    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
