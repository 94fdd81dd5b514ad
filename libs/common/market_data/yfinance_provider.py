"""The real provider (MARKET_DATA_PROVIDER=yfinance): Yahoo Finance through the yfinance package.

Prices come from one batched ``yf.download`` per chunk of symbols with ``auto_adjust=False`` so
both Close and Adj Close arrive; profiles from ``Ticker.info``; earnings dates from
``Ticker.get_earnings_dates``. yfinance is blocking, so calls run in a worker thread, spaced by
the rate limiter and retried with jittered backoff; the normalising functions are pure and take
frames shaped like yfinance's output, so they are tested without the network.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from datetime import date, timedelta
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

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
from libs.common.market_data.throttle import RateLimiter, with_retries

SOURCE = "yfinance"
_FIELDS = {
    "Open": "open",
    "High": "high",
    "Low": "low",
    "Close": "close",
    "Adj Close": "adj_close",
    "Volume": "volume",
}


def _by_ticker(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Split a download into one (date x field) frame per ticker, whatever the column layout.

    yfinance >= 0.2.48 returns MultiIndex columns (Price, Ticker) by default, or
    (Ticker, Price) with ``group_by='ticker'``; flat columns for one ticker without
    ``multi_level_index``.
    """
    if not isinstance(frame.columns, pd.MultiIndex):
        return {"": frame}
    level0 = set(frame.columns.get_level_values(0))
    price_level = 0 if level0 & set(_FIELDS) else 1
    ticker_level = 1 - price_level
    out = {}
    for ticker in dict.fromkeys(frame.columns.get_level_values(ticker_level)):
        out[str(ticker)] = frame.xs(ticker, axis=1, level=ticker_level)
    return out


def normalize_download(
    frame: pd.DataFrame | None, symbols: Sequence[str], start: date, end: date
) -> PriceResult:
    """A ``yf.download`` result -> long bars (PRICE_COLUMNS) and per-symbol failures."""
    symbols = [s.upper() for s in symbols]
    if frame is None or frame.empty:
        return PriceResult(empty_prices(), {s: "no data returned by Yahoo" for s in symbols})
    per_ticker = _by_ticker(frame)
    if "" in per_ticker:  # flat frame: only meaningful for a single requested symbol
        per_ticker = {symbols[0]: per_ticker[""]} if len(symbols) == 1 else {}
    pieces, failures = [], {}
    for symbol in symbols:
        data = per_ticker.get(symbol)
        if data is None:
            failures[symbol] = "no data returned by Yahoo"
            continue
        data = data.rename(columns=_FIELDS)
        if "adj_close" not in data.columns and "close" in data.columns:
            data = data.assign(adj_close=data["close"])  # auto-adjusted download: Close is adjusted
        if "close" not in data.columns:
            failures[symbol] = "no Close column in Yahoo response"
            continue
        index = pd.DatetimeIndex(data.index)
        if index.tz is not None:
            index = index.tz_localize(None)
        data = data.set_axis(index.normalize(), axis=0)
        data = data[data["close"].notna() & (data.index >= pd.Timestamp(start))]
        data = data[data.index <= pd.Timestamp(end)]
        if data.empty:
            failures[symbol] = (
                "no data returned by Yahoo for the requested range (possibly delisted)"
            )
            continue
        volume = data["volume"] if "volume" in data.columns else pd.Series(np.nan, index=data.index)
        pieces.append(
            pd.DataFrame(
                {
                    "symbol": symbol,
                    "date": data.index.date,
                    "open": data.get("open", pd.Series(np.nan, index=data.index)).to_numpy(float),
                    "high": data.get("high", pd.Series(np.nan, index=data.index)).to_numpy(float),
                    "low": data.get("low", pd.Series(np.nan, index=data.index)).to_numpy(float),
                    "close": data["close"].to_numpy(float),
                    "adj_close": data["adj_close"].fillna(data["close"]).to_numpy(float),
                    "volume": [None if pd.isna(v) else int(v) for v in volume],
                    "source": SOURCE,
                },
                columns=PRICE_COLUMNS,
            )
        )
    bars = pd.concat(pieces, ignore_index=True) if pieces else empty_prices()
    return PriceResult(bars, failures)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def normalize_info(symbol: str, info: dict[str, Any] | None) -> Profile | None:
    """``Ticker.info`` -> Profile; None when Yahoo knows nothing about the symbol."""
    if not info or not (info.get("longName") or info.get("shortName") or info.get("quoteType")):
        return None
    quote_type = str(info.get("quoteType") or "").upper()
    asset = {"EQUITY": "stock", "ETF": "etf", "MUTUALFUND": "fund", "INDEX": "index"}.get(
        quote_type, quote_type.lower() or None
    )
    return Profile(
        symbol=symbol.upper(),
        name=info.get("longName") or info.get("shortName"),
        sector=info.get("sector") or None,
        industry=info.get("industry") or info.get("category") or None,
        exchange=info.get("exchange") or None,
        currency=info.get("currency") or None,
        market_cap=_number(info.get("marketCap")),
        beta=_number(info.get("beta") if info.get("beta") is not None else info.get("beta3Year")),
        asset_type=asset,
        source=SOURCE,
    )


