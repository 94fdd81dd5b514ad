"""The whole nightly cycle through the real services as processes, at production size.

    .venv/bin/python -m bench.bench_cycle [--symbols 5000] [--portfolios 10000]
        [--positions 25] [--dates 5] [--replicas 2 | --replicas 1,2,4]

Setup: a fresh database on DATABASE_URL's server (else an embedded PostgreSQL) and NATS
(NATS_URL, else embedded), migrated; symbol_batch, onboarding and ``--replicas``
portfolio_refresh processes (`python -m services.<name>`, tests/processes.py), the sample
provider serving ``--symbols`` symbols (the factor ETFs plus SY0001.. through
SIGMABATCH_SAMPLE_UNIVERSE). A first nightly run on the session before the measured ones
prices the universe and computes its betas; bench/load_portfolios.py then uploads
``--portfolios`` portfolios through the upload use case (their first snapshots follow on
that session). Then, one trigger per session for the last ``--dates`` sessions (each a
one-session backfill, as the nightly cron makes them; one date at a time so every figure
belongs to one date), and per date:

- symbol phases: the symbol_batch job's phase timings (batch_run_history.result.timings);
- hand-off: `symbol.batch.completed` publish (its JetStream timestamp) → first refresh chunk
  claimed (the earliest `portfolio_refresh_chunk` job's started_at);
- refresh: first chunk started → last chunk finished; cycle: trigger → last chunk finished;
- rows written that date (snapshots, position snapshots, exposures, analytics, prices, betas);
- peak RSS per service process (psutil, sampled every 0.2 s);
- database size growth (pg_database_size).

With a list of replica counts (``--replicas 1,2,4``) the dates take the counts in turn (the
refresh replicas are started or stopped before each date's trigger), and a line per count
gives its refresh throughput (portfolios per second), so 1 vs 2 vs 4 replicas are compared on
the same data set in one run.

The last line compares with the goals of issue 13: cycle ≤ 60 s, hand-off < 1 s, every
service ≤ 1 GiB RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil
from nats.js.api import ConsumerConfig, DeliverPolicy

from bench.bench_onboarding import drop_streams, servers
from bench.load_portfolios import load_portfolios
from libs.common import calendar
from libs.common.config import Settings
from libs.common.db import asyncpg_dsn, dispose_engines, session_scope
from libs.common.events import BatchNightlyRequested, SymbolBatchCompleted
from libs.common.factors import FACTOR_ETFS
from libs.common.market_data.sample import synthetic_universe
from libs.common.migrate import upgrade
from libs.common.onboarding.store import finish_completed_onboardings
from libs.common.service import ServiceContext, connect_context
from libs.common.snapshots.refresh import JOB_CHUNK
from services.symbol_batch.store import JOB_TYPE as SYMBOL_JOB
from tests.polling import eventually
from tests.processes import ServiceProcess

REPO_ROOT = Path(__file__).resolve().parent.parent
GOAL_CYCLE_S, GOAL_HANDOFF_S, GOAL_RSS_BYTES = 60.0, 1.0, 1 << 30
MIB = 1 << 20
# (table, date column): what one date's cycle writes. position_factor_exposures is a view
# over position_snapshots since migration 0009: it is read, not written.
DATED_TABLES = (
    ("market_data_cache", "date"),
    ("symbol_factor_exposures", "calculation_date"),
    ("portfolio_snapshots", "snapshot_date"),
    ("position_snapshots", "snapshot_date"),
    ("factor_exposures", "calculation_date"),
    ("portfolio_risk_metrics", "calculation_date"),
    ("position_greeks", "calculation_date"),
    ("portfolio_correlations", "calculation_date"),
    ("portfolio_stress_results", "calculation_date"),
)


@dataclass
class DateFigures:
    day: dt.date
    phases: dict[str, float]
    handoff_s: float
    refresh_s: float
    cycle_s: float
    snapshots: int
    rows: dict[str, int]
    rss: dict[str, int]
    db_growth: int
    replicas: int = 0


class RssSampler:
    """Peak resident memory of each service process, sampled in a thread; `reset()` per date."""

    def __init__(self, processes: dict[str, ServiceProcess], interval: float = 0.2) -> None:
        self.processes = processes
        self.interval = interval
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for label, service in list(self.processes.items()):
                if service.process is None:
                    continue
                with contextlib.suppress(psutil.Error):
                    rss = psutil.Process(service.process.pid).memory_info().rss
                    with self._lock:
                        self.peaks[label] = max(self.peaks.get(label, 0), rss)

    def reset(self) -> dict[str, int]:
        with self._lock:
            peaks, self.peaks = self.peaks, {}
        return peaks

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def refresh_label(replica: int) -> str:
    return f"portfolio_refresh[{replica}]"


@contextlib.contextmanager
def services(env: dict[str, str], replicas: int) -> Iterator[dict[str, ServiceProcess]]:
    started: dict[str, ServiceProcess] = {}
    try:
        for name in ("symbol_batch", "onboarding"):
            started[name] = ServiceProcess(name, env).start(timeout=120)
        scale_refresh(started, env, replicas)
        yield started
    finally:
        for service in started.values():
            service.kill()


def scale_refresh(processes: dict[str, ServiceProcess], env: dict[str, str],
                  replicas: int) -> None:
    """Start or stop portfolio_refresh replicas until exactly ``replicas`` run (a stopped one
    gets SIGTERM: it finishes or hands back what it holds)."""
    running = sorted(int(k.split("[")[1][:-1]) for k in processes if k.startswith(
        "portfolio_refresh["))
    for replica in running[replicas:]:
        processes.pop(refresh_label(replica)).terminate()
    for replica in range(len(running), replicas):
        processes[refresh_label(replica)] = ServiceProcess(
            "portfolio_refresh", env, replica=replica).start(timeout=120)


@contextlib.asynccontextmanager
async def database(admin_url: str, given: str | None) -> AsyncIterator[str]:
    """The given database (kept), else a new one on the admin URL's server (dropped after)."""
    if given:
        await asyncio.to_thread(upgrade, given)
        yield given
        return
    name = f"sb_cycle_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = admin_url.rsplit("/", 1)[0] + f"/{name}"
        await asyncio.to_thread(upgrade, url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def fetchval(url: str, query: str, *args: object) -> object:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await connection.fetchval(query, *args)
    finally:
        await connection.close()


async def wait_until(what: str, probe, timeout: float, processes: dict[str, ServiceProcess]):
    """Poll ``probe`` (async, truthy when done); on timeout show the services' log tails."""
    def tails() -> str:
        return "\n".join(f"--- {k}\n{p.log()[-2000:]}" for k, p in processes.items())

    return await eventually(probe, timeout, what, interval=0.2, context=tails)


async def completed_event_times(ctx: ServiceContext) -> dict[dt.date, dt.datetime]:
    """Publish time of each `symbol.batch.completed` (JetStream's own timestamp, first copy)."""
    sub = await ctx.js.pull_subscribe(
        ctx.topology.subject(SymbolBatchCompleted.subject),
        stream=ctx.topology.events_stream,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    out: dict[dt.date, dt.datetime] = {}
    try:
        while True:
            try:
                messages = await sub.fetch(100, timeout=0.5)
            except Exception:  # nats.errors.TimeoutError: nothing more
                break
            for message in messages:
                event = SymbolBatchCompleted.model_validate_json(message.data)
                stamp = message.metadata.timestamp
                out.setdefault(event.batch_date, stamp)
                await message.ack()
    finally:
        await sub.unsubscribe()
    return out


async def one_date(url: str, ctx: ServiceContext, day: dt.date, portfolios: int,
                   processes: dict[str, ServiceProcess], sampler: RssSampler,
                   timeout: float) -> DateFigures:
    size_before = int(await fetchval(url, "SELECT pg_database_size(current_database())"))
    sampler.reset()
    triggered = dt.datetime.now(dt.UTC)
    await ctx.publish(BatchNightlyRequested(target_date=day, requested_by="bench_cycle"))

    async def snapshots_done() -> int | None:
        n = int(await fetchval(url, "SELECT count(*) FROM portfolio_snapshots "
                                    "WHERE is_complete AND snapshot_date = $1", day))
        return n if n >= portfolios else None

    snapshots = await wait_until(f"snapshots of {day}", snapshots_done, timeout, processes)
    rss = sampler.reset()
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        timings = await connection.fetchval(
            "SELECT result->'timings' FROM batch_run_history WHERE job_type = $1 "
            "AND job_key = $2 AND status IN ('completed', 'partial') "
            "ORDER BY finished_at DESC LIMIT 1", SYMBOL_JOB, day.isoformat())
        chunks = await connection.fetchrow(
            "SELECT min(started_at) AS first, max(finished_at) AS last FROM batch_run_history "
            "WHERE job_type = $1 AND job_key LIKE $2", JOB_CHUNK, f"{day.isoformat()}:%")
        rows = {}
        for table, column in DATED_TABLES:
            rows[table] = await connection.fetchval(
                f"SELECT count(*) FROM {table} WHERE {column} = $1", day)  # noqa: S608
        size_after = await connection.fetchval("SELECT pg_database_size(current_database())")
    finally:
        await connection.close()
    published = (await completed_event_times(ctx))[day]
    phases = json.loads(timings) if isinstance(timings, str) else dict(timings or {})
    first, last = chunks["first"], chunks["last"]
    return DateFigures(
        day=day, phases=phases,
        handoff_s=(first - published).total_seconds(),
        refresh_s=(last - first).total_seconds(),
        cycle_s=(last - triggered).total_seconds(),
        snapshots=snapshots, rows=rows, rss=rss, db_growth=int(size_after) - size_before)


def print_date(f: DateFigures) -> None:
    phases = " ".join(f"{k}={v:.2f}s" for k, v in f.phases.items())
    big = ("portfolio_snapshots", "position_snapshots", "factor_exposures")
    rows = " ".join(f"{k}={f.rows[k]}" for k in big)
    rss = " ".join(f"{k}={v / MIB:.0f}MiB" for k, v in sorted(f.rss.items()))
    print(f"date {f.day}: symbol phases {phases}")
    print(f"  {f.replicas} portfolio_refresh replica(s) | hand-off {f.handoff_s:.3f} s | refresh {f.refresh_s:.2f} s | cycle {f.cycle_s:.2f} s"
          f" | snapshots {f.snapshots}")
    print(f"  rows written {sum(f.rows.values())} ({rows}) | db growth "
          f"{f.db_growth / MIB:.1f} MiB")
    print(f"  peak RSS {rss}")


def summary(figures: list[DateFigures], load_rss: dict[str, int]) -> str:
    cycle = max(f.cycle_s for f in figures)
    handoff = max(f.handoff_s for f in figures)
    peaks: dict[str, int] = dict(load_rss)
    for f in figures:
        for k, v in f.rss.items():
            peaks[k] = max(peaks.get(k, 0), v)
    worst = max(peaks, key=lambda k: peaks[k])

    def verdict(ok: bool) -> str:
        return "MET" if ok else "MISSED"

    per_count = ""
    counts = sorted({f.replicas for f in figures})
    if len(counts) > 1:
        lines = []
        for count in counts:
            mine = [f for f in figures if f.replicas == count]
            rate = sum(f.snapshots for f in mine) / sum(f.refresh_s for f in mine)
            lines.append(f"  {count} replica(s): refresh {min(f.refresh_s for f in mine):.2f}-"
                         f"{max(f.refresh_s for f in mine):.2f} s, {rate:.0f} portfolios/s "
                         f"over {len(mine)} date(s)")
        per_count = "replicas:\n" + "\n".join(lines) + "\n"
    return (per_count + f"summary: cycle max {cycle:.2f} s (goal <= {GOAL_CYCLE_S:.0f} s: "
            f"{verdict(cycle <= GOAL_CYCLE_S)}), hand-off max {handoff:.3f} s (goal < "
            f"{GOAL_HANDOFF_S:.0f} s: {verdict(handoff < GOAL_HANDOFF_S)}), peak RSS "
            f"{peaks[worst] / MIB:.0f} MiB {worst} (goal <= 1024 MiB: "
            f"{verdict(peaks[worst] <= GOAL_RSS_BYTES)}); load {os.getloadavg()[0]:.1f} "
            f"on {os.cpu_count()} cores")


async def main(args: argparse.Namespace) -> None:
    plan = [int(n) for n in str(args.replicas).split(",")]
    if not plan or min(plan) < 1:
        raise SystemExit("--replicas takes counts >= 1, e.g. 2 or 1,2,4")
    synthetic = args.symbols - len(FACTOR_ETFS)
    if synthetic < 3:
        raise SystemExit(f"--symbols must be at least {len(FACTOR_ETFS) + 3}")
    last = calendar.effective_trading_date(dt.datetime.now(dt.UTC))
    # Entry dates a month before the first measured session; one session set up, then --dates.
    sessions = calendar.sessions_between(last - dt.timedelta(days=45 + 2 * args.dates), last)
    dates, setup_day = sessions[-args.dates:], sessions[-args.dates - 1]
    entry = sessions[0]
    with servers() as (admin_url, nats_url):
        prefix = args.bus_prefix or f"cycle{uuid.uuid4().hex[:8]}"
        async with database(admin_url, args.database_url) as url:
            env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
            env.update(DATABASE_URL=url, NATS_URL=nats_url, SIGMABATCH_BUS_PREFIX=prefix,
                       MARKET_DATA_PROVIDER="sample", SIGMABATCH_SAMPLE_UNIVERSE=str(synthetic),
                       PYTHONPATH=str(REPO_ROOT))
            settings = Settings(DATABASE_URL=url, NATS_URL=nats_url,
                                SIGMABATCH_BUS_PREFIX=prefix)
            ctx = await connect_context("bench_cycle", settings)
            timeout = 120.0 + args.portfolios * args.positions / 200.0
            # Onboarding makes each first snapshot on its own (one message per portfolio).
            setup_timeout = 120.0 + 2.0 * args.portfolios
            try:
                with services(env, plan[0]) as processes, RssSampler(processes) as sampler:
                    print(f"bench_cycle: {args.symbols} symbols ({synthetic} synthetic), "
                          f"{args.portfolios} portfolios x {args.positions} positions, "
                          f"{args.dates} date(s) {dates[0]}..{dates[-1]}, "
                          f"portfolio_refresh replicas {args.replicas}", flush=True)
                    started = time.perf_counter()
                    await ctx.publish(BatchNightlyRequested(target_date=setup_day,
                                                            requested_by="bench_cycle"))

                    async def setup_done() -> bool:
                        return bool(await fetchval(
                            url, "SELECT count(*) FROM symbol_batch_dates WHERE batch_date = $1",
                            setup_day))

                    await wait_until(f"setup batch {setup_day}", setup_done, timeout, processes)
                    print(f"setup: nightly batch of {setup_day} in "
                          f"{time.perf_counter() - started:.1f} s", flush=True)
                    loaded = await load_portfolios(
                        url, ctx.publish, portfolios=args.portfolios, positions=args.positions,
                        users=args.users, stocks=synthetic_universe(synthetic), entry_date=entry)

                    async def first_snapshots() -> bool:
                        done = await fetchval(url, "SELECT count(*) FROM portfolio_snapshots "
                                                   "WHERE is_complete AND snapshot_date = $1",
                                              setup_day)
                        return done == args.portfolios

                    await wait_until("first snapshots", first_snapshots, setup_timeout,
                                     processes)
                    # What a status poll does (else the onboarding service's periodic
                    # reconcile): onboardings whose first snapshot is made become completed.
                    async with session_scope(url) as session:
                        await finish_completed_onboardings(session)
                    running = await fetchval(url, "SELECT count(*) FROM portfolio_onboarding "
                                                  "WHERE status = 'running'")
                    if running:
                        raise RuntimeError(f"{running} onboarding(s) still running")
                    load_rss = sampler.reset()
                    print(f"load: {len(loaded.portfolio_ids)} portfolios through the upload use "
                          f"case in {loaded.seconds:.1f} s, onboarded (first snapshots on "
                          f"{setup_day}) after {time.perf_counter() - started:.1f} s", flush=True)
                    figures = []
                    for i, day in enumerate(dates):
                        replicas = plan[i % len(plan)]
                        scale_refresh(processes, env, replicas)
                        f = await one_date(url, ctx, day, args.portfolios, processes, sampler,
                                           timeout)
                        f.replicas = replicas
                        print_date(f)
                        figures.append(f)
                    print(summary(figures, load_rss), flush=True)
            finally:
                await ctx.nc.close()
                await dispose_engines()
                if not args.bus_prefix:
                    await drop_streams(nats_url, prefix)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=5000)
    parser.add_argument("--portfolios", type=int, default=10000)
    parser.add_argument("--positions", type=int, default=25)
    parser.add_argument("--dates", type=int, default=5)
    parser.add_argument("--replicas", default="2",
                        help="portfolio_refresh replicas; a list (1,2,4) takes turns by date")
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--database-url", help="use this (empty or migrated) database and keep it")
    parser.add_argument("--bus-prefix", help="use this bus prefix and keep its streams")
    asyncio.run(main(parser.parse_args()))
