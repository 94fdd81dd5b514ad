"""The offline ``sample`` provider: real history where the project ships it, a deterministic
factor-model continuation everywhere else, every bar labelled in ``source``.

Sources of a bar:
- ``sample:real``: real adjusted close from ``libs/common/data/sample_prices.csv.gz`` (a subset
  of shared/fixtures/prices, 2014-01-02 .. 2022-12-28); open/high/low/volume are unknown (None).
- ``sample:proxy:SP500/10`` (SPY), ``sample:proxy:VLUE`` (VTV), ``sample:proxy:SIZE`` (IWM): a
  real series standing in for an ETF the fixtures lack, labelled with what it really is.
- ``sample:synthetic``: generated. After 2022-12-28 for every symbol, and from 2014-01-02 for
  symbols without real history (TLT, VUG, NVDA, ...).

Synthetic returns follow a 7-factor model, r = a + B.L + e: latent factors L (market, rates,
growth-minus-value, momentum, size, quality, low volatility) are shared by all symbols; inside
the real period they are backed out of the real ETF returns, so a synthetic stock in 2020 moves
with the real 2020 market. Each symbol's loadings B, idiosyncratic noise e and starting price
come from a seed derived from its ticker; the noise is drawn in fixed blocks of sessions seeded
by (ticker, block), so the price of a symbol on a date never depends on the range requested.
The factor ETFs' synthetic bars are the latent combinations they are meant to track, so the
factor engine recovers meaningful betas. Profiles and earnings dates are deterministic as well.

Levelling (``sample:synthetic:levelled``): a symbol with no real history starts at an arbitrary
seeded price, so a portfolio bought at 72 could see 7.88 and a fake crash. Given an anchor
(date, price) — by default the entry price of the symbol's first uploaded position, read by
``anchor_source`` — its whole synthetic series is scaled so that its close on that date is that
price. Returns, and so betas, are unchanged; the same anchor gives the same level to every
caller (onboarding and the nightly batch). Real and proxy history is never levelled.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from libs.common import calendar
from libs.common.market_data.base import (
    PRICE_COLUMNS,
    Fundamentals,
    FundamentalsResult,
    PriceResult,
    Profile,
    ProfileResult,
    empty_prices,
    refuse_excluded,
)

DATA_FILE = Path(__file__).resolve().parents[1] / "data" / "sample_prices.csv.gz"
SAMPLE_START = date(2014, 1, 2)
REAL_END = date(2022, 12, 28)
SOURCE_REAL = "sample:real"
SOURCE_SYNTHETIC = "sample:synthetic"
SOURCE_LEVELLED = "sample:synthetic:levelled"
SOURCE_STATIC_PROFILE = "sample:static"
BLOCK = 256

LATENT = ("MKT", "RATES", "GROWTH", "MOM", "SIZE", "QUALITY", "LOWVOL")
_LATENT_MEAN = np.array([0.0004, 0.0, 0.0, 0.0001, 0.0, 0.0001, 0.0])
_LATENT_VOL = np.array([0.011, 0.008, 0.005, 0.006, 0.006, 0.003, 0.004])

# What each factor ETF tracks in latent terms; inverted inside the real period.
ETF_LOADINGS: dict[str, dict[str, float]] = {
    "SPY": {"MKT": 1.0},
    "TLT": {"MKT": -0.25, "RATES": 1.0},
    "VTV": {"MKT": 0.95, "GROWTH": -0.5},
    "VUG": {"MKT": 1.05, "GROWTH": 0.5},
    "MTUM": {"MKT": 1.0, "MOM": 1.0},
    "QUAL": {"MKT": 1.0, "QUALITY": 1.0},
    "IWM": {"MKT": 1.1, "SIZE": 1.0},
    "USMV": {"MKT": 0.75, "LOWVOL": 1.0},
}

# symbol -> (column of the data file, scale, source label)
_PROXIES = {
    "SPY": ("SP500", 0.1, "sample:proxy:SP500/10"),
    "VTV": ("VLUE", 1.0, "sample:proxy:VLUE"),
    "IWM": ("SIZE", 1.0, "sample:proxy:SIZE"),
}
_NOT_SYMBOLS = {"SP500", "VLUE", "SIZE"}  # data-file columns that are not tradable tickers here

# Tickers that stopped trading: the sample serves no bar after the last session, like a vendor.
DELISTED = {"HZNP": date(2023, 10, 5), "SGEN": date(2023, 12, 13)}

_TICKER = re.compile(r"^[A-Z][A-Z0-9]{0,5}([.\-][A-Z0-9]{1,2})?$")

_BOND_FUNDS = set(
    "AGG BND TLT HYG LQD MUB VCIT VBMFX FXNAX BIL EBND SCHP HYLB SCYB CMF VTEC".split()
)
_COMMODITY_FUNDS = {"GLD", "DJP"}
_EQUITY_FUNDS = set(
    (
        "SPY VOO VTI QQQ IWM DIA EEM EFA VWO VNQ XLRE SCHD XLK SOXX ARKK VGT XLV IBB IGV JEPQ "
        "SMH XLY SCHB SCHX SCHA SCHC SCHE SCHF SCHH VFINX VFIAX VTSAX VGTSX VWELX FCNTX FMAGX "
        "VTIAX FNDA FNDC FNDE FNDF FNDX PRF PRFZ PXF PXH VNQI VSS VTV VUG MTUM QUAL USMV"
    ).split()
)

# Public facts for the tickers whose real history is shipped (name, sector, industry).
_STATIC_PROFILES = {
    "AAPL": ("Apple Inc.", "Technology", "Consumer Electronics"),
    "AMD": ("Advanced Micro Devices, Inc.", "Technology", "Semiconductors"),
    "BAC": ("Bank of America Corporation", "Financial Services", "Banks - Diversified"),
    "BBY": ("Best Buy Co., Inc.", "Consumer Cyclical", "Specialty Retail"),
    "CVX": ("Chevron Corporation", "Energy", "Oil & Gas Integrated"),
    "GE": ("General Electric Company", "Industrials", "Aerospace & Defense"),
    "HD": ("The Home Depot, Inc.", "Consumer Cyclical", "Home Improvement Retail"),
    "JNJ": ("Johnson & Johnson", "Healthcare", "Drug Manufacturers - General"),
    "JPM": ("JPMorgan Chase & Co.", "Financial Services", "Banks - Diversified"),
    "KO": ("The Coca-Cola Company", "Consumer Defensive", "Beverages - Non-Alcoholic"),
    "LLY": ("Eli Lilly and Company", "Healthcare", "Drug Manufacturers - General"),
    "MRK": ("Merck & Co., Inc.", "Healthcare", "Drug Manufacturers - General"),
    "MSFT": ("Microsoft Corporation", "Technology", "Software - Infrastructure"),
    "PEP": ("PepsiCo, Inc.", "Consumer Defensive", "Beverages - Non-Alcoholic"),
    "PFE": ("Pfizer Inc.", "Healthcare", "Drug Manufacturers - General"),
    "PG": ("The Procter & Gamble Company", "Consumer Defensive", "Household & Personal Products"),
    "RRC": ("Range Resources Corporation", "Energy", "Oil & Gas E&P"),
    "UNH": ("UnitedHealth Group Incorporated", "Healthcare", "Healthcare Plans"),
    "WMT": ("Walmart Inc.", "Consumer Defensive", "Discount Stores"),
    "XOM": ("Exxon Mobil Corporation", "Energy", "Oil & Gas Integrated"),
    "SPY": ("SPDR S&P 500 ETF Trust", None, "Large Blend"),
    "TLT": ("iShares 20+ Year Treasury Bond ETF", None, "Long Government"),
    "VTV": ("Vanguard Value ETF", None, "Large Value"),
    "VUG": ("Vanguard Growth ETF", None, "Large Growth"),
    "MTUM": ("iShares MSCI USA Momentum Factor ETF", None, "Large Growth"),
    "QUAL": ("iShares MSCI USA Quality Factor ETF", None, "Large Blend"),
    "IWM": ("iShares Russell 2000 ETF", None, "Small Blend"),
    "USMV": ("iShares MSCI USA Min Vol Factor ETF", None, "Large Blend"),
}
_SECTORS = {
    "Technology": ["Software - Application", "Semiconductors", "Software - Infrastructure"],
    "Healthcare": ["Biotechnology", "Medical Devices", "Drug Manufacturers - General"],
    "Financial Services": ["Banks - Regional", "Capital Markets", "Credit Services"],
    "Consumer Cyclical": ["Internet Retail", "Auto Manufacturers", "Restaurants"],
    "Consumer Defensive": ["Discount Stores", "Packaged Foods", "Beverages - Non-Alcoholic"],
    "Industrials": ["Aerospace & Defense", "Farm & Heavy Construction Machinery"],
    "Energy": ["Oil & Gas Integrated", "Oil & Gas E&P"],
    "Communication Services": ["Internet Content & Information", "Entertainment", "Telecom"],
    "Utilities": ["Utilities - Regulated Electric"],
    "Real Estate": ["REIT - Diversified"],
    "Basic Materials": ["Specialty Chemicals", "Gold"],
}


SYNTHETIC_PREFIX = "SY"


def synthetic_universe(n: int) -> list[str]:
    """``SY0001`` .. ``SY{n:04d}``: tickers with no real history, so every bar and profile of
    theirs is ``sample:synthetic`` (SIGMABATCH_SAMPLE_UNIVERSE; production-size runs offline)."""
    if not 0 <= n <= 9999:
        raise ValueError(f"synthetic universe size must be 0..9999, got {n}")
    return [f"{SYNTHETIC_PREFIX}{i:04d}" for i in range(1, n + 1)]


def _seed(symbol: str) -> int:
    return int.from_bytes(hashlib.blake2b(symbol.encode(), digest_size=8).digest(), "big")


def category(symbol: str) -> str:
    if symbol in _BOND_FUNDS:
        return "bond_fund"
    if symbol in _COMMODITY_FUNDS:
        return "commodity_fund"
    if symbol in _EQUITY_FUNDS:
        return "equity_fund"
    return "stock"


def asset_type(symbol: str) -> str:
    if category(symbol) == "stock":
        return "stock"
    # Mutual funds are 5-letter tickers ending in X (VFINX, FCNTX); the rest trade as ETFs.
    return "fund" if len(symbol) == 5 and symbol.endswith("X") else "etf"


@dataclass(frozen=True)
class _SymbolModel:
    loadings: np.ndarray  # (7,)
    alpha: float
    idio_vol: float
    start_price: float


@lru_cache(maxsize=1)
def _real_prices() -> pd.DataFrame:
    frame = pd.read_csv(DATA_FILE, index_col="date", parse_dates=True)
    out = {}
    for col in frame.columns:
        if col not in _NOT_SYMBOLS:
            out[col] = frame[col]
    for symbol, (col, scale, _) in _PROXIES.items():
        out[symbol] = frame[col] * scale
    return pd.DataFrame(out)


def real_symbols() -> list[str]:
    return sorted(_real_prices().columns)


def _real_source(symbol: str) -> str:
    return _PROXIES[symbol][2] if symbol in _PROXIES else SOURCE_REAL


@lru_cache(maxsize=1)
def _real_session_count() -> int:
    return len(_real_prices())


def _grid(end: date) -> pd.DatetimeIndex:
    """Sessions from SAMPLE_START to max(end, REAL_END): the one index every path lives on."""
    return _grid_to(max(end, REAL_END))


@lru_cache(maxsize=64)
def _grid_to(last: date) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(calendar.nyse(last).sessions_in_range(SAMPLE_START, last))


@lru_cache(maxsize=4096)
def _latent_block(block: int) -> np.ndarray:
    rng = np.random.default_rng([_seed("__latent__"), block])
    return _LATENT_MEAN + _LATENT_VOL * rng.standard_normal((BLOCK, len(LATENT)))


@lru_cache(maxsize=1)
def _latent_from_real() -> np.ndarray:
    """Latent factor returns implied by the real ETF series, NaN where no real series exists."""
    real = _real_prices()
    r = (real / real.shift(1) - 1.0).to_numpy()
    col = {s: i for i, s in enumerate(real.columns)}
    mkt = r[:, col["SPY"]]
    out = np.full((len(real), len(LATENT)), np.nan)
    out[:, 0] = mkt
    out[:, 2] = (0.95 * mkt - r[:, col["VTV"]]) / 0.5
    out[:, 3] = r[:, col["MTUM"]] - mkt
    out[:, 4] = r[:, col["IWM"]] - 1.1 * mkt
    out[:, 5] = r[:, col["QUAL"]] - mkt
    out[:, 6] = r[:, col["USMV"]] - 0.75 * mkt
    return out


@lru_cache(maxsize=16)
def _latent(n_sessions: int) -> np.ndarray:
    """Latent factor returns for sessions 0..n-1 of the grid (row 0 is never used); shared by
    every symbol's path, so built once per grid length and read-only."""
    blocks = math.ceil(n_sessions / BLOCK)
    synthetic = np.vstack([_latent_block(b) for b in range(blocks)])[:n_sessions].copy()
    implied = _latent_from_real()
    k = min(len(implied), n_sessions)
    real_part = implied[:k]
    synthetic[:k] = np.where(np.isnan(real_part), synthetic[:k], real_part)
    synthetic.flags.writeable = False
    return synthetic


