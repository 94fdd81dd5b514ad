"""Job endpoints and tenancy (issue 12, finding 6; docs/design.md §9).

A user sees only the jobs of their own portfolios and uploads, without internals (other
users' names, raw stacks, worker and message ids, payloads); an admin sees every job whole.
Real app, real PostgreSQL, jobs written by the real job tracker.
"""

from __future__ import annotations

import uuid

from libs.common.jobs import FAILED, JobTracker
from tests.test_api_helpers import api_client, csv_bytes, stock_rows, token_for

STACK = ('Traceback (most recent call last):\n  File "/srv/worker.py", line 9, in fetch\n'
         "ValueError: provider said no")


def form(*symbols: str) -> dict:
    data = csv_bytes(*stock_rows(list(symbols)))
    return {"files": {"file": ("p.csv", data, "text/csv")}, "data": {"name": "P"}}


async def test_users_see_only_their_jobs_redacted_and_admins_see_all(settings) -> None:
    alice = await token_for(settings.database_url, "alice")
    bob = await token_for(settings.database_url, "bob")
    admin = await token_for(settings.database_url, "ops", admin=True)
    async with api_client(settings) as client:
        mine = await client.post("/api/v1/portfolios", headers=alice, **form("NWALICE"))
        theirs = await client.post("/api/v1/portfolios", headers=bob, **form("NWBOB"))
    assert mine.status_code == theirs.status_code == 201
    alice_pid = mine.json()["portfolio_id"]
    bob_pid = theirs.json()["portfolio_id"]

    tracker = JobTracker(settings.database_url, worker_id="host-7:4242")
    alice_symbol = await tracker.start("symbol_onboard", "NWALICE", correlation_id="corr-alice")
    await tracker.finish(alice_symbol, FAILED, error=f"ValueError: provider said no\n{STACK}",
                         result={"prices": 0, "latest": "2026-11-27", "note": "internal"})
    alice_refresh = await tracker.start("portfolio_refresh_request", f"{alice_pid}:2026-11-27",
                                        correlation_id="corr-r")
    bob_symbol = await tracker.start("symbol_onboard", "NWBOB", correlation_id="corr-bob")
    await tracker.record_dead_letter("symbol_onboard", "NWBOB", "dead after 5 deliveries",
                                     b'{"symbol": "NWBOB", "requested_by": "bob"}', 5)
    bob_refresh = await tracker.start("portfolio_refresh_request", f"{bob_pid}:2026-11-27")
    nightly = await tracker.start("symbol_batch", "2026-11-27")
    chunk = await tracker.start("portfolio_refresh_chunk", "2026-11-27:0")
    stack_only = await tracker.start("portfolio_refresh_request", f"{alice_pid}:2026-11-26")
    await tracker.finish(stack_only, FAILED, error=STACK)
    every = {alice_symbol.id, alice_refresh.id, bob_symbol.id, bob_refresh.id, nightly.id,
             chunk.id, stack_only.id}

    async with api_client(settings) as client:
        async def runs(headers: dict[str, str]) -> list[dict]:
            response = await client.get("/api/v1/batch/runs?limit=100", headers=headers)
            assert response.status_code == 200, response.text
            return response.json()

        alice_runs, bob_runs, admin_runs = await runs(alice), await runs(bob), await runs(admin)
        alice_running = (await client.get("/api/v1/batch/jobs?status=running",
                                          headers=alice)).json()
        detail_own = await client.get(f"/api/v1/batch/jobs/{alice_symbol.id}", headers=alice)
        detail_other = await client.get(f"/api/v1/batch/jobs/{bob_symbol.id}", headers=alice)
        detail_nightly = await client.get(f"/api/v1/batch/jobs/{nightly.id}", headers=alice)
        detail_missing = await client.get(f"/api/v1/batch/jobs/{uuid.uuid4()}", headers=admin)
        detail_admin = await client.get(f"/api/v1/batch/jobs/{bob_symbol.id}", headers=admin)
        alice_text = (await client.get("/api/v1/batch/runs?limit=100", headers=alice)).text

    assert {uuid.UUID(j["id"]) for j in alice_runs} == {alice_symbol.id, alice_refresh.id,
                                                        stack_only.id}
    assert {uuid.UUID(j["id"]) for j in bob_runs} == {bob_symbol.id, bob_refresh.id}
    assert {uuid.UUID(j["id"]) for j in admin_runs} == every
    assert {uuid.UUID(j["id"]) for j in alice_running} == {alice_refresh.id}

    for leaked in ("bob", "host-7", "corr-", "Traceback", "/srv/worker.py", "internal"):
        assert leaked not in alice_text, leaked
    failed = next(j for j in alice_runs if j["id"] == str(alice_symbol.id))
    assert failed["error"] == "ValueError: provider said no"
    assert failed["result"] == {"prices": 0, "latest": "2026-11-27"}
    assert failed["worker_id"] is None and failed["correlation_id"] is None
    only_stack = next(j for j in alice_runs if j["id"] == str(stack_only.id))
    assert only_stack["error"] == "failed (details for admins)"
    dead = next(j for j in bob_runs if j["id"] == str(bob_symbol.id))
    assert dead["result"] == {"dead_letter": True, "deliveries": 5}  # no payload

    assert detail_own.status_code == 200 and detail_own.json()["worker_id"] is None
    assert detail_other.status_code == 404 and detail_nightly.status_code == 404
    assert detail_missing.status_code == 404
    whole = detail_admin.json()
    assert whole["worker_id"] == "host-7:4242" and whole["correlation_id"] == "corr-bob"
    assert '"requested_by": "bob"' in whole["result"]["payload"]
    admin_failed = next(j for j in admin_runs if j["id"] == str(alice_symbol.id))
    assert "Traceback" in admin_failed["error"]
