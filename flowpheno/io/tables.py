"""Phenotype and covariate tables keyed by FID/IID (text or parquet)."""

from __future__ import annotations

import codecs
import csv
import io
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from flowpheno.errors import FlowphenoError
from flowpheno.io.ids import FID_GIVEN, SampleKeys, sample_keys

MISSING_STRINGS = ["NA", "nan", "NaN", "", "-9"]
"""Tokens read as missing; numeric -9 (PLINK's code) is missing too."""

ID_COLUMNS = ("FID", "IID")


def decode_text(path: Path) -> str:
    """The text of ``path`` as spreadsheet programs save it, with ``\n`` line ends.

    A byte-order mark decides the encoding (UTF-8, or UTF-16 as Excel's "Unicode
    text" writes); otherwise UTF-8, falling back to Windows-1252/Latin-1. CRLF and
    CR-only line ends become ``\n``.
    """
    raw = path.read_bytes()
    if raw.startswith(codecs.BOM_UTF8):
        text = raw[len(codecs.BOM_UTF8) :].decode("utf-8", errors="strict")
    elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            text = raw.decode("utf-16")
        except UnicodeDecodeError:
            raise FlowphenoError(f"{path}: starts with a UTF-16 byte-order mark but is not valid UTF-16; save it again as UTF-8") from None
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            try:
                text = raw.decode("cp1252")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
    if "\x00" in text:
        raise FlowphenoError(f"{path}: contains NUL bytes; not a text table (save it as UTF-8 text, or use parquet)")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _delimiter(header: str) -> str | None:
    """Tab, then ``,`` or ``;`` (whichever the header uses more; ``;`` as European Excel
    writes CSV), else None for whitespace."""
    if "\t" in header:
        return "\t"
    commas, semicolons = header.count(","), header.count(";")
    if commas or semicolons:
        return ";" if semicolons > commas else ","
    return None


def _split_rows(text: str, path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """Header fields, data rows and their 1-based line numbers; blank lines skipped.

    Every row must have the header's number of fields, or :class:`FlowphenoError`
    names the line. Quoted fields are unquoted (csv module; whitespace files split on
    runs of blanks, surrounding quotes dropped).
    """
    lines = text.split("\n")
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise FlowphenoError(f"{path}: file is empty; expected a header naming FID and IID")
    delimiter = _delimiter(lines[first])
    if delimiter is None:
        def split(line: str) -> list[str]:
            return [field.strip('"').strip("'") if len(field) > 1 and field[0] == field[-1] and field[0] in "\"'" else field
                    for field in line.split()]
        rows = [(i + 1, split(line)) for i, line in enumerate(lines) if line.strip()]
    else:
        reader = csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter, quotechar='"', strict=False)
        rows = []
        try:
            for fields in reader:
                number = reader.line_num
                if any(field.strip() for field in fields):
                    rows.append((number, [field.strip() for field in fields]))
        except csv.Error as error:
            raise FlowphenoError(f"{path}: line {reader.line_num}: {error}; check its quotes") from None
    (_, header), data = rows[0], rows[1:]
    header = [name.strip() for name in header]
    for position, name in enumerate(header):
        if not name:
            raise FlowphenoError(f"{path}: header column {position + 1} has no name; name it or delete the column")
    seen = pd.Index(header).duplicated()
    if seen.any():
        raise FlowphenoError(f"{path}: header names column {header[int(np.flatnonzero(seen)[0])]!r} twice; rename one")
    for number, fields in data:
        if len(fields) != len(header):
            sep = {"\t": "tab", ",": "comma", ";": "semicolon", None: "whitespace"}[delimiter]
            raise FlowphenoError(
                f"{path}: line {number} has {len(fields)} fields but the header has {len(header)} ({sep}-separated); "
                "fix that line (a missing value is NA, not an empty cell in a whitespace file)"
            )
    return header, [fields for _, fields in data], [number for number, _ in data]


