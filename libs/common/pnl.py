"""Daily P&L and portfolio snapshots (docs/design.md §7): pure, vectorised, no I/O.

One call values every position of many portfolios on one date `t` and rolls each
portfolio's equity forward from its previous snapshot. The rules:

* active on t: ``entry_date <= t`` and (no exit or ``exit_date > t``); quantity is signed;
  multiplier 100 for options, else 1; ``market_value = qty * mark_t * multiplier``.
* P&L is measured from a *base date* per position: the later of the portfolio's previous
  snapshot date and the position's entry date. ``unrealized = (mark_t - mark_base) * qty * m``.
  With daily snapshots the base is the previous trading day, i.e. "the last price before t";
  across a gap (a missed day) it is the latest earlier snapshot, so the gap's moves are
  counted once and equity telescopes exactly. A position entered on t (or the portfolio's
  first snapshot) has base = t: P&L 0, never a jump from the entry price to the close.
* realized on exit: positions whose exit falls in (base, t] give
  ``(exit_price - mark_base) * qty * m`` and have no market value on t.
* equity_t = equity_prev + daily P&L + capital flows (flows dated in (prev snapshot, t]);
  the first snapshot starts from the portfolio's ``equity_balance``. The roll-forward is
  done in integer cents so ``equity_end - equity_start == Σ pnl + Σ flows`` holds exactly.
* marks: the symbol's quote on the date ("market"); else its last earlier quote ("stale",
  flagged); options without a quote get a Black-Scholes price from the underlying's last
  close ("model", inputs recorded); private/unpriceable assets are carried at their manual or
  entry price ("carried", no P&L); a public symbol with no quote at all is carried at its
  entry price and flagged stale ("entry").

Money leaves this module as Decimal (`snapshot_records`, `position_value_records`), floats
are used only inside the vectorised math.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd

from libs.common.domain.options import OPTION_MULTIPLIER, black_scholes
from libs.common.domain.symbols import InvestmentClass, carried_mask

TRADING_DAYS_PER_YEAR = 252
DEFAULT_RISK_FREE_RATE = 0.04
DEFAULT_VOLATILITY = 0.30
VOL_WINDOW = 63
VOL_MIN_OBS = 20

SOURCE_MARKET = "market"
SOURCE_STALE = "stale"
SOURCE_MODEL = "model"
SOURCE_CARRIED = "carried"
SOURCE_ENTRY = "entry"

POSITION_COLUMNS = (
    "position_id",
    "portfolio_id",
    "symbol",
    "quantity",
    "entry_price",
    "entry_date",
    "exit_date",
    "exit_price",
    "investment_class",
)
OPTIONAL_POSITION_COLUMNS = {
    "investment_subtype": None,
    "underlying_symbol": None,
    "strike_price": np.nan,
    "expiration_date": pd.NaT,
    "option_type": None,
    "manual_value": np.nan,
}


@dataclass(frozen=True)
class PricingParams:
    """Black-Scholes inputs not found in market data; recorded with every model price."""

    risk_free_rate: float = DEFAULT_RISK_FREE_RATE
    default_volatility: float = DEFAULT_VOLATILITY
    vol_window: int = VOL_WINDOW
    vol_min_obs: int = VOL_MIN_OBS


@dataclass(frozen=True)
class RefreshResult:
    """One row per portfolio (`snapshots`) and one per valued position (`positions`)."""

    snapshots: pd.DataFrame
    positions: pd.DataFrame


# --------------------------------------------------------------------------- helpers


def _days(values: Any) -> pd.Series | pd.Timestamp:
    """Dates normalised to datetime64[ns] midnight, so comparisons and merges line up."""
    if isinstance(values, (pd.Series, pd.Index, np.ndarray, list)):
        return pd.Series(pd.to_datetime(pd.Series(values)), copy=False).astype("datetime64[ns]")
    return pd.Timestamp(values).normalize().as_unit("ns")


def _upper(series: pd.Series) -> pd.Series:
    """Stripped upper-case text, "" for missing; mapped per distinct value (symbols repeat)."""
    values = series.astype(object).where(series.notna(), "").to_numpy(dtype=object)
    mapping = {u: str(u).strip().upper() for u in pd.unique(values)}
    return pd.Series([mapping[v] for v in values], index=series.index, dtype="str")


def normalise_positions(positions: pd.DataFrame) -> pd.DataFrame:
    """Typed copy of a positions frame with every optional column present."""
    missing = [c for c in POSITION_COLUMNS if c not in positions.columns]
    if missing:
        raise ValueError(f"positions frame lacks columns {missing}")
    pos = positions.copy()
    for column, default in OPTIONAL_POSITION_COLUMNS.items():
        if column not in pos.columns:
            pos[column] = default
    pos = pos.reset_index(drop=True)
    for column in ("quantity", "entry_price", "exit_price", "strike_price", "manual_value"):
        pos[column] = pd.to_numeric(pos[column], errors="coerce").astype("float64")
    for column in ("entry_date", "exit_date", "expiration_date"):
        pos[column] = _days(pos[column])
    pos["investment_class"] = _upper(pos["investment_class"])
    pos["investment_subtype"] = _upper(pos["investment_subtype"])
    pos["option_type"] = _upper(pos["option_type"])
    pos["symbol"] = _upper(pos["symbol"])
    pos["underlying_symbol"] = _upper(pos["underlying_symbol"])
    is_option = pos["investment_class"].eq(InvestmentClass.OPTIONS)
    pos["is_option"] = is_option
    pos["multiplier"] = np.where(is_option, OPTION_MULTIPLIER, 1).astype("int64")
    # manual_value is the whole position's mark; per unit it is a price like any other.
    units = pos["quantity"] * pos["multiplier"]
    pos["manual_price"] = (pos["manual_value"] / units.where(units != 0)).astype("float64")
    pos["is_carried"] = is_carried_asset(pos)
    return pos


def is_carried_asset(pos: pd.DataFrame) -> pd.Series:
    """Assets valued at entry/manual price (the rulebook's `domain.symbols.carried_mask`).

    These never reach a market-data provider (docs/design.md §5), so they have no quotes, and
    flagging them stale every day would hide real staleness. An explicit PUBLIC class is
    priced like any listed symbol whatever its name (REIT, FUND).
    """
    return carried_mask(
        pos["symbol"], pos["investment_class"], pos["investment_subtype"], pos["manual_value"].notna()
    )


def normalise_prices(prices: pd.DataFrame) -> pd.DataFrame:
    """(symbol, date, price) sorted by date; rows without a price are dropped."""
    px = prices.loc[:, ["symbol", "date", "price"]].copy()
    px["symbol"] = _upper(px["symbol"])
    px["date"] = _days(px["date"])
    px["price"] = pd.to_numeric(px["price"], errors="coerce").astype("float64")
    px = px[np.isfinite(px["price"]) & (px["price"] > 0)]
    px = px.drop_duplicates(["symbol", "date"], keep="last")
    return px.sort_values(["date", "symbol"], kind="stable").reset_index(drop=True)


def last_price_on_or_before(
    prices: pd.DataFrame, symbols: pd.Series, when: pd.Series
) -> tuple[np.ndarray, pd.Series]:
    """For each (symbol, date) pair: the last quote on or before the date and its date."""
    n = len(symbols)
    if n == 0:
        return np.empty(0), pd.Series([], dtype="datetime64[ns]")
    left = pd.DataFrame(
        {"symbol": symbols.to_numpy(), "when": when.to_numpy(), "row": np.arange(n)}
    ).sort_values("when", kind="stable")
    right = prices.rename(columns={"date": "price_date"})
    merged = pd.merge_asof(
        left,
        right,
        left_on="when",
        right_on="price_date",
        by="symbol",
        direction="backward",
    ).sort_values("row")
    return merged["price"].to_numpy(dtype="float64"), merged["price_date"].reset_index(drop=True)


def realised_volatility(prices: pd.DataFrame, params: PricingParams) -> pd.DataFrame:
    """Annualised rolling volatility of daily log returns: (symbol, date, volatility)."""
    px = prices.sort_values(["symbol", "date"], kind="stable")
    log_ret = np.log(px["price"]).groupby(px["symbol"], sort=False).diff()
    vol = (
        log_ret.groupby(px["symbol"], sort=False)
        .rolling(params.vol_window, min_periods=params.vol_min_obs)
        .std()
        .reset_index(level=0, drop=True)
    )
    out = pd.DataFrame(
        {
            "symbol": px["symbol"],
            "date": px["date"],
            "volatility": vol.reindex(px.index) * np.sqrt(TRADING_DAYS_PER_YEAR),
        }
    )
    return out.dropna().sort_values(["date", "symbol"], kind="stable").reset_index(drop=True)


def mark_positions(
    pos: pd.DataFrame,
    prices: pd.DataFrame,
    when: pd.Series,
    vols: pd.DataFrame,
    params: PricingParams,
) -> pd.DataFrame:
    """Mark each position at its own date `when` (a Series aligned with `pos`).

    Returns price, price_date, source, is_stale and, for model prices, the Black-Scholes
    inputs (underlying price, strike, years, rate, volatility and its origin).
    """
    n = len(pos)
    when = pd.Series(when.to_numpy(), dtype="datetime64[ns]")
    quote, quote_date = last_price_on_or_before(prices, pos["symbol"], when)
    has_quote = ~np.isnan(quote)
    fresh = has_quote & (quote_date.to_numpy() == when.to_numpy())

    price = np.full(n, np.nan)
    source = np.full(n, SOURCE_ENTRY, dtype=object)
    stale = np.zeros(n, dtype=bool)
    price_date = quote_date.copy()

    carried = pos["is_carried"].to_numpy()
    is_option = pos["is_option"].to_numpy() & ~carried
    plain = ~carried & ~is_option

    carried_price = pos["manual_price"].fillna(pos["entry_price"]).to_numpy()
    price[carried] = carried_price[carried]
    source[carried] = SOURCE_CARRIED
    price_date[carried] = pd.NaT

    price[plain & has_quote] = quote[plain & has_quote]
    source[plain & fresh] = SOURCE_MARKET
    source[plain & has_quote & ~fresh] = SOURCE_STALE
    stale[plain & ~fresh] = True

    # Options: a quote on the date wins; otherwise a model price from the underlying.
    model_cols = {
        "underlying_price": np.full(n, np.nan),
        "underlying_price_date": pd.Series(pd.NaT, index=range(n), dtype="datetime64[ns]"),
        "model_years": np.full(n, np.nan),
        "model_rate": np.full(n, np.nan),
        "model_volatility": np.full(n, np.nan),
        "model_volatility_source": np.full(n, None, dtype=object),
    }
    opt_fresh = is_option & fresh
    price[opt_fresh] = quote[opt_fresh]
    source[opt_fresh] = SOURCE_MARKET
    need_model = is_option & ~fresh
    if need_model.any():
        idx = np.flatnonzero(need_model)
        sub = pos.iloc[idx]
        expiry = sub["expiration_date"].to_numpy()
        at = when.to_numpy()[idx]
        # After expiry the option is worth its intrinsic value at expiry: freeze the spot there.
        value_date = pd.Series(np.where(pd.isna(expiry) | (expiry > at), at, expiry))
        spot, spot_date = last_price_on_or_before(prices, sub["underlying_symbol"], value_date)
        vol_frame = pd.DataFrame(
            {"symbol": sub["underlying_symbol"].to_numpy(), "when": value_date, "row": np.arange(len(idx))}
        ).sort_values("when", kind="stable")
        vol_frame = pd.merge_asof(
            vol_frame,
            vols.rename(columns={"date": "vol_date"}),
            left_on="when",
            right_on="vol_date",
            by="symbol",
            direction="backward",
        ).sort_values("row")
        vol = vol_frame["volatility"].to_numpy(dtype="float64")
        vol_source = np.where(np.isnan(vol), "default", "realised")
        vol = np.where(np.isnan(vol), params.default_volatility, vol)
        years = np.where(
            pd.isna(expiry),
            0.0,
            (pd.Series(expiry).to_numpy() - at) / np.timedelta64(1, "D") / 365.0,
        )
        years = np.maximum(np.nan_to_num(years, nan=0.0), 0.0)
        strike = sub["strike_price"].to_numpy()
        is_call = sub["option_type"].eq("CALL").to_numpy()
        modelled = black_scholes(spot, strike, years, params.risk_free_rate, vol, is_call)
        can_model = ~np.isnan(spot) & ~np.isnan(strike) & ~np.isnan(modelled)
        model_idx = idx[can_model]
        price[model_idx] = modelled[can_model]
        source[model_idx] = SOURCE_MODEL
        price_date[model_idx] = pd.NaT
        spot_fresh = spot_date.to_numpy() == value_date.to_numpy()
        stale[model_idx] = ~spot_fresh[can_model]
        model_cols["underlying_price"][model_idx] = spot[can_model]
        model_cols["underlying_price_date"].iloc[model_idx] = spot_date.to_numpy()[can_model]
        model_cols["model_years"][model_idx] = years[can_model]
        model_cols["model_rate"][model_idx] = params.risk_free_rate
        model_cols["model_volatility"][model_idx] = vol[can_model]
        model_cols["model_volatility_source"][model_idx] = vol_source[can_model]
        # No underlying either: last option quote if any, else entry price; stale.
        fallback = idx[~can_model]
        stale_quote = fallback[has_quote[fallback]]
        price[stale_quote] = quote[stale_quote]
        source[stale_quote] = SOURCE_STALE
        stale[fallback] = True

    no_price = np.isnan(price)
    price[no_price] = pos["entry_price"].to_numpy()[no_price]
    source[no_price] = SOURCE_ENTRY
    stale[no_price] = True
    price_date[no_price] = pd.NaT

    return pd.DataFrame(
        {
            "price": price,
            "price_date": price_date.to_numpy(),
            "price_source": source,
            "is_stale": stale,
            **{k: (v.to_numpy() if isinstance(v, pd.Series) else v) for k, v in model_cols.items()},
        }
    )


# --------------------------------------------------------------------------- main entry


def compute_refresh(
    as_of: date | pd.Timestamp,
    portfolios: pd.DataFrame,
    positions: pd.DataFrame,
    prices: pd.DataFrame,
    previous: pd.DataFrame | None = None,
    flows: pd.DataFrame | None = None,
    params: PricingParams | None = None,
) -> RefreshResult:
    """Snapshot every portfolio of `portfolios` on `as_of`.

    portfolios: portfolio_id, equity_balance (initial equity, used when there is no previous
        snapshot).
    positions: POSITION_COLUMNS (+ optional ones); any positions of other portfolios are ignored.
    prices: symbol, date, price; every quote up to `as_of` that may be needed (later rows are
        ignored); for option underlyings enough history for the volatility window.
    previous: portfolio_id, snapshot_date, equity, cumulative_pnl: the latest complete
        snapshot strictly before `as_of` (absent row = first snapshot).
    flows: portfolio_id, flow_date, amount (signed: deposits > 0).
    """
    params = params or PricingParams()
    t = _days(as_of)
    ports = portfolios.loc[:, ["portfolio_id", "equity_balance"]].drop_duplicates("portfolio_id")
    ports = ports.reset_index(drop=True)

    prev = _previous_frame(previous)
    # Ids may arrive as str or UUID objects (and an empty frame has object dtype): one key
    # dtype for every merge.
    ports["portfolio_id"] = ports["portfolio_id"].astype(str)
    prev["portfolio_id"] = prev["portfolio_id"].astype(str)
    ports = ports.merge(prev, on="portfolio_id", how="left")
    has_prev = ports["prev_date"].notna() & (ports["prev_date"] < t)
    ports.loc[~has_prev, ["prev_date", "prev_equity", "prev_cumulative_pnl"]] = [pd.NaT, None, None]

    px = normalise_prices(prices)
    px = px[px["date"] <= t]

    pos = normalise_positions(positions)
    pos["portfolio_id"] = pos["portfolio_id"].astype(str)
    underlyings = pos.loc[pos["is_option"], "underlying_symbol"].unique()
    vols = realised_volatility(px[px["symbol"].isin(underlyings)], params)
    pos = pos[pos["portfolio_id"].isin(ports["portfolio_id"])]
    pos = pos.merge(ports[["portfolio_id", "prev_date"]], on="portfolio_id", how="left")
    started = pos["entry_date"] <= t
    active = started & (pos["exit_date"].isna() | (pos["exit_date"] > t))
    # Base date: where this position's P&L is measured from on t.
    base = pos["entry_date"].where(
        pos["prev_date"].isna() | (pos["entry_date"] > pos["prev_date"]), pos["prev_date"]
    )
    base = base.where(pos["prev_date"].notna(), t)  # first snapshot: no P&L, no jump
    exited_now = (
        started & pos["exit_date"].notna() & (pos["exit_date"] <= t) & (pos["exit_date"] > base)
    )
    keep = (active | exited_now).to_numpy()
    pos = pos[keep].reset_index(drop=True)
    active = active.to_numpy()[keep]
    base = base[keep].reset_index(drop=True)

    mark_t = mark_positions(pos, px, pd.Series(t, index=pos.index), vols, params)
    mark_base = mark_positions(pos, px, base, vols, params)

    qty_m = pos["quantity"].to_numpy() * pos["multiplier"].to_numpy()
    carried = pos["is_carried"].to_numpy()
    price_t = mark_t["price"].to_numpy()
    price_base = mark_base["price"].to_numpy()
    exit_price = pos["exit_price"].to_numpy()
    exit_price = np.where(np.isnan(exit_price), price_base, exit_price)

    market_value = np.where(active, qty_m * price_t, 0.0)
    unrealized = np.where(active & ~carried, (price_t - price_base) * qty_m, 0.0)
    realized = np.where(~active & ~carried, (exit_price - price_base) * qty_m, 0.0)

    values = pd.DataFrame(
        {
            "position_id": pos["position_id"].to_numpy(),
            "portfolio_id": pos["portfolio_id"].to_numpy(),
            "symbol": pos["symbol"].to_numpy(),
            "underlying_symbol": pos["underlying_symbol"].replace("", None).to_numpy(),
            "strike_price": pos["strike_price"].to_numpy(),
            "option_type": pos["option_type"].replace("", None).to_numpy(),
            "is_option": pos["is_option"].to_numpy(),
            "is_active": active,
            "quantity": pos["quantity"].to_numpy(),
            "multiplier": pos["multiplier"].to_numpy(),
            "base_date": base.to_numpy(),
            "price_base": price_base,
            "market_value": market_value,
            "unrealized_pnl": unrealized,
            "realized_pnl": realized,
            "daily_pnl": unrealized + realized,
        }
    )
    values = pd.concat([values, mark_t.reset_index(drop=True)], axis=1)
    values.insert(0, "snapshot_date", t)
    # An exited position has no mark on t: its staleness must not flag the snapshot.
    values.loc[~values["is_active"], "is_stale"] = False
    # The symbol whose quote is missing: for a model price, the underlying.
    values["priced_symbol"] = values["symbol"].where(
        values["price_source"] != SOURCE_MODEL, values["underlying_symbol"]
    )

    snapshots = _aggregate(t, ports, values, _flows_in_window(flows, ports, t))
    return RefreshResult(snapshots=snapshots, positions=values)


def _previous_frame(previous: pd.DataFrame | None) -> pd.DataFrame:
    cols = {"portfolio_id": [], "prev_date": [], "prev_equity": [], "prev_cumulative_pnl": []}
    if previous is None or previous.empty:
        frame = pd.DataFrame(cols)
        frame["prev_date"] = frame["prev_date"].astype("datetime64[ns]")
        return frame
    frame = previous.rename(
        columns={
            "snapshot_date": "prev_date",
            "equity": "prev_equity",
            "cumulative_pnl": "prev_cumulative_pnl",
        }
    ).loc[:, list(cols)]
    frame["prev_date"] = _days(frame["prev_date"])
    return frame.sort_values("prev_date").drop_duplicates("portfolio_id", keep="last")


def _flows_in_window(
    flows: pd.DataFrame | None, ports: pd.DataFrame, t: pd.Timestamp
) -> pd.Series:
    """Σ flows per portfolio dated in (previous snapshot, t] (first snapshot: on t), in cents."""
    if flows is None or flows.empty:
        return pd.Series(0, index=ports["portfolio_id"], dtype="int64")
    fl = flows.loc[:, ["portfolio_id", "flow_date", "amount"]].copy()
    fl["portfolio_id"] = fl["portfolio_id"].astype(str)
    fl["flow_date"] = _days(fl["flow_date"])
    fl = fl.merge(ports[["portfolio_id", "prev_date"]], on="portfolio_id", how="inner")
    lower = fl["prev_date"].fillna(t - pd.Timedelta(days=1))
    fl = fl[(fl["flow_date"] > lower) & (fl["flow_date"] <= t)]
    cents = to_cents(fl["amount"])
    summed = pd.Series(cents, index=fl["portfolio_id"].to_numpy()).groupby(level=0).sum()
    return summed.reindex(ports["portfolio_id"], fill_value=0).astype("int64")


def to_cents(values: Any) -> np.ndarray:
    """Money (Decimal, float, str) to exact int64 cents, half away from zero."""
    arr = pd.Series(values, dtype=object).to_numpy()
    out = np.empty(len(arr), dtype="int64")
    if len(arr) == 0:
        return out
    if all(isinstance(v, Decimal) for v in arr):
        # Exact path for values read from Numeric columns.
        for i, v in enumerate(arr):
            out[i] = int((v * 100).to_integral_value(rounding="ROUND_HALF_UP"))
        return out
    floats = pd.to_numeric(pd.Series(arr), errors="coerce").fillna(0.0).to_numpy("float64")
    return _round_half_away(floats * 100.0)


def _round_half_away(values: np.ndarray) -> np.ndarray:
    # Round after a tiny nudge so 0.125*100 = 12.4999999 style float noise rounds as intended.
    scaled = np.asarray(values, dtype="float64")
    return (np.sign(scaled) * np.floor(np.abs(scaled) + 0.5 + 1e-9)).astype("int64")


def _aggregate(
    t: pd.Timestamp, ports: pd.DataFrame, values: pd.DataFrame, flow_cents: pd.Series
) -> pd.DataFrame:
    """Per-portfolio sums and the integer-cent equity roll-forward."""
    pid = ports["portfolio_id"]
    mv = values["market_value"]
    by = values["portfolio_id"]
    active = values["is_active"]
    grouped = pd.DataFrame(
        {
            "long": mv.where(mv > 0, 0.0),
            "short": mv.where(mv < 0, 0.0),
            "net": mv,
            "unrealized": values["unrealized_pnl"],
            "realized": values["realized_pnl"],
            "n_positions": active.astype("int64"),
            "n_long": (active & (values["quantity"] > 0)).astype("int64"),
            "n_short": (active & (values["quantity"] < 0)).astype("int64"),
            "stale": values["is_stale"] & active,
            "model": (values["price_source"] == SOURCE_MODEL) & active,
        }
    ).groupby(by.to_numpy()).sum()
    grouped = grouped.reindex(pid.to_numpy(), fill_value=0)

    stale_symbols = (
        values.loc[values["is_stale"] & active, ["portfolio_id", "priced_symbol"]]
        .drop_duplicates()
        .sort_values(["portfolio_id", "priced_symbol"])
        .groupby("portfolio_id")["priced_symbol"]
        .agg(list)
    )

    unrealized_c = _round_half_away(grouped["unrealized"].to_numpy() * 100)
    realized_c = _round_half_away(grouped["realized"].to_numpy() * 100)
    pnl_c = unrealized_c + realized_c
    has_prev = ports["prev_date"].notna().to_numpy()
    start_equity_c = np.where(
        has_prev,
        to_cents(ports["prev_equity"].where(ports["prev_equity"].notna(), 0)),
        to_cents(ports["equity_balance"]),
    )
    prev_cum_c = np.where(
        has_prev, to_cents(ports["prev_cumulative_pnl"].where(has_prev, 0)), 0
    )
    flows_c = flow_cents.reindex(pid.to_numpy(), fill_value=0).to_numpy()
    equity_c = start_equity_c + pnl_c + flows_c
    with np.errstate(divide="ignore", invalid="ignore"):
        daily_return = np.where(start_equity_c != 0, pnl_c / start_equity_c, 0.0)

    long_v = grouped["long"].to_numpy()
    short_v = grouped["short"].to_numpy()
    return pd.DataFrame(
        {
            "portfolio_id": pid.to_numpy(),
            "snapshot_date": t,
            "previous_snapshot_date": ports["prev_date"].to_numpy(),
            "long_exposure": long_v,
            "short_exposure": short_v,
            "gross_exposure": long_v - short_v,
            "net_exposure": long_v + short_v,
            "total_value": grouped["net"].to_numpy(),
            "unrealized_pnl_cents": unrealized_c,
            "realized_pnl_cents": realized_c,
            "daily_pnl_cents": pnl_c,
            "capital_flow_cents": flows_c,
            "equity_start_cents": start_equity_c,
            "equity_cents": equity_c,
            "cumulative_pnl_cents": prev_cum_c + pnl_c,
            "daily_return": daily_return,
            "num_positions": grouped["n_positions"].to_numpy(),
            "num_long": grouped["n_long"].to_numpy(),
            "num_short": grouped["n_short"].to_numpy(),
            "is_stale": grouped["stale"].to_numpy() > 0,
            "has_model_prices": grouped["model"].to_numpy() > 0,
            "stale_symbols": stale_symbols.reindex(pid.to_numpy()).to_numpy(),
        }
    )


# --------------------------------------------------------------------------- boundaries

_CENT = Decimal("0.01")
_RETURN_PLACES = Decimal("1e-12")
_PRICE_PLACES = Decimal("1e-6")


def cents_to_decimal(cents: Any) -> Decimal:
    return Decimal(int(cents)).scaleb(-2)


def money(value: float) -> Decimal:
    """A float amount as Decimal cents (for Numeric columns)."""
    return cents_to_decimal(_round_half_away(np.array([value * 100.0]))[0])


def _decimal_cents(values: pd.Series) -> list[Decimal]:
    return [cents_to_decimal(c) for c in _round_half_away(values.to_numpy() * 100.0)]


def _day(value: Any) -> date | None:
    return None if pd.isna(value) else pd.Timestamp(value).date()


def snapshot_records(snapshots: pd.DataFrame) -> list[dict[str, Any]]:
    """`portfolio_snapshots` rows (column names of the model), money as Decimal cents."""
    frame = snapshots.reset_index(drop=True)
    long_v = _decimal_cents(frame["long_exposure"])
    short_v = _decimal_cents(frame["short_exposure"])
    gross = _decimal_cents(frame["gross_exposure"])
    net = _decimal_cents(frame["net_exposure"])
    records = []
    for i, row in enumerate(frame.itertuples(index=False)):
        stale_symbols = row.stale_symbols if isinstance(row.stale_symbols, list) else []
        records.append(
            {
                "portfolio_id": row.portfolio_id,
                "snapshot_date": _day(row.snapshot_date),
                "equity": cents_to_decimal(row.equity_cents),
                "total_value": net[i],
                "long_value": long_v[i],
                "short_value": short_v[i],
                "gross_exposure": gross[i],
                "net_exposure": net[i],
                "daily_pnl": cents_to_decimal(row.daily_pnl_cents),
                "daily_unrealized_pnl": cents_to_decimal(row.unrealized_pnl_cents),
                "daily_realized_pnl": cents_to_decimal(row.realized_pnl_cents),
                "daily_return": Decimal(repr(float(row.daily_return))).quantize(_RETURN_PLACES),
                "cumulative_pnl": cents_to_decimal(row.cumulative_pnl_cents),
                "capital_flow": cents_to_decimal(row.capital_flow_cents),
                "position_count": int(row.num_positions),
                "has_stale_prices": bool(row.is_stale),
                "stale_symbols": list(stale_symbols),
                "has_model_prices": bool(row.has_model_prices),
                "details": {
                    "previous_snapshot_date": None
                    if _day(row.previous_snapshot_date) is None
                    else _day(row.previous_snapshot_date).isoformat(),
                    "equity_start": str(cents_to_decimal(row.equity_start_cents)),
                    "long_positions": int(row.num_long),
                    "short_positions": int(row.num_short),
                },
            }
        )
    return records


def position_value_records(values: pd.DataFrame) -> list[dict[str, Any]]:
    """`position_snapshots` rows: the mark used, its source, value and P&L, model inputs."""
    frame = values.reset_index(drop=True)
    market_value = _decimal_cents(frame["market_value"])
    daily_pnl = _decimal_cents(frame["daily_pnl"])
    realized = _decimal_cents(frame["realized_pnl"])
    records = []
    for i, row in enumerate(frame.itertuples(index=False)):
        records.append(
            {
                "position_id": row.position_id,
                "snapshot_date": _day(row.snapshot_date),
                "portfolio_id": row.portfolio_id,
                "price": Decimal(repr(float(row.price))).quantize(_PRICE_PLACES)
                if row.is_active
                else None,
                "price_source": row.price_source if row.is_active else "exited",
                "market_value": market_value[i],
                "daily_pnl": daily_pnl[i],
                "realized_pnl": realized[i],
                "model_inputs": model_inputs(row) if row.price_source == SOURCE_MODEL else None,
            }
        )
    return records


def model_inputs_column(values: pd.DataFrame) -> list[dict[str, Any] | None]:
    """Per position row: its Black-Scholes inputs if it carries a model price, else None."""
    out: list[dict[str, Any] | None] = [None] * len(values)
    frame = values.reset_index(drop=True)
    modelled = frame.index[(frame["price_source"] == SOURCE_MODEL) & frame["is_active"]]
    for i, row in zip(modelled, frame.loc[modelled].itertuples(index=False), strict=True):
        out[i] = model_inputs(row)
    return out


def model_inputs(row: Any) -> dict[str, Any]:
    """The Black-Scholes inputs of a model price, as JSON-ready values."""
    return {
        "model": "black_scholes",
        "underlying": row.underlying_symbol,
        "underlying_price": float(row.underlying_price),
        "underlying_price_date": None
        if _day(row.underlying_price_date) is None
        else _day(row.underlying_price_date).isoformat(),
        "strike": float(row.strike_price),
        "option_type": row.option_type,
        "years_to_expiry": float(row.model_years),
        "risk_free_rate": float(row.model_rate),
        "volatility": float(row.model_volatility),
        "volatility_source": row.model_volatility_source,
    }
