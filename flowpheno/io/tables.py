"""Phenotype and covariate tables keyed by FID/IID (text or parquet)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from flowpheno.errors import FlowphenoError

MISSING_STRINGS = ["NA", "nan", "NaN", "", ".", "-9"]
"""The one list of missing-value codes of every table: ``NA``, ``nan``, ``NaN``, an empty
cell, ``.`` (PLINK 2, SAS and many exports) and ``-9`` (PLINK 1's code, also as the number
-9.0). ``inf``/``-inf`` are not missing: a trait or covariate holding them is an error."""

MISSING_NUMBER = -9.0
MAX_LEVELS = 50
"""A text covariate with more levels than this stops unless declared categorical."""
MIN_PER_LEVEL = 3
"""... and so does one (with more than 2 levels) averaging fewer individuals per level."""

_DECIMAL_COMMA = re.compile(r"^\s*[-+]?\d*,\d+\s*$")
_SHOWN = 3

ID_COLUMNS = ("FID", "IID")


def _delimiter(path: Path) -> str:
    with path.open() as handle:
        header = handle.readline()
    if "\t" in header:
        return "\t"
    if "," in header:
        return ","
    return r"\s+"


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a FID/IID-keyed table: tab, comma or whitespace separated text, or parquet.

    ``#FID``/``#IID`` headers (PLINK 2) are accepted; a table with IID but no FID gets
    ``FID = IID``. IDs are strings; ``NA``, ``nan``, empty and ``-9`` are missing.
    """
    path = Path(path)
    if not path.exists():
        raise FlowphenoError(f"{path}: file not found")
    if path.suffix.lower() in {".parquet", ".pq"}:
        table = pd.read_parquet(path)
        table = table.replace(-9, np.nan)
    else:
        table = pd.read_csv(
            path,
            sep=_delimiter(path),
            dtype=str,
            keep_default_na=False,
            na_values=MISSING_STRINGS,
            engine="python" if _delimiter(path) == r"\s+" else "c",
        )
    table = table.rename(columns={"#FID": "FID", "#IID": "IID"})
    if "IID" not in table.columns:
        found = ", ".join(map(str, table.columns[:8]))
        raise FlowphenoError(f"{path}: header must name FID and IID columns (found: {found}); add them or rename #FID/#IID")
    if "FID" not in table.columns:
        table.insert(0, "FID", table["IID"])
    table["FID"] = table["FID"].astype(str)
    table["IID"] = table["IID"].astype(str)
    duplicated = table["IID"].duplicated(keep=False)
    if duplicated.any():
        iid = table.loc[duplicated, "IID"].iloc[0]
        rows = [str(i + 2) for i in np.flatnonzero(table["IID"].to_numpy() == iid)]
        raise FlowphenoError(f"{path}: IID {iid!r} appears more than once (lines {', '.join(rows)}); keep one row per individual")
    return table.reset_index(drop=True)


def _line(table: pd.DataFrame, row: int) -> int:
    """1-based line of data row ``row`` in its file (the header is line 1)."""
    return row + 2


def _cells(table: pd.DataFrame, column: str, rows: np.ndarray) -> str:
    shown = [f"line {_line(table, int(r))}, IID {table['IID'].iloc[int(r)]}: {table[column].iloc[int(r)]!r}" for r in rows[:_SHOWN]]
    more = f" and {len(rows) - _SHOWN} more" if len(rows) > _SHOWN else ""
    return "; ".join(shown) + more


def _missing_codes_to_na(column: pd.Series) -> pd.Series:
    """``column`` with every cell that is a missing code (:data:`MISSING_STRINGS`, surrounding
    blanks ignored) as NA, whatever reader produced it (text or parquet)."""
    if pd.api.types.is_numeric_dtype(column):
        return column
    text = column.astype("string").str.strip()
    return column.mask(text.isin(MISSING_STRINGS) & column.notna())


def _looks_numeric(text: pd.Series) -> pd.Series:
    """Per present cell: a number (finite or not) or a number written with a decimal comma."""
    return pd.to_numeric(text, errors="coerce").notna() | text.astype(str).str.match(_DECIMAL_COMMA)


def numeric_columns(table: pd.DataFrame, columns: list[str], path: str | Path, role: str) -> pd.DataFrame:
    """Columns ``columns`` of ``table`` (``n`` rows) as an ``n x len(columns)`` float frame.

    Missing codes (:data:`MISSING_STRINGS`, the number -9) become NaN. Raises
    :class:`FlowphenoError` naming the column and the first cells (line, IID, value) when
    a column is absent, holds text (with a hint when a value looks like a decimal comma)
    or holds ``inf``/``-inf``.
    """
    out = pd.DataFrame(index=table.index)
    missing_codes = ", ".join(repr(code) for code in MISSING_STRINGS)
    for column in columns:
        if column not in table.columns:
            available = ", ".join(c for c in table.columns if c not in ID_COLUMNS)
            raise FlowphenoError(f"{path}: no {role} column {column!r} (available: {available})")
        raw = _missing_codes_to_na(table[column])
        values = raw.astype(float) if pd.api.types.is_numeric_dtype(raw) else pd.to_numeric(raw, errors="coerce")
        bad = np.flatnonzero((values.isna() & raw.notna()).to_numpy())
        if len(bad):
            text = raw.iloc[bad].astype(str)
            comma = bool(text.str.match(_DECIMAL_COMMA).any())
            hint = (
                "it looks like a decimal comma: write numbers with a decimal point (1.23, not 1,23)"
                if comma
                else f"fix the value(s) or write a missing code ({missing_codes})"
            )
            leave = "; or leave the column out with --traits" if role == "trait" else ""
            raise FlowphenoError(f"{path}: {role} column {column!r} is not numeric ({_cells(table, column, bad)}); {hint}{leave}")
        infinite = np.flatnonzero(np.isinf(values.to_numpy(dtype=float)))
        if len(infinite):
            raise FlowphenoError(
                f"{path}: {role} column {column!r} holds an infinite value ({_cells(table, column, infinite)}); "
                f"replace it by a finite value or a missing code ({missing_codes})"
            )
        out[column] = values.astype(float).replace(MISSING_NUMBER, np.nan)
    return out


