"""status_api on real PostgreSQL + NATS: auth, tenancy, uploads, reads, batch endpoints."""

from __future__ import annotations

import datetime as dt
import uuid

import nats
from sqlalchemy import text

from libs.common import bus
from libs.common.db import session_scope
from libs.common.events import BatchNightlyRequested
from libs.common.jobs import JobTracker
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

UPLOAD = "/api/v1/portfolios"


def upload_form(data: bytes, name: str = "Test", **extra: str):
    return {"files": {"file": ("p.csv", data, "text/csv")}, "data": {"name": name, **extra}}


async def test_missing_or_bad_token_is_401(settings):
    async with api_client(settings) as client:
        for path in (UPLOAD, "/api/v1/batch/jobs", f"/api/v1/onboarding/status/{uuid.uuid4()}"):
            response = await client.get(path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"] == "Bearer"
        bad = await client.get(UPLOAD, headers={"Authorization": "Bearer sb_nope"})
        assert bad.status_code == 401 and bad.json()["detail"] == "Invalid token."
        assert (await client.get("/healthz")).status_code == 200


async def test_tokens_are_stored_hashed(settings):
    headers = await token_for(settings.database_url, "alice")
    token = headers["Authorization"].split()[1]
    async with session_scope(settings.database_url) as session:
        stored = (await session.execute(text("SELECT token_hash FROM api_tokens"))).scalars().all()
    assert len(stored) == 1 and token not in stored[0] and len(stored[0]) == 64


async def test_rejected_upload_lists_every_problem_and_writes_nothing(settings):
    headers = await token_for(settings.database_url, "alice")
    data = (FIXTURES / "portfolios/Conservative-Retiree-Portfolio.csv").read_bytes()
    async with api_client(settings) as client:
        response = await client.post(UPLOAD, headers=headers, **upload_form(data))
        assert response.status_code == 422
        body = response.json()
        assert len(body["errors"]) == 12
        assert {"row": 14, "column": "Quantity",
                "message": "Quantity is 0; use a positive number for a long position or a "
                           "negative number for a short one."} in body["errors"]
        empty_name = await client.post(UPLOAD, headers=headers,
                                       **upload_form(csv_bytes(*stock_rows(["AAPL"])), name=" "))
        assert empty_name.status_code == 422
        assert empty_name.json()["errors"][0]["column"] == "name"
        big = await client.post(UPLOAD, headers=headers,
                                **upload_form(b"#" * (10 * 1024 * 1024)))
        assert big.status_code == 413 and "limit" in big.json()["detail"]
        just_over = await client.post(UPLOAD, headers=headers,
                                      **upload_form(b"#" * (2 * 1024 * 1024 + 1)))
        assert just_over.status_code == 422
        assert just_over.json()["errors"][0]["message"].startswith(
            "The file is 2,097,153 bytes; the limit is 2,097,152 bytes (2.0 MB).")
        no_file = await client.post(UPLOAD, headers=headers, data={"name": "x"})
        assert no_file.status_code == 422 and no_file.json()["errors"][0]["column"] == "file"
    for table in ("portfolios", "positions", "symbol_onboarding", "portfolio_onboarding",
                  "onboarding_activity"):
        assert await count(settings.database_url, table) == 0, table


async def test_upload_unknown_symbols_queues_them_once(settings):
    alice = await token_for(settings.database_url, "alice")
    bob = await token_for(settings.database_url, "bob")
    await seed_known_symbols(settings.database_url, ["AAPL"])
    async with api_client(settings) as client:
        first = await client.post(UPLOAD, headers=alice, **upload_form(
            csv_bytes(*stock_rows(["AAPL", "ZZNEW", "PRIVATE_FUND_A"]),
                      ",2,3.10,2025-06-30,OPTIONS,,YYNEW,50,2025-08-15,CALL,,")))
        assert first.status_code == 201, first.text
        body = first.json()
        assert body["positions_created"] == 4
        assert (body["symbols_known"], body["symbols_queued"]) == (1, 2)
        assert body["queued_symbols"] == ["YYNEW", "ZZNEW"]
        assert (body["status"], body["mode"]) == ("running", "v2_async")
        second = await client.post(UPLOAD, headers=bob,
                                   **upload_form(csv_bytes(*stock_rows(["ZZNEW"]))))
        assert second.json()["queued_symbols"] == ["ZZNEW"]
        status = (await client.get(f"/api/v1/onboarding/status/{body['portfolio_id']}",
                                   headers=alice)).json()
    assert status["status"] == "running" and status["mode"] == "v2_async"
    assert status["overall_progress"]["current_phase"] == "phase_2"
    assert status["current_phase_progress"] == {"current": 0, "total": 2, "unit": "symbols"}
    assert "2 to fetch (YYNEW, ZZNEW)" in status["activity_log"][0]["message"]
    assert await count(settings.database_url, "symbol_onboarding") == 2
    # One message per symbol on the bus although two users asked for ZZNEW.
    nc = await nats.connect(settings.nats_url)
    try:
        info = await nc.jetstream().stream_info(bus.Topology(settings.bus_prefix).jobs_stream)
        assert info.state.messages == 2
    finally:
        await nc.close()


async def test_equity_balance_default_and_explicit(settings):
    headers = await token_for(settings.database_url, "alice")
    async with api_client(settings) as client:
        rows = ["AAPL,10,100.00,2025-06-30,,,,,,,,", "MSFT,-4,50.00,2025-06-30,,,,,,,,"]
        default = await client.post(UPLOAD, headers=headers, **upload_form(csv_bytes(*rows)))
        explicit = await client.post(UPLOAD, headers=headers,
                                     **upload_form(csv_bytes(*rows), equity_balance="2500"))
        short_book = await client.post(UPLOAD, headers=headers, **upload_form(
            csv_bytes("MSFT,-4,50.00,2025-06-30,,,,,,,,")))
        listing = (await client.get(UPLOAD, headers=headers)).json()
    equities = {p["portfolio_id"]: (p["equity_balance"], p["equity_source"]) for p in listing}
    # none stated: the first snapshot starts from the net market value (issue 9), not 800
    assert equities[default.json()["portfolio_id"]] == (None, "net_market_value")
    assert default.json()["equity_source"] == "net_market_value"
    assert equities[explicit.json()["portfolio_id"]] == ("2500.00", "stated")
    assert all("id" not in p for p in listing)  # one id field: portfolio_id
    assert short_book.status_code == 422
    assert short_book.json()["errors"][0]["column"] == "equity_balance"


async def test_tenancy_another_users_portfolio_is_404(settings):
    alice = await token_for(settings.database_url, "alice")
    bob = await token_for(settings.database_url, "bob")
    async with api_client(settings) as client:
        created = await client.post(UPLOAD, headers=alice,
                                    **upload_form(csv_bytes(*stock_rows(["ZZNEW"]))))
        pid = created.json()["portfolio_id"]
        paths = [f"/api/v1/portfolios/{pid}", f"/api/v1/portfolios/{pid}/snapshots",
                 f"/api/v1/portfolios/{pid}/positions",
                 f"/api/v1/onboarding/status/{pid}"]
        for path in paths:
            assert (await client.get(path, headers=alice)).status_code == 200, path
            assert (await client.get(path, headers=bob)).status_code == 404, path
        # no exposures yet: 404 with the reason for alice, "not found" for bob
        exposures = f"/api/v1/portfolios/{pid}/factor-exposures"
        mine, theirs = (await client.get(exposures, headers=alice),
                        await client.get(exposures, headers=bob))
        assert mine.status_code == 404 and "No factor exposures yet" in mine.json()["detail"]
        assert theirs.status_code == 404 and theirs.json()["detail"] == "Portfolio not found."
        assert (await client.get(f"/api/v1/portfolios/{uuid.uuid4()}",
                                 headers=alice)).status_code == 404
        assert (await client.get(UPLOAD, headers=bob)).json() == []
        positions = (await client.get(paths[2], headers=alice)).json()
    assert positions[0]["symbol"] == "ZZNEW" and positions[0]["source_row"] == 2


async def test_status_not_found_for_a_portfolio_without_onboarding(settings):
    headers = await token_for(settings.database_url, "alice")
    pid = uuid.uuid4()
    async with session_scope(settings.database_url) as session:
        await session.execute(text(
            "INSERT INTO portfolios (id, user_id, name, equity_balance) "
            "SELECT :id, id, 'seeded', 1000 FROM users WHERE username = 'alice'"), {"id": pid})
    async with api_client(settings) as client:
        response = await client.get(f"/api/v1/onboarding/status/{pid}", headers=headers)
    assert response.status_code == 200 and response.json()["status"] == "not_found"


async def test_admin_trigger_publishes_nightly(settings):
    admin = await token_for(settings.database_url, "root", admin=True)
    user = await token_for(settings.database_url, "alice")
    async with api_client(settings) as client:
        forbidden = await client.post("/api/v1/admin/batch/nightly", headers=user)
        assert forbidden.status_code == 403
        accepted = await client.post("/api/v1/admin/batch/nightly", headers=admin,
                                     json={"target_date": "2025-06-30"})
        assert accepted.status_code == 202, accepted.text
        assert accepted.json() == {"message_id": "nightly:2025-06-30", "published": True,
                                   "target_date": "2025-06-30"}
        again = await client.post("/api/v1/admin/batch/nightly", headers=admin,
                                  json={"target_date": "2025-06-30"})
        assert again.json()["published"] is False
    nc = await nats.connect(settings.nats_url)
    try:
        topology = bus.Topology(settings.bus_prefix)
        sub = await nc.jetstream().pull_subscribe(
            topology.subject(BatchNightlyRequested.subject), durable="test-reader",
            stream=topology.jobs_stream)
        [msg] = await sub.fetch(1, timeout=2)
        message = BatchNightlyRequested.model_validate_json(msg.data)
        assert message.target_date == dt.date(2025, 6, 30) and message.requested_by == "root"
    finally:
        await nc.close()


async def test_batch_jobs_lists_running_jobs_of_every_type(settings):
    headers = await token_for(settings.database_url, "ops", admin=True)  # admins see every job
    tracker = JobTracker(settings.database_url)
    nightly = await tracker.start("symbol_batch", "2025-06-30", phases=("prices", "factors"))
    await tracker.phase(nightly, "prices", total=500, unit="symbols")
    await tracker.progress(nightly, 120)
    onboard = await tracker.start("symbol_onboard", "ZZNEW")
    done = await tracker.start("portfolio_refresh", "2025-06-27")
    await tracker.finish(done)
    async with api_client(settings) as client:
        running = (await client.get("/api/v1/batch/jobs?status=running", headers=headers)).json()
        runs = (await client.get("/api/v1/batch/runs?job_type=portfolio_refresh&limit=5",
                                 headers=headers)).json()
        bad_limit = await client.get("/api/v1/batch/runs?limit=0", headers=headers)
    assert {j["job_type"] for j in running} == {"symbol_batch", "symbol_onboard"}
    batch = next(j for j in running if j["id"] == str(nightly.id))
    assert batch["progress"] == {"current": 120, "total": 500, "unit": "symbols"}
    assert batch["current_phase"] == "prices"
    assert [r["id"] for r in runs] == [str(done.id)] and runs[0]["status"] == "completed"
    assert str(onboard.id) not in [r["id"] for r in runs]
    assert bad_limit.status_code == 422 and bad_limit.json()["errors"][0]["column"] == "limit"


async def test_symbol_prices_and_factors(settings):
    headers = await token_for(settings.database_url, "alice")
    end = await seed_known_symbols(settings.database_url, ["AAPL"], days=30)
    async with api_client(settings) as client:
        prices = await client.get(f"/api/v1/symbols/aapl/prices?end={end}", headers=headers)
        unknown = await client.get("/api/v1/symbols/NOPE/prices", headers=headers)
        factors = await client.get("/api/v1/symbols/AAPL/factors", headers=headers)
        before = await client.get("/api/v1/symbols/AAPL/factors?date=2001-01-02",
                                  headers=headers)
    assert prices.status_code == 200
    assert set(prices.json()[-1]) == {"date", "close", "adj_close", "source"}
    assert prices.json()[-1]["date"] == end.isoformat()
    assert unknown.status_code == 404
    # known symbol without betas: 404 saying why, not 200 with nothing
    assert factors.status_code == 404 and "No factor betas for AAPL yet" in factors.json()["detail"]
    assert before.status_code == 404 and "on or before 2001-01-02" in before.json()["detail"]
    assert prices.json()[-1]["close"].count(".") == 1 and len(
        prices.json()[-1]["close"].split(".")[1]) == 4  # a Price: decimal string at 4 dp


async def test_health_ready_metrics_and_openapi(settings):
    async with api_client(settings) as client:
        assert (await client.get("/readyz")).json() == {"status": "ok", "database": True,
                                                        "nats": True}
        await client.get("/api/v1/portfolios")
        metrics = (await client.get("/metrics")).text
        spec = (await client.get("/openapi.json")).json()
    assert 'sigmabatch_http_requests_total{method="GET",route="/api/v1/portfolios",status="401"}' \
        in metrics
    upload = spec["paths"]["/api/v1/portfolios"]["post"]
    assert upload["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ErrorResponse")
    assert "line number" in spec["components"]["schemas"]["Problem"]["description"]
    for path in ("/api/v1/onboarding/status/{portfolio_id}", "/api/v1/batch/jobs",
                 "/api/v1/batch/runs", "/api/v1/admin/batch/nightly",
                 "/api/v1/portfolios/{portfolio_id}/factor-exposures",
                 "/api/v1/symbols/{symbol}/prices", "/api/v1/symbols/{symbol}/factors",
                 "/healthz", "/readyz", "/metrics"):
        assert path in spec["paths"], path


async def test_cors_allows_configured_origin(settings):
    configured = settings.model_copy(update={"cors_origins": ["http://localhost:3000"]})
    async with api_client(configured) as client:
        response = await client.options(
            "/api/v1/portfolios",
            headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "GET"})
        other = await client.options(
            "/api/v1/portfolios",
            headers={"Origin": "http://evil.test", "Access-Control-Request-Method": "GET"})
    assert response.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "access-control-allow-origin" not in other.headers


