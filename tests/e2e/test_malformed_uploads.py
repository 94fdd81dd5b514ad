"""1,000 generated malformed CSVs against the running API: every one 4xx, nothing written.

Each generated file is a valid upload with at least one mutation that breaks a rule of the
format (docs/design.md §8), or bytes that are not a CSV at all, so every answer must be a rejection.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.portfolio_csv import HEADER
from tests.e2e.harness import System

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("SIGMABATCH_MALFORMED_EXAMPLES", "1000"))

VALID_ROWS = [
    ["AAPL", "100", "158.00", "2024-01-15", "PUBLIC", "STOCK", "", "", "", "", "", ""],
    ["SPY", "-50", "445.20", "2024-01-20", "PUBLIC", "ETF", "", "", "", "", "", ""],
    ["", "10", "8.75", "2024-02-01", "OPTIONS", "", "DIA", "395.00", "2024-08-16", "CALL", "", ""],
    [
        "TSLA",
        "50",
        "185.00",
        "2023-12-01",
        "PUBLIC",
        "STOCK",
        "",
        "",
        "",
        "",
        "2024-01-15",
        "215.00",
    ],
    [
        "PRIVATE_FUND_A",
        "1",
        "50000.00",
        "2023-06-01",
        "PRIVATE",
        "PRIVATE_EQUITY",
        "",
        "",
        "",
        "",
        "",
        "",
    ],
]
COLUMN = {name: i for i, name in enumerate(HEADER)}

# (column, bad value, rows it applies to): each breaks a rule for that row.
BAD_VALUES: list[tuple[str, str]] = [
    ("Quantity", "0"),
    ("Quantity", ""),
    ("Quantity", "LOTS"),
    ("Quantity", "NaN"),
    ("Quantity", "1e3"),
    ("Entry Price Per Share", "0"),
    ("Entry Price Per Share", "-58.80"),
    ("Entry Price Per Share", "EXPENSIVE"),
    ("Entry Price Per Share", ""),
    ("Entry Date", ""),
    ("Entry Date", "06/30/2025"),
    ("Entry Date", "2024-13-01"),
    ("Entry Date", "2024-02-30"),
    ("Entry Date", "2999-12-31"),
    ("Investment Class", "STOCKS"),
]
OPTION_BAD_VALUES = [
    ("Strike Price", ""),
    ("Strike Price", "-1"),
    ("Expiration Date", ""),
    ("Option Type", "STRADDLE"),
    ("Underlying Symbol", ""),
]


def to_csv(header: list[str], rows: list[list[str]]) -> bytes:
    return ("\n".join(",".join(r) for r in [header, *rows]) + "\n").encode()


@st.composite
def malformed_csv(draw: st.DrawFn) -> bytes:
    rows = [list(r) for r in draw(st.lists(st.sampled_from(VALID_ROWS), min_size=1, max_size=6))]
    kind = draw(
        st.sampled_from(
            [
                "value",
                "option",
                "header",
                "exit",
                "blank_symbol",
                "bytes",
                "encoding",
                "duplicate",
                "empty",
            ]
        )
    )
    header = list(HEADER)
    target = draw(st.integers(0, len(rows) - 1))
    if kind == "value":
        column, value = draw(st.sampled_from(BAD_VALUES))
        rows[target][COLUMN[column]] = value
    elif kind == "option":
        rows.append(list(VALID_ROWS[2]))
        column, value = draw(st.sampled_from(OPTION_BAD_VALUES))
        rows[-1][COLUMN[column]] = value
    elif kind == "header":
        mutation = draw(st.sampled_from(["drop", "rename", "swap", "case"]))
        i = draw(st.integers(0, len(header) - 2))
        if mutation == "drop":
            del header[i]
        elif mutation == "rename":
            header[i] = header[i] + "x"
        elif mutation == "swap":
            header[i], header[i + 1] = header[i + 1], header[i]
        else:
            header[i] = header[i].upper()
    elif kind == "exit":
        rows[target][COLUMN["Exit Date"]] = "2000-01-01"
        rows[target][COLUMN["Exit Price Per Share"]] = "10.00"
    elif kind == "blank_symbol":
        rows.append(["", "5", "10.00", "2024-01-02", "PUBLIC", "STOCK", "", "", "", "", "", ""])
    elif kind == "duplicate":
        rows.append(list(rows[target]))
    elif kind == "encoding":
        data = to_csv(header, rows)
        return (
            data.replace(b"158.00", b"158.00\xff\xfe") if b"158.00" in data else b"\xff\xfe" + data
        )
    elif kind == "empty":
        return draw(st.sampled_from([b"", b"\n", to_csv(header, [])]))
    else:
        return draw(st.binary(min_size=0, max_size=400))
    return to_csv(header, rows)


@pytest.fixture
def api(system: System) -> System:
    system.start("status_api")
    system.wait_api()
    system.login("mallory")
    return system


def test_generated_malformed_csvs_are_all_rejected_and_nothing_is_written(api: System) -> None:
    answers: dict[int, int] = {}
    with api.client() as client:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(malformed_csv())
        def upload(data: bytes) -> None:
            response = client.post(
                "/api/v1/portfolios",
                files={"file": ("upload.csv", data, "text/csv")},
                data={"name": "malformed"},
            )
            answers[response.status_code] = answers.get(response.status_code, 0) + 1
            assert 400 <= response.status_code < 500, (data[:300], response.text)
            if response.status_code == 422:
                errors = response.json()["errors"]
                assert errors and all({"row", "column", "message"} <= set(e) for e in errors)

        upload()

    assert sum(answers.values()) >= min(EXAMPLES, 500)
    counts = api.query(
        "SELECT (SELECT count(*) FROM portfolios) AS portfolios, "
        "(SELECT count(*) FROM positions) AS positions, "
        "(SELECT count(*) FROM portfolio_onboarding) AS onboarding"
    )[0]
    assert counts == {"portfolios": 0, "positions": 0, "onboarding": 0}


HOSTILE_HEADER = ",".join(HEADER)
HOSTILE: dict[str, tuple[bytes, dict[str, str]]] = {
    # spreadsheet formula injection in a symbol
    "formula": (f'{HOSTILE_HEADER}\n"=HYPERLINK(""http://x"")",10,1,2024-01-02,PUBLIC,'
                "STOCK,,,,,,\n".encode(), {}),
    "nul_bytes": (f"{HOSTILE_HEADER}\nAA\x00PL,10,1,2024-01-02,PUBLIC,STOCK,,,,,,\n".encode(), {}),
    "sql_in_symbol": (f"{HOSTILE_HEADER}\nAAPL';DROP TABLE positions;--,10,1,2024-01-02,PUBLIC,"
                      "STOCK,,,,,,\n".encode(), {}),
    "newline_in_quoted_symbol": (f'{HOSTILE_HEADER}\n"AA\nPL",10,1,2024-01-02,PUBLIC,STOCK,,,,,,\n'
                                 .encode(), {}),
    "overflowing_quantity": (f"{HOSTILE_HEADER}\nAAPL,99999999999,1,2024-01-02,PUBLIC,STOCK,,,,,,\n"
                             .encode(), {}),
    "absurd_notional": (f"{HOSTILE_HEADER}\nAAPL,900000000,9000000,2024-01-02,PUBLIC,STOCK,,,,,,\n"
                        .encode(), {}),
    "exponent_and_nan": (f"{HOSTILE_HEADER}\nAAPL,1e308,NaN,2024-01-02,PUBLIC,STOCK,,,,,,\n"
                         .encode(), {}),
    "utf16": (f"{HOSTILE_HEADER}\nAAPL,10,1,2024-01-02,PUBLIC,STOCK,,,,,,\n".encode("utf-16"), {}),
    "very_long_line": (f"{HOSTILE_HEADER}\n{'A' * 100_000},10,1,2024-01-02,PUBLIC,STOCK,,,,,,\n"
                       .encode(), {}),
    "equity_overflow": (f"{HOSTILE_HEADER}\nAAPL,10,1,2024-01-02,PUBLIC,STOCK,,,,,,\n".encode(),
                        {"equity_balance": "1e400"}),
    "equity_nan": (f"{HOSTILE_HEADER}\nAAPL,10,1,2024-01-02,PUBLIC,STOCK,,,,,,\n".encode(),
                   {"equity_balance": "NaN"}),
    "control_chars_in_name": (f"{HOSTILE_HEADER}\nAAPL,10,1,2024-01-02,PUBLIC,STOCK,,,,,,\n"
                              .encode(), {"name": "a\x1b[31mred"}),
}


def test_hostile_csv_content_is_rejected_with_a_reason_and_writes_nothing(api: System) -> None:
    """Issue 12: injection attempts, binary and encoding tricks, magnitudes that would overflow
    a column downstream: each is a 4xx naming the problem, and nothing is stored."""
    with api.client() as client:
        for name, (data, form) in HOSTILE.items():
            response = client.post(
                "/api/v1/portfolios", files={"file": ("../../etc/passwd", data, "text/csv")},
                data={"name": "hostile", **form})
            assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
            assert response.json(), name
    counts = api.query(
        "SELECT (SELECT count(*) FROM portfolios) AS portfolios, "
        "(SELECT count(*) FROM positions) AS positions, "
        "(SELECT count(*) FROM symbol_universe) AS symbols"
    )[0]
    assert counts == {"portfolios": 0, "positions": 0, "symbols": 0}
