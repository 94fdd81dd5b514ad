"""One JSON shape across the API: money as 2 dp strings, prices as 4 dp strings, ratios as
numbers, never exponent notation, one id field, price sources that say what they are, and 404
with a reason for a date without data. Numbers are checked against values worked by hand and
against the database rows read independently."""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal

from pydantic import BaseModel
from sqlalchemy import text

from libs.common.db import session_scope
from services.status_api.api.responses import FixedPointJSONResponse, dumps
from services.status_api.schemas import Money, Price, Quantity, Ratio
from services.status_api.snapshots import default_snapshot_maker
from tests.test_api_helpers import api_client, csv_bytes, seed_known_symbols, token_for

MONEY = re.compile(r"^-?\d+\.\d{2}$")
PRICE = re.compile(r"^-?\d+\.\d{4}$")
# an exponent in a JSON number token, or a string holding a number in exponent notation
EXPONENT = re.compile(r'[:\[,]-?\d+(\.\d+)?[eE]|"-?\d+(\.\d+)?[eE][+-]?\d+"')


class Sample(BaseModel):
    money: Money
    price: Price
    quantity: Quantity
    ratio: Ratio


def test_number_types_render_fixed_point_at_their_scale() -> None:
    sample = Sample(money=Decimal("0E-12"), price=Decimal("187.12"), quantity=Decimal("10.500000"),
                    ratio=Decimal("0E-12"))
    assert json.loads(sample.model_dump_json()) == {
        "money": "0.00", "price": "187.1200", "quantity": "10.5", "ratio": 0.0}
    rounded = Sample(money=Decimal("-1234.565"), price=Decimal("0.00005"),
                     quantity=Decimal("1E+3"), ratio=Decimal("0.12345678901234"))
    # half-even to the cent: -1234.565 -> -1234.56; 1E+3 shares -> "1000"
    assert json.loads(rounded.model_dump_json()) == {
        "money": "-1234.56", "price": "0.0000", "quantity": "1000", "ratio": 0.123456789}


def test_the_exponent_check_catches_both_forms() -> None:
    assert EXPONENT.search('{"daily_return":"0E-12"}') and EXPONENT.search('{"x":1e-07}')
    assert EXPONENT.search('[2.5E+3]') and not EXPONENT.search('{"id":"8e4-1","x":0.0000001}')


def test_the_api_response_never_writes_an_exponent() -> None:
    body = FixedPointJSONResponse({"r": [1e-7, -2.5e-12, 0.1, 1e16], "s": "1e-7"}).body
    assert body == b'{"r":[0.0000001,-0.0000000000025,0.1,10000000000000000],"s":"1e-7"}'
    assert json.loads(body)["r"] == [1e-7, -2.5e-12, 0.1, 1e16]
    assert dumps({"x": "é"}) == '{"x":"é"}'


async def test_openapi_states_the_number_types(settings) -> None:
    async with api_client(settings) as client:
        spec = (await client.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    snapshot = schemas["SnapshotOut"]["properties"]
    money = snapshot["daily_pnl"]["anyOf"][0]
    assert money["type"] == "string" and money["pattern"] == r"^-?\d+\.\d{2}$"
    assert snapshot["daily_return"]["anyOf"][0]["type"] == "number"
    assert "id" not in schemas["PortfolioOut"]["properties"]
    assert "portfolio_id" in schemas["PortfolioOut"]["required"]
    sources = schemas["PositionValuationOut"]["properties"]["price_source"]["anyOf"][0]["enum"]
    assert {"market", "stale", "model", "carried", "synthetic"} <= set(sources)
    assert schemas["PriceOut"]["properties"]["close"]["type"] == "string"
    assert schemas["SymbolFactorOut"]["properties"]["beta"]["type"] == "number"
    assert "exponent" in spec["info"]["description"]


async def test_reads_use_the_shapes(settings) -> None:
    headers = await token_for(settings.database_url, "alice")
    end = await seed_known_symbols(settings.database_url, ["AAPL", "MSFT"], days=30)
    rows = [f"AAPL,10,150.1234,{end - dt.timedelta(days=7)},PUBLIC,STOCK,,,,,,",
            f"MSFT,-3.5,300,{end - dt.timedelta(days=7)},PUBLIC,STOCK,,,,,,"]
    async with api_client(settings, default_snapshot_maker(settings)) as client:
        created = await client.post("/api/v1/portfolios", headers=headers, files={
            "file": ("p.csv", csv_bytes(*rows), "text/csv")},
            data={"name": "shapes", "equity_balance": "100000"})
        assert created.status_code == 201 and created.json()["status"] == "completed"
        pid = created.json()["portfolio_id"]
        base = f"/api/v1/portfolios/{pid}"
        raw = {path: await client.get(base + path, headers=headers)
               for path in ("", "/snapshots", "/positions")}
        before = await client.get(f"{base}/factor-exposures?date=2001-01-02", headers=headers)
    for path, response in raw.items():
        assert response.status_code == 200, path
        assert not EXPONENT.search(response.text), (path, response.text)

    detail = raw[""].json()
    assert "id" not in detail and detail["portfolio_id"] == pid
    assert detail["equity_balance"] == "100000.00"
    snapshot = raw["/snapshots"].json()[-1]
    for field in ("equity", "total_value", "gross_exposure", "net_exposure", "daily_pnl",
                  "cumulative_pnl"):
        assert MONEY.match(snapshot[field]), (field, snapshot[field])
    assert isinstance(snapshot["daily_return"], int | float)

    positions = {p["symbol"]: p for p in raw["/positions"].json()}
    aapl, msft = positions["AAPL"], positions["MSFT"]
    assert aapl["entry_price"] == "150.1234" and msft["quantity"] == "-3.5"
    assert PRICE.match(aapl["price"]) and MONEY.match(aapl["market_value"])
    # independently: the sample provider's bar of that day says whether it is synthetic
    async with session_scope(settings.database_url) as session:
        source = (await session.execute(text(
            "SELECT source FROM market_data_cache WHERE symbol = 'AAPL' AND date = :d"),
            {"d": dt.date.fromisoformat(aapl["valuation_date"])})).scalar_one()
        close = (await session.execute(text(
            "SELECT close FROM market_data_cache WHERE symbol = 'AAPL' AND date = :d"),
            {"d": dt.date.fromisoformat(aapl["valuation_date"])})).scalar_one()
    assert aapl["price_source"] == ("synthetic" if "synthetic" in source else "market")
    assert Decimal(aapl["market_value"]) == (Decimal(str(close)) * 10).quantize(Decimal("0.01"))

    assert before.status_code == 404
    assert "No factor exposures on or before 2001-01-02" in before.json()["detail"]
