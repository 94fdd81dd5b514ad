"""The frontend's risk-analytics routes over the analytics read functions: shapes checked
against the frontend's models; unit conversions against sigmabatch's own analytics endpoints;
concentration and the "All Accounts" sums against independent computations."""

from __future__ import annotations

import numpy as np
import pytest

from services.status_api import frontend_models as m
from services.status_api.snapshots import default_snapshot_maker
from tests.test_api_helpers import api_client, cent_values, token_for
from tests.test_frontend_analytics import BOOK, create, seed_book

EQUITIES = {"Main": 100_000.0, "IRA": 300_000.0}


async def test_risk_routes_and_their_all_accounts_view(settings):
    headers = await token_for(settings.database_url, "alice")
    as_of, closes = await seed_book(settings.database_url)
    async with api_client(settings, snapshot_maker=default_snapshot_maker(settings)) as client:
        pids = {account: await create(client, headers, account, equity)
                for account, equity in EQUITIES.items()}
        pid = pids["Main"]

        async def get(path: str) -> dict:
            response = await client.get(path, headers=headers)
            assert response.status_code == 200, (path, response.text)
            return response.json()

        risk = await get(f"/api/v1/portfolios/{pid}/risk")
        correlations = await get(f"/api/v1/portfolios/{pid}/correlations")
        stress = await get(f"/api/v1/portfolios/{pid}/stress-tests")
        base = f"/api/v1/analytics/portfolio/{pid}"
        volatility = m.VolatilityResponse.model_validate(await get(f"{base}/volatility"))
        concentration = m.ConcentrationResponse.model_validate(
            await get(f"{base}/concentration"))
        sectors = m.SectorExposureResponse.model_validate(await get(f"{base}/sector-exposure"))
        matrix = m.CorrelationMatrixResponse.model_validate(
            await get(f"{base}/correlation-matrix"))
        score = m.DiversificationScoreResponse.model_validate(
            await get(f"{base}/diversification-score"))
        tests = m.StressTestResponse.model_validate(await get(f"{base}/stress-test"))
        bad_window = await client.get(f"{base}/correlation-matrix?lookback_days=30"
                                      "&min_overlap=60", headers=headers)
        aggregate = "/api/v1/analytics/aggregate"
        agg_vol = m.AggregateVolatilityResponse.model_validate(await get(f"{aggregate}/volatility"))
        agg_sector = m.AggregateSectorExposureResponse.model_validate(
            await get(f"{aggregate}/sector-exposure"))
        agg_conc = m.AggregateConcentrationResponse.model_validate(
            await get(f"{aggregate}/concentration"))
        agg_stress = m.AggregateStressTestResponse.model_validate(
            await get(f"{aggregate}/stress-test"))
        agg_corr = m.AggregateCorrelationMatrixResponse.model_validate(
            await get(f"{aggregate}/correlation-matrix?max_positions=25"))
        ira_stress = await get(f"/api/v1/portfolios/{pids['IRA']}/stress-tests")
        ira_risk = await get(f"/api/v1/portfolios/{pids['IRA']}/risk")

    # Volatility: the analytics' annualised fractions, optional fields present.
    assert volatility.available and volatility.data is not None
    assert volatility.data.realized_volatility_21d == risk["volatility_21d"]
    assert volatility.data.realized_volatility_63d == risk["volatility_63d"]
    assert volatility.data.expected_volatility_21d == risk["volatility_forecast"]
    assert volatility.calculation_date == as_of.isoformat()

    # Concentration, against Σ w² of |value| / Σ |value| computed here.
    # as stored, to the cent
    values = np.array(list(cent_values({s: q for s, (q, _) in BOOK.items()}, closes).values()))
    w = np.abs(values) / np.abs(values).sum()
    assert concentration.data is not None
    assert concentration.data.hhi == pytest.approx((w ** 2).sum() * 10_000, rel=1e-6)
    assert concentration.data.effective_num_positions == pytest.approx(1 / (w ** 2).sum(), rel=1e-6)
    assert concentration.data.top_3_concentration == pytest.approx(1.0)

    # Sectors: the net weights, no benchmark claimed.
    assert sectors.data is not None
    assert sectors.data.portfolio_weights == {s["sector"]: s["net_weight"]
                                              for s in risk["sectors"]}
    assert sectors.data.benchmark_weights == {}

    # Correlations: the same cells, keyed by symbol, every pair present.
    assert matrix.available and matrix.data is not None
    symbols = correlations["symbols"]
    assert list(matrix.data.matrix) == symbols
    for i, a in enumerate(symbols):
        for j, b in enumerate(symbols):
            assert matrix.data.matrix[a][b] == correlations["matrix"][i][j]
    assert matrix.metadata["positions_included"] == len(symbols)
    assert matrix.data.average_correlation == correlations["average_correlation"]
    assert score.portfolio_correlation == correlations["average_correlation"]
    assert bad_window.status_code == 400

    # Stress: correlated dollars, in percentage points of equity, and the value after.
    assert tests.available and tests.data is not None
    by_id = {s.id: s for s in tests.data.scenarios}
    assert set(by_id) == {s["scenario"] for s in stress}
    for s in stress:
        shown = by_id[s["scenario"]]
        assert shown.impact.dollar_impact == pytest.approx(s["correlated_impact"], abs=0.01)
        assert shown.impact.percentage_impact == pytest.approx(
            s["correlated_impact"] / s["equity"] * 100, abs=1e-4)
        assert shown.impact.new_portfolio_value == pytest.approx(
            s["equity"] + s["correlated_impact"], abs=0.01)
        assert shown.severity in ("low", "medium", "high", "severe")

    # All Accounts: sums and equity weights, computed here from each portfolio's numbers.
    total = sum(EQUITIES.values())
    assert agg_vol.aggregate_volatility_21d == pytest.approx(
        (risk["volatility_21d"] * EQUITIES["Main"] + ira_risk["volatility_21d"] * EQUITIES["IRA"])
        / total)
    assert agg_sector.data is not None
    for sector in risk["sectors"]:
        other = {s["sector"]: s["net_weight"] for s in ira_risk["sectors"]}[sector["sector"]]
        assert agg_sector.data.portfolio_weights[sector["sector"]] == pytest.approx(
            (sector["net_weight"] * EQUITIES["Main"] + other * EQUITIES["IRA"]) / total)
    assert agg_conc.data is not None  # both books hold the same lots: same weights
    assert agg_conc.data.hhi == pytest.approx((w ** 2).sum() * 10_000, rel=1e-6)
    assert agg_conc.data.total_positions == 6 and agg_conc.data.unique_symbols == 3
    assert agg_stress.data is not None and agg_stress.portfolios_with_stress_data == 2
    ira = {s["scenario"]: s["correlated_impact"] for s in ira_stress}
    for s in agg_stress.data.scenarios:
        assert s.impact.dollar_impact == pytest.approx(
            by_id[s.id].impact.dollar_impact + ira[s.id], abs=0.02)
        assert s.portfolios_included == 2
    assert agg_corr.available is False and agg_corr.symbols == []
