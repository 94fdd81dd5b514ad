"""Market data providers behind one interface (``sample`` offline, ``yfinance`` real)."""

from libs.common.domain.symbols import provider_exclusion
from libs.common.market_data.base import (
    PRICE_COLUMNS,
    Fundamentals,
    FundamentalsResult,
    MarketDataProvider,
    PriceResult,
    Profile,
    ProfileResult,
    refuse_excluded,
)
from libs.common.market_data.factory import create_provider, get_provider

__all__ = [
    "PRICE_COLUMNS",
    "Fundamentals",
    "FundamentalsResult",
    "MarketDataProvider",
    "PriceResult",
    "Profile",
    "ProfileResult",
    "create_provider",
    "get_provider",
    "provider_exclusion",
    "refuse_excluded",
]
