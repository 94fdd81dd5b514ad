"""Portfolio CSV upload format (docs/design.md §8): parse and validate, no I/O.

Shared by the upload endpoint and the demo, so both accept and reject exactly the same files.
The parser never stops at the first mistake: every problem of every row is reported as
`{row, column, message}` so a person can fix the whole file in one go.

`row` is the line number in the file as a text editor shows it (1 = first line, comment and
blank lines counted, the header included); `None` for problems of the file as a whole.

Deliberate choices (documented in the API too):
- Entry price must be > 0, except for OPTIONS rows where 0 is accepted and means "premium not
  recorded" (the reference demo hedge-fund portfolio carries its options at 0). Nothing in the
  P&L depends on it: an option is marked at its market or model price from its first day and
  the first day's P&L is 0 (docs/design.md §7); it only lowers the default equity by the premium.
- Prices carry at most 4 decimals (sub-penny quotes exist), quantities at most 6.
- A duplicate is a row identical to an earlier one in every parsed value (same lot twice);
  two lots of one symbol on one date with different quantity or price are both kept.
- Entry and exit dates may not be after "today" in the earliest time zone (UTC+14), so no
  user anywhere is rejected for entering their own local date.
"""

from __future__ import annotations

import csv
import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation

from libs.common.domain.options import OPTION_MULTIPLIER
from libs.common.domain.symbols import (
    OCC_SYMBOL,
    VALID_SUBTYPES,
    InvestmentClass,
    detect_investment_class,
    is_cash_symbol,
    market_data_symbol,
)

HEADER: tuple[str, ...] = (
    "Symbol",
    "Quantity",
    "Entry Price Per Share",
    "Entry Date",
    "Investment Class",
    "Investment Subtype",
    "Underlying Symbol",
    "Strike Price",
    "Expiration Date",
    "Option Type",
    "Exit Date",
    "Exit Price Per Share",
)
HEADER_LINE = ",".join(HEADER)

MAX_UPLOAD_BYTES = 2 * 1024 * 1024
MAX_POSITION_ROWS = 10_000
MAX_SYMBOL_LENGTH = 32
MAX_QUANTITY_DECIMALS = 6
MAX_PRICE_DECIMALS = 4
# Magnitudes a real position stays far inside; they keep every derived figure (market values,
# P&L, exposures: numeric(24,6), at most 10,000 rows) from overflowing, whatever the prices do
# later: |Quantity| <= 1e9 shares/contracts, a price <= $10M, |entry value| <= $1e12 a row.
MAX_ABS_QUANTITY = Decimal("1e9")
MAX_PRICE = Decimal("1e7")
MAX_ROW_VALUE = Decimal("1e12")
EARLIEST_DATE = date(1900, 1, 1)
SYMBOL_CHARS = re.compile(r"^[A-Z0-9][A-Z0-9._\-]*$")
DECIMAL_TEXT = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
ISO_DATE_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True, slots=True)
class CsvProblem:
    """One thing wrong with the upload: where (line, column) and what, in plain words."""

    row: int | None
    column: str | None
    message: str

    def as_dict(self) -> dict[str, object]:
        return {"row": self.row, "column": self.column, "message": self.message}


@dataclass(frozen=True, slots=True)
class ParsedPosition:
    """A validated position row, with normalised values (upper-case symbols, Decimals)."""

    row: int
    symbol: str
    quantity: Decimal
    entry_price: Decimal
    entry_date: date
    investment_class: InvestmentClass
    investment_subtype: str | None = None
    underlying_symbol: str | None = None
    strike_price: Decimal | None = None
    expiration_date: date | None = None
    option_type: str | None = None
    exit_date: date | None = None
    exit_price: Decimal | None = None

    @property
    def multiplier(self) -> int:
        return OPTION_MULTIPLIER if self.investment_class is InvestmentClass.OPTIONS else 1

    @property
    def entry_value(self) -> Decimal:
        """Signed cost of the position at entry (shorts negative)."""
        return self.quantity * self.entry_price * self.multiplier

    @property
    def market_data_symbol(self) -> str | None:
        """The symbol whose price history this position needs (domain.symbols rule)."""
        return market_data_symbol(self.symbol, self.investment_class, self.investment_subtype,
                                  self.underlying_symbol)

    def identity(self) -> tuple[object, ...]:
        """Every parsed value except the line number: equal identities = duplicate rows."""
        return (
            self.symbol, self.quantity, self.entry_price, self.entry_date, self.investment_class,
            self.investment_subtype, self.underlying_symbol, self.strike_price,
            self.expiration_date, self.option_type, self.exit_date, self.exit_price,
        )


