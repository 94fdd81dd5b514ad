"""The upload format (docs/design.md §8): every rule with the message a person reads."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from libs.common.portfolio_csv import (
    HEADER_LINE,
    MAX_UPLOAD_BYTES,
    InvestmentClass,
    latest_allowed_date,
    parse_portfolio_csv,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TODAY = date(2026, 11, 29)


def parse(body: str, **kw):
    return parse_portfolio_csv(body.encode(), today=TODAY, **kw)


def csv_of(*rows: str) -> str:
    return "\n".join([HEADER_LINE, *rows]) + "\n"


def only_problem(body: str):
    result = parse(body)
    assert not result.ok
    assert len(result.problems) == 1, result.problems
    return result.problems[0]


GOOD = "AAPL,100,158.00,2024-01-15,PUBLIC,STOCK,,,,,,"


# The table of bad files of issue 5: (file, line, column, words the message must contain).
BAD_FILES = [
    ("wrong header", "Symbol,Qty,Entry Price Per Share,Entry Date,Investment Class,"
     "Investment Subtype,Underlying Symbol,Strike Price,Expiration Date,Option Type,Exit Date,"
     f"Exit Price Per Share\n{GOOD}\n", 1, "Quantity", "is 'Qty' but must be 'Quantity'"),
    ("blank symbol", csv_of(",100,158.00,2024-01-15,PUBLIC,STOCK,,,,,,"), 2, "Symbol",
     "Symbol is required"),
    ("zero quantity", csv_of("AAPL,0,158.00,2024-01-15,PUBLIC,STOCK,,,,,,"), 2, "Quantity",
     "Quantity is 0"),
    ("negative price", csv_of("AAPL,10,-158.00,2024-01-15,PUBLIC,STOCK,,,,,,"), 2,
     "Entry Price Per Share", "is negative"),
    ("zero price", csv_of("AAPL,10,0,2024-01-15,PUBLIC,STOCK,,,,,,"), 2,
     "Entry Price Per Share", "must be greater than 0"),
    ("bad date", csv_of("AAPL,10,158.00,01/15/2024,PUBLIC,STOCK,,,,,,"), 2, "Entry Date",
     "not in the format YYYY-MM-DD"),
    ("impossible date", csv_of("AAPL,10,158.00,2024-02-30,PUBLIC,STOCK,,,,,,"), 2,
     "Entry Date", "not a real calendar date"),
    ("future date", csv_of("AAPL,10,158.00,2026-12-01,PUBLIC,STOCK,,,,,,"), 2, "Entry Date",
     "in the future"),
    ("option missing strike", csv_of(
        "SPY_C450_20240315,10,5.50,2024-02-01,OPTIONS,,SPY,,2024-03-15,CALL,,"), 2,
     "Strike Price", "Strike Price is required for an option"),
    ("option missing type", csv_of(",10,5.50,2024-02-01,OPTIONS,,SPY,450,2024-03-15,,,"), 2,
     "Option Type", "CALL or PUT"),
    ("exit before entry", csv_of(
        "TSLA,50,185.00,2023-12-01,PUBLIC,STOCK,,,,,2023-11-15,215.00"), 2, "Exit Date",
     "must be after Entry Date 2023-12-01"),
    ("exit date without price", csv_of(
        "TSLA,50,185.00,2023-12-01,PUBLIC,STOCK,,,,,2024-01-15,"), 2, "Exit Price Per Share",
     "required when Exit Date is filled"),
    ("exit price without date", csv_of(
        "TSLA,50,185.00,2023-12-01,PUBLIC,STOCK,,,,,,215.00"), 2, "Exit Date",
     "required when Exit Price Per Share is filled"),
    ("duplicate rows", csv_of(GOOD, GOOD), 3, None, "Duplicate of line 2"),
    ("non-UTF-8", None, 2, None, "not UTF-8"),
    ("empty file", "", None, None, "The file is empty"),
    ("comments only", "# nothing here\n#\n", None, None, "no header line"),
    ("header only", HEADER_LINE + "\n", None, None, "no positions"),
    ("10 MB file", None, None, None, "the limit is 2.0 MB"),
    ("missing comma", csv_of("TSLA,50,185.00,2023-12-01,PUBLIC,STOCK,,,,2024-01-15,215.00"), 2,
     None, "11 values but the header has 12 columns"),
    ("unknown class", csv_of("VZ,515,41.20,2025-06-30,CRYPTO,STOCK,,,,,,"), 2,
     "Investment Class", "not one of PUBLIC, OPTIONS, PRIVATE"),
    ("option columns on a stock", csv_of("VZ,515,41.20,2025-06-30,PUBLIC,STOCK,,40,,,,"), 2,
     "Strike Price", "only for OPTIONS rows"),
    ("OCC symbol disagrees", csv_of(
        "AAPL250815P00200000,-1,2.00,2025-06-30,OPTIONS,,AAPL,210.00,2025-08-15,PUT,,"), 2,
     "Strike Price", "does not match the option symbol"),
]


@pytest.mark.parametrize(("name", "body", "line", "column", "words"), BAD_FILES,
                         ids=[b[0] for b in BAD_FILES])
def test_bad_file_is_rejected_with_a_precise_problem(name, body, line, column, words):
    if name == "non-UTF-8":
        data = (HEADER_LINE + "\nCAFÉ,1,2.00,2024-01-15,,,,,,,,\n").encode("latin-1")
    elif name == "10 MB file":
        row = (GOOD + "\n").encode()
        data = HEADER_LINE.encode() + b"\n" + row * (10 * 1024 * 1024 // len(row) + 1)
    else:
        data = body.encode()
    result = parse_portfolio_csv(data, today=TODAY)
    assert not result.ok
    matching = [p for p in result.problems if words in p.message]
    assert matching, result.problems
    assert matching[0].row == line
    assert matching[0].column == column


def test_every_problem_of_every_row_is_reported():
    body = csv_of(
        GOOD,
        "AAPL,0,-1,2026-12-31,PUBLIC,STOCK,,,,,,",  # three problems in one row
        "MSFT,1,EXPENSIVE,2024-01-15,,,,,,,,",
    )
    problems = parse(body).problems
    assert [(p.row, p.column) for p in problems] == [
        (3, "Quantity"), (3, "Entry Price Per Share"), (3, "Entry Date"),
        (4, "Entry Price Per Share"),
    ]


def test_rows_are_the_line_numbers_an_editor_shows():
    """Comments, blank lines and the header all count, so the user can jump to the line."""
    body = "# comment\n\n" + HEADER_LINE + "\n# another\n" + GOOD + "\n\nMSFT,0,1,2024-01-15,,,,,,,,\n"
    assert only_problem(body).row == 7


def test_multiline_quoted_value_reports_its_first_line():
    body = csv_of(GOOD, '"MS\nFT",1,1.00,2024-01-15,,,,,,,,', "NVDA,0,1,2024-01-15,,,,,,,,")
    problems = parse(body).problems
    assert [p.row for p in problems] == [3, 5]


def test_conservative_retiree_fixture_flags_each_commented_row():
    """The fixture's comments say what each row gets wrong; each one is found, valid rows pass."""
    data = (FIXTURES / "portfolios/Conservative-Retiree-Portfolio.csv").read_bytes()
    result = parse_portfolio_csv(data, today=TODAY)
    lines = data.decode().splitlines()
    bad_lines = {
        i + 2 for i, text in enumerate(lines) if text.startswith("# Row") and "VALID" not in text
    }
    assert {p.row for p in result.problems} == bad_lines
    assert len(result.problems) == len(bad_lines)  # one clear problem per bad row
    messages = {p.row: p.message for p in result.problems}
    assert "'FUND' is not valid for PUBLIC" in messages[8]
    assert "Duplicate of line 26" in messages[28]


