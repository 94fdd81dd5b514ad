"""Runs the golden cases (cases.py) through the refresh's computation, day by day."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pandas as pd
import pytest

from libs.common import pnl
from libs.common.snapshots.refresh import compute_chunk
from libs.common.snapshots.repository import POSITION_FRAME_COLUMNS, ChunkInputs
from tests.golden.cases import CASES, RATE, VOLATILITY

PARAMS = pnl.PricingParams(risk_free_rate=RATE, default_volatility=VOLATILITY)


def _inputs(case: dict[str, Any], previous: pd.DataFrame) -> ChunkInputs:
    """The frames `repository.load_chunk` would read for this case."""
    equity = case["equity_balance"]
    portfolios = pd.DataFrame({"portfolio_id": ["P"],
                               "equity_balance": [None if equity is None else Decimal(equity)]})
    rows = []
    for p in case["positions"]:
        row = {c: None for c in POSITION_FRAME_COLUMNS}
        row.update({k: v for k, v in p.items() if k != "id"})
        row.update(position_id=p["id"], portfolio_id="P")
        row.setdefault("investment_class", "PUBLIC")
        row["investment_class"] = row["investment_class"] or "PUBLIC"
        for column in ("entry_date", "exit_date", "expiration_date"):
            if row[column] is not None:
                row[column] = dt.date.fromisoformat(row[column])
        rows.append(row)
    prices = pd.DataFrame(
        [(s, dt.date.fromisoformat(d), p) for s, by in case["prices"].items() for d, p in by.items()],
        columns=["symbol", "date", "price"],
    )
    betas = pd.DataFrame(
        [(s, f, b) for s, by in case["betas"].items() for f, b in by.items()],
        columns=["symbol", "factor_name", "beta"],
    )
    flows = pd.DataFrame(columns=["portfolio_id", "flow_date", "amount"])
    return ChunkInputs(portfolios, pd.DataFrame(rows), previous, flows, prices, betas)


def _money(value: Any) -> Any:
    """Amounts are written as strings of digits; other strings are labels."""
    if isinstance(value, str) and value.lstrip("-").replace(".", "", 1).isdigit():
        return Decimal(value)
    return value


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_case(case: dict[str, Any]) -> None:
    prev = case.get("previous")
    previous = pd.DataFrame(
        [{"portfolio_id": "P", "snapshot_date": dt.date.fromisoformat(prev["snapshot_date"]),
          "equity": Decimal(prev["equity"]), "cumulative_pnl": Decimal(prev["cumulative_pnl"])}]
        if prev else [], columns=["portfolio_id", "snapshot_date", "equity", "cumulative_pnl"])
    days = sorted({d for by in case["prices"].values() for d in by} | set(case["expect"]))
    days = [d for d in days if prev is None or d > prev["snapshot_date"]]
    seen = set()
    for day in map(dt.date.fromisoformat, days):
        result, rows, _, exposures = compute_chunk(day, _inputs(case, previous), PARAMS)
        (snapshot,) = rows
        previous = pd.DataFrame([{k: snapshot[k] for k in (
            "portfolio_id", "snapshot_date", "equity", "cumulative_pnl")}])
        expected = case["expect"].get(day.isoformat())
        if expected is None:
            continue
        seen.add(day.isoformat())
        for key, want in expected.get("snapshot", {}).items():
            got = snapshot[key]
            if key == "data_quality":
                assert {k: got[k] for k in want} == want, (day, key)
            elif key == "daily_return" and want is not None:
                assert got == Decimal(want), (day, key, got)
            else:
                assert got == _money(want), (day, key, got, want)
        position_rows = {r["position_id"]: r for r in pnl.position_value_records(result.positions)}
        for pid, fields in expected.get("positions", {}).items():
            for key, want in fields.items():
                got = position_rows[pid][key]
                if isinstance(want, float):
                    assert got == pytest.approx(want, abs=5e-7), (day, pid, key)
                else:
                    assert got == _money(want), (day, pid, key, got, want)
        # the position rows add up to the snapshot, to the cent
        rows_of = [r for r in position_rows.values()]
        assert sum((r["market_value"] for r in rows_of), Decimal(0)) == snapshot["total_value"]
        assert sum((r["daily_pnl"] for r in rows_of), Decimal(0)) == snapshot["daily_pnl"]
        factors = exposures.portfolios.set_index("factor_name")
        for factor, want in expected.get("exposures", {}).items():
            assert factors.loc[factor, "exposure"] == pytest.approx(want["exposure"], abs=5e-7)
            assert pnl.money(factors.loc[factor, "exposure_dollar"]) == Decimal(want["dollars"])
    assert seen == set(case["expect"]), "every expected date was computed"
