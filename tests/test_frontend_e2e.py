"""The SigmaSight web frontend's own sequence, played against sigmabatch as real processes.

status_api, onboarding and portfolio_refresh run as `python -m services.<name>` on real
PostgreSQL and NATS; the test is the browser: it downloads the CSV template, creates two
portfolios from the example CSVs the way the upload hook does (multipart fields in its order),
triggers the calculation with the hook's body-less JSON POST, polls the status like the
progress page until it is terminal, downloads the log, then makes every analytics call the
command center, the risk page and the "All Accounts" view make, and finally plays the Settings
page's recalculation (calculate, then batch-status until completed). Every answer is checked
against the frontend's response models.
"""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
from pydantic import BaseModel

from services.status_api import frontend_models as m
from tests.processes import ServiceProcess
from tests.test_api_helpers import FIXTURES, token_for

# Per-portfolio analytics calls (path under /api/v1/analytics/portfolio/{id}/) and their model.
PORTFOLIO_CALLS: dict[str, type[BaseModel]] = {
    "overview": m.PortfolioOverviewResponse,
    "factor-exposures?use_latest_successful=true": m.FactorExposuresResponse,
    "positions/factor-exposures": m.PositionFactorExposuresResponse,
    "spread-factors": m.SpreadFactorsResponse,
    "beta-comparison": m.BetaComparisonResponse,
    "correlation-matrix": m.CorrelationMatrixResponse,
    "diversification-score": m.DiversificationScoreResponse,
    "stress-test": m.StressTestResponse,
    "volatility": m.VolatilityResponse,
    "sector-exposure": m.SectorExposureResponse,
    "concentration": m.ConcentrationResponse,
}
AGGREGATE_CALLS: dict[str, type[BaseModel]] = {
    "overview": m.AggregateOverviewResponse,
    "breakdown": m.AggregateBreakdownResponse,
    "beta": m.AggregateBetaResponse,
    "factor-exposures": m.AggregateFactorExposuresResponse,
    "volatility": m.AggregateVolatilityResponse,
    "sector-exposure": m.AggregateSectorExposureResponse,
    "concentration": m.AggregateConcentrationResponse,
    "correlation-matrix?max_positions=25": m.AggregateCorrelationMatrixResponse,
    "stress-test": m.AggregateStressTestResponse,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _poll_until_terminal(client: httpx.AsyncClient, headers: dict[str, str],
                               portfolio_id: str, timeout: float = 240.0) -> list[dict]:
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await client.get(f"/api/v1/onboarding/status/{portfolio_id}",
                                    headers=headers)
        assert response.status_code == 200, response.text
        m.OnboardingStatusResponse.model_validate(response.json())
        seen.append(response.json())
        if seen[-1]["status"] in ("completed", "partial", "failed"):
            return seen
        await asyncio.sleep(0.5)
    raise AssertionError(f"onboarding never finished: {seen[-1] if seen else None}")


async def _onboard(client: httpx.AsyncClient, headers: dict[str, str], csv_name: str,
                   account: str, template_ok: bool = True) -> str:
    data = (FIXTURES / "portfolios" / csv_name).read_bytes()
    created = await client.post(
        "/api/v1/onboarding/create-portfolio", headers=headers,
        data={"portfolio_name": csv_name.removesuffix(".csv"), "account_name": account,
              "account_type": "taxable", "equity_balance": "250000"},
        files={"csv_file": (csv_name, data, "text/csv")})
    assert created.status_code == 201, created.text
    body = m.CreatePortfolioResponse.model_validate(created.json())
    calculate = await client.post(f"/api/v1/portfolios/{body.portfolio_id}/calculate",
                                  headers={**headers, "Content-Type": "application/json"})
    assert calculate.status_code == 200, calculate.text
    m.TriggerCalculationsResponse.model_validate(calculate.json())
    seen = await _poll_until_terminal(client, headers, body.portfolio_id)
    assert "not_found" not in {s["status"] for s in seen}
    percents = [s["overall_progress"]["percent_complete"] for s in seen]
    assert percents == sorted(percents)
    assert seen[-1]["status"] == "completed", seen[-1]
    return body.portfolio_id


async def test_frontend_sequence_against_the_running_services(settings, service_env):
    headers = await token_for(settings.database_url, "frontend-user")
    port = _free_port()
    env = {**service_env, "API_PORT": str(port)}
    processes = [ServiceProcess(name, env) for name in
                 ("onboarding", "portfolio_refresh", "status_api")]
    try:
        for process in processes:
            process.start(timeout=180)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            template = await client.get("/api/v1/onboarding/csv-template")
            assert template.status_code == 200 and b"Symbol,Quantity" in template.content

            first = await _onboard(client, headers, "small_test_portfolio.csv", "Brokerage")
            second = await _onboard(client, headers, "balanced_retirement_portfolio.csv", "IRA")

            log = await client.get(f"/api/v1/onboarding/status/{first}/logs?format=txt",
                                   headers=headers)
            assert log.status_code == 200 and "ACTIVITY LOG" in log.text

            for pid in (first, second):
                for path, model in PORTFOLIO_CALLS.items():
                    response = await client.get(f"/api/v1/analytics/portfolio/{pid}/{path}",
                                                headers=headers)
                    assert response.status_code == 200, (path, response.text)
                    model.model_validate(response.json())
                    if "available" in response.json():
                        assert response.json()["available"] is True, (path, response.json())
            overview = (await client.get(f"/api/v1/analytics/portfolio/{first}/overview",
                                         headers=headers)).json()
            assert overview["position_count"]["total_positions"] == 3
            assert overview["exposures"]["gross_exposure"] > 0
            factors = (await client.get(
                f"/api/v1/analytics/portfolio/{first}/factor-exposures", headers=headers)).json()
            assert "Market Beta (90D)" in {f["name"] for f in factors["factors"]}

            for path, model in AGGREGATE_CALLS.items():
                response = await client.get(f"/api/v1/analytics/aggregate/{path}",
                                            headers=headers)
                assert response.status_code == 200, (path, response.text)
                model.model_validate(response.json())

            # Settings → Recalculate: calculate, then batch-status every few seconds.
            trigger = m.TriggerCalculationsResponse.model_validate((await client.post(
                f"/api/v1/portfolios/{first}/calculate",
                headers={**headers, "Content-Type": "application/json"})).json())
            assert trigger.batch_run_id.startswith("refresh-")
            deadline = time.monotonic() + 120
            while True:
                status = m.BatchStatusResponse.model_validate((await client.get(
                    f"/api/v1/portfolios/{first}/batch-status/{trigger.batch_run_id}",
                    headers=headers)).json())
                if status.status in ("completed", "failed") or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert status.status == "completed"
    finally:
        for process in processes:
            process.kill()