@dataclass(slots=True)
class ParseResult:
    positions: list[ParsedPosition] = field(default_factory=list)
    problems: list[CsvProblem] = field(default_factory=list)
    # Accepted, but worth telling the user (e.g. an option that already expired).
    warnings: list[CsvProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.positions)


def latest_allowed_date(now: datetime | None = None) -> date:
    """'Today' in the earliest time zone on Earth: later dates are in everyone's future."""
    return ((now or datetime.now(UTC)) + timedelta(hours=14)).date()


def occ_symbol(underlying: str, expiry: date, option_type: str, strike: Decimal) -> str:
    """OCC-style compact option symbol, e.g. AAPL250815P00200000 (strike × 1000, 8 digits)."""
    cp = "C" if option_type == "CALL" else "P"
    return f"{underlying}{expiry:%y%m%d}{cp}{int(strike * 1000):08d}"


def parse_portfolio_csv(
    data: bytes,
    *,
    today: date | None = None,
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_rows: int = MAX_POSITION_ROWS,
) -> ParseResult:
    """Parse an upload; the result holds either positions or every problem found."""
    result = ParseResult()
    if len(data) > max_bytes:
        size, limit = _human_size(len(data)), _human_size(max_bytes)
        if size == limit:
            size, limit = f"{len(data):,} bytes", f"{max_bytes:,} bytes ({limit})"
        result.problems.append(CsvProblem(None, None, (
            f"The file is {size}; the limit is {limit}. "
            "Split the portfolio or remove unneeded lines.")))
        return result
    if not data.strip():
        result.problems.append(CsvProblem(None, None, (
            f"The file is empty. It needs the header line {HEADER_LINE} "
            "followed by one line per position.")))
        return result
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        result.problems.append(CsvProblem(line, None, (
            f"The file is not UTF-8 text (byte 0x{data[exc.start]:02X} on line {line} cannot be "
            "read). Save it as 'CSV UTF-8' from your spreadsheet and upload it again.")))
        return result
    _parse_text(text, result, today or latest_allowed_date(), max_rows)
    return result


def _parse_text(text: str, result: ParseResult, today: date, max_rows: int) -> None:
    lines = _numbered_content_lines(text)
    reader = csv.reader(line for _, line in lines.source)
    header_seen = False
    seen: dict[tuple[object, ...], int] = {}
    rows = 0
    try:
        for record in reader:
            line_no = lines.record_start()
            if not any(cell.strip() for cell in record):
                continue
            if not header_seen:
                header_seen = True
                header_problems = _check_header(record, line_no)
                if header_problems:
                    result.problems.extend(header_problems)
                    return
                continue
            rows += 1
            if rows > max_rows:
                result.problems.append(CsvProblem(line_no, None, (
                    f"The file has more than {max_rows:,} positions, the most one upload "
                    "accepts. Split it into several portfolios.")))
                return
            position = _parse_row(record, line_no, today, result.problems)
            if position is None:
                continue
            first = seen.setdefault(position.identity(), line_no)
            if first != line_no:
                result.problems.append(CsvProblem(line_no, None, (
                    f"Duplicate of line {first}: every value is the same. Remove one of them, "
                    "or if they are two lots, combine them into one line.")))
                continue
            result.positions.append(position)
            if (position.expiration_date is not None and position.expiration_date < today
                    and position.exit_date is None):
                result.warnings.append(CsvProblem(line_no, "Expiration Date", (
                    f"The option expired on {position.expiration_date} and has no exit: it is "
                    "valued at its intrinsic value at the expiry close from then on (flagged "
                    "expired, no delta).")))
    except csv.Error as exc:
        result.problems.append(CsvProblem(lines.record_start(), None, (
            f"This line cannot be read as CSV ({exc}). Check for unbalanced quotes.")))
        return
    if not header_seen:
        result.problems.append(CsvProblem(None, None, (
            f"The file has no header line. The first line that is not a # comment must be "
            f"exactly: {HEADER_LINE}")))
    elif not result.positions and not result.problems:
        result.problems.append(CsvProblem(None, None,
                                          "The file has a header but no positions below it."))


