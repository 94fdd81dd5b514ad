"""The SigmaSight web frontend's onboarding routes against the running API (real PostgreSQL and
NATS): every answer is checked against the frontend's response models
(services/status_api/frontend_models.py), and the behaviours its hooks rely on."""

from __future__ import annotations

import csv
import io
import json
import uuid

from sqlalchemy import text

from libs.common.db import session_scope
from libs.common.portfolio_csv import latest_allowed_date, parse_portfolio_csv
from services.status_api.frontend_models import (
    BatchStatusResponse,
    CreatePortfolioResponse,
    FrontendError,
    OnboardingLogJson,
    OnboardingStatusResponse,
    TriggerCalculationsResponse,
)
from services.status_api.snapshots import default_snapshot_maker
from tests.test_api_helpers import (
    FIXTURES,
    api_client,
    count,
    csv_bytes,
    seed_known_symbols,
    stock_rows,
    token_for,
)

CREATE = "/api/v1/onboarding/create-portfolio"


def form(data: bytes, account: str = "Main brokerage", **fields: str) -> dict:
    values = {"portfolio_name": "Retirement", "account_name": account,
              "account_type": "taxable", "equity_balance": "100000", **fields}
    return {"files": {"csv_file": ("positions.csv", data, "text/csv")}, "data": values}


def fixture_symbols(name: str) -> list[str]:
    parsed = parse_portfolio_csv((FIXTURES / "portfolios" / name).read_bytes(),
                                 today=latest_allowed_date())
    return sorted({p.market_data_symbol for p in parsed.positions if p.market_data_symbol})


async def test_create_then_first_poll_is_completed_with_the_hooks_fields(settings):
    headers = await token_for(settings.database_url, "alice")
    as_of = await seed_known_symbols(settings.database_url,
                                     fixture_symbols("small_test_portfolio.csv"))
    data = (FIXTURES / "portfolios" / "small_test_portfolio.csv").read_bytes()
    async with api_client(settings, snapshot_maker=default_snapshot_maker(settings)) as client:
        created = await client.post(CREATE, headers=headers,
                                    **form(data, account_type=" Roth_IRA ",
                                           equity_balance="1234.5"))
        assert created.status_code == 201, created.text
        body = CreatePortfolioResponse.model_validate(created.json())
        status = await client.get(f"/api/v1/onboarding/status/{body.portfolio_id}",
                                  headers=headers)
        listing = (await client.get("/api/v1/portfolios", headers=headers)).json()
    assert (body.portfolio_name, body.account_name, body.account_type) == (
        "Retirement", "Main brokerage", "roth_ira")
    assert (body.equity_balance, body.positions_imported, body.total_positions,
            body.positions_failed) == (1234.5, 3, 3, 0)
    assert body.next_step.endpoint == f"/api/v1/portfolios/{body.portfolio_id}/calculate"
    document = status.json()
    parsed = OnboardingStatusResponse.model_validate(document)
    # First poll of an instant onboarding: completed, with sigmabatch's extra fields.
    assert (parsed.status, document["mode"]) == ("completed", "v2_instant")
    assert document["snapshot_date"] == as_of.isoformat()
    assert isinstance(document["elapsed_seconds"], int) and parsed.elapsed_seconds >= 0
    assert parsed.activity_log and parsed.phases is not None
    assert [p.status for p in parsed.phases] == ["completed"] * 3
    assert all(isinstance(p.duration_seconds, int) for p in parsed.phases)
    assert parsed.overall_progress is not None
    assert (parsed.overall_progress.phases_completed, parsed.overall_progress.phases_total,
            parsed.overall_progress.percent_complete) == (3, 3, 100)
    assert listing[0]["latest_snapshot_date"] == as_of.isoformat()


async def test_duplicate_account_name_is_409_and_writes_nothing(settings):
    alice = await token_for(settings.database_url, "alice")
    bob = await token_for(settings.database_url, "bob")
    data = csv_bytes(*stock_rows(["ZZNEW"]))
    async with api_client(settings) as client:
        first = await client.post(CREATE, headers=alice, **form(data))
        assert first.status_code == 201, first.text
        before = await count(settings.database_url, "portfolios")
        again = await client.post(CREATE, headers=alice,
                                  **form(data, account="  Main brokerage "))
        other_user = await client.post(CREATE, headers=bob, **form(data))
        other_account = await client.post(CREATE, headers=alice, **form(data, account="IRA"))
    assert again.status_code == 409
    error = FrontendError.model_validate(again.json())
    assert not isinstance(error.detail, str)
    assert error.detail.error == "duplicate_account_name"
    assert "Main brokerage" in error.detail.message
    assert await count(settings.database_url, "portfolios") == before + 2
    assert (other_user.status_code, other_account.status_code) == (201, 201)


