"""Response models of the HTTP API (docs/design.md §9): the JSON contract the frontend codes against.

The number types every response uses (use them in new models too):
- `Money`: a decimal string at exactly 2 dp ("1234.50", "-0.25", "0.00"), so no cent is lost
  to binary floating point and every amount reads alike;
- `Price`: a per-unit price, a decimal string at exactly 4 dp ("187.1200");
- `Quantity`: a decimal string, as many decimals as needed ("10", "0.5");
- `Ratio`: returns, betas, exposures, R², weights: a JSON number (rounded to 10 dp).
No value is ever written in exponent notation (not "0E-12", not 1e-07): the API's JSON
response class writes numbers in fixed-point notation.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, PlainSerializer, WithJsonSchema

CENT = Decimal("0.01")
PRICE_STEP = Decimal("0.0001")
RATIO_DECIMALS = 10


def money_text(value: Decimal) -> str:
    return format(Decimal(value).quantize(CENT, rounding=ROUND_HALF_EVEN), "f")


def price_text(value: Decimal) -> str:
    return format(Decimal(value).quantize(PRICE_STEP, rounding=ROUND_HALF_EVEN), "f")


def quantity_text(value: Decimal) -> str:
    text = format(Decimal(value), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _ratio(value: Any) -> float:
    return round(float(value), RATIO_DECIMALS)


Money = Annotated[
    Decimal,
    PlainSerializer(money_text, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": r"^-?\d+\.\d{2}$", "examples": ["1234.50"],
                    "description": "Money: a decimal string at exactly 2 dp."}),
]
Price = Annotated[
    Decimal,
    PlainSerializer(price_text, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": r"^-?\d+\.\d{4}$", "examples": ["187.1200"],
                    "description": "Price per unit: a decimal string at exactly 4 dp."}),
]
Quantity = Annotated[
    Decimal,
    PlainSerializer(quantity_text, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": r"^-?\d+(\.\d+)?$", "examples": ["10", "0.5"],
                    "description": "A quantity: a decimal string, no exponent."}),
]
Ratio = Annotated[
    float,
    BeforeValidator(_ratio),
    WithJsonSchema({"type": "number", "examples": [0.0123],
                    "description": "A ratio (return, beta, exposure, R²): a JSON number in "
                                   "fixed-point notation, at most 10 dp."}),
]
# What a position's price is: a quote of the day; the last earlier quote (stale); a
# Black-Scholes model price; carried at its manual or entry value (private, cash); a
# synthetic sample-provider bar (no real quote exists); the entry price because no quote
# exists at all; or none because the position was closed.
PriceSource = Literal["market", "stale", "model", "carried", "synthetic", "entry", "exited"]


class Problem(BaseModel):
    """One problem with a request. For uploads `row` is the line number in the CSV file as a
    text editor shows it (1 = first line; comment lines and the header count)."""

    row: int | None = Field(None, description="Line number in the uploaded file (1-based), "
                                              "or null for a problem of the whole request.")
    column: str | None = Field(None, description="CSV column or form/query field at fault.")
    message: str


class ErrorResponse(BaseModel):
    detail: str
    errors: list[Problem] = Field(default_factory=list)


class UploadResponse(BaseModel):
    portfolio_id: uuid.UUID
    positions_created: int
    symbols_known: int = Field(description="Distinct market-data symbols already known.")
    symbols_queued: int = Field(description="Distinct symbols being fetched before the first "
                                            "snapshot (shared with other portfolios waiting).")
    status: Literal["running", "completed", "partial", "failed"]
    mode: Literal["v2_instant", "v2_async"]
    queued_symbols: list[str] = Field(default_factory=list)
    equity_source: str = Field("stated", description=(
        "`stated` (equity_balance was sent) or `net_market_value`: the first snapshot starts "
        "from the positions' net market value on its date."))
    warnings: list[dict[str, Any]] = Field(default_factory=list, description=(
        "Accepted rows worth a look, as {row, column, message}: e.g. options already expired "
        "(valued at intrinsic value at expiry)."))


class OverallProgress(BaseModel):
    current_phase: str = Field(description="Phase id, e.g. phase_2.")
    current_phase_name: str
    phases_completed: int
    phases_total: int
    percent_complete: float


class PhaseProgress(BaseModel):
    current: int
    total: int
    unit: str


class PhaseOut(BaseModel):
    phase_id: str
    phase_name: str
    status: Literal["pending", "running", "completed", "failed"]
    current: int
    total: int
    unit: str
    duration_seconds: int | None = Field(None, description="Whole seconds, once finished.")


class ActivityLine(BaseModel):
    timestamp: dt.datetime
    message: str
    level: Literal["info", "warning", "error"]


class OnboardingStatus(BaseModel):
    portfolio_id: uuid.UUID
    status: Literal["not_found", "running", "completed", "partial", "failed"]
    mode: Literal["v2_instant", "v2_async"] | None = None
    started_at: dt.datetime | None = None
    elapsed_seconds: int = Field(0, description="Whole seconds since the upload (frozen at "
                                                "the finish).")
    overall_progress: OverallProgress | None = None
    current_phase_progress: PhaseProgress | None = None
    phases: list[PhaseOut] = Field(default_factory=list)
    activity_log: list[ActivityLine] = Field(default_factory=list)
    snapshot_date: dt.date | None = None
    failed_symbols: list[str] = Field(default_factory=list)
    error: str | None = None
    finished_at: dt.datetime | None = Field(
        None, description="When the outcome was recorded (null while running, and for a "
                          "moment after the first snapshot until the coordinator records it).")


class JobProgress(BaseModel):
    current: int
    total: int
    unit: str | None = None


class JobOut(BaseModel):
    id: uuid.UUID
    job_type: str
    job_key: str
    status: str
    current_phase: str | None
    phases: list[dict[str, Any]]
    progress: JobProgress
    started_at: dt.datetime
    heartbeat_at: dt.datetime
    finished_at: dt.datetime | None
    duration_seconds: float | None
    attempts: int
    error: str | None
    worker_id: str | None
    correlation_id: str | None
    result: dict[str, Any]


class NightlyRequest(BaseModel):
    target_date: dt.date | None = Field(
        None, description="Trading date to process; default: the latest settled session.")
    rerun: bool = Field(
        False, description="Restate the date even if it was done: re-fetch it, recompute its "
                           "betas and restate the snapshots from it to the latest date.")


class JobRetried(BaseModel):
    job_id: uuid.UUID
    message_id: str = Field(description="Nats-Msg-Id of the re-published message "
                                        "(a second retry of the same job is dropped).")


class NightlyAccepted(BaseModel):
    message_id: str
    published: bool = Field(description="False when an identical request inside the duplicate "
                                         "window was already queued (nothing new to do).")
    target_date: dt.date | None


class PortfolioOut(BaseModel):
    portfolio_id: uuid.UUID
    name: str
    equity_balance: Money | None = Field(description=(
        "The starting equity stated at upload; null when none was stated (the first "
        "snapshot then starts from the net market value of the positions)."))
    equity_source: str = Field("stated", description=(
        "`stated` (equity_balance) or `net_market_value` (longs − shorts + option marks + "
        "carried assets at the first snapshot date). " + "Equity is the capital returns and factor weights are measured against: daily_return = daily_pnl / previous equity, weight = (delta-adjusted) market value / equity. It rolls forward as equity + daily P&L + capital flows + valuation adjustments."))
    currency: str
    created_at: dt.datetime
    position_count: int
    onboarding_status: str | None
    latest_snapshot_date: dt.date | None


class SnapshotOut(BaseModel):
    snapshot_date: dt.date
    equity: Money | None = Field(description="Equity is the capital returns and factor weights are measured against: daily_return = daily_pnl / previous equity, weight = (delta-adjusted) market value / equity. It rolls forward as equity + daily P&L + capital flows + valuation adjustments.")
    equity_source: str | None = Field(None, description=(
        "Where the first snapshot's equity came from: `stated` or `net_market_value`."))
    valuation_adjustment: Money | None = Field(None, description=(
        "Re-marks of positions carried at their entry price until their first quote: "
        "part of equity, not of daily_pnl or daily_return."))
    exposure_basis: str | None = Field(None, description=(
        "What factor weights were measured against: `equity`, or `gross_exposure` when "
        "equity is ≤ 0 (then daily_return is null)."))
    data_quality: dict[str, list[str]] = Field(default_factory=dict, description=(
        "Symbols this snapshot lacked inputs for: no_price (carried at entry price), "
        "stale_price, no_betas (left out of factor exposures), expired_options (valued at "
        "intrinsic value at expiry)."))
    is_degraded: bool = Field(False, description=(
        "Made with missing prices or betas; restated when its date's symbol batch completes."))
    total_value: Money | None
    long_value: Money | None
    short_value: Money | None
    gross_exposure: Money | None
    net_exposure: Money | None
    daily_pnl: Money | None
    daily_unrealized_pnl: Money | None
    daily_realized_pnl: Money | None
    daily_return: Ratio | None
    cumulative_pnl: Money | None
    capital_flow: Money | None
    position_count: int | None
    has_stale_prices: bool
    stale_symbols: list[str]
    has_model_prices: bool


class PortfolioDetail(PortfolioOut):
    latest_snapshot: SnapshotOut | None


class PositionOut(BaseModel):
    position_id: uuid.UUID
    source_row: int | None
    symbol: str
    quantity: Quantity
    entry_price: Price
    entry_date: dt.date
    exit_date: dt.date | None
    exit_price: Price | None
    investment_class: str
    investment_subtype: str | None
    underlying_symbol: str | None
    strike_price: Price | None
    expiration_date: dt.date | None
    option_type: str | None
    multiplier: int
    valuation_date: dt.date | None = Field(description="Latest snapshot valuing this position.")
    price: Price | None
    price_source: PriceSource | None
    market_value: Money | None
    delta: Ratio | None = Field(None, description=(
        "Options: Black-Scholes delta on the valuation date (weights the factor exposures: "
        "Δ × quantity × 100 × underlying price / equity); expired options 0."))
    is_expired: bool = Field(False, description=(
        "An option past expiry, valued at its intrinsic value at the expiry close."))


class FactorExposureOut(BaseModel):
    factor: str
    display_name: str | None
    exposure: Ratio
    exposure_dollar: Money | None


class PortfolioFactorExposures(BaseModel):
    portfolio_id: uuid.UUID
    calculation_date: dt.date | None
    factors: list[FactorExposureOut]


class PriceOut(BaseModel):
    date: dt.date
    close: Price
    adj_close: Price
    source: str


class SymbolFactorOut(BaseModel):
    factor: str
    beta: Ratio
    r2: Ratio | None
    n_obs: int
    quality: str
    calculation_date: dt.date


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    database: bool
    nats: bool


class Me(BaseModel):
    user_id: uuid.UUID
    username: str
    is_admin: bool


class PhaseDuration(BaseModel):
    name: str | None
    status: str | None
    current: int | None = None
    total: int | None = None
    unit: str | None = None
    seconds: float | None = Field(None, description="Null while the phase runs or if skipped.")


class BatchRunOut(BaseModel):
    id: uuid.UUID
    job_key: str = Field(description="The run's target date (one run may backfill many dates).")
    status: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    attempts: int
    duration_seconds: float
    phases: list[PhaseDuration]


class SymbolFailure(BaseModel):
    symbol: str
    reason: str


class DateRefresh(BaseModel):
    status: str
    planned: int = Field(description="Portfolios the refresh of the date planned.")


class BatchDateOut(BaseModel):
    batch_date: dt.date
    status: str
    symbols_total: int
    symbols_failed: int
    failures: list[SymbolFailure]
    completed_at: dt.datetime
    run: BatchRunOut | None
    refresh: DateRefresh | None
    snapshots: int = Field(description="Complete portfolio snapshots on the date.")


class StreamOut(BaseModel):
    stream: str
    messages: int
    bytes: int


class ConsumerLag(BaseModel):
    stream: str
    consumer: str
    pending: int = Field(description="Messages not yet delivered.")
    ack_pending: int = Field(description="Delivered, not yet acknowledged.")
    redelivered: int


class BusStatus(BaseModel):
    streams: list[StreamOut]
    consumers: list[ConsumerLag]


# --- risk analytics (docs/design.md §10) ------------------------------------------------


class GreeksOut(BaseModel):
    """Per position (× quantity × 100 where a position total): theta per calendar day, vega
    per volatility point, rho per rate point; per-unit delta and gamma."""

    delta: float | None
    gamma: float | None
    theta: float | None
    vega: float | None
    rho: float | None
    delta_dollars: float | None = Field(description="Δ × qty × 100 × underlying price.")
    gamma_dollars: float | None = Field(
        description="Γ × qty × 100 × S² / 100: change of delta_dollars for a 1% move.")


class ModelInputsOut(BaseModel):
    underlying_price: float | None
    strike: float | None
    years: float | None
    volatility: float | None
    rate: float | None
    details: dict[str, Any] | None = Field(
        default=None, description="What the P&L recorded with a model price (sources, dates).")


class PositionValuationOut(PositionOut):
    """A position valued on a date (docs/design.md §10)."""

    daily_pnl: Money | None = None
    realized_pnl: Money | None = None
    greeks: GreeksOut | None = None
    model_inputs: ModelInputsOut | None = None


class BetaRegressionOut(BaseModel):
    beta: float | None
    r2: float | None
    n_obs: int
    benchmark: str
    window_sessions: int


class SectorOut(BaseModel):
    sector: str
    net_weight: float | None
    gross_weight: float | None


class PortfolioGreeksOut(BaseModel):
    """Σ over option positions: delta and gamma in share-equivalents, theta ($/day), vega
    ($/vol point), rho ($/rate point), and the dollar delta and gamma."""

    delta: float | None
    gamma: float | None
    theta: float | None
    vega: float | None
    rho: float | None
    delta_dollars: float | None
    gamma_dollars: float | None


class RiskOut(BaseModel):
    """Risk of a portfolio on a date; weights and volatilities are fractions (0.2 = 20%)."""

    date: dt.date
    volatility_21d: float | None
    volatility_63d: float | None
    volatility_forecast: float | None
    volatility_method: str
    volatility_percentile: float | None = Field(
        description="Share (0..1) of the last year's 21-day volatilities at or below today's.")
    beta_regression: BetaRegressionOut
    beta_exposure_weighted: float | None
    beta_provider: float | None
    beta_provider_coverage: float | None
    hhi: float | None = Field(description="Σ w², w = |MV| / Σ|MV| per symbol.")
    effective_positions: float | None
    top3_weight: float | None
    top10_weight: float | None
    sectors: list[SectorOut]
    unclassified_symbols: list[str]
    portfolio_greeks: PortfolioGreeksOut
    return_basis: str = Field(description="equity, or gross when equity ≤ 0.")
    history_sessions: int


class CorrelationsOut(BaseModel):
    date: dt.date
    symbols: list[str]
    matrix: list[list[float]]
    observations: list[list[int]]
    window_sessions: int
    min_observations: int
    average_correlation: float | None
    diversification_ratio: float | None
    effective_bets: float | None
    effective_bets_method: str
    clusters: list[list[str]]
    cluster_method: str
    excluded_symbols: list[str]


class StressTestOut(BaseModel):
    date: dt.date
    scenario: str
    name: str | None
    category: str | None
    version: int
    shocks: dict[str, float] = Field(
        description="Factor → shock: a return as a fraction, basis points for interest_rate.")
    direct_impact: float | None
    correlated_impact: float | None
    impact_pct_of_equity: float | None = Field(
        description="correlated_impact / equity; null when equity ≤ 0.")
    impact_pct_of_gross: float | None
    contributions: dict[str, float | None]
    factor_moves: dict[str, float | None]
    equity: float | None
    rates_duration_years: float
