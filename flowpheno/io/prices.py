"""Daily closing prices in the two layouts people have.

- "Huge Stock Market Dataset": one file per ticker, ``Stocks/aapl.us.txt`` with columns
  ``Date,Open,High,Low,Close,Volume,OpenInt`` (prices already split-adjusted).
- Yahoo-style CSV: ``AAPL.csv`` with ``Date, Open, High, Low, Close, Adj Close, Volume``;
  ``Adj Close`` is used when present (splits and dividends), else ``Close``.

Tickers are matched case-insensitively on the file name up to the first dot, so
``aapl.us.txt``, ``AAPL.csv`` and ``aapl.csv`` all answer to ``AAPL``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from flowpheno.errors import FlowphenoError

PRICE_SUFFIXES = (".txt", ".csv", ".tsv")
SYNTHETIC_MARKER = "SYNTHETIC_README.md"
"""Written beside generated prices, so reports can say the numbers come from synthetic data."""


def marked_synthetic(sources: list[str | Path]) -> bool:
    """Whether any source (or a folder up to two levels above it) carries the synthetic-data marker."""
    for source in sources:
        path = Path(source).resolve()
        folders = [path] if path.is_dir() else []
        folders += list(path.parents)[:2]
        if any((folder / SYNTHETIC_MARKER).exists() for folder in folders):
            return True
    return False


def ticker_files(sources: list[str | Path]) -> dict[str, Path]:
    """Ticker (upper case) -> file, from directories (searched recursively) and files.

    The ticker is the file name up to its first dot; the first file found for a ticker wins.
    Raises :class:`FlowphenoError` for a source that does not exist.
    """
    files: dict[str, Path] = {}
    for source in sources:
        path = Path(source)
        if path.is_dir():
            candidates = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PRICE_SUFFIXES)
        elif path.is_file():
            candidates = [path]
        else:
            raise FlowphenoError(f"--prices {path}: no such file or directory")
        for candidate in candidates:
            files.setdefault(candidate.name.split(".")[0].upper(), candidate)
    return files


def read_prices(path: str | Path) -> pd.Series:
    """Closing prices indexed by date (sorted, duplicates and non-positive prices refused).

    Returns a float Series (price units as in the file) on a DatetimeIndex, named after the
    column used (``Adj Close`` when present, else ``Close``).

    Raises:
        FlowphenoError: naming the file and row: unreadable, no Date or Close column, an
            unparseable date, a missing or non-positive price, or a date listed twice.

    Example:
        >>> import tempfile
        >>> folder = tempfile.TemporaryDirectory()
        >>> path = Path(folder.name) / "AAPL.csv"
        >>> _ = path.write_text("Date,Close,Adj Close\\n2020-01-03,74.4,73.2\\n2020-01-02,75.1,73.9\\n")
        >>> read_prices(path)
        Date
        2020-01-02    73.9
        2020-01-03    73.2
        Name: Adj Close, dtype: float64
        >>> folder.cleanup()
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, sep=None, engine="python")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise FlowphenoError(f"{path}: not a readable price table ({error})") from None
    columns = {str(c).strip().lower(): c for c in table.columns}
    if "date" not in columns:
        raise FlowphenoError(f"{path}: no Date column (found: {', '.join(map(str, table.columns))})")
    close = columns.get("adj close", columns.get("adj_close", columns.get("close")))
    if close is None:
        raise FlowphenoError(
            f"{path}: no Close or Adj Close column (found: {', '.join(map(str, table.columns))}); "
            "expected the Huge Stock Market Dataset or Yahoo layout"
        )
    dates = pd.to_datetime(table[columns["date"]], errors="coerce", format="mixed")
    if dates.isna().any():
        row = int(np.flatnonzero(dates.isna())[0])
        raise FlowphenoError(
            f"{path}: row {row + 2} has an unparseable date {table[columns['date']].iloc[row]!r}; use YYYY-MM-DD"
        )
    values = pd.to_numeric(table[close], errors="coerce")
    bad = values.isna() | (values <= 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise FlowphenoError(f"{path}: row {row + 2} has a missing or non-positive price {table[close].iloc[row]!r}")
    series = pd.Series(values.to_numpy(dtype=np.float64), index=pd.DatetimeIndex(dates), name=close).sort_index()
    if series.index.has_duplicates:
        raise FlowphenoError(f"{path}: date {series.index[series.index.duplicated()][0].date()} appears twice")
    return series


def pair_log_returns(
    files: dict[str, Path], first: str, second: str, start: str | None = None, end: str | None = None
) -> pd.DataFrame:
    """Daily log returns of two tickers on the days both traded (from the later listing on).

    ``files``: :func:`ticker_files`; ``start``/``end``: ``YYYY-MM-DD`` bounds (inclusive).
    Returns a ``(days, 2)`` frame, columns the two tickers in upper case.

    Raises:
        FlowphenoError: a ticker without a file, a file :func:`read_prices` refuses, or fewer
            than 20 days with prices of both.
    """
    series = []
    for ticker in (first, second):
        if ticker.upper() not in files:
            known = ", ".join(sorted(files)[:12]) + (" ..." if len(files) > 12 else "")
            raise FlowphenoError(f"ticker {ticker}: no price file found (tickers seen: {known or 'none'})")
        series.append(read_prices(files[ticker.upper()]))
    joined = pd.concat(series, axis=1, join="inner", keys=[first.upper(), second.upper()])
    if start:
        joined = joined[joined.index >= pd.Timestamp(start)]
    if end:
        joined = joined[joined.index <= pd.Timestamp(end)]
    returns = np.log(joined).diff().dropna()
    if len(returns) < 20:
        raise FlowphenoError(
            f"pair {first}-{second}: only {len(returns)} days with prices of both; check --start/--end"
        )
    return returns
