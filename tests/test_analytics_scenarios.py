"""The seeded scenario set: historical replays re-derived from the real shipped history."""

from __future__ import annotations

import importlib
from pathlib import Path

import pandas as pd
import pytest

from libs.common.analytics.scenarios import EPISODES, replay_shocks

PRICES = Path(__file__).parent / "fixtures" / "prices"
MIGRATION = importlib.import_module("libs.common.migrations.versions.0003_risk_analytics")


def _closes() -> pd.DataFrame:
    stocks = pd.read_csv(PRICES / "sp500_stocks_and_index_daily.csv", index_col=0, parse_dates=True)
    etfs = pd.read_csv(PRICES / "factor_etfs_daily.csv", index_col=0, parse_dates=True)
    return stocks.join(etfs, how="outer")


def test_seeded_replays_equal_returns_recomputed_from_real_history():
    closes = _closes()
    seeded = {sid: shocks for sid, _, category, shocks, _ in MIGRATION.SCENARIOS
              if category == "historical"}
    assert set(seeded) == {e.scenario_id for e in EPISODES}
    for episode in EPISODES:
        assert replay_shocks(closes, episode) == seeded[episode.scenario_id]
    # Independent spot check: the COVID drawdown of the S&P 500 from its 2020-02-19 close.
    sp = closes["SP500"]
    covid = sp.loc["2020-03-23"] / sp.loc["2020-02-19"] - 1
    assert seeded["hist_covid_crash_2020"]["market"] == pytest.approx(covid, abs=1e-6)
    assert -0.36 < covid < -0.32


def test_factor_shock_scenarios_cover_the_required_set():
    by_id = {sid: shocks for sid, _, _, shocks, _ in MIGRATION.SCENARIOS}
    markets = sorted(v["market"] for k, v in by_id.items() if k.startswith("market_"))
    assert markets == [-0.35, -0.20, -0.10, -0.05, 0.05, 0.10]
    rates = sorted(v["interest_rate"] for v in by_id.values() if "interest_rate" in v)
    assert rates == [-100, -25, 25, 100, 300]
    for factor in ("growth_value_spread", "momentum_spread", "size_spread", "quality_spread",
                   "low_volatility"):
        assert any(factor in v for v in by_id.values()), factor
