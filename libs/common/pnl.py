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

import math
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd

from libs.common.domain.equity import EquitySource
from libs.common.domain.options import DAYS_PER_YEAR, OPTION_MULTIPLIER, black_scholes_greeks
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


def _price_asof(
    prices: pd.DataFrame, symbols: pd.Series, when: pd.Series, direction: str
) -> tuple[np.ndarray, pd.Series]:
    """For each (symbol, date) pair: the nearest quote in `direction` of the date, and its date."""
    n = len(symbols)
    if n == 0:
        return np.empty(0), pd.Series([], dtype="datetime64[ns]")
    left = pd.DataFrame(
        {"symbol": symbols.to_numpy(), "when": when.to_numpy(), "row": np.arange(n)}
    ).sort_values("when", kind="stable")
    merged = pd.merge_asof(
        left,
        prices.rename(columns={"date": "price_date"}),
        left_on="when",
        right_on="price_date",
        by="symbol",
        direction=direction,
    ).sort_values("row")
    return merged["price"].to_numpy(dtype="float64"), merged["price_date"].reset_index(drop=True)


def last_price_on_or_before(
    prices: pd.DataFrame, symbols: pd.Series, when: pd.Series
) -> tuple[np.ndarray, pd.Series]:
    """For each (symbol, date) pair: the last quote on or before the date and its date."""
    return _price_asof(prices, symbols, when, "backward")


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


def _first_price_on_or_after(
    prices: pd.DataFrame, symbols: pd.Series, when: pd.Series, until: pd.Timestamp | np.datetime64
) -> tuple[np.ndarray, pd.Series]:
    """For each (symbol, date): the first quote on or after the date (up to `until`)."""
    return _price_asof(prices[prices["date"] <= until], symbols, when, "forward")


def _volatility_at(vols: pd.DataFrame, symbols: pd.Series, when: pd.Series) -> np.ndarray:
    """Each underlying's latest realised volatility on or before its date (NaN if none)."""
    frame = pd.DataFrame(
        {"symbol": symbols.to_numpy(), "when": when.to_numpy(), "row": np.arange(len(symbols))}
    ).sort_values("when", kind="stable")
    frame = pd.merge_asof(
        frame,
        vols.rename(columns={"date": "vol_date"}),
        left_on="when",
        right_on="vol_date",
        by="symbol",
        direction="backward",
    ).sort_values("row")
    return frame["volatility"].to_numpy(dtype="float64")


def option_model(
    opts: pd.DataFrame, prices: pd.DataFrame, when: pd.Series, vols: pd.DataFrame,
    params: PricingParams,
) -> pd.DataFrame:
    """Black-Scholes inputs, price and delta of option positions at their dates `when`.

    An option on or after its expiry is worth its intrinsic value at the expiry close and is
    frozen there (``expired``, delta 0). If the underlying has no close on or before expiry,
    its first later close stands in (flagged stale). The spot is the underlying's last close
    on or before the valuation date (stale if not on it).
    """
    at = when.to_numpy(dtype="datetime64[ns]")
    expiry = opts["expiration_date"].to_numpy(dtype="datetime64[ns]")
    expired = ~pd.isna(expiry) & (expiry <= at)
    value_date = pd.Series(np.where(expired, expiry, at), dtype="datetime64[ns]")
    underlying = opts["underlying_symbol"].reset_index(drop=True)
    spot, spot_date = last_price_on_or_before(prices, underlying, value_date)
    spot = np.array(spot, dtype="float64")  # writable (pandas may hand out read-only views)
    missing_at_expiry = expired & np.isnan(spot)
    if missing_at_expiry.any():
        later, later_date = _first_price_on_or_after(
            prices, underlying[missing_at_expiry], value_date[missing_at_expiry], at.max()
        )
        spot[missing_at_expiry] = later
        dates = spot_date.to_numpy(dtype="datetime64[ns]").copy()
        dates[missing_at_expiry] = later_date.to_numpy(dtype="datetime64[ns]")
        spot_date = pd.Series(dates)
    vol = _volatility_at(vols, underlying, value_date)
    vol_source = np.where(np.isnan(vol), "default", "realised")
    vol = np.where(np.isnan(vol), params.default_volatility, vol)
    years = (expiry - at) / np.timedelta64(1, "D") / DAYS_PER_YEAR
    years = np.maximum(np.nan_to_num(years, nan=0.0), 0.0)
    strike = opts["strike_price"].to_numpy(dtype="float64")
    is_call = opts["option_type"].eq("CALL").to_numpy()
    greeks = black_scholes_greeks(spot, strike, years, params.risk_free_rate, vol, is_call)
    return pd.DataFrame(
        {
            "underlying_price": spot,
            "underlying_price_date": spot_date.to_numpy(),
            "underlying_fresh": spot_date.to_numpy() == value_date.to_numpy(),
            "model_years": years,
            "model_rate": params.risk_free_rate,
            "model_volatility": vol,
            "model_volatility_source": vol_source,
            "model_price": greeks.price,
            "delta": greeks.delta,
            "is_expired": expired,
        }
    )