def default_traits(table: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Every column but FID/IID that holds numbers; text columns are skipped.

    Returns ``(traits, skipped)``. A column counts as numeric when at least half of its
    present cells are numbers (or numbers with a decimal comma), so that
    :func:`numeric_columns` names the stray cells instead of the column silently
    disappearing; a column with no present cell is a trait (reported as all missing).
    """
    traits, skipped = [], []
    for column in table.columns:
        if column in ID_COLUMNS:
            continue
        present = _missing_codes_to_na(table[column]).dropna()
        numeric = len(present) == 0 or _looks_numeric(present).mean() >= 0.5
        (traits if numeric else skipped).append(column)
    return traits, skipped


def covariate_matrix(
    table: pd.DataFrame,
    path: str | Path,
    categorical: list[str] | None = None,
    levels: dict[str, list[str]] | None = None,
) -> pd.DataFrame:
    """The covariate design of :func:`covariate_design`, without the levels."""
    return covariate_design(table, path, categorical, levels)[0]


def covariate_design(
    table: pd.DataFrame,
    path: str | Path,
    categorical: list[str] | None = None,
    levels: dict[str, list[str]] | None = None,
) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Covariate design (``n`` rows) and the levels of each categorical column.

    Numeric columns are kept as they are (:func:`numeric_columns`). Text columns and the
    columns named in ``categorical`` are one-hot encoded (one 0/1 column ``NAME_LEVEL``
    per level but the first, the reference; NaN where the cell is missing). Levels are
    the distinct cell texts, sorted; with ``levels`` (those stored in a fitted model) a
    column is encoded against them instead, so the reference level and the columns stay
    those of the fit. Raises :class:`FlowphenoError` naming the cells when a mostly
    numeric column holds text, when an undeclared text column has more than
    :data:`MAX_LEVELS` levels or fewer than :data:`MIN_PER_LEVEL` individuals per level
    (a numeric column with a stray code would explode into hundreds of dummies), and
    when a cell holds a level that ``levels`` does not know (line, value, column).
    """
    declared = set(categorical or []) | set(levels or {})
    unknown = sorted(set(categorical or []) - set(table.columns))
    if unknown:
        available = ", ".join(c for c in table.columns if c not in ID_COLUMNS)
        raise FlowphenoError(f"{path}: --categorical names column(s) {', '.join(unknown)} that the file lacks (available: {available})")
    columns: list[pd.DataFrame] = []
    used: dict[str, list[str]] = {}
    for column in table.columns:
        if column in ID_COLUMNS:
            continue
        present = _missing_codes_to_na(table[column]).dropna()
        if not len(present):
            raise FlowphenoError(f"{path}: covariate column {column!r} is missing for every individual; fill it or remove the column")
        if column not in declared:
            if len(present) and _looks_numeric(present).mean() >= 0.5:
                columns.append(numeric_columns(table, [column], path, "covariate"))
                continue
            count = present.astype(str).nunique()
            if count > MAX_LEVELS or (count > 2 and len(present) < MIN_PER_LEVEL * count):
                raise FlowphenoError(
                    f"{path}: covariate column {column!r} is text with {count} distinct values among {len(present)} "
                    f"individuals (e.g. {_cells(table, column, np.flatnonzero(table[column].notna().to_numpy()))}); "
                    f"fix the values, or declare it with --categorical {column} if it really is a category"
                )
        text = _missing_codes_to_na(table[column]).astype("string").str.strip()
        known = list(levels[column]) if levels and column in levels else sorted(text.dropna().unique())
        unseen = np.flatnonzero((text.notna() & ~text.isin(known)).to_numpy())
        if len(unseen):
            raise FlowphenoError(
                f"{path}: covariate column {column!r} has level {text.iloc[int(unseen[0])]!r} at line "
                f"{_line(table, int(unseen[0]))} (IID {table['IID'].iloc[int(unseen[0])]}) that the model was not fitted on "
                f"(known: {', '.join(known[:10])}); the model cannot score it: recode it or refit with it"
            )
        dummies = pd.DataFrame(
            {f"{column}_{level}": (text == level).astype(float).to_numpy() for level in known[1:]}, index=table.index
        )
        dummies[text.isna().to_numpy()] = np.nan
        columns.append(dummies)
        used[column] = known
    if not columns:
        raise FlowphenoError(f"{path}: no covariate columns besides FID/IID")
    return pd.concat(columns, axis=1), used