def _symbol_noise(symbol: str, n_sessions: int) -> np.ndarray:
    """(n, 5) standard normals: idiosyncratic return, open, high, low, volume; block-seeded."""
    seed = _seed(symbol)
    blocks = math.ceil(n_sessions / BLOCK)
    draws = [np.random.default_rng([seed, b, 1]).standard_normal((BLOCK, 5)) for b in range(blocks)]
    return np.vstack(draws)[:n_sessions]


@lru_cache(maxsize=8192)
def symbol_model(symbol: str) -> _SymbolModel:
    rng = np.random.default_rng([_seed(symbol), 0])
    cat = category(symbol)
    loadings = np.zeros(len(LATENT))
    if symbol in ETF_LOADINGS:
        for name, value in ETF_LOADINGS[symbol].items():
            loadings[LATENT.index(name)] = value
        return _SymbolModel(
            loadings, 0.0, 0.0008, float(np.exp(rng.uniform(np.log(40), np.log(200))))
        )
    if cat == "stock":
        loadings[:] = rng.normal(0.0, [0.0, 0.2, 0.5, 0.3, 0.4, 0.3, 0.3])
        loadings[0] = rng.uniform(0.6, 1.6)
        idio = rng.uniform(0.010, 0.025)
    elif cat == "equity_fund":
        loadings[:] = rng.normal(0.0, [0.0, 0.1, 0.2, 0.1, 0.2, 0.1, 0.1])
        loadings[0] = rng.uniform(0.85, 1.15)
        idio = rng.uniform(0.001, 0.004)
    elif cat == "bond_fund":
        loadings[0] = rng.uniform(0.0, 0.15)
        loadings[1] = rng.uniform(0.2, 1.0)
        idio = rng.uniform(0.0005, 0.002)
    else:
        loadings[0] = rng.uniform(0.0, 0.3)
        idio = rng.uniform(0.006, 0.012)
    start = float(np.exp(rng.uniform(np.log(15), np.log(250))))
    if symbol in _real_prices().columns:
        loadings[0], idio = _real_market_fit(symbol)
    return _SymbolModel(loadings, 0.0001 if cat == "stock" else 0.0, idio, start)


