"""`sigmabatch demo`: the whole nightly cycle on one machine, from an empty data dir.

What it does, in the order a real deployment lives it:
1. `up` (embedded servers, migrations, the four services, the sample market data provider);
2. loads the sample universe: every public symbol of the example portfolios + the factor ETFs;
3. runs the nightly batch once for a session three weeks back (a first run does that date
   only), which sets the watermark;
4. uploads the example portfolios through the HTTP API and polls their onboarding status
   (all their symbols are known by then: instant snapshots at the watermark date);
5. triggers the nightly batch for the latest session: it backfills every session after the
   watermark, and each completed date refreshes every portfolio (snapshots with daily P&L,
   factor exposures);
6. waits for the last date's snapshots and exposures and prints a summary.

A second run on the same data dir finds the watermark and the portfolios and only does what
is new (nothing, the same day). Batch progress is read from the database, the one truth the
services share; uploads and onboarding go through the API, as a user's would.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from sigmabatch import queries
from sigmabatch.supervisor import (
    Supervisor,
    console_token,
    describe,
    install_stop_signals,
    sigmabatch_command,
)
from sigmabatch.tables import format_table, money

DEMO_USER = "demo"
DEMO_BACKFILL_SESSIONS = 15  # three weeks of trading days: a visible backfill, seconds to run
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
BATCH_TIMEOUT_SECONDS = 600.0
ONBOARDING_TIMEOUT_SECONDS = 300.0
POLL_SECONDS = 0.25
EXPOSURE_GRACE_SECONDS = 10.0

T = TypeVar("T")


class DemoFailed(RuntimeError):
    """The demo could not complete a step; the message says which and where to look."""


# -- pure planning ------------------------------------------------------------------------


@dataclass(frozen=True)
class BackfillPlan:
    """Which nightly triggers the demo fires: a seed date (first run only) and the target."""

    seed_date: dt.date | None
    target_date: dt.date | None  # None: the watermark is already at the target

    @property
    def nothing_to_do(self) -> bool:
        return self.seed_date is None and self.target_date is None


def plan_backfill(watermark: dt.date | None, target: dt.date, seed: dt.date) -> BackfillPlan:
    """A fresh system is seeded `seed` (a session before `target`) and then backfills to it."""
    if watermark is None:
        return BackfillPlan(seed_date=seed, target_date=target if seed < target else None)
    return BackfillPlan(seed_date=None, target_date=target if watermark < target else None)


def demo_universe(csv_files: list[Path]) -> dict[str, str]:
    """symbol → asset type: the market symbols of the example portfolios + the factor ETFs."""
    from libs.common.factors import FACTOR_ETFS
    from libs.common.portfolio_csv import parse_portfolio_csv

    universe: dict[str, str] = {symbol: "etf" for symbol in FACTOR_ETFS}
    for path in csv_files:
        parsed = parse_portfolio_csv(path.read_bytes())
        if not parsed.ok:
            problems = "; ".join(f"row {p.row}: {p.message}" for p in parsed.problems[:5])
            raise DemoFailed(f"example {path.name} does not parse: {problems}")
        for position in parsed.positions:
            symbol = position.market_data_symbol
            if symbol and symbol not in universe:
                subtype = (position.investment_subtype or "").upper()
                universe[symbol] = (
                    "etf" if subtype == "ETF" or position.underlying_symbol else "stock"
                )
    return universe


def phase_seconds(phase: dict[str, Any]) -> float | None:
    try:
        started = dt.datetime.fromisoformat(phase["started_at"])
        finished = dt.datetime.fromisoformat(phase["finished_at"])
    except (KeyError, TypeError, ValueError):
        return None
    return (finished - started).total_seconds()


# -- the demo -----------------------------------------------------------------------------


async def _poll(
    what: str, probe: Callable[[], Awaitable[T | None]], within_seconds: float, on_timeout: str = ""
) -> T:
    deadline = time.monotonic() + within_seconds
    while time.monotonic() < deadline:
        result = await probe()
        if result is not None:
            return result
        await asyncio.sleep(POLL_SECONDS)
    raise DemoFailed(
        f"timed out after {within_seconds:.0f} s waiting for {what}. {on_timeout}".strip()
    )


class Demo:
    def __init__(self, supervisor: Supervisor, examples: list[Path]) -> None:
        self.supervisor = supervisor
        self.examples = examples
        self.database_url = supervisor.database_url
        self.started = dt.datetime.now(dt.UTC)
        self.timings: list[tuple[str, float]] = []
        self.reported_failures: set[uuid.UUID] = set()

    def say(self, message: str) -> None:
        print(f"  demo: {message}", flush=True)

    async def step(self, name: str, work: Awaitable[T]) -> T:
        began = time.monotonic()
        result = await work
        self.timings.append((name, time.monotonic() - began))
        return result

    async def read(self, query: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run one read query of `sigmabatch.queries` in its own short transaction."""
        from libs.common.db import session_scope

        async with session_scope(self.database_url) as session:
            return await query(session)

    async def execute(self, sql: str, **params: Any) -> None:
        from libs.common.db import session_scope

        async with session_scope(self.database_url) as session:
            await session.execute(text(sql), params)

    # 2. universe
    async def load_universe(self) -> int:
        universe = demo_universe(self.examples)
        await self.execute(
            """
            INSERT INTO symbol_universe (symbol, asset_type, added_by)
            SELECT symbol, asset_type, 'demo'
            FROM unnest(CAST(:symbols AS text[]), CAST(:types AS text[])) AS u(symbol, asset_type)
            ON CONFLICT (symbol) DO UPDATE SET is_active = true
            """,
            symbols=list(universe),
            types=list(universe.values()),
        )
        self.say(f"universe: {len(universe)} symbols (example portfolios + factor ETFs)")
        return len(universe)

    # 3 and 5. nightly batch
    async def watermark(self) -> dt.date | None:
        return await self.read(queries.batch_watermark)

    async def run_nightly(self, target: dt.date) -> None:
        from sigmabatch.trigger import publish_nightly

        msg_id, published = await publish_nightly(
            self.supervisor.nats_url,
            target,
            requested_by="demo",
            rerun=False,
            replicas=self.supervisor.stream_replicas,
        )
        self.say(
            f"triggered the nightly batch for {target} ({msg_id}"
            + ("" if published else ", already requested: waiting for it")
            + ")"
        )

        async def done() -> dt.date | None:
            recorded = await self.read(lambda s: queries.batch_date_recorded(s, target))
            if not recorded:
                await self.raise_on_dead_letters()
            return target if recorded else None

        await _poll(
            f"the symbol batch of {target}",
            done,
            BATCH_TIMEOUT_SECONDS,
            self._failures_hint(),
        )

    async def raise_on_dead_letters(self) -> None:
        """Fail fast: a job that exhausted its deliveries will not finish by waiting longer.
        Failed attempts that will be retried are reported once each."""
        rows = await self.read(lambda s: queries.failed_jobs_since(s, self.started))
        for row in rows:
            if row["id"] not in self.reported_failures:
                self.reported_failures.add(row["id"])
                state = "gave up" if row["dead"] else "will be retried"
                self.say(f"{row['job_type']} {row['job_key']} failed ({state}): {row['error']}")
        dead = [row for row in rows if row["dead"]]
        if dead:
            raise DemoFailed(
                f"{dead[0]['job_type']} {dead[0]['job_key']} was dead-lettered: "
                f"{dead[0]['error']}. {self._failures_hint()}"
            )

    def _failures_hint(self) -> str:
        data_dir = self.supervisor.data_dir
        return f"See `sigmabatch status --data-dir {data_dir}` and the logs in {data_dir / 'logs'}"

    # 4. uploads
    async def demo_token(self) -> str:
        from libs.common.auth import create_user_token
        from libs.common.db import session_scope

        async with session_scope(self.database_url) as session:
            return await create_user_token(session, DEMO_USER, admin=False, name="sigmabatch demo")

    async def upload_examples(self, client: httpx.AsyncClient) -> dict[str, str]:
        """name → portfolio id; portfolios uploaded by an earlier run are reused."""
        existing = await self.read(lambda s: queries.portfolios_of(s, DEMO_USER))
        portfolios: dict[str, str] = {}
        for path in self.examples:
            name = path.stem
            if name in existing:
                portfolios[name] = str(existing[name])
                self.say(f"portfolio {name}: already uploaded ({existing[name]})")
                continue
            response = await client.post(
                "/api/v1/portfolios",
                files={"file": (path.name, path.read_bytes(), "text/csv")},
                data={"name": name},
            )
            if response.status_code != 201:
                raise DemoFailed(
                    f"upload of {path.name}: HTTP {response.status_code} {response.text}"
                )
            body = response.json()
            portfolios[name] = str(body["portfolio_id"])
            self.say(
                f"portfolio {name}: {body.get('positions_created')} positions, "
                f"{body.get('symbols_known')} symbols known, {body.get('symbols_queued')} queued "
                f"({body.get('status')})"
            )
        return portfolios

    async def wait_onboarded(self, client: httpx.AsyncClient, portfolios: dict[str, str]) -> None:
        for name, portfolio_id in portfolios.items():

            async def finished(portfolio_id: str = portfolio_id) -> dict[str, Any] | None:
                response = await client.get(f"/api/v1/onboarding/status/{portfolio_id}")
                if response.status_code != 200:
                    return None
                body = response.json()
                return body if body.get("status") in ("completed", "partial", "failed") else None

            status = await _poll(f"the onboarding of {name}", finished, ONBOARDING_TIMEOUT_SECONDS)
            if status["status"] == "failed":
                log_lines = "; ".join(
                    e.get("message", "") for e in status.get("activity_log", [])[-3:]
                )
                raise DemoFailed(f"onboarding of {name} failed: {log_lines}")
            self.say(
                f"onboarded {name}: {status['status']} ({status.get('mode')}), "
                f"first snapshot {status.get('snapshot_date')}"
            )

    # 6. snapshots and exposures
    async def wait_snapshots(self, portfolios: dict[str, str], day: dt.date) -> None:
        ids = [uuid.UUID(p) for p in portfolios.values()]

        complete_since: list[float] = []

        async def all_there() -> bool | None:
            counts = await self.read(lambda s: queries.snapshot_progress(s, ids, day))
            if counts["snapshots"] == len(ids) and counts["exposed"] == len(ids):
                return True
            await self.raise_on_dead_letters()
            if counts["snapshots"] == len(ids):
                # Exposures commit with their snapshot: complete snapshots without them will
                # stay so (every example holds public positions, so each must have some).
                complete_since.append(time.monotonic())
                if complete_since[-1] - complete_since[0] > EXPOSURE_GRACE_SECONDS:
                    raise DemoFailed(
                        f"the snapshots of {day} are complete but {len(ids) - counts['exposed']} "
                        f"of {len(ids)} portfolios have no factor exposures "
                        f"({counts['positions_valued']} positions valued in all). "
                        + self._failures_hint()
                    )
            return None

        await _poll(
            f"snapshots and factor exposures of {day} for {len(ids)} portfolios",
            all_there,
            BATCH_TIMEOUT_SECONDS,
            self._failures_hint(),
        )
        self.say(f"snapshots and factor exposures of {day} are complete for every portfolio")

    # summary
    async def summary(self, portfolios: dict[str, str], day: dt.date) -> str:
        ids = [uuid.UUID(p) for p in portfolios.values()]
        data = await self.read(lambda s: queries.demo_summary(s, ids, day))
        return render_summary(data, len(portfolios), day, self.timings)

    async def run(self) -> str:
        from libs.common.calendar import effective_trading_date, lookback_start
        from libs.common.config import get_settings

        settings = get_settings()
        await self.step("load universe", self.load_universe())
        target = effective_trading_date(
            dt.datetime.now(dt.UTC), dt.timedelta(minutes=settings.settle_delay_minutes)
        )
        seed = lookback_start(target, DEMO_BACKFILL_SESSIONS)
        plan = plan_backfill(await self.watermark(), target, seed)
        if plan.seed_date is not None:
            self.say(f"fresh data dir: seeding the watermark with a first run for {plan.seed_date}")
            await self.step(f"nightly batch {plan.seed_date}", self.run_nightly(plan.seed_date))
        token = await self.demo_token()
        async with httpx.AsyncClient(
            base_url=self.supervisor.api_url or "",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60.0,
        ) as client:
            portfolios = await self.step("upload portfolios", self.upload_examples(client))
            await self.step("onboarding", self.wait_onboarded(client, portfolios))
        if plan.target_date is not None:
            self.say(f"backfilling every session after the watermark up to {plan.target_date}")
            await self.step(
                f"nightly batch to {plan.target_date}", self.run_nightly(plan.target_date)
            )
        else:
            self.say(f"the watermark is already at {target}: nothing to backfill")
        await self.step("snapshots + exposures", self.wait_snapshots(portfolios, target))
        return await self.summary(portfolios, target)