async def test_all_symbols_known_is_completed_on_the_first_poll(settings):
    headers = await token_for(settings.database_url, "alice")
    as_of = await seed_known_symbols(settings.database_url, ["AAPL", "MSFT", "NVDA"])
    rows = [*stock_rows(["AAPL", "MSFT"]), "NVDA,-5,120.00,2025-06-30,PUBLIC,STOCK,,,,,,",
            "PRIVATE_FUND_A,1,50000.00,2023-06-01,PRIVATE,PRIVATE_EQUITY,,,,,,",
            ",2,3.10,2025-06-30,OPTIONS,,AAPL,200,2027-01-15,CALL,,"]
    async with api_client(settings, snapshot_maker=default_snapshot_maker(settings)) as client:
        created = await client.post(UPLOAD, headers=headers, **upload_form(csv_bytes(*rows)))
        assert created.status_code == 201, created.text
        body = created.json()
        status = (await client.get(f"/api/v1/onboarding/status/{body['portfolio_id']}",
                                   headers=headers)).json()
        snapshots = (await client.get(f"/api/v1/portfolios/{body['portfolio_id']}/snapshots",
                                      headers=headers)).json()
        detail = (await client.get(f"/api/v1/portfolios/{body['portfolio_id']}",
                                   headers=headers)).json()
    assert (body["status"], body["mode"], body["symbols_queued"]) == ("completed", "v2_instant", 0)
    assert body["symbols_known"] == 3
    assert (status["status"], status["mode"]) == ("completed", "v2_instant")
    assert status["snapshot_date"] == as_of.isoformat()
    assert status["overall_progress"]["percent_complete"] == 100.0
    assert [s["snapshot_date"] for s in snapshots] == [as_of.isoformat()]
    assert detail["latest_snapshot"]["snapshot_date"] == as_of.isoformat()
    assert detail["position_count"] == 5 and detail["onboarding_status"] == "completed"
    assert await count(settings.database_url, "symbol_onboarding") == 0