def _real_market_fit(symbol: str) -> tuple[float, float]:
    """Market beta and residual vol over the last real year: the continuation keeps character."""
    real = _real_prices().iloc[-253:]
    r = (real / real.shift(1) - 1.0).iloc[1:]
    x, y = r["SPY"].to_numpy(), r[symbol].to_numpy()
    xc, yc = x - x.mean(), y - y.mean()
    beta = float(xc @ yc / (xc @ xc))
    resid = yc - beta * xc
    return float(np.clip(beta, -3, 3)), float(max(resid.std(), 0.0005))


@dataclass(frozen=True)
class _Path:
    dates: pd.DatetimeIndex
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    source: np.ndarray


def _path(symbol: str, end: date) -> _Path:
    """The symbol's whole bar history on the grid up to ``end`` (deterministic, range-free)."""
    grid = _grid(end)
    n = len(grid)
    model = symbol_model(symbol)
    noise = _symbol_noise(symbol, n)
    returns = model.alpha + _latent(n) @ model.loadings + model.idio_vol * noise[:, 0]
    returns[0] = 0.0
    growth = np.cumprod(1.0 + returns)
    close = model.start_price * growth
    source = np.full(n, SOURCE_SYNTHETIC, dtype=object)
    real = _real_prices()
    n_real = min(_real_session_count(), n)
    if symbol in real.columns:
        real_close = real[symbol].to_numpy()[:n_real]
        close[:n_real] = real_close
        close[n_real:] = real_close[-1] * growth[n_real:] / growth[n_real - 1]
        source[:n_real] = _real_source(symbol)
    day_vol = max(model.idio_vol, 0.004)
    prev = np.concatenate([[close[0]], close[:-1]])
    open_ = prev * (1.0 + 0.3 * day_vol * noise[:, 1])
    high = np.maximum(open_, close) * (1.0 + 0.5 * day_vol * np.abs(noise[:, 2]))
    low = np.minimum(open_, close) * (1.0 - 0.5 * day_vol * np.abs(noise[:, 3]))
    volume = np.exp(np.log(2e6) + 0.4 * noise[:, 4]).astype(np.int64).astype(object)
    is_real = source != SOURCE_SYNTHETIC
    open_ = np.where(is_real, np.nan, open_)
    high = np.where(is_real, np.nan, high)
    low = np.where(is_real, np.nan, low)
    volume[is_real] = None
    return _Path(grid, open_, high, low, np.round(close, 6), volume, source)


