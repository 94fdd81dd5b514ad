"""SQLAlchemy models: the tables of docs/design.md §4, one place for the schema.

Types follow what each number is: user money (entry prices, equity, P&L) is NUMERIC and
reaches Python as Decimal; market data and regression outputs are float8, because they are
measurements that feed vectorised numpy math and are read in bulk (millions of rows).
The alembic migrations in `libs/common/migrations` create exactly these tables.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

MONEY = Numeric(24, 6)
QUANTITY = Numeric(24, 8)


def _uuid() -> uuid.UUID:
    return uuid.uuid4()


class Base(DeclarativeBase):
    pass


def created_at_column() -> Mapped[dt.datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


# --- users and auth ---------------------------------------------------------------------


class User(Base):
    __tablename__ = "users"
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=_uuid)
    username: Mapped[str] = mapped_column(String(200), unique=True, nullable=False)
    is_admin: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    # The Clerk user id (`sub`) of a user who signs in through the web frontend (clerk.py).
    clerk_user_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    created_at: Mapped[dt.datetime] = created_at_column()


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=_uuid)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    token_hash: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = created_at_column()
    last_used_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # NULL = never expires (a token made with `--expires-days 0`).
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


# --- portfolios -------------------------------------------------------------------------


class Portfolio(Base):
    __tablename__ = "portfolios"
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=_uuid)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    name: Mapped[str] = mapped_column(String(300), nullable=False)
    # Starting equity: the base of the equity roll-forward (docs/design.md §7).
    # Stated starting equity, the base of the equity roll-forward (docs/design.md §7); NULL:
    # none stated, the first snapshot starts from the net market value (equity_source).
    equity_balance: Mapped[Decimal | None] = mapped_column(MONEY, nullable=True)
    equity_source: Mapped[str] = mapped_column(
        String(24), nullable=False, server_default=text("'stated'")
    )
    currency: Mapped[str] = mapped_column(String(3), nullable=False, server_default="USD")
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    created_at: Mapped[dt.datetime] = created_at_column()
    # The web frontend's account (DESIGN §9 adapters, docs/frontend.md): unique per user.
    account_name: Mapped[str | None] = mapped_column(String(100))
    account_type: Mapped[str | None] = mapped_column(String(16))
    __table_args__ = (
        Index("uq_portfolios_user_account_name", "user_id", "account_name", unique=True,
              postgresql_where=text("account_name IS NOT NULL")),
    )


class Position(Base):
    __tablename__ = "positions"
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=_uuid)
    portfolio_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("portfolios.id", ondelete="CASCADE"), nullable=False, index=True
    )
    source_row: Mapped[int | None] = mapped_column(Integer)  # line in the uploaded CSV
    symbol: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    quantity: Mapped[Decimal] = mapped_column(QUANTITY, nullable=False)  # signed: short < 0
    entry_price: Mapped[Decimal] = mapped_column(MONEY, nullable=False)
    entry_date: Mapped[dt.date] = mapped_column(Date, nullable=False)
    exit_date: Mapped[dt.date | None] = mapped_column(Date)
    exit_price: Mapped[Decimal | None] = mapped_column(MONEY)
    # PUBLIC/OPTIONS/PRIVATE
    investment_class: Mapped[str] = mapped_column(String(16), nullable=False)
    investment_subtype: Mapped[str | None] = mapped_column(String(64))
    underlying_symbol: Mapped[str | None] = mapped_column(String(32))
    strike_price: Mapped[Decimal | None] = mapped_column(MONEY)
    expiration_date: Mapped[dt.date | None] = mapped_column(Date)
    option_type: Mapped[str | None] = mapped_column(String(4))  # CALL/PUT
    multiplier: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("1"))
    manual_value: Mapped[Decimal | None] = mapped_column(MONEY)  # private assets: manual mark
    created_at: Mapped[dt.datetime] = created_at_column()


class CapitalFlow(Base):
    """Deposits (+) and withdrawals (−): equity changes that are not P&L."""

    __tablename__ = "capital_flows"
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=_uuid)
    portfolio_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("portfolios.id", ondelete="CASCADE"), nullable=False
    )
    flow_date: Mapped[dt.date] = mapped_column(Date, nullable=False)
    amount: Mapped[Decimal] = mapped_column(MONEY, nullable=False)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = created_at_column()
    __table_args__ = (Index("ix_capital_flows_portfolio_date", "portfolio_id", "flow_date"),)


# --- market data ------------------------------------------------------------------------


class SymbolUniverse(Base):
    __tablename__ = "symbol_universe"
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    asset_type: Mapped[str | None] = mapped_column(String(32))  # stock / etf / fund / index
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    added_by: Mapped[str | None] = mapped_column(String(64))  # seed / onboarding / operator
    added_at: Mapped[dt.datetime] = created_at_column()
    last_price_date: Mapped[dt.date | None] = mapped_column(Date)


class CompanyProfile(Base):
    __tablename__ = "company_profiles"
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str | None] = mapped_column(Text)
    sector: Mapped[str | None] = mapped_column(String(128))
    industry: Mapped[str | None] = mapped_column(String(256))
    exchange: Mapped[str | None] = mapped_column(String(64))
    currency: Mapped[str | None] = mapped_column(String(8))
    market_cap: Mapped[float | None] = mapped_column(Float)
    beta: Mapped[float | None] = mapped_column(Float)
    source: Mapped[str | None] = mapped_column(String(64))
    as_of: Mapped[dt.date | None] = mapped_column(Date)
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )


class MarketDataCache(Base):
    __tablename__ = "market_data_cache"
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    date: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    open: Mapped[float | None] = mapped_column(Float)
    high: Mapped[float | None] = mapped_column(Float)
    low: Mapped[float | None] = mapped_column(Float)
    close: Mapped[float] = mapped_column(Float, nullable=False)
    adj_close: Mapped[float] = mapped_column(Float, nullable=False)
    volume: Mapped[int | None] = mapped_column(BigInteger)
    # Where the bar came from, e.g. "yfinance", "sample:real", "sample:proxy:SP500",
    # "sample:synthetic": synthetic data is never mistaken for a quote.
    source: Mapped[str] = mapped_column(String(64), nullable=False)
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    __table_args__ = (Index("ix_market_data_cache_date", "date"),)


class Fundamentals(Base):
    __tablename__ = "fundamentals"
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    as_of_date: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    last_earnings_date: Mapped[dt.date | None] = mapped_column(Date)
    next_earnings_date: Mapped[dt.date | None] = mapped_column(Date)
    data: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default="{}")
    source: Mapped[str | None] = mapped_column(String(64))
    fetched_at: Mapped[dt.datetime] = created_at_column()


class FactorDefinition(Base):
    __tablename__ = "factor_definitions"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(128), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # market/rates/style/spread
    method: Mapped[str] = mapped_column(String(16), nullable=False)  # ols/ridge
    regressor: Mapped[str] = mapped_column(String(64), nullable=False)  # e.g. "SPY", "VUG-VTV"
    window_days: Mapped[int] = mapped_column(Integer, nullable=False)
    min_obs: Mapped[int] = mapped_column(Integer, nullable=False)
    sort_order: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))


class SymbolFactorExposure(Base):
    __tablename__ = "symbol_factor_exposures"
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    factor_name: Mapped[str] = mapped_column(
        ForeignKey("factor_definitions.name"), primary_key=True
    )
    calculation_date: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    beta: Mapped[float] = mapped_column(Float, nullable=False)
    r2: Mapped[float | None] = mapped_column(Float)
    n_obs: Mapped[int] = mapped_column(Integer, nullable=False)
    quality: Mapped[str] = mapped_column(String(16), nullable=False)  # full / limited
    __table_args__ = (
        Index("ix_symbol_factor_exposures_date", "calculation_date"),
        # the position_factor_exposures view joins on (symbol, calculation_date)
        Index("ix_symbol_factor_exposures_symbol_date", "symbol", "calculation_date"),
    )


class SymbolBatchDate(Base):
    """The symbol batch watermark: one row per trading date the batch has completed."""

    __tablename__ = "symbol_batch_dates"
    batch_date: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False)  # completed / partial
    run_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    symbols_total: Mapped[int] = mapped_column(Integer, nullable=False)
    symbols_failed: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    failures: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default="{}")
    completed_at: Mapped[dt.datetime] = created_at_column()


# --- snapshots and exposures ------------------------------------------------------------


class PortfolioSnapshot(Base):
    """A portfolio's snapshot on a date; partitioned by month of snapshot_date (0009).

    Keys of a partitioned table must include the partition key: the primary key is
    (id, snapshot_date), the natural key (portfolio_id, snapshot_date) stays unique.
    """

    __tablename__ = "portfolio_snapshots"
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=_uuid)
    portfolio_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("portfolios.id", ondelete="CASCADE"), nullable=False
    )
    snapshot_date: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    # The slot is claimed with is_complete=false and completed in one transaction with its
    # values: a complete-looking half snapshot cannot exist.
    is_complete: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    equity: Mapped[Decimal | None] = mapped_column(MONEY)
    total_value: Mapped[Decimal | None] = mapped_column(MONEY)  # net market value
    long_value: Mapped[Decimal | None] = mapped_column(MONEY)
    short_value: Mapped[Decimal | None] = mapped_column(MONEY)
    gross_exposure: Mapped[Decimal | None] = mapped_column(MONEY)
    net_exposure: Mapped[Decimal | None] = mapped_column(MONEY)
    daily_pnl: Mapped[Decimal | None] = mapped_column(MONEY)
    daily_unrealized_pnl: Mapped[Decimal | None] = mapped_column(MONEY)
    daily_realized_pnl: Mapped[Decimal | None] = mapped_column(MONEY)
    daily_return: Mapped[Decimal | None] = mapped_column(Numeric(20, 12))
    cumulative_pnl: Mapped[Decimal | None] = mapped_column(MONEY)
    capital_flow: Mapped[Decimal | None] = mapped_column(MONEY)
    position_count: Mapped[int | None] = mapped_column(Integer)
    has_stale_prices: Mapped[bool] = mapped_column(
        Boolean, nullable=False, server_default=text("false")
    )
    stale_symbols: Mapped[list[str]] = mapped_column(
        ARRAY(Text), nullable=False, server_default="{}"
    )
    has_model_prices: Mapped[bool] = mapped_column(
        Boolean, nullable=False, server_default=text("false")
    )
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default="{}")
    # stated / net_market_value: where the first snapshot's equity came from.
    equity_source: Mapped[str | None] = mapped_column(String(24))
    # Re-marks of positions first carried at entry that got their first quote: in equity,
    # not in daily P&L or return.
    valuation_adjustment: Mapped[Decimal | None] = mapped_column(MONEY)
    # equity / gross_exposure: what factor weights were measured against (equity <= 0).
    exposure_basis: Mapped[str | None] = mapped_column(String(16))
    # {no_price, stale_price, no_betas, expired_options}: symbols the snapshot lacked inputs for.
    data_quality: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default="{}"
    )
    # Made with missing prices or betas: restated when its date's symbol batch completes.
    is_degraded: Mapped[bool] = mapped_column(
        Boolean, nullable=False, server_default=text("false")
    )
    claimed_at: Mapped[dt.datetime] = created_at_column()
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    __table_args__ = (
        UniqueConstraint("portfolio_id", "snapshot_date", name="uq_portfolio_snapshots_day"),
        Index("ix_portfolio_snapshots_date", "snapshot_date"),
        {"postgresql_partition_by": "RANGE (snapshot_date)"},
    )


class PositionSnapshot(Base):
    """Per-position valuation on a snapshot date (price used and how it was obtained).

    Partitioned by month of snapshot_date (0009). Also carries what the position's factor
    exposures are derived from (the position_factor_exposures view): the symbol whose betas
    it carries (the underlying for an option), the date of those betas, its exposure value
    (market value, or the option's dollar delta) and weight (exposure value over the
    snapshot's equity, or gross exposure when equity <= 0); NULL weight: no exposures.
    """

    __tablename__ = "position_snapshots"
    # No row-level foreign keys (0009, like 0002): their checks were ~60% of the refresh's
    # insert. Deleting positions (or their portfolio, which cascades to them) deletes their
    # rows through the statement-level trigger positions_delete_snapshots.
    position_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    snapshot_date: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    portfolio_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    price: Mapped[Decimal | None] = mapped_column(MONEY)
    # market/stale/model/entry
    price_source: Mapped[str] = mapped_column(String(16), nullable=False)
    market_value: Mapped[Decimal] = mapped_column(MONEY, nullable=False)
    daily_pnl: Mapped[Decimal] = mapped_column(MONEY, nullable=False)
    realized_pnl: Mapped[Decimal] = mapped_column(MONEY, nullable=False)
    model_inputs: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    valuation_adjustment: Mapped[Decimal] = mapped_column(
        MONEY, nullable=False, server_default=text("0")
    )
    # Options: Black-Scholes delta on the date (weights its exposures); expired options 0.
    delta: Mapped[float | None] = mapped_column(Float)
    is_expired: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    beta_symbol: Mapped[str | None] = mapped_column(String(64))
    beta_date: Mapped[dt.date | None] = mapped_column(Date)
    exposure_value: Mapped[float | None] = mapped_column(Float)
    weight: Mapped[float | None] = mapped_column(Float)
    __table_args__ = (
        Index("ix_position_snapshots_portfolio_date", "portfolio_id", "snapshot_date"),
        {"postgresql_partition_by": "RANGE (snapshot_date)"},
    )


class FactorExposure(Base):
    """Portfolio-level factor exposure on a date."""

    __tablename__ = "factor_exposures"
    portfolio_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("portfolios.id", ondelete="CASCADE"), primary_key=True
    )
    calculation_date: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    factor_name: Mapped[str] = mapped_column(
        ForeignKey("factor_definitions.name"), primary_key=True
    )
    exposure: Mapped[float] = mapped_column(Float, nullable=False)  # Σ beta × weight
    exposure_dollar: Mapped[Decimal | None] = mapped_column(MONEY)


# position_factor_exposures is a VIEW (migration 0009), not a table: position_snapshots
# (beta_symbol, beta_date, exposure_value, weight) x symbol_factor_exposures of that symbol
# and date, one row per position, date and factor with beta, weight and round(beta x
# exposure value, 2). Writing 12 rows per position per day was the refresh's dominant cost.
# Columns: position_id, calculation_date, factor_name, portfolio_id, beta, weight,
# exposure_dollar (see docs/design.md, tables).


# --- risk analytics (DESIGN §10) --------------------------------------------------------
# Derived per (portfolio, date) in the snapshot's transaction; keyed by portfolio and date
# (no surrogate keys) so they partition by date. One row per portfolio and date carries the
# per-symbol / per-scenario values as arrays: one row to write and to read per endpoint call.


class PortfolioRiskMetrics(Base):
    """Volatility, beta, concentration, sectors and portfolio Greeks of a snapshot."""

    __tablename__ = "portfolio_risk_metrics"
    portfolio_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("portfolios.id", ondelete="CASCADE"), primary_key=True
    )
    calculation_date: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    return_basis: Mapped[str] = mapped_column(String(8), nullable=False)  # equity/gross/none
    history_sessions: Mapped[int] = mapped_column(Integer, nullable=False)
    volatility_21d: Mapped[float | None] = mapped_column(Float)
    volatility_63d: Mapped[float | None] = mapped_column(Float)
    volatility_forecast: Mapped[float | None] = mapped_column(Float)
    volatility_percentile: Mapped[float | None] = mapped_column(Float)
    beta_regression: Mapped[float | None] = mapped_column(Float)
    beta_r2: Mapped[float | None] = mapped_column(Float)
    beta_n_obs: Mapped[int] = mapped_column(Integer, nullable=False)
    beta_exposure_weighted: Mapped[float | None] = mapped_column(Float)
    beta_provider: Mapped[float | None] = mapped_column(Float)
    beta_provider_coverage: Mapped[float | None] = mapped_column(Float)
    hhi: Mapped[float | None] = mapped_column(Float)
    effective_positions: Mapped[float | None] = mapped_column(Float)
    top3_weight: Mapped[float | None] = mapped_column(Float)
    top10_weight: Mapped[float | None] = mapped_column(Float)
    sectors: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, nullable=False, server_default="[]"
    )
    unclassified_symbols: Mapped[list[str]] = mapped_column(
        ARRAY(Text), nullable=False, server_default="{}"
    )
    delta: Mapped[float] = mapped_column(Float, nullable=False)
    gamma: Mapped[float] = mapped_column(Float, nullable=False)
    theta: Mapped[float] = mapped_column(Float, nullable=False)
    vega: Mapped[float] = mapped_column(Float, nullable=False)
    rho: Mapped[float] = mapped_column(Float, nullable=False)
    delta_dollars: Mapped[float] = mapped_column(Float, nullable=False)
    gamma_dollars: Mapped[float] = mapped_column(Float, nullable=False)
    __table_args__ = (Index("ix_portfolio_risk_metrics_date", "calculation_date"),)


class PositionGreeks(Base):
    """Greeks of an option position on a date and the Black-Scholes inputs they used."""

    __tablename__ = "position_greeks"
    portfolio_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("portfolios.id", ondelete="CASCADE"), primary_key=True
    )
    calculation_date: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    position_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("positions.id", ondelete="CASCADE"), primary_key=True
    )
    delta: Mapped[float | None] = mapped_column(Float)
    gamma: Mapped[float | None] = mapped_column(Float)
    theta: Mapped[float | None] = mapped_column(Float)  # per calendar day
    vega: Mapped[float | None] = mapped_column(Float)  # per vol point
    rho: Mapped[float | None] = mapped_column(Float)  # per rate point
    delta_dollars: Mapped[float | None] = mapped_column(Float)
    gamma_dollars: Mapped[float | None] = mapped_column(Float)
    underlying_price: Mapped[float | None] = mapped_column(Float)
    strike: Mapped[float | None] = mapped_column(Float)
    years: Mapped[float | None] = mapped_column(Float)
    volatility: Mapped[float | None] = mapped_column(Float)
    rate: Mapped[float | None] = mapped_column(Float)


class PortfolioCorrelations(Base):
    """Correlation matrix of a portfolio's public positions (upper triangles, row-major)."""

    __tablename__ = "portfolio_correlations"
    portfolio_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("portfolios.id", ondelete="CASCADE"), primary_key=True
    )
    calculation_date: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    window_sessions: Mapped[int] = mapped_column(Integer, nullable=False)
    symbols: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False)
    # Packed little-endian (migration 0005): float64 upper triangle i < j, row-major, and
    # int32 counts of the upper triangle with the diagonal.
    correlations: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    observations: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    cluster_labels: Mapped[list[int]] = mapped_column(ARRAY(Integer), nullable=False)
    excluded_symbols: Mapped[list[str]] = mapped_column(
        ARRAY(Text), nullable=False, server_default="{}"
    )
    average_correlation: Mapped[float | None] = mapped_column(Float)
    diversification_ratio: Mapped[float | None] = mapped_column(Float)
    effective_bets: Mapped[float | None] = mapped_column(Float)
    __table_args__ = (Index("ix_portfolio_correlations_date", "calculation_date"),)