class _numbered_content_lines:  # noqa: N801 - used like a function returning an iterator
    """Feeds csv.reader the non-comment lines and remembers where each record started."""

    def __init__(self, text: str) -> None:
        self._lines = text.splitlines(keepends=True)
        self._consumed: list[int] = []
        self.source: Iterator[tuple[int, str]] = self._iterate()

    def _iterate(self) -> Iterator[tuple[int, str]]:
        for number, line in enumerate(self._lines, start=1):
            if line.lstrip().startswith("#"):
                continue
            self._consumed.append(number)
            yield number, line

    def record_start(self) -> int:
        """First line number consumed since the last call (the record's own first line)."""
        start = self._consumed[0] if self._consumed else len(self._lines)
        self._consumed.clear()
        return start


def _check_header(record: list[str], line_no: int) -> list[CsvProblem]:
    names = [cell.strip() for cell in record]
    if tuple(names) == HEADER:
        return []
    matching = sum(1 for got, want in zip(names, HEADER, strict=False) if got == want)
    if matching < len(HEADER) // 2:
        return [CsvProblem(line_no, None, (
            f"The first line that is not a # comment is not the portfolio header. "
            f"It must be exactly: {HEADER_LINE}"))]
    problems: list[CsvProblem] = []
    for index, expected in enumerate(HEADER):
        got = names[index] if index < len(names) else None
        if got is None:
            problems.append(CsvProblem(line_no, expected, (
                f"Column {index + 1} '{expected}' is missing from the header.")))
        elif got != expected:
            problems.append(CsvProblem(line_no, expected, (
                f"Column {index + 1} of the header is '{got}' but must be '{expected}'.")))
    for index in range(len(HEADER), len(names)):
        problems.append(CsvProblem(line_no, names[index] or None, (
            f"Column {index + 1} '{names[index]}' is not part of the format.")))
    problems.append(CsvProblem(line_no, None, (
        f"The header must be exactly (names and order): {HEADER_LINE}")))
    return problems


def _parse_row(
    record: list[str], line_no: int, today: date, problems: list[CsvProblem]
) -> ParsedPosition | None:
    cells = [cell.strip() for cell in record]
    if len(cells) > len(HEADER) and not any(cells[len(HEADER):]):
        cells = cells[: len(HEADER)]
    if len(cells) != len(HEADER):
        problems.append(CsvProblem(line_no, None, (
            f"This line has {len(cells)} values but the header has {len(HEADER)} columns: a "
            "comma is missing or extra (keep the commas of empty columns).")))
        return None
    row = _RowValidator(dict(zip(HEADER, cells, strict=True)), line_no, today)
    position = row.validate()
    problems.extend(row.problems)
    return position


