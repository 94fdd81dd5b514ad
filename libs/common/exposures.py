"""Factor exposures of positions and portfolios (docs/design.md §7): pure, vectorised, no I/O.

A position inherits the betas of the symbol it moves with: its own symbol, or the underlying
for an option. Its weight is its exposure value over its portfolio's equity: the signed market
value, or for an option the dollar delta Δ × qty × 100 × underlying price (a long put weighs
negative, an expired option 0), so a short contributes with the opposite sign. The portfolio
exposure to a factor is Σ beta × weight over its positions, the dollar exposure Σ beta ×
exposure value. When equity is ≤ 0 the weights are measured against gross exposure instead
(the snapshot's `exposure_basis` says so). Positions without betas (private assets, cash,
symbols the factor model could not fit) contribute nothing; the priced ones among them are
listed (`missing_betas`) for the snapshot's data quality.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class ExposureResult:
    weights: pd.DataFrame  # position_id, portfolio_id, beta_symbol, exposure_value, weight
    positions: pd.DataFrame  # position_id, portfolio_id, factor_name, beta, weight, exposure_dollar
    portfolios: pd.DataFrame  # portfolio_id, factor_name, exposure, exposure_dollar
    missing_betas: pd.Series  # portfolio_id -> sorted symbols held (not carried) without betas


def beta_symbol(values: pd.DataFrame) -> pd.Series:
    """The symbol whose betas a position carries: the underlying for options."""
    underlying = values["underlying_symbol"].where(values["underlying_symbol"].notna(), None)
    return values["symbol"].where(~values["is_option"].astype(bool) | underlying.isna(), underlying)


def position_weights(values: pd.DataFrame, equity: pd.DataFrame) -> pd.DataFrame:
    """Held positions with their beta symbol and weight = exposure value / equity.

    `exposure_value` defaults to the market value when the rows have none (plain positions).
    """
    held = values.loc[values["is_active"].astype(bool)]
    exposure = held["exposure_value"] if "exposure_value" in held else held["market_value"]
    frame = pd.DataFrame(
        {
            "position_id": held["position_id"].to_numpy(),
            "portfolio_id": held["portfolio_id"].to_numpy(),
            "beta_symbol": beta_symbol(held).to_numpy(),
            "exposure_value": exposure.to_numpy(dtype="float64"),
        }
    )
    eq = equity.loc[:, ["portfolio_id", "equity"]].copy()
    eq["equity"] = pd.to_numeric(eq["equity"].astype("float64"), errors="coerce")
    frame = frame.merge(eq, on="portfolio_id", how="left")
    equity_values = frame.pop("equity").to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        frame["weight"] = np.where(
            equity_values != 0, frame["exposure_value"] / equity_values, np.nan
        )
    return frame[np.isfinite(frame["weight"])].reset_index(drop=True)


def compute_exposures(
    values: pd.DataFrame,
    betas: pd.DataFrame,
    equity: pd.DataFrame,
    *,
    include_positions: bool = True,
) -> ExposureResult:
    """Position and portfolio factor exposures.

    values: the position rows of `pnl.compute_refresh` (position_id, portfolio_id, symbol,
        underlying_symbol, is_option, is_active, market_value, exposure_value).
    betas: symbol, factor_name, beta (one row per symbol and factor, the date already chosen).
    equity: portfolio_id, equity (what weights are relative to: the snapshot's equity, or
        its gross exposure when equity <= 0 — `exposure_base_cents` / 100 of the snapshot).
    include_positions: build the long position x factor frame (the service leaves that
        expansion to the database, which joins `weights` with the same betas).

    The portfolio sums are a dense (positions x factors) product grouped by portfolio, so the
    cost is one pass over the positions whatever the number of factors.
    """
    weights = position_weights(values, equity)
    b = betas.loc[:, ["symbol", "factor_name", "beta"]].copy()
    b["beta"] = b["beta"].astype("float64")
    b = b[np.isfinite(b["beta"])]
    matrix = b.pivot_table(index="symbol", columns="factor_name", values="beta", aggfunc="last")
    factors = list(matrix.columns)
    rows = matrix.index.get_indexer(weights["beta_symbol"])
    known = rows >= 0
    position_betas = np.full((len(weights), len(factors)), np.nan)
    position_betas[known] = matrix.to_numpy()[rows[known]]
    w = weights["weight"].to_numpy()[:, None]
    mv = weights["exposure_value"].to_numpy()[:, None]
    has = ~np.isnan(position_betas)
    by = weights["portfolio_id"].to_numpy()
    exposure = pd.DataFrame(np.where(has, position_betas * w, 0.0), columns=factors).groupby(by).sum()
    dollars = pd.DataFrame(np.where(has, position_betas * mv, 0.0), columns=factors).groupby(by).sum()
    present = pd.DataFrame(has, columns=factors).groupby(by).any()
    portfolio_rows = (
        pd.DataFrame(
            {
                "exposure": exposure.stack(),
                "exposure_dollar": dollars.stack(),
                "present": present.stack(),
            }
        )
        .rename_axis(["portfolio_id", "factor_name"])
        .reset_index()
    )
    portfolio_rows = portfolio_rows[portfolio_rows["present"].astype(bool)].drop(columns="present")
    portfolio_rows = portfolio_rows.sort_values(["portfolio_id", "factor_name"]).reset_index(drop=True)

    position_rows = pd.DataFrame(
        columns=["position_id", "portfolio_id", "factor_name", "beta", "weight", "exposure_dollar"]
    )
    if include_positions:
        long = weights.merge(b, left_on="beta_symbol", right_on="symbol", how="inner")
        long["exposure_dollar"] = long["beta"] * long["exposure_value"]
        position_rows = long.loc[
            :, ["position_id", "portfolio_id", "factor_name", "beta", "weight", "exposure_dollar"]
        ].reset_index(drop=True)
    return ExposureResult(
        weights=weights,
        positions=position_rows,
        portfolios=portfolio_rows,
        missing_betas=_missing_betas(values, set(matrix.index)),
    )


def _missing_betas(values: pd.DataFrame, known: set[str]) -> pd.Series:
    """Per portfolio: symbols of held, priced (not carried) positions that have no betas."""
    held = values["is_active"].astype(bool)
    if "is_carried" in values:
        held &= ~values["is_carried"].astype(bool)
    frame = pd.DataFrame(
        {"portfolio_id": values.loc[held, "portfolio_id"], "symbol": beta_symbol(values.loc[held])}
    ).dropna()
    frame = frame[~frame["symbol"].isin(known)].drop_duplicates()
    return frame.sort_values(["portfolio_id", "symbol"]).groupby("portfolio_id")["symbol"].agg(list)


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
