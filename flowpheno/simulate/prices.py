"""SYNTHETIC daily prices for AAPL, MSFT, MA and V in both supported layouts.

Nothing here is market data. The series only mimic what makes the stocks experiment
non-trivial: heavy tails (Student t, 4 degrees of freedom), volatility clustering
(GARCH(1,1) on a common factor), a market factor and a sector factor per pair, so
AAPL-MSFT are moderately and MA-V strongly correlated, and the two pairs have
different listing dates (the real IPO dates), so the older pair has more days.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from flowpheno.io.atomic import atomic_path
from flowpheno.io.prices import SYNTHETIC_MARKER

LISTINGS = {"AAPL": "1984-09-07", "MSFT": "1986-03-13", "MA": "2006-05-25", "V": "2008-03-19"}
SECTOR = {"AAPL": 0, "MSFT": 0, "MA": 1, "V": 1}
LOADINGS = {"AAPL": (0.7, 0.5), "MSFT": (0.7, 0.5), "MA": (0.6, 0.7), "V": (0.6, 0.7)}  # (market, sector)
DAILY_SCALE = {"AAPL": 0.020, "MSFT": 0.017, "MA": 0.018, "V": 0.016}
NOTE = "SYNTHETIC prices written by flowpheno (flowpheno.simulate.prices); not market data.\n"


def _student(rng: np.random.Generator, size: int, df: float = 4.0) -> np.ndarray:
    return rng.standard_t(df, size=size) / np.sqrt(df / (df - 2))


def simulate_prices(seed: int = 0, end: str = "2017-11-10") -> dict[str, pd.DataFrame]:
    """Ticker -> table with Date, Open, High, Low, Close, Adj Close, Volume (business days
    from the ticker's listing date to ``end``, ``YYYY-MM-DD``). Synthetic: see the module docstring."""
    rng = np.random.default_rng(seed)
    days = pd.bdate_range(min(LISTINGS.values()), end)
    t = len(days)
    shocks = _student(rng, t)
    variance = np.empty(t)
    variance[0] = 1.0
    for i in range(1, t):  # GARCH(1,1), unit long-run variance
        variance[i] = 0.05 + 0.10 * shocks[i - 1] ** 2 * variance[i - 1] + 0.85 * variance[i - 1]
    volatility = np.sqrt(variance)
    market = volatility * shocks
    sectors = [volatility * _student(rng, t) for _ in range(2)]
    tables = {}
    for ticker, listed in LISTINGS.items():
        beta, gamma = LOADINGS[ticker]
        own = np.sqrt(max(1 - beta**2 - gamma**2, 0.05)) * volatility * _student(rng, t)
        returns = DAILY_SCALE[ticker] * (beta * market + gamma * sectors[SECTOR[ticker]] + own)
        live = days >= pd.Timestamp(listed)
        close = 20.0 * np.exp(np.cumsum(returns[live]))
        spread = np.abs(rng.normal(0, 0.005, size=close.shape))
        tables[ticker] = pd.DataFrame(
            {
                "Date": days[live].strftime("%Y-%m-%d"),
                "Open": close * (1 + rng.normal(0, 0.003, size=close.shape)),
                "High": close * (1 + spread),
                "Low": close * (1 - spread),
                "Close": close,
                "Adj Close": close,
                "Volume": rng.integers(10**5, 10**7, size=close.shape),
            }
        )
    return tables


def write_prices(out: str | Path, layout: str = "huge", seed: int = 0, end: str = "2017-11-10") -> list[Path]:
    """Write the synthetic set as ``out/Stocks/<ticker>.us.txt`` (``huge``) or ``out/<TICKER>.csv`` (``yahoo``),
    with the synthetic-data marker beside them; returns the files written.

    Raises:
        ValueError: ``layout`` is neither ``huge`` nor ``yahoo``.
    """
    if layout not in ("huge", "yahoo"):
        raise ValueError(f"layout must be 'huge' or 'yahoo', got {layout!r}")
    out = Path(out)
    folder = out / "Stocks" if layout == "huge" else out
    folder.mkdir(parents=True, exist_ok=True)
    (out / SYNTHETIC_MARKER).write_text(NOTE)
    written = []
    for ticker, table in simulate_prices(seed, end).items():
        if layout == "huge":
            path = folder / f"{ticker.lower()}.us.txt"
            table = table.drop(columns="Adj Close").assign(OpenInt=0)
        else:
            path = folder / f"{ticker}.csv"
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False, float_format="%.4f")
        written.append(path)
    return written