SNAPSHOT_COLUMNS = ["portfolio", "positions", "net value", "gross", "day P&L", "day return",
                    "cumulative P&L", "snapshots", "factors", "flags"]


def render_summary(data: dict[str, Any], portfolio_count: int, day: dt.date,
                   timings: list[tuple[str, float]]) -> str:
    """The demo's closing report from `queries.demo_summary` and the step timings."""
    snapshots = data["snapshots"]
    total = sum((Decimal(r["daily_pnl"] or 0) for r in snapshots), Decimal(0))
    return "\n".join([
        *_headline(data, portfolio_count, day),
        "",
        f"Portfolios on {day} (P&L of the last day):",
        format_table([_snapshot_row(row) for row in snapshots], SNAPSHOT_COLUMNS),
        f"  total P&L of {day}: {money(total)}",
        "",
        "Time per phase (batch_run_history, all runs in this data dir):",
        format_table(_phase_table(data["jobs"]), ["job", "phase", "runs", "seconds"]),
        "",
        "Time per demo step:",
        format_table([{"step": name, "seconds": f"{seconds:.1f}"} for name, seconds in timings],
                     ["step", "seconds"]),
    ])


def _headline(data: dict[str, Any], portfolio_count: int, day: dt.date) -> list[str]:
    d, prices = data["dates"], data["prices"]
    return [
        "",
        "sigmabatch demo summary",
        "=======================",
        f"Dates processed   {d['n']} trading days, {d['first']} .. {d['last']}"
        + (f" ({d['partial']} partial)" if d["partial"] else ""),
        f"Symbols           {d['symbols']} per date ({d['failed'] or 0} failures in total); "
        f"{data['beta_symbols']} with factor betas on {day}",
        f"Prices            {prices['n']} daily bars ({prices['synthetic']} synthetic, "
        "flagged in `source`)",
        f"Portfolios        {portfolio_count}",
    ]


