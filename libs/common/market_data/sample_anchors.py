"""Where the sample provider levels a synthetic series: the first upload's entry price.

For each symbol, the PUBLIC position created first (ties: lowest CSV line) gives (entry date,
entry price): a price a user actually paid on that date, and one that never changes once set,
so onboarding and every later nightly batch level the series identically.
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import text

from libs.common.db import session_scope
from libs.common.domain.symbols import InvestmentClass
from libs.common.market_data.sample import Anchors, AnchorSource


def first_entry_anchors(database_url: str) -> AnchorSource:
    async def anchors(symbols: list[str]) -> Anchors:
        async with session_scope(database_url) as session:
            rows = await session.execute(
                text(
                    "SELECT DISTINCT ON (symbol) symbol, entry_date, entry_price FROM positions "
                    "WHERE symbol = ANY(:symbols) AND investment_class = :public "
                    "ORDER BY symbol, created_at, source_row NULLS LAST, id"
                ),
                {"symbols": symbols, "public": InvestmentClass.PUBLIC.value},
            )
            out: dict[str, tuple[date, float]] = {
                r.symbol: (r.entry_date, float(r.entry_price)) for r in rows
            }
        return out

    return anchors