async def test_auth_disabled_serves_a_local_admin(settings):
    local = settings.model_copy(update={"auth_disabled": True})
    async with api_client(local) as client:
        listing = await client.get("/api/v1/portfolios")
        trigger = await client.post("/api/v1/admin/batch/nightly")
    assert listing.status_code == 200 and listing.json() == []
    assert trigger.status_code == 202


async def test_large_upload_is_stored_in_one_set_based_write(settings):
    headers = await token_for(settings.database_url, "alice")
    await seed_known_symbols(settings.database_url, ["AAPL", "MSFT"], days=10)
    rows = [f"{('AAPL', 'MSFT')[i % 2]},{i + 1},{100 + i % 50}.25,2025-06-30,,,,,,,,"
            for i in range(5000)]
    async with api_client(settings) as client:
        created = await client.post(UPLOAD, headers=headers, **upload_form(csv_bytes(*rows)))
    assert created.status_code == 201, created.text
    assert created.json()["positions_created"] == 5000
    assert await count(settings.database_url, "positions") == 5000
    async with session_scope(settings.database_url) as session:
        last = (await session.execute(text(
            "SELECT source_row, quantity FROM positions ORDER BY source_row DESC LIMIT 1"))).one()
    assert (last.source_row, int(last.quantity)) == (5001, 5000)


