"""Choose the market data provider from settings (MARKET_DATA_PROVIDER)."""

from __future__ import annotations

from libs.common.config import Settings, get_settings
from libs.common.market_data.base import MarketDataProvider


def get_provider(settings: Settings | None = None) -> MarketDataProvider:
    settings = settings or get_settings()
    if settings.market_data_provider == "yfinance":
        from libs.common.market_data.yfinance_provider import YFinanceProvider

        return YFinanceProvider(rate_per_second=settings.provider_rate_per_second)
    from libs.common.market_data.sample import SampleProvider

    return SampleProvider()


# The name the onboarding service imports.
create_provider = get_provider