def mark_positions(
    pos: pd.DataFrame,
    prices: pd.DataFrame,
    when: pd.Series,
    vols: pd.DataFrame,
    params: PricingParams,
) -> pd.DataFrame:
    """Mark each position at its own date `when` (a Series aligned with `pos`).

    Returns price, price_date, price_source, is_stale, has_quote (a real quote, current or
    stale, backs the mark) and, for options, the Black-Scholes inputs with the model price and
    delta (NaN inputs where the underlying has no price).
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

    model: dict[str, np.ndarray] = {
        "underlying_price": np.full(n, np.nan),
        "underlying_price_date": np.full(n, np.datetime64("NaT"), dtype="datetime64[ns]"),
        "model_years": np.full(n, np.nan),
        "model_rate": np.full(n, np.nan),
        "model_volatility": np.full(n, np.nan),
        "model_volatility_source": np.full(n, None, dtype=object),
        "delta": np.full(n, np.nan),
        "is_expired": np.zeros(n, dtype=bool),
    }
    idx = np.flatnonzero(is_option)
    if len(idx):
        opt = option_model(pos.iloc[idx], prices, when.iloc[idx], vols, params)
        for column, array in model.items():
            array[idx] = opt[column].to_numpy(dtype=array.dtype)
        # A quote on the date wins, unless expired (then frozen at intrinsic at expiry).
        expired = opt["is_expired"].to_numpy()
        use_quote = fresh[idx] & ~expired
        modelled = ~use_quote & ~np.isnan(opt["model_price"].to_numpy())
        price[idx[use_quote]] = quote[idx[use_quote]]
        source[idx[use_quote]] = SOURCE_MARKET
        price[idx[modelled]] = opt["model_price"].to_numpy()[modelled]
        source[idx[modelled]] = SOURCE_MODEL
        price_date[idx[modelled]] = pd.NaT
        stale[idx[modelled]] = ~opt["underlying_fresh"].to_numpy()[modelled]
        # No underlying either: last option quote if any, else entry price; stale.
        fallback = idx[~use_quote & ~modelled]
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
            "has_quote": source != SOURCE_ENTRY,
            **model,
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

    portfolios: portfolio_id, equity_balance (the stated starting equity, used when there is
        no previous snapshot; NaN/None = none stated: start from the net market value).
    positions: POSITION_COLUMNS (+ optional ones); any positions of other portfolios are ignored.
    prices: symbol, date, price; every quote up to `as_of` that may be needed (later rows are
        ignored); for option underlyings enough history for the volatility window. The dates
        present are taken as the trading sessions (a position's day one is the first of them
        on or after its entry date).
    previous: portfolio_id, snapshot_date, equity, cumulative_pnl: the latest complete
        snapshot strictly before `as_of` (absent row = first snapshot).
    flows: portfolio_id, flow_date, amount (signed: deposits > 0).
    """
    params = params or PricingParams()
    t = _days(as_of)
    ports = _portfolio_frame(portfolios, previous, t)
    px = normalise_prices(prices)
    px = px[px["date"] <= t]
    pos, active, base = _positions_in_play(positions, ports, px, t)
    underlyings = pos.loc[pos["is_option"], "underlying_symbol"].unique()
    vols = realised_volatility(px[px["symbol"].isin(underlyings)], params)
    mark_t = mark_positions(pos, px, pd.Series(t, index=pos.index), vols, params)
    mark_base = mark_positions(pos, px, base, vols, params)
    values = _position_values(t, pos, active, base, mark_t, mark_base)
    snapshots = _aggregate(t, ports, values, _flows_in_window(flows, ports, t))
    return RefreshResult(snapshots=snapshots, positions=values)


