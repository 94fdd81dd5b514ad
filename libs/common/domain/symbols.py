"""Symbols and investment classes: which positions are priced from market data, and how.

The one place for these rules; the CSV parser, P&L, market data providers, symbol_batch and
onboarding all ask here (docs/design.md §5, §7, §8).

* An explicit investment class always wins over a name heuristic: ``REIT`` or ``FUND``
  uploaded as PUBLIC is a listed ticker and is fetched; the name markers below only choose a
  class when the upload leaves it blank.
* Never sent to a provider, whatever the class: PRIVATE assets, names containing ``_``
  (synthetic/internal, e.g. ``PRIVATE_FUND_A``, ``SPY_C450_20240315``), cash and money-market
  sweep funds, OCC option contracts (priced from their underlying).
* Carried at entry (or manual) value with no daily P&L: PRIVATE assets, cash subtypes, any
  non-option position whose symbol never reaches a provider, and positions with a manual value.
"""

from __future__ import annotations

import re
from enum import StrEnum

import pandas as pd


class InvestmentClass(StrEnum):
    PUBLIC = "PUBLIC"
    OPTIONS = "OPTIONS"
    PRIVATE = "PRIVATE"


VALID_SUBTYPES: dict[InvestmentClass, tuple[str, ...]] = {
    InvestmentClass.PUBLIC: ("STOCK", "ETF", "MUTUAL_FUND", "BOND", "CASH"),
    InvestmentClass.OPTIONS: ("CALL", "PUT"),
    InvestmentClass.PRIVATE: (
        "PRIVATE_EQUITY", "VENTURE_CAPITAL", "HEDGE_FUND", "PRIVATE_REIT", "REAL_ESTATE",
        "CRYPTOCURRENCY", "CRYPTO", "ART", "MONEY_MARKET", "TREASURY_BILLS", "CASH",
        "COMMODITY", "OTHER",
    ),
}

#: Subtypes with no market data of their own: carried at entry (or manual) value.
CARRIED_SUBTYPES = frozenset({"CASH", "MONEY_MARKET"})

#: Name markers of private / alternative holdings; used ONLY to detect the class of a row
#: that leaves Investment Class blank (an explicit class beats them).
PRIVATE_MARKERS = (
    "PRIVATE", "FUND", "_VC_", "_PE_", "REIT", "SIGMA", "HOME_", "RENTAL_", "ART_", "CRYPTO_",
    "TREASURY", "MONEY_MARKET", "FO_",
)

#: Cash by name; money-market sweep funds (SPAXX, FDRXX, VMFXX ...) match MONEY_MARKET_FUND.
CASH_NAMES = frozenset({"CASH", "USD", "CASH_USD", "MONEY_MARKET"})
MONEY_MARKET_FUND = re.compile(r"^[A-Z]{3}XX$")
#: OCC option contract symbols, e.g. AAPL250815P00200000.
OCC_SYMBOL = re.compile(r"^(?P<root>[A-Z]{1,6})(?P<expiry>\d{6})(?P<cp>[CP])(?P<strike>\d{8})$")

REASON_PRIVATE = "private asset"
REASON_SYNTHETIC = "synthetic or private symbol"
REASON_CASH = "cash or money market"
REASON_OPTION = "option contract (priced from its underlying)"
REASON_EMPTY = "empty symbol"


def is_cash_symbol(symbol: str) -> bool:
    """Cash and money-market sweep funds: held at their value, never priced by a provider."""
    sym = symbol.strip().upper()
    return sym in CASH_NAMES or bool(MONEY_MARKET_FUND.match(sym))


def provider_exclusion(symbol: str, investment_class: str | None = None) -> str | None:
    """Why ``symbol`` must never be sent to a market data provider, or None if it may."""
    sym = symbol.strip().upper()
    if (investment_class or "").upper() == InvestmentClass.PRIVATE:
        return REASON_PRIVATE
    if "_" in sym:
        return REASON_SYNTHETIC
    if is_cash_symbol(sym):
        return REASON_CASH
    if OCC_SYMBOL.match(sym):
        return REASON_OPTION
    if not sym:
        return REASON_EMPTY
    return None


def detect_investment_class(symbol: str, has_option_fields: bool) -> InvestmentClass:
    """The class of an upload row that leaves Investment Class blank."""
    sym = symbol.upper()
    if has_option_fields or OCC_SYMBOL.match(sym):
        return InvestmentClass.OPTIONS
    if sym and not is_cash_symbol(sym) and (
        "_" in sym or any(marker in sym for marker in PRIVATE_MARKERS)
    ):
        return InvestmentClass.PRIVATE
    return InvestmentClass.PUBLIC


def market_data_symbol(
    symbol: str,
    investment_class: str,
    investment_subtype: str | None = None,
    underlying_symbol: str | None = None,
) -> str | None:
    """The symbol whose price history a position needs; None if it needs none.

    Options are valued from their underlying; carried assets need nothing.
    """
    if investment_class == InvestmentClass.OPTIONS:
        return underlying_symbol or None
    if (investment_subtype or "").upper() in CARRIED_SUBTYPES:
        return None
    if provider_exclusion(symbol, investment_class) is not None:
        return None
    return symbol.strip().upper()


def carried_mask(
    symbol: pd.Series,
    investment_class: pd.Series,
    investment_subtype: pd.Series,
    has_manual_value: pd.Series,
) -> pd.Series:
    """Vectorised: positions carried at entry/manual value (the rule of `market_data_symbol`).

    Inputs are upper-case strings ("" for missing); options are never carried (they are
    priced from the underlying) unless given a manual value or classed PRIVATE.
    """
    is_option = investment_class.eq(InvestmentClass.OPTIONS)
    excluded = (
        symbol.str.contains("_", regex=False)
        | symbol.isin(CASH_NAMES)
        | symbol.str.match(MONEY_MARKET_FUND.pattern)
        | symbol.str.match(OCC_SYMBOL.pattern)
        | symbol.eq("")
    )
    return (
        investment_class.eq(InvestmentClass.PRIVATE)
        | investment_subtype.isin(CARRIED_SUBTYPES)
        | (excluded & ~is_option)
        | has_manual_value
    )
