"""The provider guard: hangs, errors and garbage become per-symbol failures; good symbols pass."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from libs.common.config import Settings
from libs.common.market_data import get_provider
from libs.common.market_data.faults import FaultInjectingProvider, parse_faults
from libs.common.market_data.guarded import GuardedProvider
from libs.common.market_data.sample import SampleProvider

START, END = dt.date(2024, 1, 2), dt.date(2024, 3, 28)


def guarded(spec: str, timeout: float = 2.0) -> GuardedProvider:
    return GuardedProvider(
        FaultInjectingProvider(SampleProvider(), parse_faults(spec)), call_timeout_seconds=timeout
    )


async def test_a_hanging_symbol_times_out_alone_and_the_chunk_survives() -> None:
    await SampleProvider().fetch_prices(["AAPL", "MSFT", "KO"], START, END)  # warm its caches
    result = await guarded("MSFT:timeout").fetch_prices(["AAPL", "MSFT", "KO"], START, END)
    assert set(result.bars["symbol"]) == {"AAPL", "KO"}
    assert result.failures == {"MSFT": "provider timed out after 2s"}


async def test_an_erroring_symbol_is_isolated_with_its_reason() -> None:
    result = await guarded("KO:error").fetch_profiles(["AAPL", "KO"], END)
    assert [p.symbol for p in result.profiles] == ["AAPL"]
    assert "injected provider error" in result.failures["KO"]


async def test_garbage_prices_never_pass_and_the_symbol_is_dropped_whole() -> None:
    result = await guarded("AAPL:garbage").fetch_prices(["AAPL", "KO"], START, END)
    assert set(result.bars["symbol"]) == {"KO"}
    assert "invalid prices" in result.failures["AAPL"]
    assert np.isfinite(result.bars["adj_close"].astype(float)).all()
    assert (result.bars["adj_close"].astype(float) > 0).all()


async def test_when_every_symbol_fails_alone_too_the_call_fails_loudly() -> None:
    with pytest.raises(ConnectionError):
        await guarded("AAPL:error,KO:error").fetch_prices(["AAPL", "KO"], START, END)


async def test_clean_provider_is_unchanged_by_the_guard() -> None:
    plain = await SampleProvider().fetch_prices(["AAPL", "KO"], START, END)
    result = await guarded("").fetch_prices(["AAPL", "KO"], START, END)
    assert result.failures == plain.failures
    assert result.bars.equals(plain.bars)


def test_factory_always_guards_and_injects_only_when_configured() -> None:
    provider = get_provider(Settings(MARKET_DATA_PROVIDER="sample"))
    assert isinstance(provider, GuardedProvider) and isinstance(provider.inner, SampleProvider)
    chaos = get_provider(Settings(SIGMABATCH_PROVIDER_FAULTS="XLK:garbage"))
    assert isinstance(chaos.inner, FaultInjectingProvider)
    with pytest.raises(ValueError, match="kind must be one of"):
        parse_faults("XLK:explode")
