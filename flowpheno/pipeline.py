"""The main job as a library call: prepare -> train -> report -> write.

A notebook user gets the CLI's power from :func:`fit_phenotypes` and
:func:`transform_phenotypes`; the CLI only parses arguments and draws progress.
:func:`fit_phenotypes` runs four steps, each usable alone:

- :func:`prepare_fit`: files in, :class:`PreparedData` out (read and align on FID/IID,
  check, project out covariates, split, decompose the kinship): every read is here;
- :func:`train_fit`: arrays in, :class:`TrainedFit` out (the flow and its history): no I/O;
- :func:`fit_report`: the typed :class:`~flowpheno.report.FitReport` (``fit.json``);
- :func:`write_fit_outputs`: the run folder, staged and committed as a whole.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from flowpheno.config import (  # noqa: F401  (FitConfig lives with TrainConfig in flowpheno.config)
    MODES,
    Checks,
    FitConfig,
    Mode,
)
from flowpheno.dependence import HeldOutKinship, KinshipCovariance
from flowpheno.diagnostics import gaussianity_report
from flowpheno.errors import FlowphenoError, OptionError, warn
from flowpheno.flows import affine_coupling_flow
from flowpheno.io.atomic import StagedDirectory, atomic_path, write_errors
from flowpheno.io.ids import FID_GIVEN, SampleKeys, align
from flowpheno.io.kinship import (
    Kinship,
    KinshipFactor,
    read_genotype_factor,
    read_kinship,
    read_pcs,
    spectral_decomposition,
)
from flowpheno.io.outputs import write_phenotypes
from flowpheno.io.phenotypes import Phenotypes, aligned_covariates, read_phenotypes
from flowpheno.io.tables import MISSING_STRINGS
from flowpheno.model import PhenotypeModel, least_squares_residuals
from flowpheno.progress import fit_progress
from flowpheno.report import DroppedRows, FitInputs, FitReport, KinshipSummary, jsonable
from flowpheno.threads import thread_limits, thread_report
from flowpheno.train import FitOutcome, fit_alternating, fit_grid, fit_iid, fit_joint
from flowpheno.train.schedules import Callback
from flowpheno.versions import package_versions

MIN_COMPLETE_ROWS = 50
RUN_FILES = ("fit.json", "model.json", "model.safetensors", "gaussianized.tsv", "diagnostics.png")
"""What ``fit --out`` wrote before run folders carried a manifest (and ``split.tsv``): a folder
of exactly these (fit.json first) is such an earlier run."""
PLINK_SUFFIXES = (".bed", ".bim", ".fam")
GCTA_SUFFIXES = (".grm.bin", ".grm.id", ".grm.N.bin")
MIN_DISTINCT_VALUES = 10
"""A trait with fewer distinct values among the complete rows, or whose most frequent value
holds more than half of them, is not continuous: a flow density on it has no maximum."""
OUTLIER_WARN_Z = 15.0
OUTLIER_STOP_Z = 100.0
"""Robust z-score ``|x - median| / (1.4826 MAD)`` of a trait value among the complete rows:
above OUTLIER_WARN_Z a warning (recorded in ``fit.json`` as ``outliers`` and marked in
``diagnostics.png``); above OUTLIER_STOP_Z the fit stops unless ``keep_outliers``."""


def _complete_rows(phenotypes: Phenotypes, covar: str | Path | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Rows usable for fitting, and the rows (indices) dropped for each reason."""
    dropped: dict[str, np.ndarray] = {}
    keep = np.isfinite(phenotypes.values).all(axis=1)
    if (~keep).any():
        dropped["missing trait value"] = np.flatnonzero(~keep)
    if phenotypes.covariates is not None:
        covariate_ok = np.isfinite(phenotypes.covariates).all(axis=1)
        newly = keep & ~covariate_ok
        if newly.any():
            dropped[f"missing or absent in {covar}"] = np.flatnonzero(newly)
        keep &= covariate_ok
    return keep, dropped