async def test_admin_rerun_and_job_retry_redrive_through_the_bus(settings):
    """Issue 12: `{"target_date": D, "rerun": true}` publishes a restating rerun, and
    `POST /admin/jobs/{id}/retry` re-publishes a failed job's recorded message."""
    from libs.common.jobs import record_failed_job

    admin = await token_for(settings.database_url, "root", admin=True)
    user = await token_for(settings.database_url, "alice")
    failed_message = BatchNightlyRequested(target_date=dt.date(2025, 6, 27))
    await record_failed_job(settings.database_url, "symbol_batch", "2025-06-27", "boom",
                            subject=failed_message.subject,
                            payload=failed_message.model_dump_json().encode())
    tracker = JobTracker(settings.database_url)
    running = await tracker.start("symbol_batch", "2025-06-30")
    async with api_client(settings) as client:
        rerun = await client.post("/api/v1/admin/batch/nightly", headers=admin,
                                  json={"target_date": "2025-06-26", "rerun": True})
        assert rerun.status_code == 202, rerun.text
        assert rerun.json()["message_id"].startswith("nightly:2025-06-26:")
        jobs = (await client.get("/api/v1/batch/runs", headers=admin)).json()
        failed_id = next(j["id"] for j in jobs if j["status"] == "failed")
        assert (await client.post(f"/api/v1/admin/jobs/{failed_id}/retry",
                                  headers=user)).status_code == 403
        retried = await client.post(f"/api/v1/admin/jobs/{failed_id}/retry", headers=admin)
        assert retried.status_code == 202, retried.text
        assert retried.json()["message_id"] == f"retry:{failed_id}"
        busy = await client.post(f"/api/v1/admin/jobs/{running.id}/retry", headers=admin)
        assert busy.status_code == 409 and "running" in busy.json()["detail"]
        missing = await client.post(f"/api/v1/admin/jobs/{uuid.uuid4()}/retry", headers=admin)
        assert missing.status_code == 404
    nc = await nats.connect(settings.nats_url)
    try:
        topology = bus.Topology(settings.bus_prefix)
        sub = await nc.jetstream().pull_subscribe(
            topology.subject(BatchNightlyRequested.subject), durable="test-reader",
            stream=topology.jobs_stream)
        messages = [BatchNightlyRequested.model_validate_json(m.data)
                    for m in await sub.fetch(2, timeout=2)]
    finally:
        await nc.close()
    assert [(m.target_date, m.rerun) for m in messages] == [
        (dt.date(2025, 6, 26), True), (dt.date(2025, 6, 27), False)]