def _portfolio_frame(
    portfolios: pd.DataFrame, previous: pd.DataFrame | None, t: pd.Timestamp
) -> pd.DataFrame:
    """One row per portfolio with its previous snapshot (if strictly before t)."""
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
    return ports


def _positions_in_play(
    positions: pd.DataFrame, ports: pd.DataFrame, px: pd.DataFrame, t: pd.Timestamp
) -> tuple[pd.DataFrame, np.ndarray, pd.Series]:
    """Positions held on t or exited since the base date, whether active, and base dates.

    Base date (where a position's P&L is measured from): the previous snapshot's date, or for
    a position entered since, its day one = the first session on or after its entry date (an
    entry on a Saturday starts on Monday, never from Friday's close). First snapshot: t.
    """
    pos = normalise_positions(positions)
    pos["portfolio_id"] = pos["portfolio_id"].astype(str)
    pos = pos[pos["portfolio_id"].isin(ports["portfolio_id"])]
    pos = pos.merge(ports[["portfolio_id", "prev_date"]], on="portfolio_id", how="left")
    sessions = np.unique(px["date"].to_numpy(dtype="datetime64[ns]"))
    entry = pos["entry_date"].to_numpy(dtype="datetime64[ns]")
    t64 = np.datetime64(t.to_datetime64(), "ns")
    sessions = np.append(sessions[sessions <= t64], t64)  # t itself is always a session here
    day_one = sessions[np.minimum(np.searchsorted(sessions, entry, side="left"), len(sessions) - 1)]
    prev_date = pos["prev_date"].to_numpy(dtype="datetime64[ns]")
    new_since_prev = pd.isna(prev_date) | (entry > prev_date)
    base = pd.Series(np.where(new_since_prev, day_one, prev_date), dtype="datetime64[ns]")
    base = base.where(pos["prev_date"].notna().to_numpy(), t)  # first snapshot: no P&L
    started = pos["entry_date"] <= t
    active = started & (pos["exit_date"].isna() | (pos["exit_date"] > t))
    exited_now = (
        started
        & pos["exit_date"].notna()
        & (pos["exit_date"] <= t)
        & (pos["exit_date"].to_numpy() > base.to_numpy())
    )
    keep = (active | exited_now).to_numpy()
    return (
        pos[keep].reset_index(drop=True),
        active.to_numpy()[keep],
        base[keep].reset_index(drop=True),
    )


