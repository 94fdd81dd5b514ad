"""Choose the market data provider from settings (MARKET_DATA_PROVIDER), always guarded."""

from __future__ import annotations

from libs.common.config import Settings, get_settings
from libs.common.market_data.base import MarketDataProvider
from libs.common.market_data.gate import GatedProvider, ProviderGate
from libs.common.market_data.guarded import GuardedProvider


def get_provider(settings: Settings | None = None, *, gate: ProviderGate | None = None,
                 raise_transient_alone: bool = False) -> MarketDataProvider:
    """The vendor behind the guard; with ``gate``, every call that reaches the vendor (the
    guard's per-symbol retries too) takes a rate-limit token and counts for the breaker."""
    settings = settings or get_settings()
    inner: MarketDataProvider
    if settings.market_data_provider == "yfinance":
        from libs.common.market_data.yfinance_provider import YFinanceProvider

        inner = YFinanceProvider(rate_per_second=settings.provider_rate_per_second)
    else:
        from libs.common.market_data.sample import SampleProvider
        from libs.common.market_data.sample_anchors import first_entry_anchors

        # Synthetic series levelled to the first upload's entry price (read from the database).
        inner = SampleProvider(anchor_source=first_entry_anchors(settings.database_url)
                               if settings.database_url else None)
    if (settings.provider_faults or settings.provider_latency_seconds
            or settings.provider_call_log):
        from libs.common.market_data.faults import FaultInjectingProvider, parse_faults

        inner = FaultInjectingProvider(inner, parse_faults(settings.provider_faults),
                                       latency_seconds=settings.provider_latency_seconds,
                                       call_log=settings.provider_call_log)
    if gate is not None:
        inner = GatedProvider(inner, gate)
    return GuardedProvider(inner, call_timeout_seconds=settings.provider_timeout_seconds,
                           raise_transient_alone=raise_transient_alone)


# The name the onboarding service imports.
create_provider = get_provider
