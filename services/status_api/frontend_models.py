"""Response models of the SigmaSight web frontend's routes (issue 16), field by field.

Written from what that frontend reads (its TypeScript types in `frontend/src/types/analytics.ts`
and `frontend/src/services/onboardingService.ts`, its hooks and components) and, where those
types are loose, from the original backend's response models; see docs/frontend.md and
/work/shared/frontend-contract.md. Unlike sigmabatch's own API (money as decimal strings),
these shapes carry numbers, because the frontend does arithmetic and `.toFixed` on them.

Rules the frontend imposes that the models encode:
- a field the UI tests with `!== null` is present as null, never omitted (no defaults that
  drop it: pydantic serialises every declared field);
- `activity_log`, `factors` (spread factors) and, when available, `positions` are arrays;
- "not available" is 200 with `available: false`, not an HTTP error.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    """A response that may carry extra fields the frontend ignores (superset shapes)."""

    model_config = ConfigDict(extra="allow")


# --- errors -------------------------------------------------------------------------------


class CsvRowError(BaseModel):
    """One row problem as the upload hook maps it: {row, symbol?, code|error_code, message,
    field?}. `row` is the line number in the file as an editor shows it (null: the whole
    request); `column` is sigmabatch's name for `field`."""

    row: int | None
    symbol: str | None = None
    code: str
    error_code: str
    message: str
    field: str | None = None
    column: str | None = None


class ErrorDetail(BaseModel):
    """`detail` as an object: the UI shows `detail.message` (UPL/RECALC getErrorMessage)."""

    error: str
    message: str
    errors: list[CsvRowError] | None = None


class FrontendError(BaseModel):
    """Error body of the frontend's routes: `detail` is an object with a message (and the row
    errors for a rejected CSV, found by the UI at `detail.errors`) or a plain string."""

    detail: ErrorDetail | str


# --- onboarding ---------------------------------------------------------------------------


class ValidateInviteResponse(BaseModel):
    status: str = "validated"
    message: str = "Invite code validated successfully"


class NextStep(BaseModel):
    action: str
    endpoint: str
    description: str


class CreatePortfolioResponse(_Open):
    portfolio_id: str
    portfolio_name: str
    account_name: str
    account_type: str
    equity_balance: float
    positions_imported: int
    positions_failed: int
    total_positions: int
    message: str
    next_step: NextStep


class TriggerCalculationsResponse(_Open):
    portfolio_id: str
    batch_run_id: str
    status: str
    message: str


class BatchStatusResponse(_Open):
    status: Literal["idle", "running", "completed", "failed"]
    batch_run_id: str
    portfolio_id: str
    started_at: str = Field(description="ISO time, or \"\" when unknown (as the original).")
    triggered_by: str
    elapsed_seconds: int


class ActivityLogEntry(BaseModel):
    timestamp: str
    message: str
    level: Literal["info", "warning", "error"]


class CurrentPhaseProgress(BaseModel):
    current: int
    total: int
    unit: str


class OverallProgress(BaseModel):
    current_phase: str | None
    current_phase_name: str | None
    phases_completed: int
    phases_total: int
    percent_complete: float


class PhaseDetail(BaseModel):
    phase_id: str
    phase_name: str
    status: Literal["pending", "running", "completed", "failed"]
    current: int
    total: int
    unit: str
    duration_seconds: int | None


class OnboardingStatusResponse(_Open):
    """The hook's view of `GET /api/v1/onboarding/status/{id}` (sigmabatch adds fields)."""

    portfolio_id: str
    status: Literal["running", "completed", "partial", "failed", "not_found"]
    started_at: str | None
    elapsed_seconds: int
    overall_progress: OverallProgress | None
    current_phase_progress: CurrentPhaseProgress | None
    activity_log: list[ActivityLogEntry]
    phases: list[PhaseDetail] | None


class OnboardingLogJson(BaseModel):
    portfolio_id: str
    portfolio_name: str
    started_at: str | None
    elapsed_seconds: int
    final_status: str
    overall_progress: OverallProgress | None
    phases: list[PhaseDetail]
    activity_log: list[ActivityLogEntry]
    generated_at: str


