"""Issue 12 finding 1 in the running system: a poison portfolio in a date of 3 chunks.

AAPL x 1,000,000 on $0.01 of declared equity (a valid upload) used to overflow
`daily_return numeric(20,12)`, fail its whole chunk on every delivery and dead-letter it, so
every other portfolio of the chunk lost its snapshot, night after night. Here each portfolio
is its own chunk of the date (chunk size 1): the poison's snapshots are made with the return
left NULL and flagged, and the other portfolios' state equals the clean run's.
"""

from __future__ import annotations

import json

import pytest

from libs.common.portfolio_csv import HEADER_LINE
from tests.e2e.harness import System
from tests.e2e.scenario import (
    FIRST_DATES,
    FIRST_TARGET,
    SECOND_DATES,
    SECOND_TARGET,
    WATERMARK,
    portfolio_files,
    symbols_of,
)
from tests.e2e.test_faults import assert_integrity

pytestmark = pytest.mark.e2e

POISON = f"{HEADER_LINE}\nAAPL,1000000,230.00,2025-06-30,PUBLIC,STOCK,,,,,,\n".encode()


def test_poison_portfolio_in_a_three_chunk_date_costs_no_one_else_their_snapshot(
    service_env: dict[str, str], reference_digest
) -> None:
    system = System(dict(service_env, SIGMABATCH_REFRESH_CHUNK_SIZE="1"))
    try:
        files = portfolio_files()
        system.start_all()
        system.seed_universe(symbols_of(files) + ["AAPL"])
        system.set_watermark(WATERMARK)
        system.login("alice")
        system.trigger(FIRST_TARGET)
        system.wait_for_cycle(FIRST_DATES, portfolios=0)
        with system.client() as client:
            created = client.post(
                "/api/v1/portfolios", files={"file": ("poison.csv", POISON, "text/csv")},
                data={"name": "poison", "equity_balance": "0.01"})
        assert created.status_code == 201, created.text
        poison_id = created.json()["portfolio_id"]
        for path in files:
            system.wait_onboarded(system.upload(path, name=path.stem)["portfolio_id"])
        system.wait_onboarded(poison_id)
        system.trigger(SECOND_TARGET)
        system.wait_for_cycle(SECOND_DATES, portfolios=3)

        for day in SECOND_DATES:
            chunks = system.query(
                "SELECT count(*) AS n FROM batch_run_history WHERE job_type = "
                "'portfolio_refresh_chunk' AND job_key LIKE :k AND status = 'completed'",
                k=f"{day.isoformat()}:%")
            assert chunks[0]["n"] >= 3, f"{day}: the date was not split into 3 chunks"
        poison = system.query(
            "SELECT snapshot_date, daily_pnl, daily_return, details FROM portfolio_snapshots "
            "WHERE portfolio_id = CAST(:p AS uuid) AND snapshot_date = ANY(:d) "
            "ORDER BY snapshot_date", p=poison_id, d=SECOND_DATES)
        assert [r["snapshot_date"] for r in poison] == SECOND_DATES
        # The first day after the upload rolls from $0.01: no return, flagged. The equity then
        # holds that day's P&L, so the next day's return is an ordinary number again.
        first, *later = poison
        details = first["details"] if isinstance(first["details"], dict) else json.loads(
            first["details"])
        assert first["daily_pnl"] != 0 and first["daily_return"] is None
        assert details["return_flag"] == "tiny_equity"
        assert all(r["daily_return"] is not None and abs(r["daily_return"]) < 100 for r in later)
        others = [r for r in system.digest()["snapshots"] if r[0] != "poison"]
        assert others == reference_digest["snapshots"]
        assert_integrity(system)
    finally:
        system.stop_all()
