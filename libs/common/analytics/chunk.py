"""All analytics of one chunk of portfolios on one date, from the rows the refresh valued.

`compute_analytics` takes the position rows of `pnl.compute_refresh` (the same marks and
model inputs as the snapshot), each portfolio's equity, and the as-of inputs (daily returns
up to the date only, betas, company profiles, scenarios) and returns frames ready to write:
position Greeks, portfolio risk rows, correlation rows and stress rows. No look-ahead: the
caller passes returns whose last row is at or before the date, and every window is cut from
the end of that frame.

Option Greeks come from `libs.common.domain.options.black_scholes_greeks` with the inputs
of the mark (underlying price, strike, years, rate, volatility recorded by the P&L for a
model price; for an option quoted in the market the same inputs are formed the same way:
the underlying's last close and its realised volatility, `pnl.realised_volatility`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from libs.common import pnl
from libs.common.analytics import correlation as corr_mod
from libs.common.analytics import risk, stress
from libs.common.domain.options import (
    OPTION_MULTIPLIER,
    black_scholes_greeks,
    delta_dollars,
    gamma_dollars,
)
from libs.common.factors import daily_returns

GREEK_COLUMNS = ["delta", "gamma", "theta", "vega", "rho", "delta_dollars", "gamma_dollars"]
GREEK_FRAME_COLUMNS = [
    "position_id", "portfolio_id", "underlying_symbol", *GREEK_COLUMNS, "gamma_units", "units",
    "underlying_price", "strike", "years", "volatility", "rate",
]


@dataclass(frozen=True)
class AnalyticsInputs:
    """As-of inputs beyond the refresh's own: everything dated on or before the date."""

    closes: pd.DataFrame  # wide adjusted closes, index sessions ≤ date ascending, cols symbols
    profiles: pd.DataFrame  # symbol, sector, beta
    scenarios: pd.DataFrame  # scenario_id, version, name, category, shocks (dict)
    betas: pd.DataFrame  # symbol, factor_name, beta (latest ≤ date)


@dataclass(frozen=True)
class AnalyticsResult:
    greeks: pd.DataFrame  # one row per active option position
    portfolio_greeks: pd.DataFrame  # portfolio_id, delta, gamma, theta, vega, rho, ...
    risk: pd.DataFrame  # one row per portfolio
    sectors: dict[str, list[dict[str, Any]]]  # portfolio_id -> [{sector, net_weight, gross_weight}]
    unclassified: dict[str, list[str]]
    correlations: corr_mod.CorrelationResult
    stress: stress.StressResult


def option_greeks(values: pd.DataFrame, closes: pd.DataFrame, params: pnl.PricingParams) -> pd.DataFrame:
    """Greeks of the active option positions, per unit and per position (× qty × 100).

    Units: theta per calendar day, vega per vol point (0.01), rho per rate point (0.01);
    delta_dollars = Δ × qty × 100 × S; gamma_dollars = Γ × qty × 100 × S² / 100, the change
    of delta_dollars for a 1 % move of the underlying.
    """
    opts = values[values["is_option"].astype(bool) & values["is_active"].astype(bool)].copy()
    if opts.empty:
        return pd.DataFrame(
            {c: pd.Series(dtype="float64") for c in GREEK_FRAME_COLUMNS}
        ).astype({"position_id": object, "portfolio_id": object, "underlying_symbol": object})
    # Copies: filled in place below (pandas may hand out read-only views of its columns).
    spot = opts["underlying_price"].to_numpy(dtype="float64", copy=True)
    years = opts["model_years"].to_numpy(dtype="float64", copy=True)
    vol = opts["model_volatility"].to_numpy(dtype="float64", copy=True)
    rate = opts["model_rate"].to_numpy(dtype="float64", copy=True)
    missing = np.isnan(spot)
    if missing.any():
        # A quoted option: the inputs the model would have used on this date.
        sub = opts[missing]
        last = closes.ffill().iloc[-1] if len(closes) else pd.Series(dtype="float64")
        spot[missing] = sub["underlying_symbol"].map(last).to_numpy(dtype="float64")
        day = closes.index[-1] if len(closes) else pd.NaT
        long = closes.iloc[-(params.vol_window + 1):].stack().rename("price").reset_index()
        long.columns = ["date", "symbol", "price"]
        vols = pnl.realised_volatility(long, params)
        latest = vols.sort_values("date").drop_duplicates("symbol", keep="last").set_index(
            "symbol")["volatility"]
        v = sub["underlying_symbol"].map(latest).to_numpy(dtype="float64")
        vol[missing] = np.where(np.isnan(v), params.default_volatility, v)
        expiry = pd.to_datetime(sub["expiration_date"]) if "expiration_date" in sub else None
        if expiry is not None:
            years[missing] = np.maximum(
                ((expiry - day) / pd.Timedelta(days=1)).to_numpy(dtype="float64") / 365.0, 0.0)
        rate[missing] = params.risk_free_rate
    strike = opts["strike_price"].to_numpy(dtype="float64")
    is_call = opts["option_type"].eq("CALL").to_numpy()
    g = black_scholes_greeks(spot, strike, years, rate, vol, is_call)
    quantity = opts["quantity"].to_numpy(dtype="float64")
    units = quantity * OPTION_MULTIPLIER
    return pd.DataFrame(
        {
            "position_id": opts["position_id"].to_numpy(),
            "portfolio_id": opts["portfolio_id"].astype(str).to_numpy(),
            "underlying_symbol": opts["underlying_symbol"].to_numpy(),
            "delta": g.delta,
            "gamma": g.gamma,
            "theta": g.theta_per_day,
            "vega": g.vega_per_pct,
            "rho": g.rho_per_pct,
            "delta_dollars": delta_dollars(g.delta, quantity, spot),
            "gamma_dollars": gamma_dollars(g.gamma, quantity, spot),
            "gamma_units": g.gamma * units,
            "units": units,
            "underlying_price": spot,
            "strike": strike,
            "years": years,
            "volatility": vol,
            "rate": rate,
        }
    )