# --- analytics, per portfolio -------------------------------------------------------------


class Exposures(BaseModel):
    long_exposure: float
    short_exposure: float = Field(description="Signed: shorts are negative (as the original).")
    gross_exposure: float
    net_exposure: float
    long_percentage: float
    short_percentage: float
    gross_percentage: float
    net_percentage: float


class Pnl(BaseModel):
    total_pnl: float
    unrealized_pnl: float
    realized_pnl: float
    ytd_pnl: float
    mtd_pnl: float


class PositionCount(BaseModel):
    total_positions: int
    long_count: int
    short_count: int
    option_count: int


class TargetReturns(_Open):
    expected_return_eoy: float | None
    coverage_pct: float | None


class PortfolioOverviewResponse(_Open):
    portfolio_id: str
    equity_balance: float | None
    net_asset_value: float
    total_value: float
    cash_balance: float
    leverage: float
    exposures: Exposures
    pnl: Pnl
    position_count: PositionCount
    target_returns: TargetReturns | None
    last_updated: str


class CorrelationData(BaseModel):
    matrix: dict[str, dict[str, float]]
    average_correlation: float


class CorrelationMatrixResponse(_Open):
    available: bool
    data: CorrelationData | None
    metadata: dict[str, Any]
    data_quality: dict[str, Any] | None
    reason: str | None = None


class DiversificationScoreResponse(_Open):
    available: bool
    portfolio_id: str
    portfolio_correlation: float | None
    duration_days: int | None
    calculation_date: str | None
    symbols_included: int | None
    metadata: dict[str, Any]


class FactorExposure(BaseModel):
    name: str
    beta: float
    exposure_dollar: float | None


class FactorExposuresResponse(_Open):
    available: bool
    portfolio_id: str
    calculation_date: str | None
    factors: list[FactorExposure]
    data_quality: dict[str, Any] | None
    metadata: dict[str, Any]
    reason: str | None = None


class PositionFactorExposureItem(BaseModel):
    position_id: str
    symbol: str
    exposures: dict[str, float]


class PositionFactorExposuresResponse(_Open):
    available: bool
    portfolio_id: str
    calculation_date: str | None
    total: int | None
    limit: int | None
    offset: int | None
    positions: list[PositionFactorExposureItem] | None
    data_quality: dict[str, Any] | None
    metadata: dict[str, Any] = Field(default_factory=dict)


class StressImpact(BaseModel):
    dollar_impact: float
    percentage_impact: float = Field(description="Percentage points: -10 means -10 %.")
    new_portfolio_value: float


class StressScenario(_Open):
    id: str
    name: str
    description: str | None
    category: str | None
    impact_type: str
    severity: str | None
    impact: StressImpact


class StressTestData(BaseModel):
    scenarios: list[StressScenario]
    portfolio_value: float
    calculation_date: str


class StressTestResponse(_Open):
    available: bool
    data: StressTestData | None
    data_quality: dict[str, Any] | None
    metadata: dict[str, Any]
    reason: str | None = None


class VolatilityData(BaseModel):
    realized_volatility_21d: float
    realized_volatility_63d: float | None
    expected_volatility_21d: float | None
    volatility_trend: Literal["increasing", "decreasing", "stable"] | None
    volatility_percentile: float | None


class VolatilityResponse(_Open):
    available: bool
    portfolio_id: str
    calculation_date: str | None
    data: VolatilityData | None
    metadata: dict[str, Any]


class SectorExposureData(BaseModel):
    portfolio_weights: dict[str, float]
    benchmark_weights: dict[str, float]
    over_underweight: dict[str, float]
    largest_overweight: str | None
    largest_underweight: str | None
    total_portfolio_value: float
    positions_by_sector: dict[str, int]
    unclassified_value: float
    unclassified_count: int


class SectorExposureResponse(_Open):
    available: bool
    portfolio_id: str
    calculation_date: str | None
    data: SectorExposureData | None
    metadata: dict[str, Any]


class ConcentrationData(BaseModel):
    hhi: float = Field(description="0..10,000 (Σ w² × 10,000).")
    effective_num_positions: float
    top_3_concentration: float
    top_10_concentration: float
    total_positions: int
    position_weights: dict[str, float] | None


