"""Factor exposures of positions and portfolios (DESIGN §7): pure, vectorised, no I/O.

A position inherits the betas of the symbol it moves with: its own symbol, or the underlying
for an option. Its weight is its signed market value over its portfolio's equity, so a short
contributes with the opposite sign; the portfolio exposure to a factor is Σ beta × weight
over its positions, and the dollar exposure Σ beta × market value. Positions without betas
(private assets, cash, symbols the factor model could not fit) contribute nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class ExposureResult:
    positions: pd.DataFrame  # position_id, portfolio_id, factor_name, beta, weight, exposure_dollar
    portfolios: pd.DataFrame  # portfolio_id, factor_name, exposure, exposure_dollar


def beta_symbol(values: pd.DataFrame) -> pd.Series:
    """The symbol whose betas a position carries: the underlying for options."""
    underlying = values["underlying_symbol"].where(values["underlying_symbol"].notna(), None)
    return values["symbol"].where(~values["is_option"].astype(bool) | underlying.isna(), underlying)


def compute_exposures(
    values: pd.DataFrame, betas: pd.DataFrame, equity: pd.DataFrame
) -> ExposureResult:
    """Position and portfolio factor exposures.

    values: the position rows of `pnl.compute_refresh` (position_id, portfolio_id, symbol,
        underlying_symbol, is_option, is_active, market_value).
    betas: symbol, factor_name, beta (one row per symbol and factor, the date already chosen).
    equity: portfolio_id, equity (the snapshot's equity; weights are relative to it).
    """
    held = values.loc[values["is_active"].astype(bool)]
    held = pd.DataFrame(
        {
            "position_id": held["position_id"].to_numpy(),
            "portfolio_id": held["portfolio_id"].to_numpy(),
            "beta_symbol": beta_symbol(held).to_numpy(),
            "market_value": held["market_value"].to_numpy(dtype="float64"),
        }
    )
    eq = equity.loc[:, ["portfolio_id", "equity"]].copy()
    eq["equity"] = pd.to_numeric(eq["equity"].astype("float64"), errors="coerce")
    held = held.merge(eq, on="portfolio_id", how="left")
    with np.errstate(divide="ignore", invalid="ignore"):
        held["weight"] = np.where(
            held["equity"].to_numpy() != 0, held["market_value"] / held["equity"], np.nan
        )
    held = held[np.isfinite(held["weight"])]

    b = betas.loc[:, ["symbol", "factor_name", "beta"]]
    b = b[np.isfinite(b["beta"].astype("float64"))]
    rows = held.merge(b, left_on="beta_symbol", right_on="symbol", how="inner")
    rows["beta"] = rows["beta"].astype("float64")
    rows["exposure"] = rows["beta"] * rows["weight"]
    rows["exposure_dollar"] = rows["beta"] * rows["market_value"]
    position_rows = rows.loc[
        :, ["position_id", "portfolio_id", "factor_name", "beta", "weight", "exposure_dollar"]
    ].reset_index(drop=True)
    portfolio_rows = (
        rows.groupby(["portfolio_id", "factor_name"], sort=True)[["exposure", "exposure_dollar"]]
        .sum()
        .reset_index()
    )
    return ExposureResult(positions=position_rows, portfolios=portfolio_rows)


def dollars(values: pd.Series) -> list[Decimal]:
    """Float dollar amounts as Decimal cents for Numeric columns."""
    cents = np.round(values.to_numpy(dtype="float64") * 100.0)
    return [Decimal(int(c)).scaleb(-2) for c in cents]


def exposure_records(result: ExposureResult) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(position rows, portfolio rows) with dollar exposures as Decimal."""
    pos = result.positions
    port = result.portfolios
    pos_records = [
        {**rec, "exposure_dollar": d}
        for rec, d in zip(pos.to_dict("records"), dollars(pos["exposure_dollar"]), strict=True)
    ]
    port_records = [
        {**rec, "exposure_dollar": d}
        for rec, d in zip(port.to_dict("records"), dollars(port["exposure_dollar"]), strict=True)
    ]
    return pos_records, port_records