@pytest.mark.parametrize("path", sorted(
    [*(FIXTURES / "portfolios").glob("*.csv"), *(FIXTURES / "anchor_demo/upload_format").glob("*.csv")]
), ids=lambda p: p.name)
def test_real_fixture_files(path: Path):
    result = parse_portfolio_csv(path.read_bytes(), today=TODAY)
    if path.name == "Conservative-Retiree-Portfolio.csv":
        assert not result.ok
    elif path.name == "Test-Schwab-Robo-Advisor.csv":
        # A broker export, not the upload format: one message says what the header must be.
        assert [p.message[:40] for p in result.problems] == [
            "The first line that is not a # comment i"]
    elif path.name == "Sample_Template.csv":
        # Its closed-position example lacks one comma: the exit values sit one column left.
        assert [(p.row, p.column) for p in result.problems] == [(43, None)]
    else:
        assert result.ok, result.problems


def test_option_formats_and_detection():
    body = csv_of(
        "SPY_C450_20240315,10,5.50,2024-02-01,OPTIONS,,SPY,450.00,2024-03-15,CALL,,",
        ",-5,9.40,2024-02-05,,,tsla,250.5,2024-08-16,put,,",
        "AAPL250815P00200000,-2,0.00,2025-06-30,,,AAPL,200,2025-08-15,PUT,,",
        "BX_PRIVATE_EQUITY,1,253058.86,2025-06-30,,,,,,,,",
        "SPAXX,10000,1.00,2024-01-01,,,,,,,,",
        "msft,75,380.00,2024-01-22,,,,,,,,",
    )
    result = parse(body)
    assert result.ok, result.problems
    a, b, occ, private, cash, stock = result.positions
    assert (a.symbol, a.investment_class, a.market_data_symbol) == (
        "SPY_C450_20240315", InvestmentClass.OPTIONS, "SPY")
    assert b.symbol == "TSLA240816P00250500" and b.option_type == "PUT"
    assert b.quantity == Decimal("-5") and b.multiplier == 100
    assert occ.investment_class is InvestmentClass.OPTIONS and occ.entry_price == 0
    assert private.investment_class is InvestmentClass.PRIVATE
    assert private.market_data_symbol is None
    assert cash.investment_class is InvestmentClass.PUBLIC and cash.market_data_symbol is None
    assert cash.investment_subtype == "CASH"
    assert (stock.symbol, stock.market_data_symbol) == ("MSFT", "MSFT")


