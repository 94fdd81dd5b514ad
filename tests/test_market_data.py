"""Market data providers: the offline sample provider, yfinance's normalising code, throttling."""

from __future__ import annotations

import asyncio
import csv
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from libs.common import calendar, factors
from libs.common.config import Settings
from libs.common.market_data import get_provider, provider_exclusion
from libs.common.market_data import sample as sample_mod
from libs.common.market_data.base import PRICE_COLUMNS, MarketDataProvider
from libs.common.market_data.sample import SampleProvider
from libs.common.market_data.throttle import (
    PermanentProviderError,
    RateLimiter,
    with_retries,
)
from libs.common.market_data.yfinance_provider import (
    YFinanceProvider,
    normalize_download,
    normalize_earnings,
    normalize_info,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FIXTURE_PRICES = FIXTURES / "prices"


def fixture_symbols() -> set[str]:
    """Every Symbol / Underlying Symbol of the example portfolio CSVs."""
    files = list((FIXTURES / "portfolios").glob("*.csv"))
    files += list((FIXTURES / "anchor_demo" / "upload_format").glob("*.csv"))
    assert files, "fixture portfolios missing"
    symbols: set[str] = set()
    for path in files:
        lines = [
            ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")
        ]
        start = next(i for i, ln in enumerate(lines) if ln.lstrip('"').startswith("Symbol"))
        for row in csv.DictReader(lines[start:]):
            for column in ("Symbol", "Underlying Symbol"):
                value = (row.get(column) or "").strip().upper()
                if value:
                    symbols.add(value)
    return symbols


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def provider() -> SampleProvider:
    return SampleProvider()


def test_sample_covers_factor_etfs_and_every_fixture_symbol(provider):
    symbols = fixture_symbols() | set(factors.FACTOR_ETFS)
    result = run(provider.fetch_prices(sorted(symbols), date(2025, 6, 23), date(2025, 7, 3)))
    served = set(result.bars["symbol"])
    sessions = calendar.sessions_between(date(2025, 6, 23), date(2025, 7, 3))
    for symbol in sorted(symbols):
        excluded = provider_exclusion(symbol)
        if excluded is not None:
            assert symbol not in served and "not sent to provider" in result.failures[symbol]
        elif symbol in sample_mod.DELISTED:
            assert "delisted" in result.failures[symbol]
        elif " " in symbol or "&" in symbol:  # "VT MGX", Schwab's "Cash & Cash Investments"
            assert "unknown ticker" in result.failures[symbol]
        else:
            got = result.bars[result.bars.symbol == symbol]
            assert list(got["date"]) == sessions, symbol
    assert set(factors.FACTOR_ETFS) <= served
    assert {"AAPL", "NVDA", "BRK-B", "BRK.B", "VFIAX", "QQQ"} <= served
    assert list(result.bars.columns) == PRICE_COLUMNS


def test_real_history_is_the_fixture_and_proxies_are_labelled(provider):
    stocks = pd.read_csv(FIXTURE_PRICES / "sp500_stocks_and_index_daily.csv", index_col="date")
    etfs = pd.read_csv(FIXTURE_PRICES / "factor_etfs_daily.csv", index_col="date")
    result = run(
        provider.fetch_prices(
            ["AAPL", "SPY", "VTV", "IWM", "MTUM"], date(2020, 3, 2), date(2020, 3, 31)
        )
    )
    bars = result.bars.set_index(["symbol", "date"])
    day = date(2020, 3, 16)
    assert bars.loc[("AAPL", day), "adj_close"] == pytest.approx(stocks.loc["2020-03-16", "AAPL"])
    assert bars.loc[("AAPL", day), "source"] == "sample:real"
    assert bars.loc[("SPY", day), "close"] == pytest.approx(stocks.loc["2020-03-16", "SP500"] / 10)
    assert bars.loc[("SPY", day), "source"] == "sample:proxy:SP500/10"
    assert bars.loc[("VTV", day), "close"] == pytest.approx(etfs.loc["2020-03-16", "VLUE"])
    assert bars.loc[("VTV", day), "source"] == "sample:proxy:VLUE"
    assert bars.loc[("IWM", day), "source"] == "sample:proxy:SIZE"
    assert bars.loc[("MTUM", day), "close"] == pytest.approx(etfs.loc["2020-03-16", "MTUM"])
    assert np.isnan(bars.loc[("AAPL", day), "open"])  # only closes are real: no invented OHLC


def test_every_bar_after_the_real_history_or_without_one_is_synthetic(provider):
    result = run(
        provider.fetch_prices(["AAPL", "TLT", "NVDA"], date(2022, 12, 20), date(2023, 1, 10))
    )
    bars = result.bars
    after = bars[bars.date > sample_mod.REAL_END]
    assert (after.source == "sample:synthetic").all() and len(after) == 3 * 8
    assert (bars[bars.symbol != "AAPL"].source == "sample:synthetic").all()
    aapl = bars[bars.symbol == "AAPL"].set_index("date")
    # The continuation starts from the last real close (no jump).
    ratio = aapl.loc[date(2022, 12, 29), "close"] / aapl.loc[date(2022, 12, 28), "close"]
    assert 0.85 < ratio < 1.15
    synthetic = bars[bars.source == "sample:synthetic"]
    assert (synthetic.low <= synthetic[["open", "close"]].min(axis=1) + 1e-9).all()
    assert (synthetic.high >= synthetic[["open", "close"]].max(axis=1) - 1e-9).all()


def test_a_price_does_not_depend_on_the_range_requested(provider):
    day = date(2024, 3, 15)
    narrow = run(provider.fetch_prices(["NVDA", "SPY", "TLT"], day, day)).bars
    wide = run(
        provider.fetch_prices(["TLT", "NVDA", "SPY"], date(2023, 1, 3), date(2026, 6, 30))
    ).bars
    fresh = SampleProvider()
    sample_mod._latent_block.cache_clear()
    again = run(fresh.fetch_prices(["NVDA"], date(2024, 1, 2), date(2024, 12, 31))).bars
    for symbol in ("NVDA", "SPY", "TLT"):
        a = narrow[narrow.symbol == symbol].iloc[0]
        b = wide[(wide.symbol == symbol) & (wide.date == day)].iloc[0]
        assert a.close == b.close and a.open == b.open and a.volume == b.volume
    assert again[again.date == day].iloc[0].close == narrow[narrow.symbol == "NVDA"].iloc[0].close


def test_synthetic_returns_carry_meaningful_betas(provider):
    as_of = date(2025, 6, 30)
    start = calendar.lookback_start(as_of, 260)
    symbols = [*factors.FACTOR_ETFS, "NVDA", "KO", "BND", "AAPL"]
    bars = run(provider.fetch_prices(symbols, start, as_of)).bars
    prices = bars.pivot(index="date", columns="symbol", values="adj_close")
    prices.index = pd.DatetimeIndex(prices.index)
    out = factors.compute_exposures(factors.daily_returns(prices), as_of)
    beta = out.set_index(["symbol", "factor"])["beta"]
    assert beta[("SPY", "market")] == pytest.approx(1.0, abs=1e-12)
    assert beta[("TLT", "interest_rate")] > 0.5  # TLT tracks the rates factor
    for symbol in ("NVDA", "KO"):
        loading = sample_mod.symbol_model(symbol).loadings[0]
        assert beta[(symbol, "market")] == pytest.approx(loading, abs=0.35)
    assert abs(beta[("BND", "market")]) < 0.3
    assert len(out[out.symbol == "NVDA"]) == 12


def test_private_cash_and_synthetic_symbols_never_reach_a_provider():
    assert provider_exclusion("PRIVATE_FUND_A") is not None
    assert provider_exclusion("SPY_C450_20240315") is not None
    assert provider_exclusion("SPAXX") == "cash or money market"
    assert provider_exclusion("FDRXX") == "cash or money market"
    assert provider_exclusion("AAPL250815P00200000") is not None
    assert provider_exclusion("BLACKSTONE", "PRIVATE") == "private asset"
    assert provider_exclusion("AAPL") is None
    assert provider_exclusion("BRK.B") is None
    assert provider_exclusion("VFIAX") is None  # a mutual fund, not cash


def test_delisted_symbol_fails_with_its_reason(provider):
    result = run(provider.fetch_prices(["HZNP", "AAPL"], date(2024, 1, 2), date(2024, 1, 31)))
    assert result.failures == {"HZNP": "no data: delisted after 2023-10-05"}
    assert set(result.bars.symbol) == {"AAPL"}
    before = run(provider.fetch_prices(["HZNP"], date(2023, 9, 25), date(2023, 10, 31)))
    assert before.bars.date.max() == date(2023, 10, 5) and not before.failures


def test_profiles_and_fundamentals_are_deterministic(provider):
    day = date(2025, 6, 30)
    first = run(provider.fetch_profiles(["AAPL", "NVDA", "SPY", "BND", "XYZ!"], day))
    second = run(SampleProvider().fetch_profiles(["NVDA", "AAPL", "SPY", "BND"], day))
    by_symbol = {p.symbol: p for p in first.profiles}
    assert by_symbol == {p.symbol: p for p in second.profiles}
    assert by_symbol["AAPL"].sector == "Technology" and by_symbol["AAPL"].source == "sample:static"
    assert by_symbol["NVDA"].source == "sample:synthetic" and by_symbol["NVDA"].market_cap > 0
    assert by_symbol["SPY"].asset_type == "etf" and by_symbol["SPY"].market_cap is None
    assert by_symbol["NVDA"].beta == pytest.approx(
        sample_mod.symbol_model("NVDA").loadings[0], abs=1e-4
    )
    assert "XYZ!" in first.failures
    funds = run(provider.fetch_fundamentals(["MSFT", "SPY"], day))
    msft = next(f for f in funds.items if f.symbol == "MSFT")
    assert msft.last_earnings_date <= day < msft.next_earnings_date
    assert (msft.next_earnings_date - msft.last_earnings_date).days < 100
    assert msft.data["eps_ttm"] > 0
    spy = next(f for f in funds.items if f.symbol == "SPY")
    assert spy.last_earnings_date is None and spy.next_earnings_date is None


def _yf_download_frame(tickers: list[str], layout: str = "column") -> pd.DataFrame:
    """A frame shaped like yf.download(auto_adjust=False, multi_level_index=True) returns."""
    index = pd.DatetimeIndex(["2025-01-02", "2025-01-03", "2025-01-06"], name="Date")
    fields = ["Adj Close", "Close", "High", "Low", "Open", "Volume"]
    data = {}
    for i, ticker in enumerate(tickers):
        base = 100.0 + 10 * i
        values = {
            "Adj Close": [base * 0.98, base * 0.99, base * 1.00],
            "Close": [base, base * 1.01, base * 1.02],
            "High": [base * 1.02] * 3,
            "Low": [base * 0.97] * 3,
            "Open": [base * 0.995] * 3,
            "Volume": [1_000_000.0, 1_100_000.0, 900_000.0],
        }
        if ticker == "DEAD":
            values = {f: [np.nan] * 3 for f in fields}
        for field_name in fields:
            data[(field_name, ticker)] = values[field_name]
    frame = pd.DataFrame(data, index=index)
    frame.columns = pd.MultiIndex.from_tuples(frame.columns, names=["Price", "Ticker"])
    if layout == "ticker":
        frame = frame.swaplevel(axis=1).sort_index(axis=1)
    return frame


@pytest.mark.parametrize("layout", ["column", "ticker"])
def test_yfinance_download_is_normalised(layout):
    frame = _yf_download_frame(["AAPL", "MSFT", "DEAD"], layout)
    result = normalize_download(
        frame, ["AAPL", "MSFT", "DEAD", "GONE"], date(2025, 1, 3), date(2025, 1, 6)
    )
    assert result.failures.keys() == {"DEAD", "GONE"}
    bars = result.bars.set_index(["symbol", "date"])
    assert len(bars) == 4  # 2 symbols x 2 days inside the range
    row = bars.loc[("MSFT", date(2025, 1, 3))]
    assert row.close == pytest.approx(111.1) and row.adj_close == pytest.approx(108.9)
    assert row.volume == 1_100_000 and row.source == "yfinance"
    assert list(result.bars.columns) == PRICE_COLUMNS


def test_yfinance_single_ticker_flat_frame_and_empty_answer():
    frame = _yf_download_frame(["AAPL"]).droplevel("Ticker", axis=1)
    result = normalize_download(frame, ["AAPL"], date(2025, 1, 1), date(2025, 1, 31))
    assert len(result.bars) == 3 and not result.failures
    empty = normalize_download(
        pd.DataFrame(), ["AAPL", "MSFT"], date(2025, 1, 1), date(2025, 1, 31)
    )
    assert empty.bars.empty and set(empty.failures) == {"AAPL", "MSFT"}


def test_yfinance_info_and_earnings_are_normalised():
    info = {
        "longName": "Apple Inc.",
        "quoteType": "EQUITY",
        "sector": "Technology",
        "industry": "Consumer Electronics",
        "exchange": "NMS",
        "currency": "USD",
        "marketCap": 3.1e12,
        "beta": 1.24,
    }
    profile = normalize_info("aapl", info)
    assert profile.symbol == "AAPL" and profile.asset_type == "stock" and profile.beta == 1.24
    assert normalize_info("NOPE", {}) is None
    etf = normalize_info("SPY", {"longName": "SPDR", "quoteType": "ETF", "category": "Large Blend"})
    assert etf.asset_type == "etf" and etf.industry == "Large Blend" and etf.beta is None
    index = pd.DatetimeIndex(
        ["2025-10-30 16:30", "2025-07-31 16:30", "2025-05-01 16:30", "2026-01-29 16:30"],
        tz="America/New_York",
        name="Earnings Date",
    )
    frame = pd.DataFrame(
        {
            "EPS Estimate": [1.77, 1.43, 1.62, np.nan],
            "Reported EPS": [1.85, 1.57, 1.65, np.nan],
            "Surprise(%)": [4.5, 9.8, 1.8, np.nan],
        },
        index=index,
    )
    got = normalize_earnings("AAPL", frame, date(2025, 11, 15))
    assert got.last_earnings_date == date(2025, 10, 30)
    assert got.next_earnings_date == date(2026, 1, 29)
    assert got.data == {"eps_estimate": 1.77, "eps_reported": 1.85, "surprise_pct": 4.5}


def test_yfinance_provider_refuses_private_symbols_before_any_call():
    result = run(
        YFinanceProvider().fetch_prices(
            ["PRIVATE_FUND_A", "SPAXX"], date(2025, 1, 2), date(2025, 1, 3)
        )
    )
    assert result.bars.empty and set(result.failures) == {"PRIVATE_FUND_A", "SPAXX"}


def test_rate_limiter_spaces_calls():
    async def burst() -> float:
        limiter = RateLimiter(50.0)
        t0 = time.monotonic()
        await asyncio.gather(*(limiter.acquire() for _ in range(6)))
        return time.monotonic() - t0

    assert run(burst()) >= 5 / 50.0 - 0.01


def test_retries_transient_errors_with_backoff_then_succeeds():
    calls = []

    async def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionError("connection reset by peer")
        return "ok"

    assert run(with_retries(flaky, attempts=4, base_seconds=0.01, max_seconds=0.05)) == "ok"
    assert len(calls) == 3


def test_permanent_errors_are_not_retried_and_exhaustion_reraises():
    calls = []

    async def unknown() -> None:
        calls.append(1)
        raise PermanentProviderError("unknown ticker")

    with pytest.raises(PermanentProviderError):
        run(with_retries(unknown, attempts=4, base_seconds=0.01))
    assert len(calls) == 1

    async def down() -> None:
        calls.append(1)
        raise TimeoutError("read timed out")

    with pytest.raises(TimeoutError):
        run(with_retries(down, attempts=3, base_seconds=0.001, max_seconds=0.002))
    assert len(calls) == 4


def test_factory_chooses_by_settings():
    sample = get_provider(Settings(MARKET_DATA_PROVIDER="sample"))
    real = get_provider(Settings(MARKET_DATA_PROVIDER="yfinance"))
    assert sample.name == "sample" and real.name == "yfinance"
    assert isinstance(sample, MarketDataProvider) and isinstance(real, MarketDataProvider)


async def test_synthetic_series_is_levelled_to_its_anchor_real_history_untouched() -> None:
    anchors = {"NVDA": (date(2025, 6, 30), 72.0), "AAPL": (date(2020, 6, 30), 1.0)}

    async def anchor_source(symbols: list[str]) -> dict:
        return {s: anchors[s] for s in symbols if s in anchors}

    start, end = date(2025, 6, 2), date(2025, 7, 31)
    plain = (await SampleProvider().fetch_prices(["NVDA", "AAPL"], start, end)).bars
    levelled = (await SampleProvider(anchor_source).fetch_prices(["NVDA", "AAPL"], start,
                                                                 end)).bars
    nvda = levelled[levelled.symbol == "NVDA"].set_index("date")
    assert nvda.loc[date(2025, 6, 30), "close"] == pytest.approx(72.0, abs=1e-6)
    assert set(nvda["source"]) == {sample_mod.SOURCE_LEVELLED}
    raw = plain[plain.symbol == "NVDA"].set_index("date")["close"].astype(float)
    # a level, not a new path: returns are the same
    ratio = nvda["close"].astype(float) / raw
    np.testing.assert_allclose(ratio, 72.0 / raw.loc[date(2025, 6, 30)], rtol=1e-6)
    # the same anchor from a later range (the nightly batch) gives the same level
    later = (await SampleProvider(anchor_source).fetch_prices(["NVDA"], date(2025, 7, 1),
                                                              end)).bars.set_index("date")
    assert later.loc[date(2025, 7, 31), "close"] == nvda.loc[date(2025, 7, 31), "close"]
    # AAPL has real history: neither its real bars nor its continuation are levelled
    aapl_plain = plain[plain.symbol == "AAPL"].reset_index(drop=True)
    aapl = levelled[levelled.symbol == "AAPL"].reset_index(drop=True)
    pd.testing.assert_frame_equal(aapl, aapl_plain)