def _snapshot_row(row: dict[str, Any]) -> dict[str, Any]:
    flags = [flag for flag, on in (("stale", row["has_stale_prices"]),
                                   ("model", row["has_model_prices"])) if on]
    return {
        "portfolio": row["name"],
        "positions": row["position_count"],
        "net value": money(row["total_value"]),
        "gross": money(row["gross_exposure"]),
        "day P&L": money(row["daily_pnl"]),
        "day return": "" if row["daily_return"] is None
        else f"{Decimal(row['daily_return']) * 100:.2f}%",
        "cumulative P&L": money(row["cumulative_pnl"]),
        "snapshots": row["snapshots"],
        "factors": row["factors"],
        "flags": ",".join(flags),
    }


def _phase_table(rows: list[Any]) -> list[dict[str, Any]]:
    """Seconds per (job type, phase), in first-seen order."""
    totals: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        for phase in row["phases"] or []:
            seconds = phase_seconds(phase)
            if seconds is not None:
                totals.setdefault((row["job_type"], phase.get("name", "?")), []).append(seconds)
        if row["finished_at"] is not None:
            whole = (row["finished_at"] - row["started_at"]).total_seconds()
            totals.setdefault((row["job_type"], "(whole job)"), []).append(whole)
    return [
        {"job": job, "phase": phase, "runs": len(values), "seconds": f"{sum(values):.2f}"}
        for (job, phase), values in totals.items()
    ]