async def test_csv_problems_are_400_with_the_row_errors_the_upload_hook_reads(settings):
    headers = await token_for(settings.database_url, "alice")
    data = (FIXTURES / "portfolios" / "Conservative-Retiree-Portfolio.csv").read_bytes()
    async with api_client(settings) as client:
        response = await client.post(CREATE, headers=headers,
                                     **form(data, account_type="brokerage",
                                            equity_balance="-5"))
    assert response.status_code == 400
    error = FrontendError.model_validate(response.json())
    assert not isinstance(error.detail, str) and error.detail.errors
    errors = error.detail.errors
    # The hook takes detail.errors[] and reads row, symbol, code|error_code, message, field.
    by_field = {(e.row, e.field): e for e in errors}
    lines = data.decode().splitlines()
    quantity = by_field[(14, "Quantity")]
    assert quantity.symbol == next(csv.reader(io.StringIO(lines[13])))[0].strip()
    assert quantity.code == quantity.error_code == "invalid_quantity"
    assert by_field[(None, "account_type")].message.startswith("account_type 'brokerage'")
    assert (None, "equity_balance") in by_field
    assert len([e for e in errors if e.row is not None]) == 12
    assert await count(settings.database_url, "portfolios") == 0


async def test_missing_form_fields_are_listed_not_a_bare_422(settings):
    headers = await token_for(settings.database_url, "alice")
    async with api_client(settings) as client:
        response = await client.post(CREATE, headers=headers,
                                     data={"account_type": "ira"})
    assert response.status_code == 400
    errors = response.json()["detail"]["errors"]
    assert {"portfolio_name", "account_name"} <= {e["field"] for e in errors}
    assert any(e["message"].startswith("The file is empty") for e in errors)


async def test_status_errors_and_not_found(settings):
    alice = await token_for(settings.database_url, "alice")
    bob = await token_for(settings.database_url, "bob")
    async with api_client(settings) as client:
        created = await client.post(CREATE, headers=alice,
                                    **form(csv_bytes(*stock_rows(["ZZNEW"]))))
        pid = created.json()["portfolio_id"]
        malformed = await client.get("/api/v1/onboarding/status/not-a-uuid", headers=alice)
        foreign = await client.get(f"/api/v1/onboarding/status/{pid}", headers=bob)
        missing = await client.get(f"/api/v1/onboarding/status/{uuid.uuid4()}", headers=alice)
        running = await client.get(f"/api/v1/onboarding/status/{pid}", headers=alice)
    assert malformed.status_code == 400
    assert malformed.json()["detail"] == {"error": "invalid_portfolio_id",
                                          "message": "Invalid portfolio ID format"}
    for response in (foreign, missing):
        assert response.status_code == 404
        assert response.json()["detail"]["error"] == "portfolio_not_found"
    # An unknown symbol is being fetched: running, never not_found (the hook's grace logic
    # is for a portfolio without onboarding state only).
    document = OnboardingStatusResponse.model_validate(running.json())
    assert document.status == "running" and document.phases
    assert [p.status for p in document.phases] == ["completed", "running", "pending"]
    assert document.phases[1].duration_seconds is None


async def test_calculate_and_batch_status(settings):
    headers = await token_for(settings.database_url, "alice")
    bob = await token_for(settings.database_url, "bob")
    as_of = await seed_known_symbols(settings.database_url, ["AAPL", "MSFT"])
    async with api_client(settings, snapshot_maker=default_snapshot_maker(settings)) as client:
        done = (await client.post(CREATE, headers=headers,
                                  **form(csv_bytes(*stock_rows(["AAPL", "MSFT"]))))).json()
        waiting = (await client.post(CREATE, headers=headers,
                                     **form(csv_bytes(*stock_rows(["ZZNEW"])), account="IRA"))
                   ).json()
        # The frontend posts with a JSON content type and no body.
        json_headers = {**headers, "Content-Type": "application/json"}
        calc_done = await client.post(f"/api/v1/portfolios/{done['portfolio_id']}/calculate",
                                      headers=json_headers)
        calc_waiting = await client.post(
            f"/api/v1/portfolios/{waiting['portfolio_id']}/calculate", headers=json_headers)
        runs = {}
        for body, calc in ((done, calc_done), (waiting, calc_waiting)):
            trigger = TriggerCalculationsResponse.model_validate(calc.json())
            response = await client.get(
                f"/api/v1/portfolios/{body['portfolio_id']}/batch-status/{trigger.batch_run_id}",
                headers=headers)
            runs[body["portfolio_id"]] = (trigger, BatchStatusResponse.model_validate(
                response.json()))
        unknown = await client.get(
            f"/api/v1/portfolios/{done['portfolio_id']}/batch-status/{uuid.uuid4()}",
            headers=headers)
        not_a_date = await client.get(
            f"/api/v1/portfolios/{done['portfolio_id']}/batch-status/refresh-2026-02-30",
            headers=headers)
        foreign = await client.post(f"/api/v1/portfolios/{done['portfolio_id']}/calculate",
                                    headers=bob)
    trigger, status = runs[done["portfolio_id"]]
    # No batch date yet: up to its latest snapshot, which exists, so the run is completed.
    assert (trigger.batch_run_id, trigger.status) == (f"refresh-{as_of.isoformat()}", "started")
    assert status.status == "completed"
    trigger, status = runs[waiting["portfolio_id"]]
    assert (trigger.batch_run_id, status.status) == ("onboarding", "running")
    assert status.started_at and status.elapsed_seconds >= 0 and status.triggered_by == "alice"
    assert BatchStatusResponse.model_validate(unknown.json()).status == "idle"
    assert not_a_date.json()["status"] == "idle"
    assert foreign.status_code == 404


