"""The whole system as real processes, driven the way users and operators drive it.

Four services run as separate `python -m services.<name>` processes against real NATS and
PostgreSQL. The harness uploads portfolios through the HTTP API, fires the nightly trigger,
waits on database state (never on a clock offset between steps), injects faults (kill -9,
replicas, server restarts) and reduces the final state to a digest, so a faulty run can be
compared with a clean one: same digest = nothing lost, nothing duplicated.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy import text

from libs.common import bus
from libs.common.auth import create_user_token
from libs.common.db import asyncpg_dsn, dispose_engines, session_scope
from libs.common.events import BatchNightlyRequested
from tests.processes import ServiceProcess

START_TIMEOUT = 120.0  # a cold start on a loaded 2-core CI machine
SERVICES = ("symbol_batch", "portfolio_refresh", "onboarding", "status_api")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


# The fault suite runs with the SHIPPED reliability settings (AckWait 30 s, stale 120 s,
# MaxDeliver 5, heartbeat 10 s): a suite that needed tuned values would hide lost work.
TUNED = ("SIGMABATCH_ACK_WAIT_SECONDS", "SIGMABATCH_JOB_STALE_SECONDS",
         "SIGMABATCH_JOB_HEARTBEAT_SECONDS", "SIGMABATCH_MAX_DELIVER")


def shipped(env: dict[str, str]) -> dict[str, str]:
    """`env` without any override of the shipped reliability settings."""
    return {k: v for k, v in env.items() if k not in TUNED}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(coro: Any) -> Any:
    """Run one coroutine on a fresh loop (the harness is synchronous, like an operator)."""

    async def wrapped() -> Any:
        try:
            return await coro
        finally:
            await dispose_engines()

    return asyncio.run(wrapped())


class HeldWrites:
    """Probes made on the connection that holds a table's writes (its transaction reads
    committed data statement by statement, so it sees every job's progress)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, connection: Any, table: str) -> None:
        self.loop, self.connection, self.table = loop, connection, table

    def query(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        rows = self.loop.run_until_complete(self.connection.fetch(sql, *args))
        return [dict(r) for r in rows]

    def waiters(self) -> int:
        """Sessions waiting for a lock on the table or one of its month partitions."""
        rows = self.query(
            "SELECT count(*) AS n FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE (c.relname = $1 OR c.relname LIKE $2) AND NOT l.granted",
            self.table, self.table.replace("_", "\\_") + "\\_%")
        return int(rows[0]["n"])


class System:
    """Processes, API client and database probes of one test's deployment."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = shipped(env)
        self.api_port = free_port()
        self.env["API_PORT"] = str(self.api_port)
        self.database_url = env["DATABASE_URL"]
        self.processes: dict[str, list[ServiceProcess]] = {name: [] for name in SERVICES}
        self.token: str | None = None

    # --- processes ------------------------------------------------------------------
    def start(self, name: str, *, replica: int | None = None) -> ServiceProcess:
        replicas = self.processes[name]
        process = ServiceProcess(
            name, self.env, replica=len(replicas) if replica is None else replica
        )
        process.start(timeout=START_TIMEOUT)
        replicas.append(process)
        return process

    def start_all(self) -> None:
        for name in SERVICES:
            self.start(name)
        self.wait_api()

    def kill(self, name: str, index: int = 0) -> ServiceProcess:
        process = self.processes[name][index]
        process.kill()
        return process

    def restart(self, name: str, index: int = 0) -> ServiceProcess:
        old = self.processes[name][index]
        old.kill()
        fresh = ServiceProcess(name, self.env, replica=old.replica)
        fresh.start(timeout=START_TIMEOUT)
        self.processes[name][index] = fresh
        return fresh

    def stop_all(self) -> None:
        for replicas in self.processes.values():
            for process in replicas:
                process.kill()

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}[{p.replica}]\n{p.log()[-3000:]}"
            for replicas in self.processes.values()
            for p in replicas
        )

    # --- API ------------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def wait_api(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.api_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"status_api not ready:\n{self.logs()}")

    def login(self, user: str = "alice") -> str:
        async def create() -> str:
            async with session_scope(self.database_url) as session:
                return await create_user_token(session, user, admin=False)

        self.token = run(create())
        return self.token

    def client(self) -> httpx.Client:
        assert self.token, "login() first"
        return httpx.Client(
            base_url=self.api_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )

    def upload(self, csv_path: Path, name: str | None = None) -> dict[str, Any]:
        with self.client() as client:
            response = client.post(
                "/api/v1/portfolios",
                files={"file": (csv_path.name, csv_path.read_bytes(), "text/csv")},
                data={"name": name or csv_path.stem},
            )
        assert response.status_code == 201, response.text
        return response.json()

    def wait_onboarded(self, portfolio_id: str, timeout: float = 90.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        with self.client() as client:
            while time.monotonic() < deadline:
                status = client.get(f"/api/v1/onboarding/status/{portfolio_id}").json()
                if status.get("status") in ("completed", "partial", "failed"):
                    return status
                time.sleep(0.2)
        raise TimeoutError(f"onboarding of {portfolio_id} stuck at {status}:\n{self.logs()}")

    # --- operator actions ---------------------------------------------------------------
    def seed_universe(self, symbols: list[str]) -> None:
        async def seed() -> None:
            async with session_scope(self.database_url) as session:
                await session.execute(
                    text(
                        "INSERT INTO symbol_universe (symbol, added_by) "
                        "SELECT s, 'seed' FROM unnest(CAST(:symbols AS text[])) AS s "
                        "ON CONFLICT (symbol) DO NOTHING"
                    ),
                    {"symbols": symbols},
                )

        run(seed())

    def set_watermark(self, last_completed: dt.date) -> None:
        """As if the batch had completed `last_completed` before this deployment's history."""

        async def mark() -> None:
            async with session_scope(self.database_url) as session:
                await session.execute(
                    text(
                        "INSERT INTO symbol_batch_dates (batch_date, status, symbols_total) "
                        "VALUES (:d, 'completed', 0) ON CONFLICT DO NOTHING"
                    ),
                    {"d": last_completed},
                )

        run(mark())

    def trigger(self, target: dt.date, *, requested_by: str = "cron") -> bool:
        async def publish() -> bool:
            nc = await bus.connect(self.env["NATS_URL"], "harness")
            try:
                topology = bus.Topology(self.env.get("SIGMABATCH_BUS_PREFIX", ""))
                return await bus.publish(
                    nc.jetstream(),
                    topology,
                    BatchNightlyRequested(target_date=target, requested_by=requested_by),
                )
            finally:
                await nc.close()

        return run(publish())

    # --- database probes ----------------------------------------------------------------
    def query(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        async def fetch() -> list[dict[str, Any]]:
            async with session_scope(self.database_url) as session:
                result = await session.execute(text(sql), params)
                return [dict(r) for r in result.mappings()]

        return run(fetch())

    @contextmanager
    def writes_held(self, table: str) -> Iterator[HeldWrites]:
        """A test transaction holds a SHARE lock on `table` (and its partitions) for the
        block: every writer of it waits there, so a job that writes it stays `running`
        until the block ends, whatever the machine's speed. The block may run in a thread of
        its own: its probes use the holding connection and loop, nothing shared."""
        loop = asyncio.new_event_loop()
        blocker = loop.run_until_complete(asyncpg.connect(asyncpg_dsn(self.database_url)))
        try:
            loop.run_until_complete(blocker.execute(f"BEGIN; LOCK TABLE {table} IN SHARE MODE"))
            yield HeldWrites(loop, blocker, table)
        finally:
            loop.run_until_complete(blocker.execute("ROLLBACK"))
            loop.run_until_complete(blocker.close())
            loop.close()

    def wait_until(self, what: str, predicate: Callable[[], bool], timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.25)
        raise TimeoutError(f"timed out waiting for {what}:\n{self.logs()}")

    def batch_dates(self) -> list[dt.date]:
        rows = self.query("SELECT batch_date FROM symbol_batch_dates ORDER BY batch_date")
        return [r["batch_date"] for r in rows]

    def complete_snapshots(self) -> int:
        return self.query("SELECT count(*) AS n FROM portfolio_snapshots WHERE is_complete")[0]["n"]

    def wait_for_cycle(self, dates: list[dt.date], portfolios: int, timeout: float = 180.0) -> None:
        """Every date batched and every portfolio snapshotted on every date."""
        self.wait_until(
            f"symbol batch of {dates}", lambda: set(dates) <= set(self.batch_dates()), timeout
        )

        def snapshots_done() -> bool:
            rows = self.query(
                "SELECT count(*) AS n FROM portfolio_snapshots "
                "WHERE is_complete AND snapshot_date = ANY(:dates)",
                dates=dates,
            )
            return rows[0]["n"] >= portfolios * len(dates)

        self.wait_until("snapshots", snapshots_done, timeout)

    def digest(self) -> dict[str, Any]:
        """The business state, keyed by stable names (ids differ between deployments)."""

        def rows(sql: str) -> list[tuple[Any, ...]]:
            return [tuple(r.values()) for r in self.query(sql)]

        return {
            "batch_dates": rows(
                "SELECT batch_date, status, symbols_failed FROM symbol_batch_dates "
                "WHERE symbols_total > 0 ORDER BY batch_date"
            ),
            "prices": rows(
                "SELECT date, count(*), round(sum(adj_close)::numeric, 6) FROM market_data_cache "
                "GROUP BY date ORDER BY date"
            ),
            "betas": rows(
                "SELECT calculation_date, count(*), round(sum(beta)::numeric, 8) "
                "FROM symbol_factor_exposures GROUP BY calculation_date ORDER BY calculation_date"
            ),
            "snapshots": rows(
                "SELECT p.name, s.snapshot_date, s.is_complete, s.equity, s.daily_pnl, "
                "s.cumulative_pnl, s.total_value, s.position_count "
                "FROM portfolio_snapshots s JOIN portfolios p ON p.id = s.portfolio_id "
                "ORDER BY p.name, s.snapshot_date"
            ),
            "portfolio_exposures": rows(
                "SELECT p.name, e.calculation_date, e.factor_name, round(e.exposure::numeric, 8) "
                "FROM factor_exposures e JOIN portfolios p ON p.id = e.portfolio_id "
                "ORDER BY 1, 2, 3"
            ),
            "position_exposures": rows(
                "SELECT calculation_date, count(*) FROM position_factor_exposures "
                "GROUP BY calculation_date ORDER BY 1"
            ),
        }

    def integrity(self, settle: float = 45.0) -> dict[str, int]:
        """Checks a lost or doubled piece of work would fail (all must be 0).

        None of them is guaranteed by a unique index: a (portfolio, batch date) without its
        complete snapshot from the portfolio's first one on; a snapshot whose equity does not
        roll from the one before it; a batch date completed by two runs of one trigger; a job
        left running, or failed with no later success; a message left in the work queue
        (unsettled, or stranded at MaxDeliver). Waits up to `settle` s for the last acks.
        """
        checks = {
            "missing_snapshots": """
                SELECT count(*) AS n FROM portfolios p
                JOIN LATERAL (SELECT min(snapshot_date) AS first FROM portfolio_snapshots s
                              WHERE s.portfolio_id = p.id AND s.is_complete) f ON true
                JOIN symbol_batch_dates d ON d.batch_date >= f.first AND d.symbols_total > 0
                WHERE NOT EXISTS (SELECT 1 FROM portfolio_snapshots s
                                  WHERE s.portfolio_id = p.id AND s.snapshot_date = d.batch_date
                                    AND s.is_complete)""",
            "broken_equity_chain": """
                SELECT count(*) AS n FROM (
                    SELECT equity, daily_pnl, capital_flow,
                           lag(equity) OVER (PARTITION BY portfolio_id
                                             ORDER BY snapshot_date) AS before
                    FROM portfolio_snapshots WHERE is_complete) t
                WHERE before IS NOT NULL
                  AND equity <> before + daily_pnl + coalesce(capital_flow, 0)""",
            "completed_batch_runs": """
                SELECT count(*) - count(DISTINCT job_key) AS n FROM batch_run_history
                WHERE job_type = 'symbol_batch' AND status IN ('completed', 'partial')""",
            "jobs_left_running": "SELECT count(*) AS n FROM batch_run_history "
                                 "WHERE status = 'running'",
            "unresolved_failures": """
                SELECT count(*) AS n FROM batch_run_history f
                WHERE f.status = 'failed' AND NOT EXISTS (
                    SELECT 1 FROM batch_run_history o
                    WHERE o.job_type = f.job_type AND o.job_key = f.job_key
                      AND o.status IN ('completed', 'partial') AND o.started_at > f.started_at)""",
        }
        deadline = time.monotonic() + settle
        while True:
            found = {name: self.query(sql)[0]["n"] for name, sql in checks.items()}
            found["stuck_messages"] = self.work_queue_messages()
            if not any(found.values()) or time.monotonic() > deadline:
                return found
            time.sleep(0.5)

    def work_queue_messages(self) -> int:
        async def count() -> int:
            import nats

            nc = await nats.connect(servers=bus.server_urls(self.env["NATS_URL"]))
            try:
                topology = bus.Topology(self.env.get("SIGMABATCH_BUS_PREFIX", ""))
                info = await nc.jetstream().stream_info(topology.jobs_stream)
                return info.state.messages
            finally:
                await nc.close()

        return run(count())

def decimal_equal(a: Any, b: Any) -> bool:
    if isinstance(a, Decimal) and isinstance(b, Decimal):
        return abs(a - b) < Decimal("0.000001")
    return a == b
