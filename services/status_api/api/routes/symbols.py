"""Market data of one symbol: daily prices and factor betas."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import HTTPException, Path

from services.status_api import queries
from services.status_api.api.deps import CallerDep, SessionDep
from services.status_api.api.responses import resource_router
from services.status_api.schemas import ErrorResponse, PriceOut, SymbolFactorOut

router = resource_router("/symbols", "symbols")

Symbol = Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]{1,32}$", description="Ticker, e.g. AAPL")]


def _clean(symbol: str) -> str:
    return symbol.strip().upper()


@router.get("/{symbol}/prices", response_model=list[PriceOut],
            responses={404: {"model": ErrorResponse, "description": "Symbol never priced."}},
            summary="Daily prices (close, adjusted close, source) in a date range")
async def get_prices(session: SessionDep, caller: CallerDep, symbol: Symbol,
                     start: dt.date | None = None,
                     end: dt.date | None = None) -> list[dict[str, Any]]:
    clean = _clean(symbol)
    rows = await queries.prices(session, clean, start, end)
    if not rows and not await queries.symbol_known(session, clean):
        raise HTTPException(404, detail=f"No prices for {clean}: the symbol is unknown.")
    return rows


@router.get("/{symbol}/factors", response_model=list[SymbolFactorOut],
            responses={404: {"model": ErrorResponse,
                             "description": "Symbol unknown, or no betas on or before the date "
                                            "(the detail says which)."}},
            summary="Factor betas on a date (default: the latest; else the latest before it)")
async def get_symbol_factors(session: SessionDep, caller: CallerDep, symbol: Symbol,
                             date: dt.date | None = None) -> list[dict[str, Any]]:
    clean = _clean(symbol)
    rows = await queries.symbol_factors(session, clean, date)
    if not rows:
        if not await queries.symbol_known(session, clean):
            raise HTTPException(404, detail=f"No factor betas for {clean}: the symbol is unknown.")
        when = f"on or before {date}" if date else "yet"
        raise HTTPException(404, detail=f"No factor betas for {clean} {when}: the nightly batch "
                                        "computes them once a symbol has enough price history.")
    return rows