def _failure(symbol: str, start: date, end: date) -> str | None:
    if not _TICKER.match(symbol):
        return "unknown ticker (not a valid symbol)"
    if end < SAMPLE_START:
        return f"no data: sample history starts {SAMPLE_START.isoformat()}"
    delisted = DELISTED.get(symbol)
    if delisted is not None and start > delisted:
        return f"no data: delisted after {delisted.isoformat()}"
    return None


def _bar_columns(symbol: str, start: date, end: date) -> dict[str, np.ndarray]:
    """One symbol's bars for start <= date <= end as columns (no failure checks)."""
    path = _path(symbol, end)
    last = min(end, DELISTED.get(symbol, end))
    lo = path.dates.searchsorted(pd.Timestamp(max(start, SAMPLE_START)), side="left")
    hi = path.dates.searchsorted(pd.Timestamp(last), side="right")
    sl = slice(lo, hi)
    close = path.close[sl]
    return {
        "symbol": np.full(len(close), symbol, dtype=object),
        "date": path.dates[sl].date,
        "open": path.open[sl],
        "high": path.high[sl],
        "low": path.low[sl],
        "close": close,
        "adj_close": close,
        "volume": path.volume[sl],
        "source": path.source[sl],
    }


def _bars_frame(columns: Sequence[dict[str, np.ndarray]]) -> pd.DataFrame:
    """Many symbols' bar columns as one frame, built once (not a frame per symbol)."""
    joined = {name: np.concatenate([c[name] for c in columns]) for name in PRICE_COLUMNS}
    return pd.DataFrame(joined, columns=PRICE_COLUMNS)