def holdings_frame(values: pd.DataFrame, greeks: pd.DataFrame) -> pd.DataFrame:
    """Held positions with the symbol they move with and their dollar exposure to it."""
    held = values[values["is_active"].astype(bool)]
    is_option = held["is_option"].astype(bool).to_numpy()
    carried = held["price_source"].eq(pnl.SOURCE_CARRIED).to_numpy()
    frame = pd.DataFrame(
        {
            "portfolio_id": held["portfolio_id"].astype(str).to_numpy(),
            "position_id": held["position_id"].to_numpy(),
            "symbol": held["symbol"].to_numpy(),
            "risk_symbol": np.where(
                carried, None, np.where(is_option, held["underlying_symbol"], held["symbol"])
            ),
            "market_value": held["market_value"].to_numpy(dtype="float64"),
            "exposure": held["market_value"].to_numpy(dtype="float64"),
            "is_public": ~is_option & ~carried,
        }
    )
    frame.loc[carried, "exposure"] = 0.0
    if len(greeks):
        g = greeks.set_index("position_id")
        rows = pd.Index(g.index).get_indexer(frame["position_id"])
        opt = rows >= 0
        frame.loc[opt, "exposure"] = np.nan_to_num(g["delta_dollars"].to_numpy()[rows[opt]])
        frame["gamma_units"] = np.nan
        frame["spot"] = np.nan
        frame.loc[opt, "gamma_units"] = g["gamma_units"].to_numpy()[rows[opt]]
        frame.loc[opt, "spot"] = g["underlying_price"].to_numpy()[rows[opt]]
    frame.loc[is_option & (frame["exposure"].isna()), "exposure"] = 0.0
    return frame


