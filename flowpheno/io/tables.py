"""Phenotype and covariate tables keyed by FID/IID (text or parquet)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from flowpheno.errors import FlowphenoError

MISSING_STRINGS = ["NA", "nan", "NaN", "", "-9"]
"""Tokens read as missing; numeric -9 (PLINK's code) is missing too."""

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


def numeric_columns(table: pd.DataFrame, columns: list[str], path: str | Path, role: str) -> pd.DataFrame:
    """Convert ``columns`` to float; a non-numeric entry is an error naming column, line and value."""
    out = pd.DataFrame(index=table.index)
    for column in columns:
        if column not in table.columns:
            available = ", ".join(c for c in table.columns if c not in ID_COLUMNS)
            raise FlowphenoError(f"{path}: no {role} column {column!r} (available: {available})")
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna() & table[column].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise FlowphenoError(
                f"{path}: {role} column {column!r} is not numeric (line {row + 2}, IID {table['IID'].iloc[row]}: "
                f"{table[column].iloc[row]!r}); fix the value or leave the column out with --traits"
            )
        out[column] = values.astype(float).replace(-9.0, np.nan)
    return out


def default_traits(table: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Every column but FID/IID holding numbers; wholly non-numeric columns are skipped.

    Returns ``(traits, skipped)``. A column with numbers and a few stray strings is kept
    so that :func:`numeric_columns` reports the stray value instead of hiding it.
    """
    traits, skipped = [], []
    for column in table.columns:
        if column in ID_COLUMNS:
            continue
        present = table[column].dropna()
        parsed = pd.to_numeric(present, errors="coerce")
        (traits if len(present) == 0 or parsed.notna().any() else skipped).append(column)
    return traits, skipped


def covariate_matrix(table: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """Numeric covariates as they are; text covariates (batch, site) one-hot, first level dropped."""
    columns: list[pd.DataFrame] = []
    for column in table.columns:
        if column in ID_COLUMNS:
            continue
        present = table[column].dropna()
        parsed = pd.to_numeric(present, errors="coerce")
        if len(present) and parsed.notna().all():
            columns.append(numeric_columns(table, [column], path, "covariate"))
        else:
            dummies = pd.get_dummies(table[column], prefix=column, drop_first=True, dtype=float)
            dummies[table[column].isna()] = np.nan
            columns.append(dummies)
    if not columns:
        raise FlowphenoError(f"{path}: no covariate columns besides FID/IID")
    return pd.concat(columns, axis=1)