def normalize_earnings(symbol: str, frame: pd.DataFrame | None, as_of: date) -> Fundamentals:
    """``Ticker.get_earnings_dates()`` -> last/next earnings dates around ``as_of`` and EPS."""
    last = nxt = None
    data: dict[str, Any] = {}
    if frame is not None and not frame.empty:
        index = pd.DatetimeIndex(frame.index)
        if index.tz is not None:
            index = index.tz_convert("America/New_York").tz_localize(None)
        days = index.normalize().date
        frame = frame.set_axis(days, axis=0).sort_index()
        past = [d for d in days if d <= as_of]
        future = [d for d in days if d > as_of]
        last = max(past) if past else None
        nxt = min(future) if future else None
        if last is not None:
            row = frame.loc[[last]].iloc[-1]
            for column, key in (
                ("EPS Estimate", "eps_estimate"),
                ("Reported EPS", "eps_reported"),
                ("Surprise(%)", "surprise_pct"),
            ):
                if column in row.index and _number(row[column]) is not None:
                    data[key] = _number(row[column])
    return Fundamentals(symbol.upper(), as_of, last, nxt, data, SOURCE)


class YFinanceProvider:
    """Yahoo Finance via yfinance: batched, rate-limited, retried; failures per symbol."""

    name = "yfinance"

    def __init__(
        self,
        rate_per_second: float = 2.0,
        chunk_size: int = 100,
        attempts: int = 4,
    ) -> None:
        self.limiter = RateLimiter(rate_per_second)
        self.chunk_size = chunk_size
        self.attempts = attempts
        self._yf: Any | None = None

    @property
    def yf(self) -> Any:
        if self._yf is None:
            import yfinance

            self._yf = yfinance
        return self._yf

    async def _call(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return await asyncio.to_thread(fn)

        return await with_retries(run, attempts=self.attempts, limiter=self.limiter)

    def _info(self, symbol: str) -> Any:
        return self.yf.Ticker(symbol).info

    def _earnings_dates(self, symbol: str) -> Any:
        return self.yf.Ticker(symbol).get_earnings_dates(limit=12)

    async def fetch_prices(self, symbols: Sequence[str], start: date, end: date) -> PriceResult:
        allowed, failures = refuse_excluded(symbols)
        pieces = []
        for i in range(0, len(allowed), self.chunk_size):
            chunk = allowed[i : i + self.chunk_size]

            def download(chunk: list[str] = chunk) -> pd.DataFrame | None:
                return self.yf.download(
                    tickers=chunk,
                    start=start.isoformat(),
                    end=(end + timedelta(days=1)).isoformat(),  # yfinance's end is exclusive
                    auto_adjust=False,
                    actions=False,
                    group_by="column",
                    progress=False,
                    threads=False,
                    multi_level_index=True,
                )

            try:
                frame = await self._call(download)
            except Exception as error:  # the whole chunk failed after retries
                failures.update({s: f"download failed: {error!r}"[:500] for s in chunk})
                continue
            result = normalize_download(frame, chunk, start, end)
            pieces.append(result.bars)
            failures.update(result.failures)
        bars = pd.concat(pieces, ignore_index=True) if pieces else empty_prices()
        return PriceResult(bars, failures)

    async def fetch_profiles(self, symbols: Sequence[str], as_of: date) -> ProfileResult:
        allowed, failures = refuse_excluded(symbols)
        profiles = []
        for symbol in allowed:
            try:
                info = await self._call(partial(self._info, symbol))
            except Exception as error:
                failures[symbol] = f"profile failed: {error!r}"[:500]
                continue
            profile = normalize_info(symbol, info)
            if profile is None:
                failures[symbol] = "no profile returned by Yahoo"
            else:
                profiles.append(profile)
        return ProfileResult(profiles, failures)

    async def fetch_fundamentals(self, symbols: Sequence[str], as_of: date) -> FundamentalsResult:
        allowed, failures = refuse_excluded(symbols)
        items = []
        for symbol in allowed:
            try:
                frame = await self._call(partial(self._earnings_dates, symbol))
            except Exception as error:
                failures[symbol] = f"earnings dates failed: {error!r}"[:500]
                continue
            items.append(normalize_earnings(symbol, frame, as_of))
        return FundamentalsResult(items, failures)