def compute_analytics(
    values: pd.DataFrame,
    equity: pd.Series,
    inputs: AnalyticsInputs,
    params: pnl.PricingParams,
) -> AnalyticsResult:
    """Greeks, risk, correlations and stress for every portfolio in ``equity``'s index."""
    closes = inputs.closes
    if risk.MARKET_SYMBOL in closes.columns and closes[risk.MARKET_SYMBOL].notna().any():
        # The session axis is the market's, not whatever other symbols of the chunk traded,
        # so a portfolio's numbers do not depend on which portfolios share its chunk.
        closes = closes[closes[risk.MARKET_SYMBOL].notna()]
    else:
        closes = closes[closes.notna().any(axis=1)]
    returns = daily_returns(closes)
    greeks = option_greeks(values, inputs.closes, params)
    holdings = holdings_frame(values, greeks)
    book = risk.make_book(holdings, equity)
    ids = book.portfolio_ids

    series = risk.portfolio_returns(book, returns.iloc[-risk.HISTORY_SESSIONS:])
    market = (
        returns[risk.MARKET_SYMBOL].to_numpy(dtype="float64")[-risk.HISTORY_SESSIONS:]
        if risk.MARKET_SYMBOL in returns.columns
        else np.full(series.shape[1], np.nan)
    )
    beta, r2, n_obs = risk.regression_beta(series, market)
    betas = inputs.betas
    market_betas = betas.loc[betas["factor_name"] == "market"].drop_duplicates(
        "symbol", keep="last").set_index("symbol")["beta"].astype("float64")
    weighted, _ = risk.weighted_beta(book, market_betas)
    profiles = inputs.profiles.drop_duplicates("symbol", keep="last").set_index("symbol")
    provider, provider_coverage = risk.weighted_beta(
        book, pd.to_numeric(profiles["beta"], errors="coerce"))
    conc = risk.concentration(book)
    sectors, unclassified = risk.sector_exposures(book, profiles["sector"])

    per_position = greeks.assign(
        delta=greeks["delta"] * greeks["units"], gamma=greeks["gamma"] * greeks["units"],
        theta=greeks["theta"] * greeks["units"], vega=greeks["vega"] * greeks["units"],
        rho=greeks["rho"] * greeks["units"],
    )
    portfolio_greeks = (
        per_position.groupby("portfolio_id")[GREEK_COLUMNS].sum().reindex(ids, fill_value=0.0)
    )

    risk_frame = pd.DataFrame(
        {
            "portfolio_id": ids,
            "equity": book.equity,
            "return_basis": book.basis,
            "volatility_21d": risk.realized_vol(series, risk.VOL_SHORT),
            "volatility_63d": risk.realized_vol(series, risk.VOL_LONG),
            "volatility_forecast": risk.ewma_vol(series),
            "volatility_percentile": risk.vol_percentile(series),
            "beta_regression": beta,
            "beta_r2": r2,
            "beta_n_obs": n_obs,
            "beta_exposure_weighted": weighted,
            "beta_provider": provider,
            "beta_provider_coverage": provider_coverage,
            "hhi": conc["hhi"].to_numpy(),
            "effective_positions": conc["effective_positions"].to_numpy(),
            "top3_weight": conc["top3"].to_numpy(),
            "top10_weight": conc["top10"].to_numpy(),
            "history_sessions": np.full(len(ids), series.shape[1]),
        }
    )
    risk_frame = pd.concat(
        [risk_frame, portfolio_greeks.add_prefix("greek_").reset_index(drop=True)], axis=1
    )

    sector_rows: dict[str, list[dict[str, Any]]] = {pid: [] for pid in ids}
    # Plain Python lists first: iterating pandas (string) arrays element by element is slow.
    for pid, sector, net_w, gross_w in zip(
        sectors["portfolio_id"].tolist(), sectors["sector"].tolist(),
        _nullable(sectors["net_weight"]), _nullable(sectors["gross_weight"]), strict=True,
    ):
        sector_rows.setdefault(pid, []).append(
            {"sector": sector, "net_weight": net_w, "gross_weight": gross_w})

    correlations = corr_mod.correlate(holdings, ids, returns)
    covariance = stress.factor_covariance(returns)
    moves = stress.scenario_moves(inputs.scenarios, covariance)
    stressed = stress.stress(holdings, ids, book.equity, betas, moves)
    return AnalyticsResult(
        greeks=greeks,
        portfolio_greeks=portfolio_greeks,
        risk=risk_frame,
        sectors=sector_rows,
        unclassified={str(k): v for k, v in unclassified.items()},
        correlations=correlations,
        stress=stressed,
    )


def _nullable(values: pd.Series) -> list[float | None]:
    """Floats, NaN/inf as None (what the JSON of the sectors stores)."""
    arr = values.to_numpy(dtype="float64")
    return [v if ok else None for v, ok in zip(arr.tolist(), np.isfinite(arr).tolist(), strict=True)]


def analytics_of_refresh(
    refresh: pnl.RefreshResult, positions: pd.DataFrame, inputs: AnalyticsInputs,
    params: pnl.PricingParams,
) -> AnalyticsResult:
    """Analytics of the portfolios a refresh just valued (its marks, equity and positions)."""
    values = refresh.positions
    if "expiration_date" not in values.columns and len(values):
        # Only option Greeks read the expiry: map it for option rows (ids as text are slow
        # to make for every position of a chunk).
        is_option = values["is_option"].astype(bool).to_numpy()
        expiration = np.full(len(values), None, dtype=object)
        if is_option.any():
            dated = positions[positions["expiration_date"].notna()]
            expiry = dated.set_index(dated["position_id"].astype(str))["expiration_date"]
            expiration[is_option] = (
                values["position_id"][is_option].astype(str).map(expiry).to_numpy())
        values = values.assign(expiration_date=expiration)
    snaps = refresh.snapshots
    equity = pd.Series(
        (snaps["equity_cents"] / 100.0).to_numpy(dtype="float64"),
        index=snaps["portfolio_id"].astype(str).to_numpy(),
    )
    return compute_analytics(values, equity, inputs, params)
