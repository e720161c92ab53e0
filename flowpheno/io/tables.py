"""Phenotype and covariate tables keyed by FID/IID (text or parquet)."""

from __future__ import annotations

import codecs
import csv
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from flowpheno.errors import FlowphenoError, warn
from flowpheno.io.ids import FID_GIVEN, SampleKeys, sample_keys

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


def decode_text(path: Path) -> str:
    """The text of ``path`` as spreadsheet programs save it, with ``\n`` line ends.

    A byte-order mark decides the encoding (UTF-8, or UTF-16 as Excel's "Unicode
    text" writes); otherwise UTF-8, falling back to Windows-1252/Latin-1. CRLF and
    CR-only line ends become ``\n``.

    Raises:
        FlowphenoError: a UTF-16 byte-order mark on bytes that are not UTF-16, or NUL bytes
            (a binary file).
    """
    raw = path.read_bytes()
    if raw.startswith(codecs.BOM_UTF8):
        text = raw[len(codecs.BOM_UTF8) :].decode("utf-8", errors="strict")
    elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            text = raw.decode("utf-16")
        except UnicodeDecodeError:
            raise FlowphenoError(
                f"{path}: starts with a UTF-16 byte-order mark but is not valid UTF-16; save it again as UTF-8"
            ) from None
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
            return [
                field.strip('"').strip("'") if len(field) > 1 and field[0] == field[-1] and field[0] in "\"'" else field
                for field in line.split()
            ]

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
        raise FlowphenoError(
            f"{path}: cannot read as parquet ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''})"
        ) from None
    table.columns = [str(column) for column in table.columns]
    for column in ("FID", "IID", "#FID", "#IID"):
        if column not in table.columns:
            continue
        values = table[column]
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise FlowphenoError(f"{path}: {column} is missing in row {row + 1}; every individual needs an ID")
        if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            warn(
                f"{path}: {column} column is stored as numbers ({values.dtype}); read as text, but leading zeros "
                "(000123) are lost in such a file: store IDs as strings",
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
    Value columns are left as read (text, missing codes as NaN): :func:`numeric_columns`
    and :func:`covariate_design` make numbers of them.

    Raises:
        FlowphenoError: one line naming the file and line: the file is absent, a folder, not
            text or parquet, has no IID column, a row of the wrong width, an empty ID or a
            duplicated individual.

    Example:
        >>> import tempfile
        >>> folder = tempfile.TemporaryDirectory()
        >>> path = Path(folder.name) / "pheno.csv"
        >>> _ = path.write_text("FID,IID,height,group\\nf1,001,1.71,a\\nf1,002,NA,b\\nf2,003,1.64,a\\n")
        >>> table = read_table(path)
        >>> table
          FID  IID height group
        0  f1  001   1.71     a
        1  f1  002    NaN     b
        2  f2  003   1.64     a
        >>> table.attrs["lines"]
        [2, 3, 4]
        >>> folder.cleanup()
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
        raise FlowphenoError(
            f"{path}: header must name FID and IID columns (found: {found}); add them or rename #FID/#IID"
        )
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
    table.attrs["lines"] = (
        None if lines is None else [int(line) for line in lines]
    )  # a list: attrs are compared by pandas
    sample_keys(table, str(path), lines)  # refuses a duplicated individual, naming both lines
    return table


def table_keys(table: pd.DataFrame, source: str | Path) -> SampleKeys:
    """The :class:`SampleKeys` of a table returned by :func:`read_table`."""
    lines = table.attrs.get("lines")
    return sample_keys(table, str(source), None if lines is None else np.asarray(lines))


def _line(table: pd.DataFrame, row: int) -> int:
    """1-based line of data row ``row`` in its file, as an editor shows it (blank lines
    and the header counted); for parquet, the row number after the header."""
    lines = table.attrs.get("lines")
    return int(lines[row]) if lines is not None else row + 2


def _cells(table: pd.DataFrame, column: str, rows: np.ndarray) -> str:
    shown = [
        f"line {_line(table, int(r))}, IID {table['IID'].iloc[int(r)]}: {table[column].iloc[int(r)]!r}"
        for r in rows[:_SHOWN]
    ]
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

    Missing codes (:data:`MISSING_STRINGS`, the number -9) become NaN. ``path`` names the
    file and ``role`` the column (``"trait"``, ``"covariate"``) in messages.

    Raises:
        FlowphenoError: naming the column and the first cells (line, IID, value) when a
            column is absent, holds text (with a hint when a value looks like a decimal
            comma) or holds ``inf``/``-inf``.

    Example:
        >>> table = pd.DataFrame({"FID": ["f", "f"], "IID": ["1", "2"], "bmi": ["22.5", "-9"], "site": ["a", "b"]})
        >>> numeric_columns(table, ["bmi"], "pheno.tsv", "trait")
            bmi
        0  22.5
        1   NaN
        >>> numeric_columns(table, ["site"], "pheno.tsv", "trait")
        Traceback (most recent call last):
        ...
        flowpheno.errors.FlowphenoError: pheno.tsv: trait column 'site' is not numeric (line 2, IID 1: 'a'; ...
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
            raise FlowphenoError(
                f"{path}: {role} column {column!r} is not numeric ({_cells(table, column, bad)}); {hint}{leave}"
            )
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

    Example:
        >>> table = pd.DataFrame({"FID": ["f"] * 3, "IID": ["1", "2", "3"], "bmi": ["22.5", "x", "30"],
        ...                       "site": ["a", "b", "a"]})
        >>> default_traits(table)
        (['bmi'], ['site'])
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

    Example:
        >>> table = pd.DataFrame({"FID": ["f"] * 3, "IID": ["1", "2", "3"], "age": ["41", "NA", "63"],
        ...                       "batch": ["b1", "b2", "b1"]})
        >>> design, levels = covariate_design(table, "covar.tsv")
        >>> design
            age  batch_b2
        0  41.0       0.0
        1   NaN       1.0
        2  63.0       0.0
        >>> levels
        {'batch': ['b1', 'b2']}
    """
    declared = set(categorical or []) | set(levels or {})
    unknown = sorted(set(categorical or []) - set(table.columns))
    if unknown:
        available = ", ".join(c for c in table.columns if c not in ID_COLUMNS)
        raise FlowphenoError(
            f"{path}: --categorical names column(s) {', '.join(unknown)} that the file lacks (available: {available})"
        )
    columns: list[pd.DataFrame] = []
    used: dict[str, list[str]] = {}
    for column in table.columns:
        if column in ID_COLUMNS:
            continue
        present = _missing_codes_to_na(table[column]).dropna()
        if not len(present):
            raise FlowphenoError(
                f"{path}: covariate column {column!r} is missing for every individual; fill it or remove the column"
            )
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
                f"{_line(table, int(unseen[0]))} (IID {table['IID'].iloc[int(unseen[0])]}) that the model was not "
                f"fitted on (known: {', '.join(known[:10])}); the model cannot score it: recode it or refit with it"
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