async def test_log_download_and_csv_template(settings):
    headers = await token_for(settings.database_url, "alice")
    await seed_known_symbols(settings.database_url, ["AAPL", "MSFT"])
    async with api_client(settings, snapshot_maker=default_snapshot_maker(settings)) as client:
        template = await client.get("/api/v1/onboarding/csv-template")  # a plain link: no token
        created = await client.post(CREATE, headers=headers, **form(template.content))
        pid = created.json()["portfolio_id"]
        txt = await client.get(f"/api/v1/onboarding/status/{pid}/logs?format=txt",
                               headers=headers)
        as_json = await client.get(f"/api/v1/onboarding/status/{pid}/logs?format=json",
                                   headers=headers)
        bad = await client.get("/api/v1/onboarding/status/nope/logs", headers=headers)
    assert template.status_code == 200 and template.headers["content-type"].startswith("text/csv")
    assert "sigmasight_portfolio_template.csv" in template.headers["content-disposition"]
    assert created.status_code == 201, created.text
    assert created.json()["positions_imported"] == 8
    assert txt.status_code == 200 and txt.headers["content-type"].startswith("text/plain")
    assert txt.headers["content-disposition"].startswith(
        f'attachment; filename="portfolio_setup_log_{pid[:8]}_')
    assert "Uploaded 'Retirement': 8 positions" in txt.text
    log = OnboardingLogJson.model_validate(json.loads(as_json.content))
    assert log.portfolio_name == "Retirement" and log.activity_log
    assert log.activity_log[0].message.startswith("Uploaded 'Retirement'")
    assert bad.status_code == 400


async def test_cors_lets_the_frontends_origin_call_with_its_token(settings):
    headers = await token_for(settings.database_url, "alice")
    origin = "http://localhost:3005"  # the frontend's `next dev -p 3005`
    configured = settings.model_copy(update={"cors_origins": [origin]})
    async with api_client(configured) as client:
        preflight = await client.options(CREATE, headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        template = await client.get("/api/v1/onboarding/csv-template",
                                    headers={"Origin": origin, **headers})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == origin
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert template.headers["access-control-allow-origin"] == origin
    assert "content-disposition" in template.headers["access-control-expose-headers"].lower()


async def test_invite_step_passes_any_authenticated_caller(settings):
    headers = await token_for(settings.database_url, "alice")
    async with api_client(settings) as client:
        ok = await client.post("/api/v1/onboarding/validate-invite", headers=headers,
                               json={"invite_code": "anything"})
        anonymous = await client.post("/api/v1/onboarding/validate-invite",
                                      json={"invite_code": "anything"})
    assert ok.status_code == 200 and ok.json()["status"] == "validated"
    assert anonymous.status_code == 401


async def test_batch_status_reports_a_dead_lettered_refresh_as_failed(settings):
    """The Settings page stops polling on `failed` (the original never sent it)."""
    headers = await token_for(settings.database_url, "alice")
    async with api_client(settings) as client:
        pid = (await client.post(CREATE, headers=headers,
                                 **form(csv_bytes(*stock_rows(["ZZNEW"]))))).json()["portfolio_id"]
        day = "2026-01-05"
        before = (await client.get(f"/api/v1/portfolios/{pid}/batch-status/refresh-{day}",
                                   headers=headers)).json()
        async with session_scope(settings.database_url) as session:
            await session.execute(text(
                "INSERT INTO batch_run_history (id, job_type, job_key, status, finished_at, "
                "error) VALUES (:id, 'portfolio_refresh_request', :key, 'failed', now(), "
                "'boom')"), {"id": uuid.uuid4(), "key": f"refresh:{pid}:{day}"})
        after = (await client.get(f"/api/v1/portfolios/{pid}/batch-status/refresh-{day}",
                                  headers=headers)).json()
    assert before["status"] == "running"
    assert BatchStatusResponse.model_validate(after).status == "failed"