def _position_values(
    t: pd.Timestamp,
    pos: pd.DataFrame,
    active: np.ndarray,
    base: pd.Series,
    mark_t: pd.DataFrame,
    mark_base: pd.DataFrame,
) -> pd.DataFrame:
    """Per position: market value, P&L split, valuation adjustment and exposure value.

    * unrealized = (mark_t − mark_base) × qty × m for held, non-carried positions;
    * a position whose base mark had no quote at all (carried at entry price, "entry") and
      that now has one is re-marked: the difference is a valuation adjustment, not P&L;
    * realized (exited since base) = (exit price − mark_base) × qty × m, carried assets
      included (a private exit realizes exit − carried value);
    * exposure_value: what factor weights use, the signed market value, or for options the
      dollar delta Δ × qty × 100 × underlying price (expired or unpriceable: 0).
    """
    qty_m = pos["quantity"].to_numpy() * pos["multiplier"].to_numpy()
    carried = pos["is_carried"].to_numpy()
    price_t = mark_t["price"].to_numpy()
    price_base = mark_base["price"].to_numpy()
    exit_price = pos["exit_price"].to_numpy()
    exit_price = np.where(np.isnan(exit_price), price_base, exit_price)
    first_quote = (
        active & ~carried & ~mark_base["has_quote"].to_numpy() & mark_t["has_quote"].to_numpy()
    )

    market_value = np.where(active, qty_m * price_t, 0.0)
    move = np.where(active & ~carried, (price_t - price_base) * qty_m, 0.0)
    unrealized = np.where(first_quote, 0.0, move)
    adjustment = np.where(first_quote, move, 0.0)
    realized = np.where(~active, (exit_price - price_base) * qty_m, 0.0)
    is_option = pos["is_option"].to_numpy() & ~carried
    delta = mark_t["delta"].to_numpy(dtype="float64")
    delta_value = np.nan_to_num(
        delta * qty_m * mark_t["underlying_price"].to_numpy(dtype="float64"), nan=0.0
    )
    exposure_value = np.where(active, np.where(is_option, delta_value, market_value), 0.0)

    values = pd.DataFrame(
        {
            "position_id": pos["position_id"].to_numpy(),
            "portfolio_id": pos["portfolio_id"].to_numpy(),
            "symbol": pos["symbol"].to_numpy(),
            "underlying_symbol": pos["underlying_symbol"].replace("", None).to_numpy(),
            "strike_price": pos["strike_price"].to_numpy(),
            "option_type": pos["option_type"].replace("", None).to_numpy(),
            "is_option": pos["is_option"].to_numpy(),
            "is_carried": carried,
            "is_active": active,
            "quantity": pos["quantity"].to_numpy(),
            "multiplier": pos["multiplier"].to_numpy(),
            "base_date": base.to_numpy(),
            "price_base": price_base,
            "market_value": market_value,
            "unrealized_pnl": unrealized,
            "realized_pnl": realized,
            "valuation_adjustment": adjustment,
            "exposure_value": exposure_value,
        }
    )
    values = pd.concat([values, mark_t.reset_index(drop=True)], axis=1)
    values["is_expired"] = values["is_expired"].astype(bool) & active
    values.insert(0, "snapshot_date", t)
    # An exited position has no mark on t: its staleness must not flag the snapshot.
    values.loc[~values["is_active"], "is_stale"] = False
    # The symbol whose quote is missing: for an option, the underlying.
    values["priced_symbol"] = values["symbol"].where(
        ~(values["is_option"] & ~values["is_carried"]), values["underlying_symbol"]
    )
    _allocate_position_cents(values)
    # Plain positions weigh their market value as stored (cents), so an unlevered long-only
    # book's weights sum to exactly 1 against an equity that is that value.
    plain = ~(values["is_option"] & ~values["is_carried"]).to_numpy()
    values.loc[plain, "exposure_value"] = values.loc[plain, "market_value"]
    return values


def _previous_frame(previous: pd.DataFrame | None) -> pd.DataFrame:
    cols: dict[str, list[Any]] = {
        "portfolio_id": [], "prev_date": [], "prev_equity": [], "prev_cumulative_pnl": []}
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


#: Money columns of the position rows, each rounded to cents so that a portfolio's rows add up
#: to its snapshot total exactly.
POSITION_MONEY_COLUMNS = ("market_value", "unrealized_pnl", "realized_pnl", "valuation_adjustment")


