"""Factor aggregation: position betas (options via the underlying) and Σ beta × weight."""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal

import pandas as pd
import pytest

from libs.common import pnl
from libs.common.exposures import compute_exposures, exposure_records

BETAS = pd.DataFrame(
    [
        ("AAPL", "market", 1.2),
        ("AAPL", "size", 0.5),
        ("MSFT", "market", 0.8),
        ("SPY", "market", 1.0),
    ],
    columns=["symbol", "factor_name", "beta"],
)


def values_row(pid: str, symbol: str, mv: float, *, portfolio: str = "P", option_on: str | None = None,
               active: bool = True) -> dict[str, object]:
    return {
        "position_id": pid,
        "portfolio_id": portfolio,
        "symbol": symbol,
        "underlying_symbol": option_on,
        "is_option": option_on is not None,
        "is_active": active,
        "market_value": mv,
    }


def test_portfolio_exposure_is_sum_of_beta_times_weight() -> None:
    values = pd.DataFrame([
        values_row("long", "AAPL", 5_000.0),
        values_row("short", "MSFT", -2_000.0),
        values_row("call", "SPY240315C00450000", 1_000.0, option_on="SPY"),
        values_row("pe", "PRIVATE_FUND_A", 50_000.0),
        values_row("gone", "AAPL", 0.0, active=False),
    ])
    equity = pd.DataFrame({"portfolio_id": ["P"], "equity": [Decimal("10000.00")]})
    result = compute_exposures(values, BETAS, equity)

    port = result.portfolios.set_index("factor_name")
    # 1.2 * 0.5 + 0.8 * -0.2 + 1.0 * 0.1
    assert port.loc["market", "exposure"] == pytest.approx(0.54)
    assert port.loc["market", "exposure_dollar"] == pytest.approx(5_400.0)
    assert port.loc["size", "exposure"] == pytest.approx(0.25)

    pos = result.positions.set_index(["position_id", "factor_name"])
    assert pos.loc[("call", "market"), "beta"] == 1.0  # the underlying's beta
    assert pos.loc[("call", "market"), "weight"] == pytest.approx(0.1)
    assert pos.loc[("short", "market"), "weight"] == pytest.approx(-0.2)
    assert "pe" not in result.positions["position_id"].to_list()  # no betas, no rows
    assert "gone" not in result.positions["position_id"].to_list()

    pos_recs, port_recs = exposure_records(result)
    by_factor = {r["factor_name"]: r for r in port_recs}
    assert by_factor["market"]["exposure_dollar"] == Decimal("5400.00")
    assert all(isinstance(r["exposure_dollar"], Decimal) for r in pos_recs)


def test_portfolios_are_aggregated_separately_and_zero_equity_is_skipped() -> None:
    values = pd.DataFrame([
        values_row("a", "AAPL", 1_000.0, portfolio="P"),
        values_row("b", "AAPL", 3_000.0, portfolio="Q"),
        values_row("c", "AAPL", 3_000.0, portfolio="Z"),
    ])
    equity = pd.DataFrame({"portfolio_id": ["P", "Q", "Z"], "equity": [2_000.0, 6_000.0, 0.0]})
    port = compute_exposures(values, BETAS, equity).portfolios
    market = port[port["factor_name"] == "market"].set_index("portfolio_id")["exposure"]
    assert market.to_dict() == {"P": pytest.approx(0.6), "Q": pytest.approx(0.6)}


def test_exposures_from_pnl_output() -> None:
    day = dt.date(2024, 3, 5)
    positions = pd.DataFrame([
        {"position_id": "s", "portfolio_id": "P", "symbol": "MSFT", "quantity": -10,
         "entry_price": 400.0, "entry_date": day, "exit_date": None, "exit_price": None,
         "investment_class": "PUBLIC"},
        {"position_id": "o", "portfolio_id": "P", "symbol": "SPY_C500", "quantity": 1,
         "entry_price": 5.0, "entry_date": day, "exit_date": None, "exit_price": None,
         "investment_class": "OPTIONS", "underlying_symbol": "SPY", "strike_price": 500.0,
         "expiration_date": dt.date(2024, 6, 21), "option_type": "CALL"},
    ])
    prices = pd.DataFrame({"symbol": ["MSFT", "SPY", "SPY_C500"], "date": [day] * 3,
                           "price": [400.0, 510.0, 20.0]})
    ports = pd.DataFrame({"portfolio_id": ["P"], "equity_balance": [Decimal("20000")]})
    refreshed = pnl.compute_refresh(day, ports, positions, prices)
    equity = pd.DataFrame({"portfolio_id": ["P"], "equity": [20_000.0]})
    result = compute_exposures(refreshed.positions, BETAS, equity)
    market = result.portfolios.set_index("factor_name").loc["market"]
    # MSFT: 0.8 * (-4000 / 20000); the option is delta-adjusted, not premium-weighted:
    # Δ × 1 × 100 × 510 / 20000 × 1.0, Δ = N(d1) with the default inputs (r 4%, vol 30%)
    years = (dt.date(2024, 6, 21) - day).days / 365
    d1 = (math.log(510 / 500) + (0.04 + 0.3**2 / 2) * years) / (0.3 * math.sqrt(years))
    delta = 0.5 * (1 + math.erf(d1 / math.sqrt(2)))
    assert market["exposure"] == pytest.approx(-0.16 + delta * 100 * 510 / 20_000, rel=1e-9)
    option = refreshed.positions.set_index("position_id").loc["o"]
    assert option["market_value"] == 2_000.0  # the premium value stays for P&L
