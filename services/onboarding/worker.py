"""Onboarding worker: `symbol.onboard.requested` → history, profile, betas → `completed`.

One symbol per message; the messages of one pull are handled together and their vendor
calls coalesced (one call for all the symbols waiting), under the vendor's shared rate limit
and circuit breaker (libs/common/market_data/gate.py). The job tracker's partial unique index is the lock: a
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
import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy import text

from libs.common import market_store
from libs.common.bus import Delivery, RetryAfter
from libs.common.calendar import effective_trading_date, sessions_between
from libs.common.db import raw_connection, session_scope
from libs.common.domain.statuses import SETTLED_SYMBOL_STATUSES as SETTLED
from libs.common.domain.statuses import JobStatus, SymbolStatus
from libs.common.events import SymbolOnboardCompleted, SymbolOnboardRequested
from libs.common.factor_definitions import seed_factor_definitions
from libs.common.factors import FACTOR_ETFS, compute_exposures, daily_returns
from libs.common.jobs import Job, JobAlreadyRunning
from libs.common.market_data.base import MarketDataProvider
from libs.common.market_data.gate import CoalescingProvider, ProviderGate
from libs.common.onboarding import store
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
    """Handles `symbol.onboard.requested`, one job per symbol.

    The vendor calls of the jobs in flight are coalesced (`CoalescingProvider`: one call for
    every symbol waiting at that moment); ``gate`` is the vendor's rate limit and circuit
    breaker (the caller put it under ``provider``): while the circuit is open a job is not
    started but deferred (nak with the cool-down's delay), and never failed for it.
    """

    def __init__(self, ctx: ServiceContext, provider: MarketDataProvider,
                 gate: ProviderGate | None = None) -> None:
        self.ctx = ctx
        self.provider = CoalescingProvider(provider, max_symbols=ctx.settings.provider_batch_max)
        self.gate = gate

    def _circuit_wait(self) -> float:
        return self.gate.breaker.retry_after() if self.gate is not None else 0.0

    async def _defer_while_open(self, delivery: Delivery, symbol: str) -> None:
        """Nak with the cool-down's delay while deliveries remain; on the last one, hold the
        message (the consume loop keeps it alive) until the circuit lets a call through."""
        while (wait := self._circuit_wait()) > 0:
            if delivery.num_delivered < self.ctx.settings.max_deliver:
                raise RetryAfter(wait, f"provider circuit open: {symbol} deferred {wait:.1f}s")
            await asyncio.sleep(wait)

    async def handle(self, message: SymbolOnboardRequested, delivery: Delivery) -> None:
        symbol = message.symbol.upper()
        await self._defer_while_open(delivery, symbol)
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
            while True:
                try:
                    outcome = await self._onboard(symbol, job)
                    break
                except Exception as exc:
                    wait = self._circuit_wait()
                    if wait > 0 and last_try:
                        await asyncio.sleep(wait)  # the vendor failed, not the symbol: hold
                        continue
                    if not last_try:
                        # Close this attempt's job row so the next delivery starts at once.
                        await self.ctx.jobs.finish(
                            job, JobStatus.FAILED,
                            error=f"{type(exc).__name__}: {exc} (will retry)")
                        if wait > 0:
                            raise RetryAfter(wait, f"provider circuit open: {exc}") from exc
                        raise
                    outcome = FetchOutcome(SymbolStatus.FAILED, f"{type(exc).__name__}: {exc}")
                    break
            if outcome.status == SymbolStatus.FAILED and not outcome.recorded:
                async with session_scope(self.ctx.database_url) as session:
                    await store.settle_symbol(session, symbol, SymbolStatus.FAILED, outcome.reason)
                    await self.ctx.jobs.finish(job, JobStatus.FAILED, error=outcome.reason,
                                               session=session)
        except asyncio.CancelledError:
            beat.cancel()
            # Shutdown (SIGTERM): release the job row so the redelivery starts at once instead
            # of waiting for it to go stale; the bus naks the message.
            with contextlib.suppress(Exception):
                await self.ctx.jobs.finish(job, JobStatus.FAILED, error="interrupted by shutdown")
            raise
        except BaseException:
            beat.cancel()
            raise
        finally:
            self.ctx.jobs.abandon(job)  # settled, or left for a redelivery to take over
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
                return FetchOutcome(state or SymbolStatus.READY, "already onboarded", recorded=True)
        end = effective_trading_date(dt.datetime.now(dt.UTC))
        start = end - dt.timedelta(days=HISTORY_DAYS)

        await self.ctx.jobs.phase(job, "prices", total=1, unit="symbols")
        result = await self.provider.fetch_prices([symbol], start, end)
        bars = result.bars[result.bars["symbol"] == symbol] if len(result.bars) else result.bars
        if bars.empty:
            reason = result.failures.get(symbol) or "the market data provider has no prices"
            return FetchOutcome(SymbolStatus.FAILED, reason)
        etf_bars = await self._factor_etf_bars(start, end)

        await self.ctx.jobs.phase(job, "profile", total=1, unit="symbols")
        profiles = await self.provider.fetch_profiles([symbol], end)
        profile = next((p for p in profiles.profiles if p.symbol.upper() == symbol), None)

        await self.ctx.jobs.phase(job, "factors", total=1, unit="symbols")
        latest = max(bars["date"])
        exposures = await self._exposures(symbol, bars, etf_bars, latest)

        fetched = pd.concat([bars, etf_bars], ignore_index=True)
        if "from_cache" in fetched:  # factor ETF bars read from the cache are not written back
            fetched = fetched[~fetched["from_cache"].fillna(False).astype(bool)]
        async with session_scope(self.ctx.database_url) as session:
            await market_store.upsert_prices(session, fetched)
            if profile is not None:
                await market_store.upsert_profiles(
                    session, [dataclasses.replace(profile, symbol=symbol)], end)
            if not exposures.empty:
                await seed_factor_definitions(session)
                for day, betas in exposures.groupby("calculation_date", sort=True):
                    await market_store.write_symbol_betas(session, betas, day)
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
            await store.settle_symbol(session, symbol, SymbolStatus.READY, reason)
            await self.ctx.jobs.finish(job, result={"prices": len(bars), "latest": str(latest)},
                                       session=session)
        return FetchOutcome(SymbolStatus.READY, reason)

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