def allocate_cents(amounts: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Round amounts to int cents so each group's cents sum to its exact total, rounded.

    Largest remainder: every amount is floored to a cent, then the cents the group's rounded
    total still lacks go to the amounts with the largest remainders (ties: first row first).
    Three lots making 0.005 each give 0.01 + 0.01 + 0.00 = 0.02 = round(0.015), not 0.03.
    """
    n = len(amounts)
    if n == 0:
        return np.zeros(0, dtype="int64")
    scaled = np.round(np.asarray(amounts, dtype="float64") * 100.0, 6)
    floor = np.floor(scaled)
    frac = scaled - floor
    codes, uniques = pd.factorize(pd.Series(groups), sort=False)
    target = _round_half_away(np.bincount(codes, weights=scaled, minlength=len(uniques)))
    lacking = target - np.round(np.bincount(codes, weights=floor, minlength=len(uniques)))
    order = np.lexsort((np.arange(n), -frac, codes))
    group_start = np.searchsorted(codes[order], codes[order], side="left")
    rank = np.empty(n, dtype="int64")
    rank[order] = np.arange(n) - group_start
    return (floor + (rank < lacking[codes])).astype("int64")


def _allocate_position_cents(values: pd.DataFrame) -> None:
    """Round the position money columns in place (adds `<column>_cents` and daily P&L)."""
    groups = values["portfolio_id"].to_numpy()
    for column in POSITION_MONEY_COLUMNS:
        cents = allocate_cents(values[column].to_numpy(dtype="float64"), groups)
        values[f"{column}_cents"] = cents
        values[column] = cents / 100.0
    values["daily_pnl_cents"] = values["unrealized_pnl_cents"] + values["realized_pnl_cents"]
    values["daily_pnl"] = values["daily_pnl_cents"] / 100.0


def _symbol_lists(values: pd.DataFrame, mask: pd.Series, column: str = "priced_symbol") -> pd.Series:
    """Per portfolio: the sorted distinct symbols of the rows in `mask`."""
    if not mask.any():
        return pd.Series(dtype=object)
    return (
        values.loc[mask, ["portfolio_id", column]]
        .dropna()
        .drop_duplicates()
        .sort_values(["portfolio_id", column])
        .groupby("portfolio_id")[column]
        .agg(list)
    )


def _aggregate(
    t: pd.Timestamp, ports: pd.DataFrame, values: pd.DataFrame, flow_cents: pd.Series
) -> pd.DataFrame:
    """Per-portfolio sums of the position cents and the integer-cent equity roll-forward."""
    pid = ports["portfolio_id"]
    mv = values["market_value_cents"]
    active = values["is_active"]
    grouped = pd.DataFrame(
        {
            "long": mv.where(mv > 0, 0),
            "short": mv.where(mv < 0, 0),
            "net": mv,
            "unrealized": values["unrealized_pnl_cents"],
            "realized": values["realized_pnl_cents"],
            "adjustment": values["valuation_adjustment_cents"],
            "n_positions": active.astype("int64"),
            "n_long": (active & (values["quantity"] > 0)).astype("int64"),
            "n_short": (active & (values["quantity"] < 0)).astype("int64"),
            "stale": values["is_stale"] & active,
            "model": (values["price_source"] == SOURCE_MODEL) & active,
        }
    ).groupby(values["portfolio_id"].to_numpy()).sum()
    grouped = grouped.reindex(pid.to_numpy(), fill_value=0)

    no_price = active & (values["price_source"] == SOURCE_ENTRY)
    stale_symbols = _symbol_lists(values, values["is_stale"] & active)
    quality = {
        "no_price": _symbol_lists(values, no_price),
        "stale_price": _symbol_lists(values, values["is_stale"] & active & ~no_price),
        "expired_options": _symbol_lists(values, values["is_expired"] & active, "symbol"),
    }

    unrealized_c = grouped["unrealized"].to_numpy(dtype="int64")
    realized_c = grouped["realized"].to_numpy(dtype="int64")
    adjustment_c = grouped["adjustment"].to_numpy(dtype="int64")
    net_c = grouped["net"].to_numpy(dtype="int64")
    pnl_c = unrealized_c + realized_c
    has_prev = ports["prev_date"].notna().to_numpy()
    stated = ports["equity_balance"].notna().to_numpy()
    stated_c = to_cents(ports["equity_balance"].where(ports["equity_balance"].notna(), 0))
    start_equity_c = np.where(
        has_prev,
        to_cents(ports["prev_equity"].where(ports["prev_equity"].notna(), 0)),
        np.where(stated, stated_c, net_c),
    )
    prev_cum_c = np.where(
        has_prev, to_cents(ports["prev_cumulative_pnl"].where(has_prev, 0)), 0
    )
    flows_c = flow_cents.reindex(pid.to_numpy(), fill_value=0).to_numpy()
    equity_c = start_equity_c + pnl_c + flows_c + adjustment_c
    # equity_prev <= 0: no meaningful return (never a sign flip): NaN, stored as null; a
    # tiny base or an absurd figure: NaN with a flag (`guarded_return`).
    daily_return, return_flag = guarded_return(pnl_c, start_equity_c)

    long_c = grouped["long"].to_numpy(dtype="int64")
    short_c = grouped["short"].to_numpy(dtype="int64")
    gross_c = long_c - short_c
    on_equity = equity_c > 0
    return pd.DataFrame(
        {
            "portfolio_id": pid.to_numpy(),
            "snapshot_date": t,
            "previous_snapshot_date": ports["prev_date"].to_numpy(),
            "long_exposure": long_c / 100.0,
            "short_exposure": short_c / 100.0,
            "gross_exposure": gross_c / 100.0,
            "net_exposure": net_c / 100.0,
            "total_value": net_c / 100.0,
            "long_cents": long_c,
            "short_cents": short_c,
            "gross_cents": gross_c,
            "net_cents": net_c,
            "unrealized_pnl_cents": unrealized_c,
            "realized_pnl_cents": realized_c,
            "daily_pnl_cents": pnl_c,
            "valuation_adjustment_cents": adjustment_c,
            "capital_flow_cents": flows_c,
            "equity_start_cents": start_equity_c,
            "equity_cents": equity_c,
            "equity_source": np.where(
                stated, EquitySource.STATED.value, EquitySource.NET_MARKET_VALUE.value
            ),
            # Factor weights are measured against equity; with equity <= 0 (no meaningful
            # base) against gross exposure instead, and the snapshot says so.
            "exposure_basis": np.where(on_equity, "equity", "gross_exposure"),
            "exposure_base_cents": np.where(on_equity, equity_c, gross_c),
            "cumulative_pnl_cents": prev_cum_c + pnl_c,
            "daily_return": daily_return,
            "return_flag": return_flag,
            "num_positions": grouped["n_positions"].to_numpy(),
            "num_long": grouped["n_long"].to_numpy(),
            "num_short": grouped["n_short"].to_numpy(),
            "is_stale": grouped["stale"].to_numpy() > 0,
            "has_model_prices": grouped["model"].to_numpy() > 0,
            "stale_symbols": stale_symbols.reindex(pid.to_numpy()).to_numpy(),
            **{
                f"quality_{key}": lists.reindex(pid.to_numpy()).to_numpy()
                for key, lists in quality.items()
            },
        }
    )


#: A day's return is only meaningful on a base of at least this many cents ($1)...
MIN_RETURN_BASE_CENTS = 100
#: ... and is recorded only when its magnitude is below this (10,000 %); the column
#: (numeric(20,12)) holds less than 1e8, so no figure can ever overflow it.
MAX_ABS_DAILY_RETURN = 100.0


def guarded_return(pnl_c: np.ndarray, base_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The daily return P&L / start equity, NaN (recorded as NULL) with a flag when absurd.

    A portfolio holding $230M on $0.01 of declared equity is valid input but its "return"
    (~1e10) is meaningless and would overflow the column: such a day gets no return and the
    flag `tiny_equity` or `absurd_return` instead, so one portfolio can never fail a chunk.
    """
    pnl_f = np.asarray(pnl_c, dtype="float64")
    base_f = np.asarray(base_c, dtype="float64")
    positive = base_f > 0
    tiny = positive & (base_f < MIN_RETURN_BASE_CENTS)
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = np.where(positive, pnl_f / np.where(positive, base_f, 1.0), np.nan)
    absurd = positive & ~tiny & ~(np.abs(raw) < MAX_ABS_DAILY_RETURN)
    tiny_and_moved = tiny & (pnl_f != 0)
    flag = np.where(tiny_and_moved, "tiny_equity", np.where(absurd, "absurd_return", ""))
    value = np.where(flag == "", raw, np.nan)
    return value, flag.astype(object)


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


def _symbols(value: Any) -> list[str]:
    return list(value) if isinstance(value, list) else []


def _iso_day(value: Any) -> str | None:
    day = _day(value)
    return None if day is None else day.isoformat()


def _return_flag(row: Any) -> dict[str, str]:
    flag = getattr(row, "return_flag", "") or ""
    return {"return_flag": flag} if flag else {}


def snapshot_records(snapshots: pd.DataFrame) -> list[dict[str, Any]]:
    """`portfolio_snapshots` rows (column names of the model), money as Decimal cents.

    `data_quality` lists the symbols the snapshot lacked inputs for (no_price, stale_price,
    expired_options; `no_betas` is filled in with the exposures); `is_degraded` says whether
    any price or beta was missing (such a snapshot is restated when its date's batch
    completes).
    """
    frame = snapshots.reset_index(drop=True)
    records = []
    for row in frame.itertuples(index=False):
        quality = {
            "no_price": _symbols(row.quality_no_price),
            "stale_price": _symbols(row.quality_stale_price),
            "expired_options": _symbols(row.quality_expired_options),
            "no_betas": [],
        }
        records.append(
            {
                "portfolio_id": row.portfolio_id,
                "snapshot_date": _day(row.snapshot_date),
                "equity": cents_to_decimal(row.equity_cents),
                "equity_source": row.equity_source,
                "total_value": cents_to_decimal(row.net_cents),
                "long_value": cents_to_decimal(row.long_cents),
                "short_value": cents_to_decimal(row.short_cents),
                "gross_exposure": cents_to_decimal(row.gross_cents),
                "net_exposure": cents_to_decimal(row.net_cents),
                "daily_pnl": cents_to_decimal(row.daily_pnl_cents),
                "daily_unrealized_pnl": cents_to_decimal(row.unrealized_pnl_cents),
                "daily_realized_pnl": cents_to_decimal(row.realized_pnl_cents),
                "valuation_adjustment": cents_to_decimal(row.valuation_adjustment_cents),
                "daily_return": None
                if not math.isfinite(float(row.daily_return))
                else Decimal(repr(float(row.daily_return))).quantize(_RETURN_PLACES),
                "cumulative_pnl": cents_to_decimal(row.cumulative_pnl_cents),
                "capital_flow": cents_to_decimal(row.capital_flow_cents),
                "position_count": int(row.num_positions),
                "has_stale_prices": bool(row.is_stale),
                "stale_symbols": _symbols(row.stale_symbols),
                "has_model_prices": bool(row.has_model_prices),
                "exposure_basis": row.exposure_basis,
                "data_quality": quality,
                "is_degraded": bool(quality["no_price"] or quality["stale_price"]),
                "details": {
                    "previous_snapshot_date": _iso_day(row.previous_snapshot_date),
                    "equity_start": str(cents_to_decimal(row.equity_start_cents)),
                    "long_positions": int(row.num_long),
                    "short_positions": int(row.num_short),
                    **_return_flag(row),
                },
            }
        )
    return records


def position_value_records(values: pd.DataFrame) -> list[dict[str, Any]]:
    """`position_snapshots` rows: the mark used, its source, value and P&L, model inputs."""
    frame = values.reset_index(drop=True)
    inputs = model_inputs_column(frame)
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
                "market_value": cents_to_decimal(row.market_value_cents),
                "daily_pnl": cents_to_decimal(row.daily_pnl_cents),
                "realized_pnl": cents_to_decimal(row.realized_pnl_cents),
                "valuation_adjustment": cents_to_decimal(row.valuation_adjustment_cents),
                "delta": None if np.isnan(row.delta) or not row.is_active else float(row.delta),
                "is_expired": bool(row.is_expired),
                "model_inputs": inputs[i],
            }
        )
    return records


