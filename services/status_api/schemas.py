"""Response models of the HTTP API (docs/design.md §9): the JSON contract the frontend codes against.

Money is Decimal and travels as a JSON string ("1234.56"), so no cent is lost to binary
floating point; market data and betas are numbers.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, Field


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


class NightlyAccepted(BaseModel):
    message_id: str
    published: bool = Field(description="False when an identical request inside the duplicate "
                                         "window was already queued (nothing new to do).")
    target_date: dt.date | None


class PortfolioOut(BaseModel):
    id: uuid.UUID
    portfolio_id: uuid.UUID
    name: str
    equity_balance: Decimal
    currency: str
    created_at: dt.datetime
    position_count: int
    onboarding_status: str | None
    latest_snapshot_date: dt.date | None


class SnapshotOut(BaseModel):
    snapshot_date: dt.date
    equity: Decimal | None
    total_value: Decimal | None
    long_value: Decimal | None
    short_value: Decimal | None
    gross_exposure: Decimal | None
    net_exposure: Decimal | None
    daily_pnl: Decimal | None
    daily_unrealized_pnl: Decimal | None
    daily_realized_pnl: Decimal | None
    daily_return: Decimal | None
    cumulative_pnl: Decimal | None
    capital_flow: Decimal | None
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
    quantity: Decimal
    entry_price: Decimal
    entry_date: dt.date
    exit_date: dt.date | None
    exit_price: Decimal | None
    investment_class: str
    investment_subtype: str | None
    underlying_symbol: str | None
    strike_price: Decimal | None
    expiration_date: dt.date | None
    option_type: str | None
    multiplier: int
    valuation_date: dt.date | None = Field(description="Latest snapshot valuing this position.")
    price: Decimal | None
    price_source: str | None
    market_value: Decimal | None


class FactorExposureOut(BaseModel):
    factor: str
    display_name: str | None
    exposure: float
    exposure_dollar: Decimal | None


class PortfolioFactorExposures(BaseModel):
    portfolio_id: uuid.UUID
    calculation_date: dt.date | None
    factors: list[FactorExposureOut]


class PriceOut(BaseModel):
    date: dt.date
    close: float
    adj_close: float
    source: str


class SymbolFactorOut(BaseModel):
    factor: str
    beta: float
    r2: float | None
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