class _RowValidator:
    """Validates one row, collecting every problem instead of stopping at the first."""

    def __init__(self, cells: dict[str, str], line_no: int, today: date) -> None:
        self.cells = cells
        self.line_no = line_no
        self.today = today
        self.problems: list[CsvProblem] = []

    def fail(self, column: str | None, message: str) -> None:
        self.problems.append(CsvProblem(self.line_no, column, message))

    def validate(self) -> ParsedPosition | None:
        c = self.cells
        symbol = c["Symbol"].upper()
        option_columns = ("Underlying Symbol", "Strike Price", "Expiration Date", "Option Type")
        has_option_fields = any(c[col] for col in option_columns)
        klass = self._investment_class(symbol, has_option_fields)
        is_option = klass is InvestmentClass.OPTIONS

        quantity = self._decimal("Quantity", MAX_QUANTITY_DECIMALS, required=True)
        if quantity is not None and quantity == 0:
            self.fail("Quantity", "Quantity is 0; use a positive number for a long position "
                      "or a negative number for a short one.")
        if quantity is not None and abs(quantity) > MAX_ABS_QUANTITY:
            self.fail("Quantity", f"Quantity {quantity} is larger than {MAX_ABS_QUANTITY:,.0f} "
                      "in magnitude; no real position is that big.")
        entry_price = self._decimal("Entry Price Per Share", MAX_PRICE_DECIMALS, required=True)
        self._check_price("Entry Price Per Share", entry_price, zero_ok=is_option)
        if (quantity is not None and entry_price is not None and abs(quantity) <= MAX_ABS_QUANTITY
                and entry_price <= MAX_PRICE
                and abs(quantity * entry_price * (OPTION_MULTIPLIER if is_option else 1))
                > MAX_ROW_VALUE):
            self.fail("Quantity", f"The position's entry value (Quantity x Entry Price"
                      f"{' x 100' if is_option else ''}) is more than {MAX_ROW_VALUE:,.0f}.")
        entry_date = self._date("Entry Date", required=True)
        if entry_date is not None and entry_date > self.today:
            self.fail("Entry Date", f"Entry Date {entry_date} is in the future.")

        subtype = c["Investment Subtype"].upper() or None
        if subtype is None and klass is InvestmentClass.PUBLIC and is_cash_symbol(symbol):
            subtype = "CASH"  # detected: carried at its value, never priced by a provider
        if subtype and klass is not None and subtype not in VALID_SUBTYPES[klass]:
            allowed = VALID_SUBTYPES[klass]
            hint = difflib.get_close_matches(subtype, allowed, n=1)
            self.fail("Investment Subtype", (
                f"Investment Subtype '{c['Investment Subtype']}' is not valid for {klass}"
                + (f" (did you mean {hint[0]}?)" if hint else "")
                + f"; use one of {', '.join(allowed)} or leave it blank."))

        underlying = strike = expiry = option_type = None
        if is_option:
            underlying, strike, expiry, option_type = self._option_fields()
            if not symbol and None not in (underlying, strike, expiry, option_type):
                symbol = occ_symbol(underlying, expiry, option_type, strike)  # type: ignore[arg-type]
            elif symbol:
                self._check_occ_consistency(symbol, underlying, strike, expiry, option_type)
        elif has_option_fields and klass is not None:
            filled = [col for col in option_columns if c[col]]
            self.fail(filled[0], (
                f"{', '.join(filled)} {'is' if len(filled) == 1 else 'are'} only for OPTIONS "
                f"rows, but this row's Investment Class is {klass}."))

        if not symbol:
            if not is_option:
                self.fail("Symbol", "Symbol is required (it may be blank only on an option row "
                          "that fills Underlying Symbol, Strike Price, Expiration Date and "
                          "Option Type).")
        else:
            self._check_symbol("Symbol", symbol)

        exit_date, exit_price = self._exit(entry_date, is_option)

        if self.problems or klass is None:
            return None
        assert quantity is not None and entry_price is not None and entry_date is not None
        return ParsedPosition(
            row=self.line_no, symbol=symbol, quantity=quantity, entry_price=entry_price,
            entry_date=entry_date, investment_class=klass, investment_subtype=subtype,
            underlying_symbol=underlying, strike_price=strike, expiration_date=expiry,
            option_type=option_type, exit_date=exit_date, exit_price=exit_price,
        )

    def _investment_class(self, symbol: str, has_option_fields: bool) -> InvestmentClass | None:
        raw = self.cells["Investment Class"].upper()
        if raw:
            try:
                return InvestmentClass(raw)
            except ValueError:
                self.fail("Investment Class", (
                    f"Investment Class '{self.cells['Investment Class']}' is not one of "
                    "PUBLIC, OPTIONS, PRIVATE (or leave it blank to have it detected)."))
                return None
        return detect_investment_class(symbol, has_option_fields)

    def _option_fields(self) -> tuple[str | None, Decimal | None, date | None, str | None]:
        c = self.cells
        underlying = c["Underlying Symbol"].upper() or None
        if underlying is None:
            self.fail("Underlying Symbol", "Underlying Symbol is required for an option "
                      "(the stock or ETF the option is on, e.g. AAPL).")
        elif not self._check_symbol("Underlying Symbol", underlying):
            underlying = None
        strike = self._decimal("Strike Price", 3, required=True, why="for an option")
        if strike is not None and strike <= 0:
            self.fail("Strike Price", f"Strike Price must be greater than 0 (got {strike}).")
            strike = None
        expiry = self._date("Expiration Date", required=True, why="for an option")
        raw_type = c["Option Type"].upper()
        option_type = {"CALL": "CALL", "C": "CALL", "PUT": "PUT", "P": "PUT"}.get(raw_type)
        if not raw_type:
            self.fail("Option Type", "Option Type is required for an option: CALL or PUT.")
        elif option_type is None:
            self.fail("Option Type",
                      f"Option Type '{c['Option Type']}' must be CALL or PUT.")
        return underlying, strike, expiry, option_type

    def _check_occ_consistency(self, symbol: str, underlying: str | None, strike: Decimal | None,
                               expiry: date | None, option_type: str | None) -> None:
        """An OCC symbol states its own terms: they must agree with the option columns."""
        match = OCC_SYMBOL.match(symbol)
        if not match:
            return  # descriptive name (format A), nothing to cross-check
        if underlying and match["root"] != underlying:
            self.fail("Underlying Symbol", (
                f"Underlying Symbol {underlying} does not match the option symbol {symbol} "
                f"(underlying {match['root']})."))
        if strike is not None and Decimal(match["strike"]) / 1000 != strike:
            self.fail("Strike Price", (
                f"Strike Price {strike} does not match the option symbol {symbol} "
                f"(strike {Decimal(match['strike']) / 1000:f})."))
        if expiry is not None and f"{expiry:%y%m%d}" != match["expiry"]:
            self.fail("Expiration Date", (
                f"Expiration Date {expiry} does not match the option symbol {symbol}."))
        if option_type and option_type[0] != match["cp"]:
            self.fail("Option Type", (
                f"Option Type {option_type} does not match the option symbol {symbol}."))

    def _check_symbol(self, column: str, symbol: str) -> bool:
        if len(symbol) > MAX_SYMBOL_LENGTH:
            self.fail(column, f"{column} '{symbol}' is longer than {MAX_SYMBOL_LENGTH} characters.")
            return False
        if not SYMBOL_CHARS.match(symbol):
            self.fail(column, (
                f"{column} '{self.cells[column]}' contains characters that are not allowed: "
                "use letters, digits, '.', '-' and '_' only (no spaces)."))
            return False
        return True

    def _decimal(self, column: str, max_decimals: int, *, required: bool,
                 why: str = "") -> Decimal | None:
        raw = self.cells[column]
        if not raw:
            if required:
                self.fail(column, f"{column} is required{' ' + why if why else ''}.")
            return None
        if not DECIMAL_TEXT.match(raw):
            self.fail(column, f"{column} '{raw}' is not a number (write it like 1234.56, "
                      "without currency signs or thousands separators).")
            return None
        try:
            value = Decimal(raw)
        except InvalidOperation:  # pragma: no cover - the regex admits only valid decimals
            self.fail(column, f"{column} '{raw}' is not a number.")
            return None
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and -exponent > max_decimals:
            self.fail(column, f"{column} '{raw}' has more than {max_decimals} decimal places.")
            return None
        if abs(value) >= Decimal("1e12"):
            self.fail(column, f"{column} '{raw}' is too large.")
            return None
        return value

    def _check_price(self, column: str, price: Decimal | None, *, zero_ok: bool) -> None:
        if price is None:
            return
        if price < 0:
            self.fail(column, f"{column} is negative ({price}); prices are always positive "
                      "(a short position is a negative Quantity).")
        elif price > MAX_PRICE:
            self.fail(column, f"{column} {price} is more than {MAX_PRICE:,.0f} per share.")
        elif price == 0 and not zero_ok:
            self.fail(column, f"{column} is 0; it must be greater than 0 "
                      "(only option rows may record a premium of 0).")

    def _date(self, column: str, *, required: bool, why: str = "") -> date | None:
        raw = self.cells[column]
        if not raw:
            if required:
                self.fail(column, f"{column} is required{' ' + why if why else ''} "
                          "(format YYYY-MM-DD).")
            return None
        parsed: date | None = None
        if ISO_DATE_TEXT.match(raw):
            try:
                parsed = date.fromisoformat(raw)
            except ValueError:
                self.fail(column, f"{column} '{raw}' is not a real calendar date.")
                return None
        if parsed is None:
            self.fail(column, f"{column} '{raw}' is not in the format YYYY-MM-DD "
                      "(for example 2025-06-30).")
            return None
        if parsed < EARLIEST_DATE:
            self.fail(column, f"{column} {parsed} is before {EARLIEST_DATE}; check the year.")
            return None
        return parsed

    def _exit(self, entry_date: date | None, is_option: bool) -> tuple[date | None, Decimal | None]:
        exit_date = self._date("Exit Date", required=False)
        exit_price = self._decimal("Exit Price Per Share", MAX_PRICE_DECIMALS, required=False)
        self._check_price("Exit Price Per Share", exit_price, zero_ok=is_option)
        if exit_date is not None:
            if entry_date is not None and exit_date <= entry_date:
                self.fail("Exit Date", (
                    f"Exit Date {exit_date} must be after Entry Date {entry_date}."))
            if exit_date > self.today:
                self.fail("Exit Date", f"Exit Date {exit_date} is in the future.")
            if not self.cells["Exit Price Per Share"]:
                self.fail("Exit Price Per Share", "Exit Price Per Share is required when "
                          "Exit Date is filled (the price the position was closed at).")
        elif self.cells["Exit Price Per Share"] and not self.cells["Exit Date"]:
            self.fail("Exit Date", "Exit Date is required when Exit Price Per Share is filled.")
        return exit_date, exit_price


def _human_size(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MB"
    if n >= 1024:
        return f"{n / 1024:.0f} KB"
    return f"{n} bytes"