def test_option_premium_zero_allowed_but_not_negative():
    assert parse(csv_of(",1,0,2025-06-30,OPTIONS,,AAPL,200,2025-08-15,PUT,,")).ok
    problem = only_problem(csv_of(",1,-1,2025-06-30,OPTIONS,,AAPL,200,2025-08-15,PUT,,"))
    assert problem.column == "Entry Price Per Share"


def test_two_lots_same_symbol_and_date_are_not_duplicates():
    result = parse(csv_of(GOOD, "AAPL,50,158.00,2024-01-15,PUBLIC,STOCK,,,,,,"))
    assert result.ok and len(result.positions) == 2


def test_bom_and_crlf_and_surrounding_spaces_are_tolerated():
    body = "\ufeff" + HEADER_LINE + "\r\n" + " AAPL , 100 , 158.00 ,2024-01-15,,,,,,,,\r\n"
    result = parse(body)
    assert result.ok, result.problems
    assert result.positions[0].entry_price == Decimal("158.00")


def test_money_is_decimal_and_exact():
    result = parse(csv_of("AAPL,1332.5100,204.94,2025-06-30,PUBLIC,,,,,,,"))
    position = result.positions[0]
    assert isinstance(position.entry_price, Decimal)
    assert position.entry_value == Decimal("1332.5100") * Decimal("204.94")


def test_row_limit():
    body = csv_of(*[f"S{i},1,1.00,2024-01-15,,,,,,,," for i in range(6)])
    problem = parse_portfolio_csv(body.encode(), today=TODAY, max_rows=5).problems[0]
    assert "more than 5 positions" in problem.message and problem.row == 7


def test_byte_limit_is_checked_before_decoding():
    problem = parse_portfolio_csv(b"\xff" * (MAX_UPLOAD_BYTES + 1), today=TODAY).problems[0]
    assert problem.row is None and "limit" in problem.message


def test_today_is_the_earliest_time_zone_date():
    from datetime import UTC, datetime
    assert latest_allowed_date(datetime(2026, 11, 29, 11, 0, tzinfo=UTC)) == date(2026, 11, 30)


def test_money_market_funds_are_detected_as_cash():
    result = parse(csv_of("FZDXX,500,1.00,2024-01-01,,,,,,,,", "VMFXX,5,1.00,2024-01-01,,,,,,,,",
                          "XLK,5,200.00,2024-01-01,,,,,,,,"))
    assert [p.investment_subtype for p in result.positions] == ["CASH", "CASH", None]
    assert [p.market_data_symbol for p in result.positions] == [None, None, "XLK"]