def sample_bars(symbol: str, start: date, end: date) -> pd.DataFrame:
    """Bars of one symbol for start <= date <= end (no failure checks)."""
    return _bars_frame([_bar_columns(symbol, start, end)])


def _earnings_dates(symbol: str, year: int) -> list[date]:
    day = 15 + _seed(symbol) % 14  # 15..28: valid in every month
    out = []
    for month in (1, 4, 7, 10):
        d = date(year, month, day)
        while d.weekday() >= 5:
            d += timedelta(days=1)
        out.append(d)
    return out


def earnings_window(symbol: str, as_of: date) -> tuple[date | None, date | None]:
    """Last and next (deterministic) earnings dates around ``as_of``; funds have none."""
    if category(symbol) != "stock":
        return None, None
    dates = [
        d for y in (as_of.year - 1, as_of.year, as_of.year + 1) for d in _earnings_dates(symbol, y)
    ]
    last = max(d for d in dates if d <= as_of)
    nxt = min(d for d in dates if d > as_of)
    return last, nxt


#: symbol -> (date, price) the synthetic series must pass through.
Anchors = dict[str, tuple[date, float]]
AnchorSource = Callable[[list[str]], Awaitable[Anchors]]


def is_synthetic_only(symbol: str) -> bool:
    """No real or proxy history shipped: the whole series is generated."""
    return symbol not in _real_prices().columns