class StressScenario(Base):
    """The versioned scenario set (seeded by migration 0003; a change is a new version)."""

    __tablename__ = "stress_scenarios"
    scenario_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    category: Mapped[str] = mapped_column(String(32), nullable=False)
    # factor name -> shock: a return as a fraction, or basis points for interest_rate
    shocks: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    sort_order: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))


class PortfolioStressResults(Base):
    """Every active scenario's impacts on a portfolio on a date, aligned arrays.

    scenario_ids[s], scenario_versions[s], direct_impact[s], ...; contributions is
    (scenarios × factors) row-major over ``factors`` (the last one the options' gamma term),
    and factor_moves the same shape without it: the moves of the correlated scenario.
    """

    __tablename__ = "portfolio_stress_results"
    portfolio_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("portfolios.id", ondelete="CASCADE"), primary_key=True
    )
    calculation_date: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    equity: Mapped[float | None] = mapped_column(Float)
    scenario_ids: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False)
    scenario_versions: Mapped[list[int]] = mapped_column(ARRAY(Integer), nullable=False)
    factors: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False)
    direct_impact: Mapped[list[float]] = mapped_column(ARRAY(Float), nullable=False)
    correlated_impact: Mapped[list[float]] = mapped_column(ARRAY(Float), nullable=False)
    impact_pct_of_equity: Mapped[list[float]] = mapped_column(ARRAY(Float), nullable=False)
    impact_pct_of_gross: Mapped[list[float]] = mapped_column(ARRAY(Float), nullable=False)
    # Packed little-endian float64, (scenarios × factors) row-major (migration 0005).
    factor_moves: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    contributions: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    __table_args__ = (Index("ix_portfolio_stress_results_date", "calculation_date"),)