def _align_kinship(
    kinship: Kinship | KinshipFactor, keys: SampleKeys, keep: np.ndarray, dropped: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """``(keep & in kinship, kinship row of each phenotype row or -1)``; absent rows are
    recorded in ``dropped``."""
    alignment = align(kinship.keys(), keys, hint="the kinship must be computed on the same individuals")
    in_kinship = alignment.found
    missing = keep & ~in_kinship
    if missing.any():
        dropped[f"not in {kinship.source}"] = np.flatnonzero(missing)
    return keep & in_kinship, alignment.positions


def _check_present(phenotypes: Phenotypes) -> None:
    """A trait with no value at all is named (not reported as "0 individuals have every trait")."""
    for trait, count in zip(phenotypes.traits, np.isfinite(phenotypes.values).sum(axis=0), strict=True):
        if count == 0:
            codes = ", ".join(repr(code) for code in MISSING_STRINGS)
            raise FlowphenoError(
                f"{phenotypes.source}: trait {trait!r} is missing for every individual (all cells are missing codes: "
                f"{codes}); fill it or leave it out with --traits"
            )


def _sparsest(phenotypes: Phenotypes) -> str:
    counts = np.isfinite(phenotypes.values).sum(axis=0)
    j = int(np.argmin(counts))
    return f"; trait {phenotypes.traits[j]!r} has a value for only {int(counts[j])} of {phenotypes.values.shape[0]}"


def _check_traits(values: np.ndarray, traits: list[str], pheno: str, iids: np.ndarray | None = None) -> None:
    """Each trait (column of the ``n x d`` complete rows) on its own scale: stop on a
    constant trait, and on a trait with fewer than :data:`MIN_DISTINCT_VALUES` distinct
    values or one value holding more than half of the rows (binary, few-valued); when a
    handful of rows (``iids``) differ from that value, they are named."""
    n = values.shape[0]
    for j, trait in enumerate(traits):
        column = values[:, j]
        distinct, counts = np.unique(column, return_counts=True)
        if len(distinct) == 1:
            raise FlowphenoError(
                f"{pheno}: trait {trait!r} has zero variance (every "
                f"complete row is {distinct[0]:g}); drop it with --traits"
            )
        top = int(np.argmax(counts))
        if len(distinct) < MIN_DISTINCT_VALUES or counts[top] * 2 > n:
            others = np.flatnonzero(column != distinct[top])
            named = ""
            if iids is not None and len(others) <= 3:
                named = "; the others: " + ", ".join(f"IID {iids[r]} = {column[r]:g}" for r in others)
            raise FlowphenoError(
                f"{pheno}: trait {trait!r} has {len(distinct)} distinct values among {n} complete rows "
                f"({distinct[top]:g} holds {counts[top]}{named}): a flow needs a continuous trait (at least "
                f"{MIN_DISTINCT_VALUES} distinct values, none holding more than half the rows); leave it out with "
                "--traits, or model it another way (e.g. as a covariate or with a GEMMA binary-trait analysis)"
            )


def _check_residuals(
    residuals: np.ndarray, values: np.ndarray, traits: list[str], pheno: str, covar: str | Path | None
) -> None:
    """A trait that the covariates explain entirely (residual SD ~ 0 on the trait's own scale)."""
    for trait, rest, raw in zip(traits, residuals.std(axis=0), values.std(axis=0), strict=True):
        if not rest > 1e-9 * raw:
            raise FlowphenoError(
                f"{pheno}: trait {trait!r} is fully explained by the covariates of {covar}; drop it with --traits"
            )


MAX_TRAIT_CORRELATION = 0.999
"""Two traits correlated beyond this among the complete rows are (nearly) the same trait: the
flow's density degenerates and GEMMA's mvLMM cannot separate them."""
LEVERAGE_STOP = 0.9
"""An individual whose covariate row has leverage (hat-matrix diagonal of ``[1, covariates]``)
above this keeps under 10% of its residual variance: its traits would be (nearly) erased."""


def _check_collinear_traits(values: np.ndarray, traits: list[str], pheno: str) -> None:
    """Stop on two traits (columns of the ``n x d`` complete rows) that are one trait twice."""
    if values.shape[1] < 2:
        return
    correlation = np.corrcoef(values, rowvar=False)
    upper = np.triu(np.abs(correlation), k=1)
    i, j = np.unravel_index(int(np.argmax(upper)), upper.shape)
    if upper[i, j] > MAX_TRAIT_CORRELATION:
        raise FlowphenoError(
            f"{pheno}: traits {traits[i]!r} and {traits[j]!r} have correlation {correlation[i, j]:.4f} among the "
            "complete rows: they are one trait twice (the flow's density degenerates and GEMMA's mvLMM cannot separate "
            "them); leave one out with --traits"
        )


def _check_leverage(phenotypes: Phenotypes, keep: np.ndarray, covar: str | Path | None, keep_outliers: bool) -> None:
    """Stop when one individual's covariates alone determine its fit (leverage above
    :data:`LEVERAGE_STOP`): a 0/1 covariate set for one person, or a mistyped value such as
    age 99999, would set that person's residuals to ~0 on every trait, silently."""
    if phenotypes.covariates is None or keep_outliers:
        return
    design = np.hstack([np.ones((int(keep.sum()), 1)), phenotypes.covariates[keep]])
    basis, singular, _ = np.linalg.svd(design, full_matrices=False)  # hat-matrix diagonal, rank-deficient designs too
    leverage = (basis[:, : int((singular > 1e-10 * singular[0]).sum())] ** 2).sum(axis=1)
    worst = int(np.argmax(leverage))
    if leverage[worst] > LEVERAGE_STOP:
        row = phenotypes.covariates[keep][worst]
        others = phenotypes.covariates[keep]
        spread = np.nanstd(others, axis=0)
        z = np.abs(row - np.nanmedian(others, axis=0)) / np.where(spread > 0, spread, np.inf)
        column = phenotypes.covariate_names[int(np.argmax(z))]
        iid = phenotypes.ids["IID"].to_numpy()[keep][worst]
        raise FlowphenoError(
            f"{covar}: the covariates of IID {iid} (most unusual: {column} = {row[int(np.argmax(z))]:g}) alone "
            f"determine its fit (leverage {leverage[worst]:.3f}): its traits would be erased (residuals ~0); fix the "
            "value, set it to NA, or pass --keep-outliers"
        )


def _check_levels(phenotypes: Phenotypes, keep: np.ndarray, covar: str | Path | None) -> None:
    """Every level of a one-hot encoded covariate must hold at least two of the individuals
    used: with the intercept each level gets its own mean, so a level of one individual sets
    that individual's residuals to 0 on every trait and silently erases its phenotype. A
    level of two keeps only their difference (a warning)."""
    if phenotypes.covariates is None:
        return
    names = phenotypes.covariate_names
    used = phenotypes.covariates[keep]
    iids = phenotypes.ids["IID"].to_numpy()[keep]
    for column, levels in phenotypes.levels.items():
        dummies = [names.index(f"{column}_{level}") for level in levels[1:] if f"{column}_{level}" in names]
        members = {levels[0]: ~(used[:, dummies] == 1).any(axis=1)} if dummies else {}
        members.update(
            {
                level: used[:, names.index(f"{column}_{level}")] == 1
                for level in levels[1:]
                if f"{column}_{level}" in names
            }
        )
        for level, rows in members.items():
            count = int(rows.sum())
            who = ", ".join(f"IID {iid}" for iid in iids[rows])
            if count == 1:
                raise FlowphenoError(
                    f"{covar}: level {level!r} of covariate {column!r} is held by 1 of the {len(used)} individuals "
                    f"used ({who}): its own mean would absorb that individual's traits (residuals 0); merge it into "
                    "another level or set that cell to NA"
                )
            if count == 2:
                warn(
                    f"{covar}: level {level!r} of covariate {column!r} is held by 2 individuals ({who}): only their "
                    "difference remains after covariates; consider merging it into another level",
                )


def robust_z(values: np.ndarray) -> np.ndarray:
    """``(x - median) / (1.4826 MAD)`` per column of ``values`` (``n x d``), the normal-consistent
    robust z-score (MAD > 0 is guaranteed by :func:`_check_traits`)."""
    median = np.median(values, axis=0)
    mad = 1.4826 * np.median(np.abs(values - median), axis=0)
    return (values - median) / np.where(mad > 0, mad, np.inf)


def _individual(entry: dict[str, Any]) -> str:
    """``FID f IID i (line k)`` of an outlier entry (FID and line when known)."""
    fid = f"FID {entry['fid']} " if entry.get("fid") is not None else ""
    line = f" (line {entry['line']})" if entry.get("line") is not None else ""
    return f"{fid}IID {entry['iid']}{line}"


def _check_outliers(
    values: np.ndarray, who: list[dict[str, Any]], traits: list[str], pheno: str, keep_outliers: bool
) -> list[dict[str, Any]]:
    """Values of the ``n x d`` complete rows with robust ``|z|`` above :data:`OUTLIER_WARN_Z`,
    largest first (a warning); raises above :data:`OUTLIER_STOP_Z` unless ``keep_outliers``.

    ``who[r]``: the individual of row ``r`` (``iid``, and ``fid`` when the file gives FIDs,
    ``line`` of the input file when known); each entry returned starts with it: IIDs may repeat
    across families, so an entry names the individual by (FID, IID)."""
    z = robust_z(values)
    rows, cols = np.nonzero(np.abs(z) > OUTLIER_WARN_Z)
    found = sorted(
        (
            {**who[r], "trait": traits[c], "value": float(values[r, c]), "robust_z": round(float(z[r, c]), 1)}
            for r, c in zip(rows, cols, strict=True)
        ),
        key=lambda entry: -abs(entry["robust_z"]),
    )
    if not found:
        return found

    def listed(entries: list[dict[str, Any]]) -> str:
        shown = "; ".join(
            f"{_individual(o)} trait {o['trait']!r} = {o['value']:g} (robust z {o['robust_z']:g})" for o in entries[:3]
        )
        return shown + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")

    gross = [o for o in found if abs(o["robust_z"]) > OUTLIER_STOP_Z]
    if gross and not keep_outliers:
        raise FlowphenoError(
            f"{pheno}: gross outlier(s) beyond robust |z| {OUTLIER_STOP_Z:g} (median/MAD): {listed(gross)}; "
            "fix or remove the value(s) (a data-entry error squeezes every other value of the trait), "
            "or pass --keep-outliers to fit with them"
        )
    warn(
        f"{pheno}: {len(found)} value(s) beyond robust |z| {OUTLIER_WARN_Z:g} (median/MAD): {listed(found)}; "
        "kept (listed in fit.json 'outliers', marked in diagnostics.png)",
    )
    return found


S2_SETTLED = 0.02
"""``s2`` moving by more than this over the last stage of ``alternating``/``joint`` is reported."""


def _check_settled_s2(outcome: FitOutcome, config: FitConfig) -> None:
    """Warn when ``s2`` was still moving at the end of training (it rises stage by stage while
    the flow learns the traits' shape): the reported value is then not yet the estimate."""
    values = [
        stage["s2"]
        for stage in outcome.stages  # the stages' own values, not the final refit
        if isinstance(stage.get("stage"), int) and isinstance(stage.get("s2"), (int, float))
    ]
    if config.mode not in ("alternating", "joint") or len(values) < 2 or outcome.stopped_early is not None:
        return  # stopped early: the held-out score stopped improving, more stages would not be used
    change = values[-1] - values[-2]
    if abs(change) > S2_SETTLED:
        warn(
            f"s2 was still moving in the last stage ({values[-2]:.3f} -> {values[-1]:.3f}): it is not settled; "
            f"train longer (--stages, now {config.train.stages}; --epochs, now {config.train.epochs}) "
            "and compare, or pick s2 with --mode grid"
        )


def _mvlmm_advice(n: int, d: int) -> str:
    """The warning for ``n < 100 d^2``: GEMMA's mvLMM over all ``d`` traits estimates ``d x d``
    genetic and residual covariances, which its authors find unstable below about
    ``100 d^2`` individuals; the largest trait group that ``n`` supports, and how to test it."""
    group = math.isqrt(n // 100)
    how = "test the traits one at a time (flowpheno gwas assoc --per-trait)"
    if group >= 2:
        columns = ",".join(str(j) for j in range(1, group + 1))
        how = (
            f"test groups of at most {group} traits (the workflow's trait_groups; by hand flowpheno gwas assoc "
            f"--columns {columns}) or one trait at a time (--per-trait)"
        )
    return (
        f"{n} individuals for {d} traits: GEMMA's mvLMM of all {d} traits at once needs about 100 d^2 = {100 * d * d} "
        f"individuals (with fewer, its {d} x {d} genetic and residual covariance estimates are unstable: "
        f"'matrix is singular', NaN Vg/Ve); the Gaussianized traits are not affected, but {how}"
    )


def _split(n: int, val_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(val_frac * n))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _kinship_model(
    kinship: Kinship | KinshipFactor,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    device: str,
    timings: dict[str, float],
) -> tuple[KinshipCovariance, HeldOutKinship | None, bool | None]:
    """The training rows' covariance model (float32) and, when there are validation rows, their
    kinship with the training rows and among themselves (float64, for the conditional held-out
    score). ``train_rows``/``val_rows``: the kinship's row positions of the training and
    validation individuals, in order."""
    started = time.perf_counter()
    if isinstance(kinship, KinshipFactor):  # thin SVD of the factor: O(n r^2), no n x n matrix
        factor = torch.as_tensor(kinship.rows(train_rows), dtype=torch.float64)
        model = KinshipCovariance.from_factor(factor)
        held_out = (
            model.held_out_factor(torch.as_tensor(kinship.rows(val_rows), dtype=torch.float64))
            if len(val_rows)
            else None
        )
        timings["thin_svd"] = time.perf_counter() - started
        return model.float().to(device), None if held_out is None else held_out.to(device), None
    source = Path(kinship.source)
    cache_dir = source.parent if source.parent.exists() else None
    eigenvalues, eigenvectors, hit = spectral_decomposition(kinship.rows(train_rows), kinship.source, cache_dir)
    timings["eigendecomposition"] = time.perf_counter() - started
    model = KinshipCovariance(torch.as_tensor(eigenvalues), torch.as_tensor(eigenvectors))
    held_out = None
    if len(val_rows):
        started = time.perf_counter()
        held_out = model.held_out(
            torch.as_tensor(kinship.cross(val_rows, train_rows)), torch.as_tensor(kinship.rows(val_rows))
        )
        held_out = held_out.to(device)
        timings["held_out_kinship"] = time.perf_counter() - started
    return model.float().to(device), held_out, hit


def fit_phenotypes(
    pheno: str | Path,
    grm: str | Path | Kinship | KinshipFactor | None = None,
    covar: str | Path | None = None,
    config: FitConfig | None = None,
    out: str | Path | None = None,
    grm_ids: str | Path | None = None,
    callback: Callback | None = None,
    command: list[str] | None = None,
    grm_pcs: str | Path | None = None,
    grm_factor: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[PhenotypeModel, pd.DataFrame, FitReport]:
    """Fit the relatedness-aware flow and Gaussianize every complete row.

    The kinship is ``grm`` (a dense matrix or its file), ``grm_pcs`` (a PC table) or
    ``grm_factor`` (a PLINK prefix with fewer SNPs than individuals); the last two are
    low rank and no ``n x n`` matrix is ever formed.

    The steps are :func:`prepare_fit` (read, check, align, residualise, split, decompose
    the kinship), :func:`train_fit` (no I/O), :func:`fit_report` and, with ``out``,
    :func:`write_fit_outputs`; call them one by one to change a step.

    Returns ``(model, gaussianized, report)``: the :class:`PhenotypeModel`, a table of FID,
    IID and the ``d`` Gaussianized traits for every row of ``pheno`` in file order (NaN
    where incomplete), and the :class:`~flowpheno.report.FitReport` (``report.to_json()``
    is ``fit.json``). With ``out`` also writes the model, ``fit.json``, ``gaussianized.tsv``,
    ``split.tsv`` and ``diagnostics.png`` atomically.
    ``out`` is checked before any input is read: it must be new, empty, or (with
    ``overwrite``) a run folder flowpheno wrote, and must not be, hold or lie inside an
    input; otherwise FlowphenoError (see :mod:`flowpheno.io.atomic`).

    ``progress`` shows the training on stderr (:func:`flowpheno.progress.fit_progress`): live
    bars in a terminal or a notebook (with ipywidgets), else a plain line every 15 s and one
    per stage; ``progress=False`` prints nothing.

    ``callback`` is called with one dict per event (also with ``progress=False``); its
    ``"event"`` key says which:

    - ``"plan"``, once before training: ``stages`` and ``epochs`` (per stage, the maxima:
      ``TrainConfig.patience`` may stop earlier) and ``runs`` (the number of ``s2`` grid
      values with ``mode="grid"``, else 1).
    - ``"epoch"``, after every epoch: ``stage`` (1-based), ``epoch`` (counted over the
      stages of one run), ``train_nll`` (the training objective: mean per individual of the
      NLL under the dependence model, mini-batch estimate; the iid NLL with ``mode="iid"``),
      ``val_nll`` (held-out score per individual of the validation rows, or None without
      them; the kept state is the one with the lowest), ``non_finite_batches`` (batches
      whose step was skipped), ``seconds`` (the epoch's wall time) and the covariance in use
      (``s2`` and ``kinship_scale`` for a kinship model; none for iid). With ``mode="grid"``
      also ``grid_value`` (the fixed ``s2`` of this run).
    - ``"stage"``, after every stage: ``stage`` (0: the covariance's initial exact fit,
      ``alternating`` only), ``flow_seconds`` and, for ``alternating``, ``s2_seconds`` (the
      exact ``s2`` step that ends the stage), with the covariance after the stage (``s2``).
    - ``"grid"``, after every ``mode="grid"`` run: ``value`` (its ``s2``), ``val_nll`` (its
      best), ``seconds``, ``non_finite_batches`` and ``diverged`` (None, or why).

    Records may carry further keys; read them with ``.get``.

    Torch and the BLAS/OpenMP pools run on ``config.threads`` threads (default: the CPUs
    this process may use) and are restored afterwards, except torch's inter-op pool, which
    torch lets a process size only once (:func:`flowpheno.threads.thread_limits`).
    """
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if sum(source is not None for source in (grm, grm_pcs, grm_factor)) > 1:
                raise FlowphenoError("give one kinship: --grm, --grm-pcs or --grm-factor")
            staged = None
            if out is not None:  # checked and created before anything is read or trained
                inputs = fit_inputs(pheno, grm, covar, grm_ids, grm_pcs, grm_factor)
                staged = StagedDirectory(out, "fit", inputs, overwrite=overwrite, legacy=RUN_FILES)
            config = FitConfig() if config is None else config
            if not isinstance(config, FitConfig):
                raise OptionError(
                    f"fit_phenotypes(config=...): must be a FitConfig (training settings go in "
                    f"FitConfig(train=TrainConfig(...))), got {type(config).__name__}"
                )
            config.validate()  # before its thread count is applied
            with (
                staged or _nothing(),
                thread_limits(config.threads),
                fit_progress() if progress else _nothing() as shown,
            ):
                if grm_pcs is not None:
                    grm = read_pcs(grm_pcs)
                elif grm_factor is not None:
                    grm = read_genotype_factor(grm_factor)
                model, gaussianized, report = _fit(
                    pheno, grm, covar, config, staged, grm_ids, _both(shown, callback), command, caught
                )
    finally:  # also when the fit stops with an error: the warnings may explain it
        for warning in caught:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return model, gaussianized, report


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _both(first: Callback | None, second: Callback | None) -> Callback | None:
    """One callback that calls ``first`` then ``second`` (either may be None)."""
    if first is None or second is None:
        return first or second
    return lambda record: (first(record), second(record))


def fit_inputs(
    pheno: str | Path,
    grm: str | Path | Kinship | KinshipFactor | None = None,
    covar: str | Path | None = None,
    grm_ids: str | Path | None = None,
    grm_pcs: str | Path | None = None,
    grm_factor: str | Path | None = None,
) -> dict[str, list[Path]]:
    """Every file ``fit`` may read, by option: a kinship's sidecars (GCTA ``.grm.id``/
    ``.grm.N.bin``, a PLINK prefix's ``.bed/.bim/.fam``, the cached eigendecompositions
    beside it) and the members of a ``--grm-factor`` prefix included."""
    inputs: dict[str, list[Path]] = {"--pheno": [Path(pheno)]}
    if covar is not None:
        inputs["--covar"] = [Path(covar)]
    if grm is not None and not isinstance(grm, (Kinship, KinshipFactor)):
        path = Path(grm)
        name = str(path)
        stems = {name} | {name[: -len(suffix)] for suffix in (*GCTA_SUFFIXES, *PLINK_SUFFIXES) if name.endswith(suffix)}
        files = [path] + [Path(stem + suffix) for stem in stems for suffix in (*GCTA_SUFFIXES, *PLINK_SUFFIXES)]
        if path.parent.is_dir():
            files += sorted(path.parent.glob(f".{path.name}.eig-*.npz"))
        inputs["--grm"] = files
    if grm_ids is not None:
        inputs["--grm-ids"] = [Path(grm_ids)]
    if grm_pcs is not None:
        inputs["--grm-pcs"] = [Path(grm_pcs)]
    if grm_factor is not None:
        name = str(grm_factor)
        stem = next((name[: -len(s)] for s in PLINK_SUFFIXES if name.endswith(s)), name)
        inputs["--grm-factor"] = [Path(name)] + [Path(stem + suffix) for suffix in PLINK_SUFFIXES]
    return inputs


@dataclass
class PreparedData:
    """A fit's inputs as arrays, checked, before any training (:func:`prepare_fit`).

    ``phenotypes``: every row of the phenotype file (``values``: ``(n_rows, d)``).
    ``keep``: ``(n_rows,)`` bool, the rows used (every trait, covariate and kinship entry);
    ``dropped``: the other rows (indices into the file's rows) by reason. ``outliers``: the
    values beyond robust ``|z|`` :data:`OUTLIER_WARN_Z` among the used rows (see
    :class:`~flowpheno.report.FitReport`). ``beta``: ``(c + 1, d)`` least-squares covariate
    effects, intercept first; ``center``, ``scale``: ``(d,)`` mean and SD of the residuals;
    ``standardised``: ``(n_used, d)`` residuals ``(r - center) / scale`` of the used rows, the
    flow's input. ``train_rows``, ``val_rows``: sorted indices into the used rows.
    ``dependence``: the training rows' kinship model (float32 on ``config.device``; None for
    ``--mode iid``); ``held_out``: the validation rows' kinship with the training rows and
    among themselves, for the conditional held-out score (None without validation rows);
    ``kinship_source``: the kinship's file or prefix; ``eigendecomposition_cached``: whether
    the dense eigendecomposition came from the cache (None for a low-rank factor).
    ``covar``: the covariate file, if any. ``seconds``: wall time of the steps so far (s).
    """

    phenotypes: Phenotypes
    covar: str | None
    keep: np.ndarray
    dropped: dict[str, np.ndarray]
    outliers: list[dict[str, Any]]
    beta: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    standardised: np.ndarray
    train_rows: np.ndarray
    val_rows: np.ndarray
    kinship_source: str | None = None
    dependence: KinshipCovariance | None = None
    held_out: HeldOutKinship | None = None
    eigendecomposition_cached: bool | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def n_used(self) -> int:
        return int(self.keep.sum())

    @property
    def used_covariates(self) -> np.ndarray | None:
        """``(n_used, c)`` covariates of the used rows, or None without covariates."""
        covariates = self.phenotypes.covariates
        return None if covariates is None else covariates[self.keep]

    def split_table(self) -> pd.DataFrame:
        """The used individuals and the set each was in: FID, IID and ``set`` (``train`` or
        ``validation``), in the phenotype file's row order (``n_used`` rows). What ``split.tsv``
        holds: with it the held-out scores of ``fit.json`` can be recomputed from the model."""
        used = self.phenotypes.ids[["FID", "IID"]].iloc[np.flatnonzero(self.keep)].reset_index(drop=True)
        role = np.full(self.n_used, "train", dtype=object)
        role[self.val_rows] = "validation"
        return used.assign(set=role)


@dataclass
class TrainedFit:
    """What training gives (:func:`train_fit`): the fitted ``model``, the ``outcome`` (its
    training history, kept state and dependence model), ``latent``: ``(n_rows, d)``
    Gaussianized traits of every row of the phenotype file (NaN where incomplete),
    ``gaussianized``: the same as a table with the FID and IID columns, and ``seconds``
    (``training`` and ``transform``, s)."""

    model: PhenotypeModel
    outcome: FitOutcome
    latent: np.ndarray
    gaussianized: pd.DataFrame
    seconds: dict[str, float] = field(default_factory=dict)


def prepare_fit(
    pheno: str | Path,
    grm: str | Path | Kinship | KinshipFactor | None,
    covar: str | Path | None,
    config: FitConfig,
    grm_ids: str | Path | None = None,
) -> PreparedData:
    """Read, check and align the inputs, project out the covariates, split the individuals and
    decompose the training rows' kinship: everything of a fit that reads files.

    ``grm``: a kinship file (read by :func:`flowpheno.io.kinship.read_kinship` with
    ``grm_ids``), or an already read :class:`Kinship`/:class:`KinshipFactor`; ignored with
    ``config.mode == "iid"``. The dense eigendecomposition is cached beside the kinship file
    (:func:`flowpheno.io.kinship.spectral_decomposition`). Covariates are removed by least
    squares with an intercept (:func:`flowpheno.model.least_squares_residuals`); the split is
    :func:`_split` (``config.val_frac`` of the used rows at random, seeded by ``config.train.seed``).

    Raises:
        FlowphenoError: a kinship mode without ``grm``; unreadable or misaligned inputs; fewer
            than :data:`MIN_COMPLETE_ROWS` usable individuals; a trait that is missing
            everywhere, constant, few-valued, explained by the covariates or a copy of another;
            a covariate level of one individual; a covariate row of leverage above
            :data:`LEVERAGE_STOP` or a value beyond :data:`OUTLIER_STOP_Z` (unless
            ``config.keep_outliers``). Warns on outliers, text columns skipped and too few
            individuals for GEMMA's mvLMM.
    """
    config.validate()  # again: the dataclasses can be changed after construction
    if config.mode != "iid" and grm is None:
        raise FlowphenoError(
            f"--mode {config.mode} models relatedness and needs --grm, --grm-pcs or --grm-factor (or use --mode iid)"
        )
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    phenotypes = read_phenotypes(pheno, config.traits, covar, config.categorical)
    _check_present(phenotypes)
    keep, dropped = _complete_rows(phenotypes, covar)
    kinship, kinship_rows = None, None
    if grm is not None and config.mode != "iid":
        kinship = grm if isinstance(grm, (Kinship, KinshipFactor)) else read_kinship(grm, grm_ids)
        keep, kinship_rows = _align_kinship(kinship, phenotypes.keys(), keep, dropped)
    outliers = _check_used_rows(phenotypes, keep, covar, config.keep_outliers)
    fit_covariates = phenotypes.covariates[keep] if phenotypes.covariates is not None else None
    residuals, beta = least_squares_residuals(phenotypes.values[keep], fit_covariates)
    center, scale = residuals.mean(axis=0), residuals.std(axis=0)
    _check_residuals(residuals, phenotypes.values[keep], phenotypes.traits, str(pheno), covar)
    seconds["read_and_align"] = time.perf_counter() - started

    train_rows, val_rows = _split(int(keep.sum()), config.val_frac, config.train.seed)
    if config.val_frac > 0 and not len(val_rows):
        warn(
            f"--val-frac {config.val_frac:g} of {int(keep.sum())} individuals rounds to none held out: no validation "
            "score, so no early stopping and the last state is kept; raise --val-frac or set it to 0"
        )
    data = PreparedData(
        phenotypes,
        None if covar is None else str(covar),
        keep,
        dropped,
        outliers,
        beta,
        center,
        scale,
        (residuals - center) / scale,
        train_rows,
        val_rows,
        seconds=seconds,
    )
    if kinship is not None:
        positions = kinship_rows[keep]
        data.kinship_source = kinship.source
        data.dependence, data.held_out, data.eigendecomposition_cached = _kinship_model(
            kinship, positions[train_rows], positions[val_rows], config.device, seconds
        )
    return data


def _check_used_rows(
    phenotypes: Phenotypes, keep: np.ndarray, covar: str | Path | None, keep_outliers: bool
) -> list[dict[str, Any]]:
    """Every check of the used rows (``keep``) before covariates are removed; returns the outliers."""
    pheno = phenotypes.source
    n_complete = int(keep.sum())
    if n_complete < MIN_COMPLETE_ROWS:
        raise FlowphenoError(
            f"{pheno}: only {n_complete} individuals have every trait, covariate and kinship entry; "
            f"at least {MIN_COMPLETE_ROWS} are needed (check IDs and missing values{_sparsest(phenotypes)})"
        )
    iids = phenotypes.ids["IID"].to_numpy()
    _check_traits(phenotypes.values[keep], phenotypes.traits, pheno, iids[keep])
    _check_levels(phenotypes, keep, covar)
    _check_leverage(phenotypes, keep, covar, keep_outliers)
    _check_collinear_traits(phenotypes.values[keep], phenotypes.traits, pheno)
    who = [
        {
            **({"fid": str(fid)} if phenotypes.fid_given else {}),
            "iid": str(iid),
            **({"line": int(phenotypes.lines[r])} if phenotypes.lines is not None else {}),
        }
        for r, (fid, iid) in enumerate(zip(phenotypes.ids["FID"], phenotypes.ids["IID"], strict=True))
        if keep[r]
    ]
    outliers = _check_outliers(phenotypes.values[keep], who, phenotypes.traits, pheno, keep_outliers)
    d = len(phenotypes.traits)
    if d > 1 and n_complete < 100 * d * d:
        warn(_mvlmm_advice(n_complete, d))
    return outliers


def train_fit(data: PreparedData, config: FitConfig, callback: Callback | None = None) -> TrainedFit:
    """Train the flow in ``config.mode`` on ``data``'s standardised training rows (scored on its
    validation rows) and Gaussianize every complete row of the phenotype file. No file is
    read or written; ``callback`` gets the records described in :func:`fit_phenotypes`.

    Same seed (``config.train.seed``) on the CPU, same numbers: the flow is initialised from
    it (and again for each ``--mode grid`` value), and so are the batch orders.

    Raises:
        FlowphenoError: training diverged (a non-finite validation NLL, or the fitted flow maps
            a complete row to a non-finite value). Warns when training steps were skipped on a
            non-finite loss and when ``s2`` had not settled in the last stage.
    """
    config = config.resolved()  # the settings fit.json records are the ones trained with
    device = config.device
    d = len(data.phenotypes.traits)
    x_train = torch.as_tensor(data.standardised[data.train_rows], dtype=torch.float32, device=device)
    x_val = (
        torch.as_tensor(data.standardised[data.val_rows], dtype=torch.float32, device=device)
        if len(data.val_rows)
        else None
    )

    def make_flow() -> torch.nn.Module:  # weights drawn from the seed, not the global random state
        return affine_coupling_flow(d, layers=config.layers, hidden=config.hidden, seed=config.train.seed).to(device)

    if callback:
        grid_runs = len(config.s2_grid) if config.mode == "grid" else 1
        callback({"event": "plan", "stages": config.train.stages, "epochs": config.train.epochs, "runs": grid_runs})
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    outcome = _run_mode(config, make_flow, data.dependence, x_train, x_val, callback, data.held_out)
    seconds["training"] = time.perf_counter() - started
    advice = f"lower --lr (now {config.train.lr:g}) or check the traits for extreme values"
    if outcome.diverged is not None:
        raise FlowphenoError(f"training diverged {outcome.diverged}: {advice}; nothing was written")
    if outcome.non_finite_batches:
        warn(
            f"skipped the step of {outcome.non_finite_batches} training batches with a non-finite loss, latent or "
            f"gradient; if the fit looks poor, {advice}",
        )
    _check_settled_s2(outcome, config)

    phenotypes = data.phenotypes
    model = PhenotypeModel(
        flow=outcome.flow.cpu(),
        traits=phenotypes.traits,
        covariates=phenotypes.covariate_names,
        beta=data.beta,
        center=data.center,
        scale=data.scale,
        covariance=outcome.dependence.describe(),
        covariate_columns=phenotypes.covariate_columns,
        levels=phenotypes.levels,
    )
    started = time.perf_counter()
    latent = model.gaussianize(phenotypes.values, phenotypes.covariates)
    broken = data.keep & ~np.isfinite(latent).all(axis=1)
    if broken.any():
        raise FlowphenoError(
            f"training diverged: the fitted flow maps {int(broken.sum())} of {data.n_used} complete individuals "
            f"(first: IID {phenotypes.ids['IID'].to_numpy()[broken][0]}) "
            f"to non-finite values: {advice}; nothing was written"
        )
    gaussianized = pd.concat(
        [phenotypes.ids.reset_index(drop=True), pd.DataFrame(latent, columns=phenotypes.traits)], axis=1
    )
    gaussianized.attrs[FID_GIVEN] = phenotypes.fid_given
    seconds["transform"] = time.perf_counter() - started
    return TrainedFit(model, outcome, latent, gaussianized, seconds)


def fit_report(
    data: PreparedData,
    trained: TrainedFit,
    config: FitConfig,
    command: list[str] | None = None,
    warned: list[str] | None = None,
) -> FitReport:
    """The typed ``fit.json`` of a fit (:class:`~flowpheno.report.FitReport`): ``command`` (default
    ``sys.argv``), ``warned`` the warnings raised so far; versions and thread counts are
    those of this process. The config is copied, with its automatic settings decided
    (:meth:`FitConfig.resolved`): changing ``config`` later leaves the report as it was."""
    phenotypes, outcome, dependence = data.phenotypes, trained.outcome, data.dependence
    ids = phenotypes.ids
    return FitReport(
        command=list(command or sys.argv),
        inputs=FitInputs(pheno=phenotypes.source, grm=data.kinship_source, covar=data.covar),
        config=copy.deepcopy(config.resolved()),
        seed=config.train.seed,
        versions=package_versions(),
        device=config.device,
        threads=thread_report(config.threads),
        n_rows=len(ids),
        n_used=data.n_used,
        n_train=len(data.train_rows),
        n_validation=len(data.val_rows),
        d=len(phenotypes.traits),
        traits=phenotypes.traits,
        skipped_columns=phenotypes.skipped_columns,
        covariates=phenotypes.covariate_names,
        categorical_levels=phenotypes.levels,
        outliers=data.outliers,
        dropped={
            reason: DroppedRows(len(rows), ids["FID"].iloc[rows].tolist(), ids["IID"].iloc[rows].tolist())
            for reason, rows in data.dropped.items()
        },
        kinship=None
        if dependence is None
        else KinshipSummary(
            dependence.scale, dependence.numerical_rank, dependence.complement > 0, data.eigendecomposition_cached
        ),
        covariance=trained.model.covariance,
        stages=outcome.stages,
        grid=outcome.grid,
        epochs=outcome.epochs,
        validation_score=outcome.validation_score,
        best_validation_nll=outcome.best_val_nll,
        best_validation_nll_iid=outcome.best_val_scores.get("val_nll_iid"),
        best_validation_nll_conditional=outcome.best_val_scores.get("val_nll_conditional"),
        best_epoch=outcome.best_epoch,
        best_stage=outcome.best_stage,
        stopped_early=outcome.stopped_early,
        gaussianity=gaussianity_report(data.standardised, trained.latent[data.keep]),
        non_finite_batches=outcome.non_finite_batches,
        seconds={**data.seconds, **trained.seconds},
        warnings=list(warned or []),
    )


def _fit(
    pheno: str | Path,
    grm: str | Path | Kinship | KinshipFactor | None,
    covar: str | Path | None,
    config: FitConfig,
    out: StagedDirectory | None,
    grm_ids: str | Path | None,
    callback: Callback | None,
    command: list[str] | None,
    caught: list[warnings.WarningMessage],
) -> tuple[PhenotypeModel, pd.DataFrame, FitReport]:
    """prepare -> train -> report -> write (when ``out`` is given)."""
    data = prepare_fit(pheno, grm, covar, config, grm_ids)
    trained = train_fit(data, config, callback)
    report = fit_report(data, trained, config, command, [str(warning.message) for warning in caught])
    if out is not None:
        write_fit_outputs(out, data, trained, report)
    return trained.model, trained.gaussianized, report


def _run_mode(
    config: FitConfig,
    make_flow: Any,
    kinship: KinshipCovariance | None,
    x_train: torch.Tensor,
    x_val: torch.Tensor | None,
    callback: Callback | None,
    held_out: HeldOutKinship | None = None,
) -> FitOutcome:
    """Train in ``config.mode``; kinship modes score validation rows conditionally on the
    training rows when ``held_out`` is given (``iid`` mode never does)."""
    if config.mode == "iid":
        return fit_iid(make_flow(), x_train, x_val, config.train, callback)
    assert kinship is not None
    if config.mode == "alternating":
        return fit_alternating(make_flow(), kinship, x_train, x_val, config.train, callback, held_out)
    if config.mode == "joint":
        return fit_joint(make_flow(), kinship, x_train, x_val, config.train, callback, held_out)

    return fit_grid(make_flow, kinship.with_s2, config.s2_grid, x_train, x_val, config.train, callback, held_out)


def write_fit_outputs(
    out: str | Path | StagedDirectory,
    data: PreparedData,
    trained: TrainedFit,
    report: FitReport,
    overwrite: bool = False,
) -> None:
    """Write the run directory as a whole: nothing appears unless everything was written.

    Writes the model (:meth:`PhenotypeModel.save`), ``gaussianized.tsv``, ``split.tsv``
    (:meth:`PreparedData.split_table`), ``diagnostics.png``
    (:func:`flowpheno.plots.diagnostics_figure`) and ``fit.json`` (``report.to_json()``, with
    ``report.seconds["write"]`` set first). ``out`` is a :class:`StagedDirectory` made before
    the fit (the usual way), or a path, checked here (an earlier run is replaced only with
    ``overwrite``).

    Raises:
        FlowphenoError: the folder cannot be written (full disk, no permission), or ``out``
            is refused (see :mod:`flowpheno.io.atomic`).
    """
    from flowpheno.plots import diagnostics_figure

    started = time.perf_counter()
    staged = (
        out if isinstance(out, StagedDirectory) else StagedDirectory(out, "fit", overwrite=overwrite, legacy=RUN_FILES)
    )
    with staged, write_errors(staged.target):
        tmp = staged.path
        trained.model.save(tmp)
        write_phenotypes(trained.gaussianized, tmp / "gaussianized.tsv")
        with atomic_path(tmp / "split.tsv") as path:
            data.split_table().to_csv(path, sep="\t", index=False)
        before = trained.model.standardise(data.phenotypes.values[data.keep], data.used_covariates)  # the flow's input
        figure = diagnostics_figure(
            before,
            trained.latent[data.keep],
            trained.model.traits,
            report,
            data.phenotypes.ids[["FID", "IID"]].to_numpy(dtype=str)[data.keep],
        )
        figure.savefig(tmp / "diagnostics.png", dpi=110)
        report.seconds["write"] = time.perf_counter() - started
        with atomic_path(tmp / "fit.json") as path:
            path.write_text(json.dumps(report.to_json(), indent=2, default=jsonable))
        staged.commit()


def _check_new_values(standardised: np.ndarray, phenotypes: Phenotypes, pheno: str, keep_outliers: bool) -> None:
    """Values of a file to transform beyond the fit's range, in training SDs (``n x d``)."""
    with np.errstate(invalid="ignore"):
        far = np.abs(np.nan_to_num(standardised, nan=0.0))
    rows, cols = np.nonzero(far > OUTLIER_WARN_Z)
    if not len(rows):
        return
    order = np.argsort(-far[rows, cols])
    iids = phenotypes.ids["IID"].to_numpy()
    shown = "; ".join(
        f"IID {iids[rows[k]]} trait {phenotypes.traits[cols[k]]!r} = {phenotypes.values[rows[k], cols[k]]:g} "
        f"({far[rows[k], cols[k]]:.3g} SD)"
        for k in order[:3]
    )
    more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
    if far[rows, cols].max() > OUTLIER_STOP_Z and not keep_outliers:
        raise FlowphenoError(
            f"{pheno}: value(s) beyond {OUTLIER_STOP_Z:g} training SDs after covariates: {shown}{more}; the flow would "
            "extrapolate (and carry that individual's other traits with it): fix or remove the value(s) (or that "
            "individual's covariates, when the trait value itself is ordinary), or pass --keep-outliers"
        )
    warn(f"{pheno}: value(s) beyond {OUTLIER_WARN_Z:g} training SDs after covariates: {shown}{more}")


def transform_phenotypes(
    model: str | Path | PhenotypeModel,
    pheno: str | Path,
    covar: str | Path | None = None,
    device: str = "cpu",
    keep_outliers: bool = False,
    threads: int | None = None,
) -> pd.DataFrame:
    """Gaussianize a phenotype table with a fitted model; rows in input order, NaN where incomplete.

    Values far outside what the model was fitted on are checked as in ``fit``, on the
    model's own scale (covariate residuals in units of the training SD): above
    :data:`OUTLIER_WARN_Z` a warning, above :data:`OUTLIER_STOP_Z` a FlowphenoError
    unless ``keep_outliers`` (the flow extrapolates there, and the other traits of that
    individual go with it). ``threads``: CPU threads for torch and BLAS, as
    :attr:`FitConfig.threads` (default: the CPUs this process may use).
    """
    Checks("transform_phenotypes").integer("threads", threads, 1, optional=True)
    with thread_limits(threads):
        return _transform_phenotypes(model, pheno, covar, device, keep_outliers)


def _transform_phenotypes(
    model: str | Path | PhenotypeModel, pheno: str | Path, covar: str | Path | None, device: str, keep_outliers: bool
) -> pd.DataFrame:
    if not isinstance(model, PhenotypeModel):
        model = PhenotypeModel.load(model)
    if model.covariates and covar is None:
        raise FlowphenoError(f"the model was fitted with covariates ({', '.join(model.covariates)}); pass --covar FILE")
    if covar is not None and not model.covariates:
        raise FlowphenoError(
            f"--covar {covar}: the model was fitted without covariates, so they would be ignored; leave --covar out"
        )
    phenotypes = read_phenotypes(pheno, model.traits)
    covariates = None
    if model.covariates:
        # encoded against the fit's levels: same reference level and dummy columns; unseen levels stop
        aligned, _, _ = aligned_covariates(covar, phenotypes.keys(), levels=model.levels, only=model.covariate_columns)
        if list(aligned.columns) != list(model.covariates):
            raise FlowphenoError(
                f"{covar}: covariate columns encode as {', '.join(aligned.columns)}, but the model was fitted on "
                f"{', '.join(model.covariates)}; use the covariate file layout of the fit"
            )
        covariates = aligned.to_numpy(dtype=float)
    _check_new_values(model.standardise(phenotypes.values, covariates), phenotypes, str(pheno), keep_outliers)
    latent = model.gaussianize(phenotypes.values, covariates, device=device)
    table = pd.concat([phenotypes.ids.reset_index(drop=True), pd.DataFrame(latent, columns=model.traits)], axis=1)
    table.attrs[FID_GIVEN] = phenotypes.fid_given
    return table
