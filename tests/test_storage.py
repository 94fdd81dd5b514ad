"""Storage that scales (issue 13): month partitions, the derived position exposures, retention.

All on real PostgreSQL: migration 0009 up and down with data in it, the
position_factor_exposures view against an independent numpy computation of weight x beta,
the refresh writing into a month partition it creates, and `sigmabatch retention`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from decimal import Decimal

import asyncpg
import numpy as np
import pandas as pd
import pytest

from libs.common import partitions
from libs.common.config import get_settings
from libs.common.db import asyncpg_dsn, dispose_engines
from libs.common.migrate import downgrade, upgrade
from libs.common.snapshots.refresh import refresh_portfolios
from sigmabatch.cli import main as cli_main
from tests.test_portfolio_refresh import DAYS, PARAMS, seed_synthetic


async def _connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(asyncpg_dsn(url))


# --------------------------------------------------------------------------- migration 0009

D1, D2 = dt.date(2024, 1, 31), dt.date(2024, 2, 1)
PFE_COLUMNS = "position_id, calculation_date, factor_name, portfolio_id, beta, weight, exposure_dollar"


async def _seed_0008(url: str) -> dict[str, uuid.UUID]:
    """Rows as the 0008 refresh wrote them: a stock and an option (underlying SPY), 2 dates,
    one in January and one in February; position rows = beta x weight per factor."""
    conn = await _connect(url)
    try:
        user, pf, stock, option = (uuid.uuid4() for _ in range(4))
        await conn.execute("INSERT INTO users (id, username) VALUES ($1, 'u')", user)
        await conn.execute(
            "INSERT INTO portfolios (id, user_id, name, equity_balance) VALUES ($1, $2, 'p', 1000)",
            pf, user)
        await conn.execute(
            "INSERT INTO positions (id, portfolio_id, symbol, quantity, entry_price, entry_date, "
            "investment_class, underlying_symbol) VALUES "
            "($1, $3, 'AAPL', 2, 100, '2024-01-02', 'PUBLIC', NULL), "
            "($2, $3, 'SPY_P400', -1, 5, '2024-01-02', 'OPTIONS', 'SPY')",
            stock, option, pf)
        for name in ("market", "size"):
            await conn.execute(
                "INSERT INTO factor_definitions (name, display_name, kind, method, regressor, "
                "window_days, min_obs) VALUES ($1, $1, 'style', 'ols', 'X', 90, 60)", name)
        betas = {("AAPL", "market"): 1.25, ("AAPL", "size"): -0.5,
                 ("SPY", "market"): 1.0, ("SPY", "size"): 0.125}
        for (symbol, factor), beta in betas.items():
            # betas of each snapshot date, and older ones (the latest within 10 days is used)
            for day in (D1 - dt.timedelta(days=3), D1, D2):
                await conn.execute(
                    "INSERT INTO symbol_factor_exposures (symbol, factor_name, calculation_date, "
                    "beta, n_obs, quality) VALUES ($1, $2, $3, $4, 90, 'full')",
                    symbol, factor, day, beta + (0.25 if day == D2 else 0.5 if day < D1 else 0.0))
        for day, equity in ((D1, Decimal("1000")), (D2, Decimal("800"))):
            await conn.execute(
                "INSERT INTO portfolio_snapshots (id, portfolio_id, snapshot_date, is_complete, "
                "equity, gross_exposure, exposure_basis) VALUES (gen_random_uuid(), $1, $2, true, "
                "$3, 300, 'equity')", pf, day, equity)
            # stock: market value 250; option: dollar delta -100 (delta-adjusted exposure)
            for position, mv, ev in ((stock, 250.0, 250.0), (option, 7.5, -100.0)):
                await conn.execute(
                    "INSERT INTO position_snapshots (position_id, snapshot_date, portfolio_id, "
                    "price_source, market_value, daily_pnl, realized_pnl) "
                    "VALUES ($1, $2, $3, 'market', $4, 0, 0)", position, day, pf, Decimal(mv))
                symbol = "AAPL" if position == stock else "SPY"
                for factor in ("market", "size"):
                    beta = betas[(symbol, factor)] + (0.25 if day == D2 else 0.0)
                    await conn.execute(
                        f"INSERT INTO position_factor_exposures ({PFE_COLUMNS}) VALUES "
                        "($1, $2, $3, $4, $5::float8, $6, round(($5::float8 * $7::float8)::numeric, 2))",
                        position, day, factor, pf, beta, ev / float(equity), ev)
        return {"portfolio": pf, "stock": stock, "option": option}
    finally:
        await conn.close()


async def _exposure_rows(url: str) -> list[tuple[object, ...]]:
    conn = await _connect(url)
    try:
        rows = await conn.fetch(f"SELECT {PFE_COLUMNS} FROM position_factor_exposures")
    finally:
        await conn.close()
    return sorted(tuple(r) for r in rows)  # type: ignore[misc]


async def _snapshot_layout(url: str) -> dict[str, set[tuple[str, dt.date]]]:
    conn = await _connect(url)
    try:
        return {
            table: {(r["part"], r["snapshot_date"]) for r in await conn.fetch(
                f"SELECT tableoid::regclass::text AS part, snapshot_date FROM {table}")}
            for table in partitions.PARTITIONED_TABLES
        }
    finally:
        await conn.close()


def test_migration_0009_carries_snapshots_and_exposures_over_and_back(
    empty_database_url: str,
) -> None:
    url = empty_database_url
    upgrade(url, "0008")
    ids = asyncio.run(_seed_0008(url))
    stored = asyncio.run(_exposure_rows(url))
    assert len(stored) == 2 * 2 * 2  # dates x positions x factors

    upgrade(url, "0009")
    # the view gives back exactly the rows the table held (weights, betas, cents)
    assert asyncio.run(_exposure_rows(url)) == stored
    layout = asyncio.run(_snapshot_layout(url))
    assert layout["portfolio_snapshots"] == {
        ("portfolio_snapshots_y2024m01", D1), ("portfolio_snapshots_y2024m02", D2)}
    assert {p for p, _ in layout["position_snapshots"]} == {
        "position_snapshots_y2024m01", "position_snapshots_y2024m02"}

    async def relkind() -> dict[str, str]:
        conn = await _connect(url)
        try:
            rows = await conn.fetch(
                "SELECT relname, relkind::text FROM pg_class WHERE relname = ANY($1::text[])",
                ["portfolio_snapshots", "position_snapshots", "position_factor_exposures"])
        finally:
            await conn.close()
        return {r["relname"]: r["relkind"] for r in rows}

    assert asyncio.run(relkind()) == {
        "portfolio_snapshots": "p", "position_snapshots": "p", "position_factor_exposures": "v"}

    downgrade(url, "0008")
    assert asyncio.run(relkind()) == {
        "portfolio_snapshots": "r", "position_snapshots": "r", "position_factor_exposures": "r"}
    assert asyncio.run(_exposure_rows(url)) == stored
    # the 0002 cascade trigger is back: deleting a position deletes its exposure rows
    async def delete_option() -> int:
        conn = await _connect(url)
        try:
            await conn.execute("DELETE FROM positions WHERE id = $1", ids["option"])
            return await conn.fetchval("SELECT count(*) FROM position_factor_exposures")
        finally:
            await conn.close()

    assert asyncio.run(delete_option()) == 4
    upgrade(url)  # and up again with the remaining data
    assert len(asyncio.run(_exposure_rows(url))) == 4


# --------------------------------------------------------------------------- the view's numbers


async def test_view_is_weight_times_beta_computed_independently(database_url: str) -> None:
    """Every view row against numpy: weight = exposure value / equity, where the exposure value
    is the market value, or for an option delta x qty x 100 x the underlying's close; beta
    from symbol_factor_exposures; exposure_dollar = beta x exposure value in cents."""
    ids = await seed_synthetic(database_url, 6)
    for day in DAYS[:3]:
        await refresh_portfolios(database_url, day, ids, PARAMS)
    conn = await _connect(database_url)
    try:
        view = pd.DataFrame([dict(r) for r in await conn.fetch(
            "SELECT * FROM position_factor_exposures")])
        marks = pd.DataFrame([dict(r) for r in await conn.fetch(
            """
            SELECT s.position_id, s.snapshot_date, s.market_value::float8 AS market_value,
                   s.delta, s.price_source, x.symbol, x.investment_class, x.underlying_symbol,
                   x.quantity::float8 AS quantity, p.equity::float8 AS equity
            FROM position_snapshots s JOIN positions x ON x.id = s.position_id
            JOIN portfolio_snapshots p ON p.portfolio_id = s.portfolio_id
             AND p.snapshot_date = s.snapshot_date
            """)])
        closes = {(r["symbol"], r["date"]): r["close"] for r in await conn.fetch(
            "SELECT symbol, date, close FROM market_data_cache")}
        betas = {(r["symbol"], r["factor_name"]): r["beta"] for r in await conn.fetch(
            "SELECT symbol, factor_name, beta FROM symbol_factor_exposures")}
        portfolio_rows = await conn.fetch(
            "SELECT portfolio_id, calculation_date, factor_name, exposure FROM factor_exposures")
    finally:
        await conn.close()
    await dispose_engines()

    held = marks[marks["price_source"].isin(["market", "stale", "model"])].copy()
    is_option = (held["investment_class"] == "OPTIONS").to_numpy()
    underlying_close = np.array([
        closes.get((u, d), np.nan)
        for u, d in zip(held["underlying_symbol"], held["snapshot_date"], strict=True)])
    exposure_value = np.where(
        is_option,
        held["delta"].to_numpy(dtype="float64") * held["quantity"].to_numpy() * 100.0
        * underlying_close,
        held["market_value"].to_numpy())
    held["weight"] = exposure_value / held["equity"].to_numpy()
    held["exposure_value"] = exposure_value
    held["beta_symbol"] = np.where(is_option, held["underlying_symbol"], held["symbol"])
    factors = sorted({f for _, f in betas})
    expected = held.merge(pd.DataFrame({"factor_name": factors}), how="cross")
    expected["beta"] = [betas.get((s, f), np.nan)
                        for s, f in zip(expected["beta_symbol"], expected["factor_name"],
                                        strict=True)]
    expected = expected.dropna(subset=["beta"])

    assert len(view) == len(expected) > 0
    assert set(view["factor_name"]) == set(factors)
    merged = expected.merge(
        view, left_on=["position_id", "snapshot_date", "factor_name"],
        right_on=["position_id", "calculation_date", "factor_name"], suffixes=("", "_view"))
    assert len(merged) == len(view)
    np.testing.assert_allclose(merged["beta_view"], merged["beta"], rtol=0, atol=0)
    # options: the close the test reads vs the underlying price the refresh priced with
    np.testing.assert_allclose(merged["weight_view"], merged["weight"], rtol=1e-9, atol=1e-12)
    dollars = np.round(merged["beta"] * merged["exposure_value"], 2)
    np.testing.assert_allclose(merged["exposure_dollar"].astype(float), dollars, atol=0.0100001)
    # the options are there, delta-weighted (not by their own market value)
    options = merged[merged["investment_class"] == "OPTIONS"]
    assert len(options) > 0
    assert not np.allclose(options["weight_view"],
                           options["market_value"] / options["equity"])
    # and the stored portfolio exposure is the view's sum of beta x weight
    sums = (merged.assign(bw=merged["beta_view"] * merged["weight_view"])
            .groupby(["portfolio_id", "calculation_date", "factor_name"])["bw"].sum())
    assert len(portfolio_rows) == len(sums)
    for r in portfolio_rows:
        assert abs(sums[(r["portfolio_id"], r["calculation_date"], r["factor_name"])]
                   - r["exposure"]) < 1e-9


# --------------------------------------------------------------------------- partitions


async def test_refresh_creates_and_writes_into_the_month_partition(database_url: str) -> None:
    ids = await seed_synthetic(database_url, 3)
    conn = await _connect(database_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('portfolio_snapshots_y2024m03')") is None
        # a row for a month nobody prepared does not fail: it waits in the default partition
        await conn.execute(
            "INSERT INTO portfolio_snapshots (id, portfolio_id, snapshot_date, is_complete) "
            "VALUES (gen_random_uuid(), $1, $2, false)", ids[0], DAYS[0])
        assert await conn.fetchval(
            "SELECT tableoid::regclass::text FROM portfolio_snapshots") == (
            "portfolio_snapshots_default")
    finally:
        await conn.close()

    outcomes = await refresh_portfolios(database_url, DAYS[0], ids, PARAMS)
    assert sum(o.snapshots for o in outcomes) == 3
    layout = await _snapshot_layout(database_url)
    assert layout["portfolio_snapshots"] == {("portfolio_snapshots_y2024m03", DAYS[0])}
    assert {p for p, _ in layout["position_snapshots"]} == {"position_snapshots_y2024m03"}
    conn = await _connect(database_url)
    try:
        # the parked row was moved into its month and re-claimed by the refresh
        assert await conn.fetchval("SELECT count(*) FROM portfolio_snapshots_default") == 0
        assert await conn.fetchval(
            "SELECT count(*) FROM portfolio_snapshots WHERE is_complete") == 3
        # and the month after is made ahead
        assert await conn.fetchval("SELECT to_regclass('position_snapshots_y2024m04')") is not None
    finally:
        await conn.close()
    await dispose_engines()


# --------------------------------------------------------------------------- retention


async def _seed_months(url: str, months: list[dt.date]) -> None:
    ids = await seed_synthetic(url, 2)
    conn = await _connect(url)
    try:
        positions = [r["id"] for r in await conn.fetch(
            "SELECT id FROM positions WHERE portfolio_id = $1", ids[0])]
        for day in months:
            await conn.fetchval("SELECT sigmabatch_ensure_snapshot_partitions($1)", day)
            await conn.execute(
                "INSERT INTO portfolio_snapshots (id, portfolio_id, snapshot_date, is_complete) "
                "VALUES (gen_random_uuid(), $1, $2, true)", ids[0], day)
            await conn.executemany(
                "INSERT INTO position_snapshots (position_id, snapshot_date, portfolio_id, "
                "price_source, market_value, daily_pnl, realized_pnl) "
                "VALUES ($1, $2, $3, 'market', 1, 0, 0)",
                [(p, day, ids[0]) for p in positions])
        # one row parked in the default partition (month 2023-01 has no partition)
        await conn.execute(
            "INSERT INTO portfolio_snapshots (id, portfolio_id, snapshot_date, is_complete) "
            "VALUES (gen_random_uuid(), $1, '2023-01-16', true)", ids[1])
    finally:
        await conn.close()


def _retention(url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
               *extra: str) -> str:
    monkeypatch.setenv("DATABASE_URL", url)
    # The process-wide settings are cached: an earlier test's would send the CLI to another
    # database (the whole suite in one process found the base database there).
    get_settings.cache_clear()
    try:
        assert cli_main(["retention", "--keep-months", "3", "--as-of", "2024-06-15",
                         *extra]) == 0
    finally:
        get_settings.cache_clear()
    return capsys.readouterr().out


def test_retention_dry_run_then_apply(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    months = [dt.date(2024, m, 14) for m in (1, 2, 3, 4, 5, 6)]
    asyncio.run(_seed_months(database_url, months))
    before = asyncio.run(_snapshot_layout(database_url))

    out = _retention(database_url, monkeypatch, capsys)
    # keep 3 months before June 2024 whole: 2024-03-01 onward
    assert "keeping snapshots dated 2024-03-01 and later" in out
    for table in partitions.PARTITIONED_TABLES:
        for month in ("y2024m01", "y2024m02"):
            assert f"would drop {table}_{month} " in out
        assert f"{table}_y2024m03" not in out
    assert "would drop 1 rows before the cutoff from portfolio_snapshots_default" in out
    assert "dry run: nothing changed" in out
    assert asyncio.run(_snapshot_layout(database_url)) == before

    out = _retention(database_url, monkeypatch, capsys, "--apply")
    assert "dropped portfolio_snapshots_y2024m01" in out
    after = asyncio.run(_snapshot_layout(database_url))
    assert {d for _, d in after["portfolio_snapshots"]} == set(months[2:])
    assert {d for _, d in after["position_snapshots"]} == set(months[2:])

    async def remaining() -> set[str]:
        conn = await _connect(database_url)
        try:
            return {p.name for p in await partitions.list_partitions(conn)}
        finally:
            await conn.close()

    names = asyncio.run(remaining())
    assert "portfolio_snapshots_y2024m01" not in names and "position_snapshots_y2024m02" not in names
    assert {"portfolio_snapshots_y2024m03", "position_snapshots_y2024m06"} <= names
    # a second run has nothing left to do
    assert "nothing to drop" in _retention(database_url, monkeypatch, capsys)


def test_retention_window_arithmetic() -> None:
    assert partitions.retention_cutoff(12, dt.date(2026, 11, 30)) == dt.date(2025, 11, 1)
    assert partitions.retention_cutoff(1, dt.date(2026, 1, 5)) == dt.date(2025, 12, 1)
    with pytest.raises(ValueError):
        partitions.retention_cutoff(0, dt.date(2026, 1, 5))