# --- jobs -------------------------------------------------------------------------------


class BatchRun(Base):
    """One row per job (every type): what the API shows as job status and history.

    The partial unique index on (job_type, job_key) WHERE status='running' is what keeps two
    replicas from running the same job: the database refuses the second start.
    """

    __tablename__ = "batch_run_history"
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=_uuid)
    job_type: Mapped[str] = mapped_column(String(64), nullable=False)
    job_key: Mapped[str] = mapped_column(String(256), nullable=False)
    # running/completed/partial/failed
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    correlation_id: Mapped[str | None] = mapped_column(String(128))
    worker_id: Mapped[str | None] = mapped_column(String(128))
    current_phase: Mapped[str | None] = mapped_column(String(64))
    phases: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, nullable=False, server_default="[]")
    progress_current: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    progress_total: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    progress_unit: Mapped[str | None] = mapped_column(String(32))
    started_at: Mapped[dt.datetime] = created_at_column()
    heartbeat_at: Mapped[dt.datetime] = created_at_column()
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default="{}")
    __table_args__ = (
        Index(
            "uq_batch_run_history_running",
            "job_type",
            "job_key",
            unique=True,
            postgresql_where=text("status = 'running'"),
        ),
        Index("ix_batch_run_history_type_started", "job_type", "started_at"),
        Index("ix_batch_run_history_status", "status"),
    )


