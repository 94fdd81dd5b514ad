"""bench/bench_cycle.py at a tiny size: real service processes, real PostgreSQL and NATS."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys

import asyncpg

from libs.common.db import asyncpg_dsn
from tests.processes import REPO_ROOT

PORTFOLIOS, POSITIONS = 20, 5


async def _fetch(url: str, query: str):
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await connection.fetch(query)
    finally:
        await connection.close()


def test_bench_cycle_prints_every_figure_and_writes_the_snapshots(servers, database_url,
                                                                   bus_prefix):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(DATABASE_URL=servers.admin_database_url, NATS_URL=servers.nats_url,
               PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_cycle", "--symbols", "30", "--portfolios",
         str(PORTFOLIOS), "--positions", str(POSITIONS), "--dates", "2", "--replicas", "1,2",
         "--users", "2", "--database-url", database_url, "--bus-prefix", bus_prefix],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr[-4000:]

    day = re.search(r"^date (\d{4}-\d\d-\d\d): symbol phases (.*)$", out, re.M)
    assert day, out
    phases = dict(re.findall(r"(\w+)=([\d.]+)s", day.group(2)))
    assert set(phases) == {"profiles", "prices", "fundamentals", "factors"}, out
    figures = re.search(r"1 portfolio_refresh replica\(s\) \| hand-off (-?[\d.]+) s \| refresh ([\d.]+) s \| cycle ([\d.]+) s \| "
                        r"snapshots (\d+)", out)
    assert figures, out
    handoff, refresh, cycle = (float(figures.group(i)) for i in (1, 2, 3))
    assert 0 <= handoff < cycle and 0 < refresh < cycle, out
    assert int(figures.group(4)) == PORTFOLIOS
    rows = re.search(r"rows written (\d+) \(portfolio_snapshots=(\d+) position_snapshots=(\d+) "
                     r"factor_exposures=(\d+)\) \| db growth (-?[\d.]+) MiB", out)
    assert rows and int(rows.group(2)) == PORTFOLIOS, out
    assert int(rows.group(3)) == PORTFOLIOS * POSITIONS, out
    rss = dict(re.findall(r"([\w\[\]]+)=(\d+)MiB", out.split("peak RSS", 1)[1].splitlines()[0]))
    assert set(rss) == {"symbol_batch", "onboarding", "portfolio_refresh[0]"}, out
    assert all(20 < int(v) < 4096 for v in rss.values()), out
    # The second date ran with two refresh replicas, and the per-count lines compare them.
    assert re.search(r"^  2 portfolio_refresh replica\(s\) \| hand-off", out, re.M), out
    rss_second = out.split("peak RSS")[2].splitlines()[0]
    assert "portfolio_refresh[1]=" in rss_second, out
    per_count = re.findall(r"^  (\d) replica\(s\): refresh [\d.]+-[\d.]+ s, (\d+) portfolios/s "
                           r"over 1 date\(s\)$", out, re.M)
    assert [c for c, _ in per_count] == ["1", "2"] and all(int(r) > 0 for _, r in per_count), out
    last = out.strip().splitlines()[-1]
    assert re.match(r"summary: cycle max [\d.]+ s \(goal <= 60 s: (MET|MISSED)\), hand-off max "
                    r"[\d.]+ s \(goal < 1 s: (MET|MISSED)\), peak RSS \d+ MiB", last), out

    # What the figures describe is in the database: every portfolio snapshotted on the
    # measured dates and on the setup date before them (the onboarding's first snapshot).
    snapshots = asyncio.run(_fetch(
        database_url, "SELECT snapshot_date, count(*) AS n FROM portfolio_snapshots "
                      "WHERE is_complete GROUP BY snapshot_date ORDER BY snapshot_date"))
    assert [r["n"] for r in snapshots] == [PORTFOLIOS] * 3
    assert snapshots[1]["snapshot_date"].isoformat() == day.group(1)
    positions = asyncio.run(_fetch(
        database_url, "SELECT count(*) AS n, count(*) FILTER (WHERE quantity < 0) AS short, "
                      "count(*) FILTER (WHERE investment_class = 'OPTIONS') AS options "
                      "FROM positions"))
    assert dict(positions[0]) == {"n": PORTFOLIOS * POSITIONS, "short": PORTFOLIOS,
                                  "options": PORTFOLIOS}
