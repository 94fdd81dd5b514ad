"""Onboarding worker: `symbol.onboard.requested` → history, profile, betas → `completed`.

One symbol at a time per message. The job tracker's partial unique index is the lock: a
second delivery of a symbol already being fetched (a redelivery after a crash, another
replica) waits for it instead of fetching again, and takes over once the first worker's
heartbeat is stale. Everything the symbol needs is written in one transaction with its
`ready` state, and the completion event is published only after that commit, so a crash at
any point leaves either nothing (the message comes back) or a finished symbol (the redelivery
just re-announces it).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.bus import Delivery
from libs.common.calendar import effective_trading_date, sessions_between
from libs.common.db import raw_connection, session_scope
from libs.common.events import SymbolOnboardCompleted, SymbolOnboardRequested
from libs.common.factors import FACTOR_ETFS, FACTOR_MODELS, compute_exposures, daily_returns
from libs.common.jobs import FAILED as JOB_FAILED
from libs.common.jobs import Job, JobAlreadyRunning
from libs.common.market_data.base import MarketDataProvider, Profile
from libs.common.onboarding import store
from libs.common.onboarding.domain import FAILED, READY, SETTLED
from libs.common.service import ServiceContext

log = logging.getLogger(__name__)

JOB_TYPE = "symbol_onboard"
HISTORY_DAYS = 366  # ~1 year: covers the widest factor window (180 sessions) with margin
MIN_ETF_COVERAGE = 0.9  # below this share of sessions cached, factor ETFs are fetched too


@dataclass(frozen=True)
class FetchOutcome:
    status: str  # ready / failed
    reason: str
    recorded: bool = False  # already written (the job is closed)


class OnboardingWorker:
    def __init__(self, ctx: ServiceContext, provider: MarketDataProvider) -> None:
        self.ctx = ctx
        self.provider = provider

    async def handle(self, message: SymbolOnboardRequested, delivery: Delivery) -> None:
        symbol = message.symbol.upper()
        while True:
            async with session_scope(self.ctx.database_url) as session:
                state = await store.symbol_status(session, symbol)
            if state is None or state in SETTLED:
                # Unknown or already done (a redelivery after the commit): re-announce only.
                if state in SETTLED:
                    await self._announce(symbol, state, "already onboarded", message)
                return
            try:
                job = await self.ctx.jobs.start(JOB_TYPE, symbol,
                                                correlation_id=message.correlation_id,
                                                phases=("prices", "profile", "factors"))
                break
            except JobAlreadyRunning:
                # In flight elsewhere: wait for it (the consume loop keeps our message alive);
                # a dead holder's row goes stale and start() reclaims it.
                await asyncio.sleep(min(1.0, self.ctx.settings.job_stale_after_seconds / 4))
        beat = asyncio.create_task(self._heartbeat(job))
        try:
            last_try = delivery.num_delivered >= self.ctx.settings.max_deliver
            try:
                outcome = await self._onboard(symbol, job)
            except Exception as exc:
                if not last_try:
                    # Close this attempt's job row so the next delivery starts at once; nak.
                    await self.ctx.jobs.finish(job, JOB_FAILED,
                                               error=f"{type(exc).__name__}: {exc} (will retry)")
                    raise
                outcome = FetchOutcome(FAILED, f"{type(exc).__name__}: {exc}")
            if outcome.status == FAILED and not outcome.recorded:
                async with session_scope(self.ctx.database_url) as session:
                    await store.settle_symbol(session, symbol, FAILED, outcome.reason)
                    await self.ctx.jobs.finish(job, JOB_FAILED, error=outcome.reason,
                                               session=session)
        except asyncio.CancelledError:
            beat.cancel()
            # Shutdown (SIGTERM): release the job row so the redelivery starts at once instead
            # of waiting for it to go stale; the bus naks the message.
            with contextlib.suppress(Exception):
                await self.ctx.jobs.finish(job, JOB_FAILED, error="interrupted by shutdown")
            raise
        except BaseException:
            beat.cancel()
            raise
        beat.cancel()
        await self._announce(symbol, outcome.status, outcome.reason, message)

    async def _heartbeat(self, job: Job) -> None:
        while True:
            await asyncio.sleep(self.ctx.settings.job_heartbeat_seconds)
            try:
                await self.ctx.jobs.heartbeat(job)
            except Exception as exc:
                log.warning("heartbeat of %s failed: %s", job.job_key, exc)

    async def _announce(self, symbol: str, status: str, reason: str,
                        message: SymbolOnboardRequested) -> None:
        await self.ctx.publish(SymbolOnboardCompleted(
            symbol=symbol, status=status, reason=reason, correlation_id=message.correlation_id))

    async def _onboard(self, symbol: str, job: Job) -> FetchOutcome:
        async with session_scope(self.ctx.database_url) as session:
            if not await store.mark_symbol_running(session, symbol):
                state = await store.symbol_status(session, symbol)
                await self.ctx.jobs.finish(job, session=session)
                return FetchOutcome(state or READY, "already onboarded", recorded=True)
        end = effective_trading_date(dt.datetime.now(dt.UTC))
        start = end - dt.timedelta(days=HISTORY_DAYS)

        await self.ctx.jobs.phase(job, "prices", total=1, unit="symbols")
        result = await self.provider.fetch_prices([symbol], start, end)
        bars = result.bars[result.bars["symbol"] == symbol] if len(result.bars) else result.bars
        if bars.empty:
            reason = result.failures.get(symbol) or "the market data provider has no prices"
            return FetchOutcome(FAILED, reason)
        etf_bars = await self._factor_etf_bars(start, end)

        await self.ctx.jobs.phase(job, "profile", total=1, unit="symbols")
        profiles = await self.provider.fetch_profiles([symbol], end)
        profile = next((p for p in profiles.profiles if p.symbol.upper() == symbol), None)

        await self.ctx.jobs.phase(job, "factors", total=1, unit="symbols")
        latest = max(bars["date"])
        exposures = await self._exposures(symbol, bars, etf_bars, latest)

        async with session_scope(self.ctx.database_url) as session:
            await upsert_prices(session, pd.concat([bars, etf_bars], ignore_index=True))
            if profile is not None:
                await upsert_profile(session, profile, end)
            await write_exposures(session, exposures)
            await session.execute(
                text(
                    """
                    INSERT INTO symbol_universe (symbol, asset_type, added_by, last_price_date)
                    VALUES (:s, :asset_type, 'onboarding', :latest)
                    ON CONFLICT (symbol) DO UPDATE SET is_active = true,
                        last_price_date = GREATEST(symbol_universe.last_price_date, :latest)
                    """
                ),
                {"s": symbol, "asset_type": profile.asset_type if profile else None,
                 "latest": latest},
            )
            reason = (f"{len(bars)} daily prices to {latest}, "
                      f"{exposures['factor'].nunique() if len(exposures) else 0} factor betas")
            await store.settle_symbol(session, symbol, READY, reason)
            await self.ctx.jobs.finish(job, result={"prices": len(bars), "latest": str(latest)},
                                       session=session)
        return FetchOutcome(READY, reason)

    async def _factor_etf_bars(self, start: dt.date, end: dt.date) -> pd.DataFrame:
        """Factor ETF history from the cache; fetched (and cached) only where it is thin."""
        async with session_scope(self.ctx.database_url) as session:
            connection = await raw_connection(session)
            rows = await connection.fetch(
                "SELECT symbol, date, adj_close FROM market_data_cache "
                "WHERE symbol = ANY($1::text[]) AND date BETWEEN $2 AND $3",
                list(FACTOR_ETFS), start, end,
            )
        cached = pd.DataFrame([dict(r) for r in rows], columns=["symbol", "date", "adj_close"])
        sessions = max(len(sessions_between(start, end)), 1)
        counts = cached.groupby("symbol").size() if len(cached) else pd.Series(dtype=int)
        thin = [e for e in FACTOR_ETFS if counts.get(e, 0) < MIN_ETF_COVERAGE * sessions]
        if not thin:
            return cached.assign(from_cache=True)
        fetched = await self.provider.fetch_prices(thin, start, end)
        keep = cached[~cached["symbol"].isin(thin)].assign(from_cache=True)
        return pd.concat([keep, fetched.bars.assign(from_cache=False)], ignore_index=True)

    async def _exposures(self, symbol: str, bars: pd.DataFrame, etf_bars: pd.DataFrame,
                         latest: dt.date) -> pd.DataFrame:
        frame = pd.concat([bars[["symbol", "date", "adj_close"]],
                           etf_bars[["symbol", "date", "adj_close"]]], ignore_index=True)
        wide = frame.pivot_table(index="date", columns="symbol", values="adj_close",
                                 aggfunc="last")
        wide.index = pd.to_datetime(wide.index)
        returns = daily_returns(wide.astype(np.float64))
        dates = {latest}
        async with session_scope(self.ctx.database_url) as session:
            watermark = (await session.execute(
                text("SELECT max(batch_date) FROM symbol_batch_dates"))).scalar_one_or_none()
        if watermark is not None and pd.Timestamp(watermark) in returns.index:
            dates.add(watermark)
        pieces = [compute_exposures(returns, day, symbols=[symbol]).assign(calculation_date=day)
                  for day in sorted(dates)]
        return pd.concat(pieces, ignore_index=True)


async def upsert_prices(session: AsyncSession, bars: pd.DataFrame) -> None:
    """Idempotent bulk upsert of daily bars (one statement, unnest arrays)."""
    if "from_cache" in bars:
        bars = bars[~bars["from_cache"].fillna(False).astype(bool)]
    if bars.empty:
        return

    def column(name: str, kind: type) -> list:
        values = bars[name] if name in bars else pd.Series([None] * len(bars))
        return [None if pd.isna(v) else kind(v) for v in values]

    connection = await raw_connection(session)
    await connection.execute(
        """
        INSERT INTO market_data_cache (symbol, date, open, high, low, close, adj_close, volume,
                                       source)
        SELECT * FROM unnest($1::text[], $2::date[], $3::float8[], $4::float8[], $5::float8[],
                             $6::float8[], $7::float8[], $8::int8[], $9::text[])
        ON CONFLICT (symbol, date) DO UPDATE SET open = EXCLUDED.open, high = EXCLUDED.high,
            low = EXCLUDED.low, close = EXCLUDED.close, adj_close = EXCLUDED.adj_close,
            volume = EXCLUDED.volume, source = EXCLUDED.source, updated_at = now()
        """,
        column("symbol", str), [d for d in bars["date"]], column("open", float),
        column("high", float), column("low", float), column("close", float),
        column("adj_close", float), column("volume", int), column("source", str),
    )


async def upsert_profile(session: AsyncSession, profile: Profile, as_of: dt.date) -> None:
    await session.execute(
        text(
            """
            INSERT INTO company_profiles (symbol, name, sector, industry, exchange, currency,
                                          market_cap, beta, source, as_of)
            VALUES (:symbol, :name, :sector, :industry, :exchange, :currency, :market_cap,
                    :beta, :source, :as_of)
            ON CONFLICT (symbol) DO UPDATE SET name = EXCLUDED.name, sector = EXCLUDED.sector,
                industry = EXCLUDED.industry, exchange = EXCLUDED.exchange,
                currency = EXCLUDED.currency, market_cap = EXCLUDED.market_cap,
                beta = EXCLUDED.beta, source = EXCLUDED.source, as_of = EXCLUDED.as_of,
                updated_at = now()
            """
        ),
        {"symbol": profile.symbol.upper(), "name": profile.name, "sector": profile.sector,
         "industry": profile.industry, "exchange": profile.exchange,
         "currency": profile.currency, "market_cap": profile.market_cap, "beta": profile.beta,
         "source": profile.source, "as_of": as_of},
    )


async def seed_factor_definitions(session: AsyncSession) -> None:
    """The factor set of libs.common.factors, inserted if absent (before any exposure)."""
    rows = [
        (r.factor, r.factor.replace("_", " ").title(), model.name, model.method,
         r.long if r.short is None else f"{r.long}-{r.short}", model.window, model.min_obs,
         order)
        for order, (model, r) in enumerate(
            (m, reg) for m in FACTOR_MODELS for reg in m.regressors)
    ]
    connection = await raw_connection(session)
    await connection.executemany(
        "INSERT INTO factor_definitions (name, display_name, kind, method, regressor, "
        "window_days, min_obs, sort_order) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
        "ON CONFLICT (name) DO NOTHING",
        rows,
    )


async def write_exposures(session: AsyncSession, exposures: pd.DataFrame) -> None:
    if exposures.empty:
        return
    await seed_factor_definitions(session)
    connection = await raw_connection(session)
    await connection.execute(
        """
        INSERT INTO symbol_factor_exposures (symbol, factor_name, calculation_date, beta, r2,
                                             n_obs, quality)
        SELECT * FROM unnest($1::text[], $2::text[], $3::date[], $4::float8[], $5::float8[],
                             $6::int[], $7::text[])
        ON CONFLICT (symbol, factor_name, calculation_date) DO UPDATE SET beta = EXCLUDED.beta,
            r2 = EXCLUDED.r2, n_obs = EXCLUDED.n_obs, quality = EXCLUDED.quality
        """,
        list(exposures["symbol"]), list(exposures["factor"]),
        [pd.Timestamp(d).date() for d in exposures["calculation_date"]],
        [float(b) for b in exposures["beta"]],
        [None if pd.isna(r) else float(r) for r in exposures["r2"]],
        [int(n) for n in exposures["n_obs"]], list(exposures["quality"]),
    )