async def run_demo(
    data_dir: Path, api_port: int, examples_dir: Path | None = None, nats_nodes: int = 1
) -> int:
    from libs.common.config import get_settings

    if examples_dir is None:
        # The project's examples/ (an editable install or a checkout), else ./examples.
        examples_dir = EXAMPLES_DIR if EXAMPLES_DIR.is_dir() else Path.cwd() / "examples"
    examples = sorted(examples_dir.glob("*.csv"))
    if not examples:
        raise DemoFailed(f"no example portfolios (*.csv) in {examples_dir}: pass --examples DIR")
    settings = get_settings()
    supervisor = Supervisor(
        data_dir=data_dir,
        api_port=api_port,
        nats_nodes=nats_nodes,
        extra_env={
            "MARKET_DATA_PROVIDER": "sample",
            "SIGMABATCH_MAX_BACKFILL_DAYS": str(
                max(settings.max_backfill_days, DEMO_BACKFILL_SESSIONS + 1)
            ),
        },
    )
    supervisor.acquire()
    install_stop_signals(supervisor)
    began = time.monotonic()
    try:
        start = asyncio.create_task(supervisor.start())
        stopped = asyncio.create_task(supervisor.wait_stopped())
        await asyncio.wait([start, stopped], return_when=asyncio.FIRST_COMPLETED)
        if not start.done():
            start.cancel()
            await asyncio.gather(start, return_exceptions=True)
            return 130
        start.result()
        # The demo user owns the example portfolios; admin too, so Operations shows.
        token = await console_token(supervisor.database_url, DEMO_USER)
        print(describe(supervisor, token, DEMO_USER), flush=True)
        if supervisor.api_url is None:
            raise DemoFailed("the status_api service is not installed: the demo needs the API")
        work = asyncio.create_task(Demo(supervisor, examples).run())
        await asyncio.wait([work, stopped], return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            return 130
        print(work.result(), flush=True)
        print(
            f"\ndemo finished in {time.monotonic() - began:.1f} s; data kept in {supervisor.data_dir}"
        )
        print(
            f"To browse these portfolios: {sigmabatch_command()} up --data-dir "
            f"{supervisor.data_dir}\n  then open the console URL it prints and sign in with "
            f"the demo's token: {token}"
        )
        return 0
    except DemoFailed as exc:
        print(f"sigmabatch demo: {exc}", flush=True)
        return 1
    finally:
        from libs.common.db import dispose_engines

        await dispose_engines()
        await supervisor.stop()