# --- onboarding -------------------------------------------------------------------------


class PortfolioOnboarding(Base):
    __tablename__ = "portfolio_onboarding"
    portfolio_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("portfolios.id", ondelete="CASCADE"), primary_key=True
    )
    # running/completed/partial/failed
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    mode: Mapped[str] = mapped_column(String(16), nullable=False)  # v2_instant / v2_async
    started_at: Mapped[dt.datetime] = created_at_column()
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    snapshot_requested_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    snapshot_date: Mapped[dt.date | None] = mapped_column(Date)
    failed_symbols: Mapped[list[str]] = mapped_column(
        ARRAY(Text), nullable=False, server_default="{}"
    )
    error: Mapped[str | None] = mapped_column(Text)


class PortfolioOnboardingSymbol(Base):
    """A symbol a portfolio waits for before its first snapshot."""

    __tablename__ = "portfolio_onboarding_symbols"
    portfolio_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("portfolios.id", ondelete="CASCADE"), primary_key=True
    )
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    __table_args__ = (Index("ix_portfolio_onboarding_symbols_symbol", "symbol"),)


class SymbolOnboarding(Base):
    """One row per symbol ever requested: fetched once however many users ask."""

    __tablename__ = "symbol_onboarding"
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False)  # pending/running/ready/failed
    reason: Mapped[str | None] = mapped_column(Text)
    requested_by: Mapped[str | None] = mapped_column(String(200))
    requested_at: Mapped[dt.datetime] = created_at_column()
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")


class OnboardingActivity(Base):
    __tablename__ = "onboarding_activity"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    portfolio_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("portfolios.id", ondelete="CASCADE"), nullable=False, index=True
    )
    timestamp: Mapped[dt.datetime] = created_at_column()
    level: Mapped[str] = mapped_column(String(8), nullable=False, server_default="info")
    message: Mapped[str] = mapped_column(Text, nullable=False)