def _text_table(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    header, rows, numbers = _split_rows(decode_text(path), path)
    table = pd.DataFrame(rows, columns=header, dtype=object) if rows else pd.DataFrame(columns=header, dtype=object)
    return table, np.asarray(numbers, dtype=np.int64)


def _parquet_table(path: Path) -> tuple[pd.DataFrame, None]:
    try:
        table = pd.read_parquet(path)
    except Exception as error:  # pyarrow raises many types for a damaged file
        raise FlowphenoError(f"{path}: cannot read as parquet ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None
    table.columns = [str(column) for column in table.columns]
    for column in ("FID", "IID", "#FID", "#IID"):
        if column not in table.columns:
            continue
        values = table[column]
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise FlowphenoError(f"{path}: {column} is missing in row {row + 1}; every individual needs an ID")
        if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            warnings.warn(
                f"{path}: {column} column is stored as numbers ({values.dtype}); read as text, but leading zeros "
                "(000123) are lost in such a file: store IDs as strings",
                stacklevel=3,
            )
            if pd.api.types.is_float_dtype(values) and (values == values.round()).all():
                values = values.astype(np.int64)
        table[column] = [str(value) for value in values]
    return table, None


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a FID/IID-keyed table: tab, comma, semicolon or whitespace separated text, or parquet.

    Text may be UTF-8 (with or without BOM), UTF-16 with BOM, or Windows-1252/Latin-1,
    with LF, CRLF or CR line ends and quoted fields; every line must have the header's
    number of fields. ``#FID``/``#IID`` headers (PLINK 2) are accepted; a table with
    IID but no FID gets ``FID = IID`` and ``table.attrs[FID_GIVEN] = False`` (it is then
    matched on IID alone). IDs are text, read with no missing-value parsing (``NA``,
    ``-9`` and ``000123`` are IDs); an empty ID is an error naming its line, and so is a
    (FID, IID) pair listed twice. ``table.attrs["lines"]`` holds each row's 1-based line.

    Raises :class:`FlowphenoError` with one line naming the file and line.
    """
    path = Path(path)
    if not path.exists():
        raise FlowphenoError(f"{path}: file not found")
    if path.is_dir():
        raise FlowphenoError(f"{path}: is a folder; give a table file")
    if path.suffix.lower() in {".parquet", ".pq"}:
        table, lines = _parquet_table(path)
    else:
        table, lines = _text_table(path)
    table = table.rename(columns={"#FID": "FID", "#IID": "IID"})
    if "IID" not in table.columns:
        found = ", ".join(map(str, table.columns[:8]))
        raise FlowphenoError(f"{path}: header must name FID and IID columns (found: {found}); add them or rename #FID/#IID")
    fid_given = "FID" in table.columns
    if not fid_given:
        table.insert(0, "FID", table["IID"])
    for column in ID_COLUMNS:
        values = table[column].astype(str)
        empty = (values.str.strip() == "").to_numpy()
        if empty.any():
            row = int(np.flatnonzero(empty)[0])
            where = f"line {int(lines[row])}" if lines is not None else f"row {row + 1}"
            raise FlowphenoError(f"{path}: {where} has an empty {column}; every individual needs an ID")
        table[column] = values.to_numpy(dtype=str)
    # --- value columns: missing-value tokens (rules for values live in numeric_columns) ---
    for column in table.columns:
        if column in ID_COLUMNS:
            continue
        if lines is not None:
            table[column] = table[column].where(~table[column].isin(MISSING_STRINGS), np.nan)
        elif pd.api.types.is_numeric_dtype(table[column]):
            table[column] = table[column].replace(-9, np.nan)
    # --- end of value columns ---
    table = table.reset_index(drop=True)
    table.attrs[FID_GIVEN] = fid_given
    table.attrs["lines"] = None if lines is None else [int(line) for line in lines]  # a list: attrs are compared by pandas
    sample_keys(table, str(path), lines)  # refuses a duplicated individual, naming both lines
    return table


def table_keys(table: pd.DataFrame, source: str | Path) -> SampleKeys:
    """The :class:`SampleKeys` of a table returned by :func:`read_table`."""
    lines = table.attrs.get("lines")
    return sample_keys(table, str(source), None if lines is None else np.asarray(lines))


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
