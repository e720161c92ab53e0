"""Price readers (both layouts), their errors, the temporal split, and a quick stocks run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import invoke, run_cli

from flowpheno.bench.stocks import load_pairs
from flowpheno.errors import FlowphenoError
from flowpheno.io.prices import pair_log_returns, read_prices, ticker_files
from flowpheno.simulate.prices import write_prices


@pytest.fixture(scope="module")
def price_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prices")
    write_prices(root / "huge", "huge", seed=1)
    write_prices(root / "yahoo", "yahoo", seed=1)
    return {"huge": root / "huge", "yahoo": root / "yahoo"}


@pytest.mark.slow
def test_both_layouts_give_the_same_returns(price_sets: dict[str, Path]) -> None:
    huge, yahoo = ticker_files([price_sets["huge"]]), ticker_files([price_sets["yahoo"]])
    assert set(huge) == set(yahoo) == {"AAPL", "MSFT", "MA", "V"}
    assert huge["AAPL"].name == "aapl.us.txt" and yahoo["AAPL"].name == "AAPL.csv"
    from_huge = pair_log_returns(huge, "aapl", "Msft")  # case-insensitive tickers
    from_yahoo = pair_log_returns(yahoo, "AAPL", "MSFT")
    pd.testing.assert_frame_equal(from_huge, from_yahoo, atol=1e-3)
    assert from_huge.index[0] > pd.Timestamp("1986-03-13")  # from the later listing on
    expected = np.log(read_prices(huge["MSFT"])).diff()
    np.testing.assert_allclose(from_huge["MSFT"].to_numpy()[5:50], expected.loc[from_huge.index[5:50]].to_numpy())


def test_yahoo_prefers_adjusted_close(tmp_path: Path) -> None:
    table = pd.DataFrame({"Date": ["2020-01-02", "2020-01-03"], "Close": [10.0, 20.0], "Adj Close": [5.0, 6.0]})
    table.to_csv(tmp_path / "X.csv", index=False)
    assert read_prices(tmp_path / "X.csv").tolist() == [5.0, 6.0]


def test_price_errors_name_file_row_and_fix(tmp_path: Path, price_sets: dict[str, Path]) -> None:
    pd.DataFrame({"Date": ["2020-01-02"], "Open": [1.0]}).to_csv(tmp_path / "noclose.csv", index=False)
    with pytest.raises(FlowphenoError, match=r"noclose.csv: no Close or Adj Close column"):
        read_prices(tmp_path / "noclose.csv")
    pd.DataFrame({"Date": ["2020-01-02", "yesterday"], "Close": [1.0, 2.0]}).to_csv(tmp_path / "dates.csv", index=False)
    with pytest.raises(FlowphenoError, match=r"dates.csv: row 3 has an unparseable date 'yesterday'"):
        read_prices(tmp_path / "dates.csv")
    with pytest.raises(FlowphenoError, match=r"ticker GOOG: no price file found \(tickers seen: AAPL, MA, MSFT, V\)"):
        pair_log_returns(ticker_files([price_sets["huge"]]), "GOOG", "AAPL")
    result = invoke("bench", "stocks", "--prices", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--quick")
    assert result.returncode == 1 and "no such file or directory" in result.stdout + result.stderr
    assert not (tmp_path / "o").exists()


def test_split_is_temporal_per_pair(price_sets: dict[str, Path]) -> None:
    data = load_pairs([price_sets["yahoo"]], ["AAPL-MSFT", "MA-V"])
    for pair, info in data.days.items():
        assert info["first_day"] <= info["train_until"] < info["test_from"] <= info["last_day"], pair
        assert abs(np.mean(data.train_pair == list(data.days).index(pair)) * len(data.train) - 0.7 * info["days"]) <= 1
    counts = np.bincount(data.train_pair)
    assert counts[0] > 2 * counts[1]  # the older pair dominates training, as in the paper


@pytest.mark.slow
def test_quick_stocks_run(tmp_path: Path, price_sets: dict[str, Path]) -> None:
    out = tmp_path / "stocks"
    result = run_cli(
        "bench", "stocks", "--prices", str(price_sets["huge"]), "--start", "2004-01-01", "--quick", "--out", str(out)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    table = (out / "table.md").read_text()
    assert "SYNTHETIC" in table and "| grid |" in table and "-5.69" in table
    report = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in report["runs"]} == {"baseline", "grid", "joint"}
    assert all(np.isfinite(r["test_nll"]) for r in report["runs"])
    assert report["synthetic_data"] is True and (out / "density_regions.png").stat().st_size > 10_000
