"""Choose the market data provider from settings (MARKET_DATA_PROVIDER), always guarded."""

from __future__ import annotations

from libs.common.config import Settings, get_settings
from libs.common.market_data.base import MarketDataProvider
from libs.common.market_data.guarded import GuardedProvider


def get_provider(settings: Settings | None = None) -> MarketDataProvider:
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
    if settings.provider_faults:
        from libs.common.market_data.faults import FaultInjectingProvider, parse_faults

        inner = FaultInjectingProvider(inner, parse_faults(settings.provider_faults))
    return GuardedProvider(inner, call_timeout_seconds=settings.provider_timeout_seconds)


# The name the onboarding service imports.
create_provider = get_provider