@lru_cache(maxsize=65536)
def _level_factor(symbol: str, day: date, price: float) -> float | None:
    """anchor price / the generated close on the last session on or before ``day``."""
    path = _path(symbol, max(day, SAMPLE_START))
    at = path.dates.searchsorted(pd.Timestamp(day), side="right") - 1
    if at < 0:
        return None
    return price / float(path.close[at])


def level_bars(bars: pd.DataFrame, anchors: Anchors) -> pd.DataFrame:
    """Scale each anchored, purely synthetic symbol's bars so they pass through its anchor.

    The factor is anchor price / the generated close on the last session on or before the
    anchor date (computed on the symbol's full path, so it does not depend on the range).
    """
    if bars.empty or not anchors:
        return bars
    present = set(bars["symbol"])
    factors: dict[str, float] = {}
    for symbol, (day, price) in anchors.items():
        if symbol not in present or not is_synthetic_only(symbol) or not price or price <= 0:
            continue
        factor = _level_factor(symbol, day, float(price))
        if factor is not None:
            factors[symbol] = factor
    if not factors:
        return bars
    out = bars.copy()
    factor_of_row = out["symbol"].map(factors)
    rows = factor_of_row.notna().to_numpy()
    by = factor_of_row[rows].to_numpy(dtype=float)
    for column in ("open", "high", "low", "close", "adj_close"):
        values = pd.to_numeric(out.loc[rows, column], errors="coerce").to_numpy(dtype=float)
        out.loc[rows, column] = np.round(values * by, 6)
    out.loc[rows, "source"] = SOURCE_LEVELLED
    return out


