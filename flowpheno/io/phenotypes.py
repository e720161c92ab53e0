"""Phenotype and covariate tables read and aligned on (FID, IID), as ``fit``, ``transform`` and
``gwas rint`` take them.

Files in, arrays out: :func:`read_phenotypes` gives the traits (``n x d``, NaN where missing)
and the covariate design of a phenotype file's individuals, in the file's row order;
:func:`aligned_covariates` the covariate design of any list of individuals (a ``.fam``, a
phenotype file). Table parsing is :func:`flowpheno.io.tables.read_table`, the FID/IID rules
:func:`flowpheno.io.ids.align`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from flowpheno.errors import FlowphenoError, warn
from flowpheno.io.ids import FID_GIVEN, SampleKeys, align
from flowpheno.io.tables import covariate_design, default_traits, numeric_columns, read_table, table_keys


@dataclass
class Phenotypes:
    """Traits (and covariates) of ``n`` individuals aligned on (FID, IID), in the phenotype
    file's row order, with NaN for missing.

    ``ids``: FID and IID columns (text; FID = IID when the file has no FID, and then
    ``fid_given`` is False and joins use IID alone). ``values``: ``(n, d)`` float, the ``d``
    ``traits`` in that order. ``covariates``: ``(n, c)`` float design (categorical columns
    one-hot against their first level, no intercept; NaN where an individual is absent from
    the covariate file or a value is missing), named ``covariate_names``; ``covariate_columns``
    are the covariate file's own columns and ``levels`` each one-hot column's levels, first
    the reference. ``None``/empty without a covariate file. ``source``: the phenotype file;
    ``skipped_columns``: its text columns left out of the default traits; ``lines``: ``(n,)``
    the input line of each row, when known (for messages).
    """

    ids: pd.DataFrame
    values: np.ndarray
    traits: list[str]
    covariates: np.ndarray | None
    covariate_names: list[str]
    covariate_columns: list[str]
    source: str
    skipped_columns: list[str] = field(default_factory=list)
    fid_given: bool = True
    lines: np.ndarray | None = None
    levels: dict[str, list[str]] = field(default_factory=dict)

    def keys(self) -> SampleKeys:
        """The individuals' keys, for :func:`flowpheno.io.ids.align`."""
        fid = self.ids["FID"].to_numpy(dtype=str) if self.fid_given else None
        return SampleKeys(self.ids["IID"].to_numpy(dtype=str), fid, self.source, self.lines)

    def id_table(self) -> pd.DataFrame:
        """FID and IID columns, marked with whether the FIDs came from the file."""
        ids = self.ids.reset_index(drop=True).copy()
        ids.attrs[FID_GIVEN] = self.fid_given
        return ids


def read_phenotypes(
    pheno: str | Path,
    traits: list[str] | None = None,
    covar: str | Path | None = None,
    categorical: list[str] | None = None,
) -> Phenotypes:
    """Read traits and covariates aligned on (FID, IID).

    ``traits``: the trait columns (default: every numeric column; text columns are skipped
    with a warning). ``covar``: a covariate table matched to the phenotype rows by
    :func:`aligned_covariates`; text columns and the ``categorical`` ones are one-hot encoded.
    Tables are read by :func:`flowpheno.io.tables.read_table` (tsv/csv/whitespace, parquet;
    PLINK missing codes).

    Returns:
        :class:`Phenotypes` over every row of ``pheno``, in file order (``values``: ``(n, d)``).

    Raises:
        FlowphenoError: no trait column, a named trait absent or not numeric, ``categorical``
            without ``covar``, duplicate or malformed IDs, or a covariate file sharing no
            individual; one line naming the file and the fix.
    """
    table = read_table(pheno)
    keys = table_keys(table, pheno)
    skipped: list[str] = []
    if traits is None:
        traits, skipped = default_traits(table)
        if skipped:
            warn(
                f"{pheno}: text column(s) {', '.join(map(repr, skipped))} are not traits and were skipped; "
                "name the traits with --traits to silence this",
            )
    if not traits:
        raise FlowphenoError(f"{pheno}: no numeric trait columns besides FID/IID")
    values = numeric_columns(table, traits, pheno, "trait").to_numpy()
    covariates, names, columns, levels = None, [], [], {}
    if categorical and covar is None:
        raise FlowphenoError(
            f"--categorical {','.join(categorical)} names covariate columns, but no --covar file was given"
        )
    if covar is not None:
        aligned, columns, levels = aligned_covariates(covar, keys, categorical)
        covariates, names = aligned.to_numpy(dtype=float), list(aligned.columns)
    return Phenotypes(
        table[["FID", "IID"]].copy(),
        values,
        list(traits),
        covariates,
        names,
        columns,
        str(pheno),
        skipped,
        fid_given=keys.fid is not None,
        lines=keys.lines,
        levels=levels,
    )


def aligned_covariates(
    covar: str | Path,
    keys: SampleKeys | np.ndarray,
    categorical: list[str] | None = None,
    levels: dict[str, list[str]] | None = None,
    only: list[str] | None = None,
) -> tuple[pd.DataFrame, list[str], dict[str, list[str]]]:
    """The covariate design of the individuals ``keys``, from the table ``covar``.

    Returns ``(design, columns, levels)``: ``design`` is an ``(n, c)`` frame (text and
    ``categorical`` columns one-hot, against ``levels`` when given) with rows in the order of
    ``keys`` (the phenotype file's or a ``.fam``'s individuals; NaN where one is absent);
    ``columns`` the covariate file's own column names; ``levels`` each categorical column's
    levels, the reference first. Matched on (FID, IID), or IID alone where a file has no
    FID. With ``only``, just those columns are read (those a fitted model uses).

    Raises:
        FlowphenoError: a file sharing no individual with ``keys``, a column of ``only``
            missing, or a level not in ``levels`` (one line naming the file).
    """
    if not isinstance(keys, SampleKeys):
        keys = SampleKeys(np.asarray(keys, dtype=str), None, "the phenotype table")
    covariate_table = read_table(covar)
    covariate_keys = table_keys(covariate_table, covar)
    columns = [c for c in covariate_table.columns if c not in ("FID", "IID")]
    if only is not None:
        absent = [c for c in only if c not in columns]
        if absent:
            raise FlowphenoError(
                f"{covar}: missing covariate column(s) {', '.join(absent)} used by the model; add them"
            )
        lines = covariate_table.attrs.get("lines")
        covariate_table = covariate_table[["FID", "IID", *only]].copy()
        covariate_table.attrs["lines"] = lines
    matrix, used = covariate_design(covariate_table, covar, categorical, levels)
    alignment = align(covariate_keys, keys, hint="give covariates for the same individuals")
    return alignment.take(matrix), columns, used
