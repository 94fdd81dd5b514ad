"""risk analytics tables (DESIGN §10) and the seeded, versioned stress scenario set

Tables keyed by (portfolio_id, calculation_date): portfolio_risk_metrics,
portfolio_correlations, portfolio_stress_results; position_greeks adds position_id.
stress_scenarios (scenario_id, version) is seeded here with literal shocks; the historical
replays were computed from the real history shipped in tests/fixtures/prices by
libs.common.analytics.scenarios.replay_shocks (tests/test_analytics_scenarios.py re-runs it).
A later change of a scenario is a new version (a new row), never an edit of this one.

Revision ID: 0003
Revises: 0002
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (scenario_id, name, category, shocks, description). Shocks: factor returns as fractions;
# interest_rate in basis points of yield (turned into a TLT-like return through a 17-year
# duration by libs.common.analytics.stress).
SCENARIOS: list[tuple[str, str, str, dict[str, float], str]] = [
    ("market_up_5", "Market +5%", "market", {"market": 0.05}, "S&P 500 (SPY) up 5%."),
    ("market_down_5", "Market -5%", "market", {"market": -0.05}, "S&P 500 (SPY) down 5%."),
    ("market_up_10", "Market +10%", "market", {"market": 0.10}, "S&P 500 (SPY) up 10%."),
    ("market_down_10", "Market -10%", "market", {"market": -0.10}, "S&P 500 (SPY) down 10%."),
    ("market_down_20", "Market -20%", "market", {"market": -0.20}, "A bear-market drop."),
    ("market_down_35", "Market -35%", "market", {"market": -0.35}, "A crash of 2008/2020 size."),
    ("rates_up_25", "Rates +25 bp", "rates", {"interest_rate": 25}, "Yields up 25 bp."),
    ("rates_down_25", "Rates -25 bp", "rates", {"interest_rate": -25}, "Yields down 25 bp."),
    ("rates_up_100", "Rates +100 bp", "rates", {"interest_rate": 100}, "Yields up 100 bp."),
    ("rates_down_100", "Rates -100 bp", "rates", {"interest_rate": -100}, "Yields down 100 bp."),
    ("rates_up_300", "Rates +300 bp", "rates", {"interest_rate": 300},
     "A 2022-style repricing of yields, +300 bp."),
    ("value_growth_rotation", "Value/growth rotation", "style", {"growth_value_spread": -0.10},
     "Growth (VUG) lags value (VTV) by 10%."),
    ("momentum_crash", "Momentum crash", "style", {"momentum_spread": -0.15},
     "Momentum (MTUM) lags the market by 15%, as in the 2009 reversal."),
    ("small_caps_lag", "Small caps lag", "style", {"size_spread": -0.08},
     "Small caps (IWM) lag the market by 8%."),
    ("quality_lags", "Junk rally (quality lags)", "style", {"quality_spread": -0.06},
     "Quality (QUAL) lags the market by 6%."),
    ("low_vol_lags", "Low-volatility unwind", "style", {"market": 0.0, "low_volatility": -0.06},
     "Low-volatility stocks (USMV) down 6% with the market flat."),
    ("hist_covid_crash_2020", "COVID crash (2020-02-19 → 2020-03-23)", "historical",
     {"market": -0.33925, "momentum_spread": -0.001569, "size_spread": -0.051871,
      "quality_spread": -0.001311},
     "Replay from real closes: SPY <- S&P 500 index, IWM <- SIZE; TLT, VUG unshocked."),
    ("hist_2022_h1", "2022 first half (2021-12-31 → 2022-06-30)", "historical",
     {"market": -0.205783, "momentum_spread": -0.040563, "size_spread": 0.013362,
      "quality_spread": -0.021749},
     "Replay from real closes: SPY <- S&P 500 index, IWM <- SIZE; TLT, VUG unshocked."),
    ("hist_gfc_2008", "2008 crisis, Lehman to the November low (2008-09-12 → 2008-11-20)",
     "historical", {"market": -0.398866},
     "Replay from the real S&P 500 index; the factor ETFs' real history starts in 2014."),
]


def upgrade() -> None:
    op.create_table(
        "portfolio_risk_metrics",
        sa.Column("portfolio_id", sa.UUID(), nullable=False),
        sa.Column("calculation_date", sa.Date(), nullable=False),
        sa.Column("return_basis", sa.String(length=8), nullable=False),
        sa.Column("history_sessions", sa.Integer(), nullable=False),
        sa.Column("volatility_21d", sa.Float(), nullable=True),
        sa.Column("volatility_63d", sa.Float(), nullable=True),
        sa.Column("volatility_forecast", sa.Float(), nullable=True),
        sa.Column("volatility_percentile", sa.Float(), nullable=True),
        sa.Column("beta_regression", sa.Float(), nullable=True),
        sa.Column("beta_r2", sa.Float(), nullable=True),
        sa.Column("beta_n_obs", sa.Integer(), nullable=False),
        sa.Column("beta_exposure_weighted", sa.Float(), nullable=True),
        sa.Column("beta_provider", sa.Float(), nullable=True),
        sa.Column("beta_provider_coverage", sa.Float(), nullable=True),
        sa.Column("hhi", sa.Float(), nullable=True),
        sa.Column("effective_positions", sa.Float(), nullable=True),
        sa.Column("top3_weight", sa.Float(), nullable=True),
        sa.Column("top10_weight", sa.Float(), nullable=True),
        sa.Column("sectors", postgresql.JSONB(astext_type=sa.Text()), server_default="[]",
                  nullable=False),
        sa.Column("unclassified_symbols", postgresql.ARRAY(sa.Text()), server_default="{}",
                  nullable=False),
        sa.Column("delta", sa.Float(), nullable=False),
        sa.Column("gamma", sa.Float(), nullable=False),
        sa.Column("theta", sa.Float(), nullable=False),
        sa.Column("vega", sa.Float(), nullable=False),
        sa.Column("rho", sa.Float(), nullable=False),
        sa.Column("delta_dollars", sa.Float(), nullable=False),
        sa.Column("gamma_dollars", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["portfolio_id"], ["portfolios.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("portfolio_id", "calculation_date"),
    )
    op.create_index("ix_portfolio_risk_metrics_date", "portfolio_risk_metrics",
                    ["calculation_date"], unique=False)
    op.create_table(
        "position_greeks",
        sa.Column("portfolio_id", sa.UUID(), nullable=False),
        sa.Column("calculation_date", sa.Date(), nullable=False),
        sa.Column("position_id", sa.UUID(), nullable=False),
        *[sa.Column(name, sa.Float(), nullable=True) for name in (
            "delta", "gamma", "theta", "vega", "rho", "delta_dollars", "gamma_dollars",
            "underlying_price", "strike", "years", "volatility", "rate")],
        sa.ForeignKeyConstraint(["portfolio_id"], ["portfolios.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["position_id"], ["positions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("portfolio_id", "calculation_date", "position_id"),
    )
    op.create_table(
        "portfolio_correlations",
        sa.Column("portfolio_id", sa.UUID(), nullable=False),
        sa.Column("calculation_date", sa.Date(), nullable=False),
        sa.Column("window_sessions", sa.Integer(), nullable=False),
        sa.Column("symbols", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("correlations", postgresql.ARRAY(sa.Float()), nullable=False),
        sa.Column("observations", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("cluster_labels", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("excluded_symbols", postgresql.ARRAY(sa.Text()), server_default="{}",
                  nullable=False),
        sa.Column("average_correlation", sa.Float(), nullable=True),
        sa.Column("diversification_ratio", sa.Float(), nullable=True),
        sa.Column("effective_bets", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["portfolio_id"], ["portfolios.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("portfolio_id", "calculation_date"),
    )
    op.create_index("ix_portfolio_correlations_date", "portfolio_correlations",
                    ["calculation_date"], unique=False)
    scenarios = op.create_table(
        "stress_scenarios",
        sa.Column("scenario_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("shocks", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("sort_order", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("scenario_id", "version"),
    )
    op.create_table(
        "portfolio_stress_results",
        sa.Column("portfolio_id", sa.UUID(), nullable=False),
        sa.Column("calculation_date", sa.Date(), nullable=False),
        sa.Column("equity", sa.Float(), nullable=True),
        sa.Column("scenario_ids", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("scenario_versions", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("factors", postgresql.ARRAY(sa.Text()), nullable=False),
        *[sa.Column(name, postgresql.ARRAY(sa.Float()), nullable=False) for name in (
            "direct_impact", "correlated_impact", "impact_pct_of_equity", "impact_pct_of_gross",
            "factor_moves", "contributions")],
        sa.ForeignKeyConstraint(["portfolio_id"], ["portfolios.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("portfolio_id", "calculation_date"),
    )
    op.create_index("ix_portfolio_stress_results_date", "portfolio_stress_results",
                    ["calculation_date"], unique=False)
    op.bulk_insert(
        scenarios,
        [
            {"scenario_id": sid, "version": 1, "name": name, "category": category,
             "shocks": json.loads(json.dumps(shocks)), "description": description,
             "is_active": True, "sort_order": order}
            for order, (sid, name, category, shocks, description) in enumerate(SCENARIOS)
        ],
    )


def downgrade() -> None:
    op.drop_index("ix_portfolio_stress_results_date", table_name="portfolio_stress_results")
    op.drop_table("portfolio_stress_results")
    op.drop_table("stress_scenarios")
    op.drop_index("ix_portfolio_correlations_date", table_name="portfolio_correlations")
    op.drop_table("portfolio_correlations")
    op.drop_table("position_greeks")
    op.drop_index("ix_portfolio_risk_metrics_date", table_name="portfolio_risk_metrics")
    op.drop_table("portfolio_risk_metrics")