class SampleProvider:
    """Offline provider (MARKET_DATA_PROVIDER=sample): see the module docstring."""

    name = "sample"

    def __init__(self, anchor_source: AnchorSource | None = None) -> None:
        self.anchor_source = anchor_source

    def _prices(self, symbols: Sequence[str], start: date, end: date) -> PriceResult:
        allowed, failures = refuse_excluded(symbols)
        columns = []
        for symbol in allowed:
            reason = _failure(symbol, start, end)
            if reason is None:
                bars = _bar_columns(symbol, start, end)
                if len(bars["close"]) == 0:
                    reason = "no data in the requested range"
                else:
                    columns.append(bars)
            if reason is not None:
                failures[symbol] = reason
        bars = _bars_frame(columns) if columns else empty_prices()
        return PriceResult(bars=bars, failures=failures)

    async def fetch_prices(self, symbols: Sequence[str], start: date, end: date) -> PriceResult:
        result = await asyncio.to_thread(self._prices, list(symbols), start, end)
        if self.anchor_source is not None and not result.bars.empty:
            synthetic = sorted(s for s in set(result.bars["symbol"]) if is_synthetic_only(s))
            anchors = await self.anchor_source(synthetic) if synthetic else {}
            result.bars = level_bars(result.bars, anchors)
        return result

    def _profile(self, symbol: str, as_of: date) -> Profile:
        model = symbol_model(symbol)
        rng = np.random.default_rng([_seed(symbol), 2])
        kind = asset_type(symbol)
        static = _STATIC_PROFILES.get(symbol)
        if static is not None:
            name, sector, industry = static
            source = SOURCE_STATIC_PROFILE
        elif kind == "stock":
            sector = list(_SECTORS)[int(rng.integers(len(_SECTORS)))]
            industry = _SECTORS[sector][int(rng.integers(len(_SECTORS[sector])))]
            name, source = f"{symbol} (sample company)", SOURCE_SYNTHETIC
        else:
            sector, industry = None, category(symbol).replace("_", " ")
            name, source = f"{symbol} (sample fund)", SOURCE_SYNTHETIC
        market_cap = None
        if kind == "stock":
            bars = sample_bars(symbol, calendar.lookback_start(as_of, 5), as_of)
            shares = float(np.exp(rng.uniform(np.log(5e7), np.log(5e9))))
            if not bars.empty:
                market_cap = round(float(bars["close"].iloc[-1]) * shares, 0)
        return Profile(
            symbol=symbol,
            name=name,
            sector=sector,
            industry=industry,
            exchange="NYSE" if _seed(symbol) % 2 else "NASDAQ",
            currency="USD",
            market_cap=market_cap,
            beta=round(float(model.loadings[0]), 4),
            asset_type=kind,
            source=source,
        )

    def _profiles(self, symbols: Sequence[str], as_of: date) -> ProfileResult:
        allowed, failures = refuse_excluded(symbols)
        profiles = []
        for symbol in allowed:
            if not _TICKER.match(symbol):
                failures[symbol] = "unknown ticker (not a valid symbol)"
                continue
            profiles.append(self._profile(symbol, as_of))
        return ProfileResult(profiles=profiles, failures=failures)

    async def fetch_profiles(self, symbols: Sequence[str], as_of: date) -> ProfileResult:
        return await asyncio.to_thread(self._profiles, list(symbols), as_of)

    def _fundamentals(self, symbols: Sequence[str], as_of: date) -> FundamentalsResult:
        allowed, failures = refuse_excluded(symbols)
        items = []
        for symbol in allowed:
            if not _TICKER.match(symbol):
                failures[symbol] = "unknown ticker (not a valid symbol)"
                continue
            last, nxt = earnings_window(symbol, as_of)
            data: dict[str, object] = {"asset_type": asset_type(symbol)}
            if last is not None:
                rng = np.random.default_rng([_seed(symbol), last.toordinal()])
                data.update(
                    eps_ttm=round(float(rng.uniform(0.5, 12.0)), 2),
                    revenue_ttm=round(float(np.exp(rng.uniform(np.log(5e8), np.log(4e11)))), -6),
                    reported_quarter=last.isoformat(),
                )
            items.append(Fundamentals(symbol, as_of, last, nxt, data, SOURCE_SYNTHETIC))
        return FundamentalsResult(items=items, failures=failures)

    async def fetch_fundamentals(self, symbols: Sequence[str], as_of: date) -> FundamentalsResult:
        return await asyncio.to_thread(self._fundamentals, list(symbols), as_of)