class ConcentrationResponse(_Open):
    available: bool
    portfolio_id: str
    calculation_date: str | None
    data: ConcentrationData | None
    metadata: dict[str, Any]


class SpreadFactor(BaseModel):
    name: str
    beta: float
    exposure_dollar: float | None
    direction: str
    magnitude: str
    risk_level: str
    explanation: str


class SpreadFactorsResponse(_Open):
    available: bool
    portfolio_id: str
    calculation_date: str | None
    factors: list[SpreadFactor]
    metadata: dict[str, Any]


class BetaComparisonPosition(BaseModel):
    symbol: str
    position_id: str
    market_beta: float | None
    calculated_beta: float | None
    beta_r_squared: float | None
    beta_difference: float | None
    calculation_date: str | None
    observations: int | None


class BetaComparisonResponse(_Open):
    available: bool
    portfolio_id: str
    positions: list[BetaComparisonPosition] | None
    metadata: dict[str, Any]


# --- analytics, all of the caller's portfolios ("All Accounts") ---------------------------


class AggregatePortfolio(_Open):
    portfolio_id: str
    portfolio_name: str
    value: float
    weight: float


class AggregateOverviewResponse(_Open):
    net_asset_value: float
    total_value: float
    portfolio_count: int
    portfolios: list[AggregatePortfolio]
    calculation_date: str | None


class AggregateBreakdownResponse(_Open):
    portfolios: list[AggregatePortfolio]
    total_value: float
    calculation_date: str | None


class AggregateBetaResponse(_Open):
    aggregate_beta_90d: float | None
    aggregate_beta_180d: float | None
    portfolio_count: int
    total_value: float
    portfolios: list[AggregatePortfolio]
    calculation_date: str | None


class AggregateVolatilityResponse(_Open):
    aggregate_volatility_21d: float | None
    aggregate_volatility_63d: float | None
    aggregate_expected_volatility_21d: float | None
    portfolio_count: int
    total_value: float
    portfolios: list[AggregatePortfolio]
    calculation_date: str | None


class AggregateFactor(BaseModel):
    name: str
    aggregate_beta: float
    aggregate_exposure_dollar: float | None


class AggregateFactorExposuresResponse(_Open):
    factors: list[AggregateFactor]
    portfolio_count: int
    total_value: float
    portfolios: list[AggregatePortfolio]
    calculation_date: str | None


class AggregateSectorData(BaseModel):
    portfolio_weights: dict[str, float]
    benchmark_weights: dict[str, float]
    over_underweight: dict[str, float]
    largest_overweight: str | None
    largest_underweight: str | None


class AggregateSectorExposureResponse(_Open):
    available: bool
    data: AggregateSectorData | None
    net_asset_value: float
    portfolio_count: int


class TopPosition(BaseModel):
    symbol: str
    value: float
    weight: float


class AggregateConcentrationData(BaseModel):
    hhi: float
    effective_num_positions: float
    top_3_concentration: float
    top_10_concentration: float
    unique_symbols: int
    total_positions: int
    top_positions: list[TopPosition]


class AggregateConcentrationResponse(_Open):
    available: bool
    data: AggregateConcentrationData | None
    net_asset_value: float
    portfolio_count: int


class CoverageQuality(BaseModel):
    total_pairs: int
    valid_pairs: int
    coverage_percent: float


class AggregateCorrelationMatrixResponse(_Open):
    available: bool
    symbols: list[str]
    correlation_matrix: list[list[float]]
    average_correlation: float | None
    total_positions_analyzed: int
    total_value: float
    portfolio_count: int
    data_quality: CoverageQuality | None
    calculation_date: str | None


class AggregateStressScenario(StressScenario):
    portfolios_included: int


class AggregateStressData(BaseModel):
    scenarios: list[AggregateStressScenario]
    portfolio_value: float


class AggregateStressTestResponse(_Open):
    available: bool
    data: AggregateStressData | None
    net_asset_value: float
    portfolio_count: int
    portfolios_with_stress_data: int