def model_inputs_column(values: pd.DataFrame) -> list[dict[str, Any] | None]:
    """Per position row: the Black-Scholes inputs of a held option (whose delta weights its
    exposures, and which priced it when `price_source` is "model"), else None."""
    out: list[dict[str, Any] | None] = [None] * len(values)
    frame = values.reset_index(drop=True)
    with_inputs = frame.index[
        frame["is_option"].astype(bool)
        & ~frame["is_carried"].astype(bool)
        & frame["is_active"].astype(bool)
        & frame["underlying_price"].notna()
    ]
    for i, row in zip(with_inputs, frame.loc[with_inputs].itertuples(index=False), strict=True):
        out[i] = model_inputs(row)
    return out


def model_inputs(row: Any) -> dict[str, Any]:
    """The Black-Scholes inputs of an option's model price and delta, as JSON-ready values."""
    return {
        "model": "black_scholes",
        "underlying": row.underlying_symbol,
        "underlying_price": float(row.underlying_price),
        "underlying_price_date": _iso_day(row.underlying_price_date),
        "strike": float(row.strike_price),
        "option_type": row.option_type,
        "years_to_expiry": float(row.model_years),
        "risk_free_rate": float(row.model_rate),
        "volatility": float(row.model_volatility),
        "volatility_source": row.model_volatility_source,
        "delta": float(row.delta),
        "expired": bool(row.is_expired),
    }
