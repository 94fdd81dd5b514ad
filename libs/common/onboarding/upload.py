"""The upload use case: a CSV becomes a portfolio that onboards itself.

`upload_portfolio` runs four steps, one function each:
1. `validate_upload`: parse and validate (any problem rejects the upload and nothing is
   written).
2. `store_valid_upload`: one transaction: known vs new symbols and the user's new-symbol
   limits, portfolio (owned by the caller), positions, onboarding state.
3. `enqueue_symbols`: after the commit, one `symbol.onboard.requested` per symbol still
   pending (the msg id `onboard:<SYMBOL>` and the symbol_onboarding row dedupe across users
   and replicas), then the readiness check.
4. `start_first_snapshot`: with every symbol known the upload succeeds at once: the first
   snapshot is made in this request when a snapshot maker is wired in (`v2_instant`, the
   first poll already says `completed`), otherwise requested on the bus.

equity_balance: optional. Stated, it is the first snapshot's equity (`equity_source`
"stated"); omitted, the first snapshot starts from the net market value of the positions on
its date ("net_market_value", see libs/common/domain/equity.py). A book whose net value is
≤ 0 by the latest known prices has no meaningful default and must state it (422).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy.exc import IntegrityError

from libs.common.db import session_scope
from libs.common.domain.equity import EquitySource, estimated_net_value
from libs.common.domain.onboarding import ACCOUNT_TYPES, MAX_ACCOUNT_NAME_LENGTH
from libs.common.domain.statuses import OnboardingMode, OnboardingStatus, onboarding_final_status
from libs.common.events import SymbolOnboardRequested
from libs.common.onboarding import store
from libs.common.onboarding.limits import NewSymbolLimitExceeded, NewSymbolLimits
from libs.common.onboarding.snapshot_requests import (
    Publish,
    fallback_as_of,
    publish_snapshot_requests,
)
from libs.common.onboarding.store import SnapshotRequest
from libs.common.portfolio_csv import (
    CsvProblem,
    ParseResult,
    latest_allowed_date,
    parse_portfolio_csv,
)

log = logging.getLogger(__name__)

# Makes the snapshot of (portfolio, date) in process; raises if it cannot.
SnapshotMaker = Callable[[uuid.UUID, dt.date], Awaitable[None]]
MAX_NAME_LENGTH = 300
PARSE_IN_THREAD_BYTES = 64 * 1024


class UploadRejected(Exception):
    def __init__(self, problems: list[CsvProblem]) -> None:
        super().__init__(f"{len(problems)} problem(s)")
        self.problems = problems


class DuplicateAccountName(Exception):
    """The caller already has a portfolio under this account name (nothing was written)."""

    def __init__(self, account_name: str) -> None:
        super().__init__(f"You already have an account named '{account_name}'.")
        self.account_name = account_name


@dataclass(frozen=True)
class Account:
    """The frontend's account of a portfolio: name (unique per user) and type."""

    name: str
    type: str


@dataclass(frozen=True)
class UploadResult:
    portfolio_id: uuid.UUID
    positions_created: int
    symbols_known: list[str]
    symbols_queued: list[str]
    status: str  # running / completed / partial
    mode: str
    name: str = ""  # as stored (trimmed)
    # The stated equity, or (equity_source net_market_value) the estimate at upload; the
    # first snapshot then starts from the net market value on its date.
    equity_balance: Decimal = Decimal(0)
    equity_source: str = EquitySource.STATED
    warnings: list[dict[str, object]] = field(default_factory=list)  # {row, column, message}
    account_name: str | None = None
    account_type: str | None = None


def check_account(account_name: str | None, account_type: str | None,
                  problems: list[CsvProblem]) -> Account | None:
    """Validate an account (both fields or neither); problems use the field names."""
    if account_name is None and account_type is None:
        return None
    clean_name = (account_name or "").strip()
    clean_type = (account_type or "").strip().lower()
    if not clean_name:
        problems.append(CsvProblem(None, "account_name", "The account needs a name."))
    elif any(ord(ch) < 32 for ch in clean_name):
        problems.append(CsvProblem(None, "account_name",
                                   "The account name contains control characters."))
    elif len(clean_name) > MAX_ACCOUNT_NAME_LENGTH:
        problems.append(CsvProblem(None, "account_name", (
            f"The account name is longer than {MAX_ACCOUNT_NAME_LENGTH} characters.")))
    if clean_type not in ACCOUNT_TYPES:
        problems.append(CsvProblem(None, "account_type", (
            f"account_type '{account_type or ''}' must be one of: {', '.join(ACCOUNT_TYPES)}.")))
    return Account(clean_name, clean_type)


def check_form(name: str, equity_balance: str | None, *, name_field: str = "name",
               ) -> tuple[str, Decimal | None]:
    """Validate the non-file form fields; problems use the field name as column."""
    problems: list[CsvProblem] = []
    clean_name = (name or "").strip()
    if not clean_name:
        problems.append(CsvProblem(None, name_field, "The portfolio needs a name."))
    elif any(ord(ch) < 32 for ch in clean_name):
        problems.append(CsvProblem(None, name_field, "The name contains control characters."))
    elif len(clean_name) > MAX_NAME_LENGTH:
        problems.append(CsvProblem(None, name_field,
                                   f"The name is longer than {MAX_NAME_LENGTH} characters."))
    equity: Decimal | None = None
    if equity_balance is not None and equity_balance.strip():
        try:
            equity = Decimal(equity_balance.strip())
            if not equity.is_finite() or equity <= 0 or abs(equity) >= Decimal("1e15"):
                raise ValueError
        except (ArithmeticError, ValueError):
            problems.append(CsvProblem(None, "equity_balance", (
                f"equity_balance '{equity_balance}' must be a positive amount, like 250000.00.")))
            equity = None
    if problems:
        raise UploadRejected(problems)
    return clean_name, equity


@dataclass(frozen=True)
class ValidUpload:
    """An upload that passed step 1: what the later steps store and answer with."""

    name: str  # trimmed
    equity: Decimal | None  # stated
    estimate: Decimal | None  # net market value at upload when none is stated
    account: Account | None
    parsed: ParseResult
    data_symbols: list[str]  # the symbols market data is fetched for


async def upload_portfolio(
    *,
    database_url: str,
    publish: Publish,
    user_id: uuid.UUID,
    username: str,
    name: str,
    data: bytes,
    equity_balance: str | None = None,
    snapshot_maker: SnapshotMaker | None = None,
    retry_failed_after_seconds: float = 3600.0,
    account_name: str | None = None,
    account_type: str | None = None,
    name_field: str = "name",
    new_symbol_limits: NewSymbolLimits | None = None,
) -> UploadResult:
    """Validate, store and start onboarding; UploadRejected (422) lists every problem (of the
    form, the file, or the upload's count of new symbols).

    With an account (the web frontend's upload), a second portfolio under the same account
    name raises DuplicateAccountName; the unique index decides between concurrent uploads.
    Past the user's daily new-symbol limit: NewSymbolLimitExceeded (429); nothing is written.
    """
    upload = await validate_upload(
        database_url, name=name, data=data, equity_balance=equity_balance,
        account_name=account_name, account_type=account_type, name_field=name_field)
    stored, requests = await store_valid_upload(
        database_url, upload, user_id=user_id, username=username,
        retry_failed_after_seconds=retry_failed_after_seconds,
        new_symbol_limits=new_symbol_limits)
    requests = await enqueue_symbols(database_url, publish, stored, username, requests)
    status = await start_first_snapshot(database_url, publish, stored, requests,
                                        snapshot_maker)
    return UploadResult(
        portfolio_id=stored.portfolio_id,
        positions_created=stored.positions_created,
        symbols_known=stored.symbols_known,
        symbols_queued=stored.symbols_queued,
        status=status,
        mode=OnboardingMode.ASYNC if (stored.symbols_queued or stored.symbols_failed)
        else OnboardingMode.INSTANT,
        name=upload.name,
        equity_balance=(upload.equity if upload.equity is not None
                        else upload.estimate or Decimal(0)),
        equity_source=(EquitySource.STATED if upload.equity is not None
                       else EquitySource.NET_MARKET_VALUE),
        account_name=upload.account.name if upload.account else None,
        account_type=upload.account.type if upload.account else None,
        warnings=[w.as_dict() for w in upload.parsed.warnings],
    )


async def validate_upload(
    database_url: str, *, name: str, data: bytes, equity_balance: str | None,
    account_name: str | None, account_type: str | None, name_field: str,
) -> ValidUpload:
    """Step 1, parse and validate: the form, the account, the file and (no equity stated) the
    net market value it would start from. Every problem at once in UploadRejected; nothing
    is written (the only database access reads the latest closes for the estimate)."""
    problems: list[CsvProblem] = []
    try:
        clean_name, equity = check_form(name, equity_balance, name_field=name_field)
    except UploadRejected as exc:
        problems.extend(exc.problems)
        clean_name, equity = name, None
    account = check_account(account_name, account_type, problems)
    if len(data) > PARSE_IN_THREAD_BYTES:
        # ~40 µs a row: a big file would stall every other request of this event loop.
        parsed = await asyncio.to_thread(parse_portfolio_csv, data, today=latest_allowed_date())
    else:
        parsed = parse_portfolio_csv(data, today=latest_allowed_date())
    problems.extend(parsed.problems)
    estimate: Decimal | None = None
    if not problems and equity is None:
        async with session_scope(database_url) as session:
            closes = await store.latest_closes(
                session, sorted({s for p in parsed.positions if (s := p.market_data_symbol)}))
        estimate = estimated_net_value(parsed.positions, closes)
        if estimate <= 0:
            problems.append(CsvProblem(None, "equity_balance", (
                f"The positions' net market value is {estimate} (a net short or zero book, "
                "at the latest known prices, entry prices where none is known yet), so it "
                "cannot be the starting equity: send equity_balance, the capital the "
                "portfolio's returns and factor weights are measured against.")))
    if problems:
        raise UploadRejected(problems)
    data_symbols = sorted({s for p in parsed.positions if (s := p.market_data_symbol)})
    return ValidUpload(clean_name, equity, estimate, account, parsed, data_symbols)


async def store_valid_upload(
    database_url: str, upload: ValidUpload, *, user_id: uuid.UUID, username: str,
    retry_failed_after_seconds: float, new_symbol_limits: NewSymbolLimits | None,
) -> tuple[store.StoredUpload, list[SnapshotRequest] | None]:
    """Step 2, resolve symbols and limits, and store: one transaction (`store.store_upload`:
    known vs new symbols, the user's new-symbol limits, portfolio, positions, onboarding
    state). Returns the stored upload and, when it waits for no symbol, the snapshot
    requests its readiness flip made in the same transaction (None otherwise: step 3 checks
    after the commit)."""
    account = upload.account
    requests: list[SnapshotRequest] | None = None
    try:
        async with session_scope(database_url) as session:
            if account is not None and await store.account_name_taken(
                    session, user_id, account.name):
                raise DuplicateAccountName(account.name)
            stored = await store.store_upload(
                session, user_id=user_id, name=upload.name, positions=upload.parsed.positions,
                data_symbols=upload.data_symbols, equity_balance=upload.equity,
                requested_by=username, retry_failed_after_seconds=retry_failed_after_seconds,
                account_name=account.name if account else None,
                account_type=account.type if account else None,
                new_symbol_limits=new_symbol_limits)
            if not stored.symbols_queued:
                # Nothing can settle concurrently: the readiness flip joins this transaction.
                requests = await store.request_snapshot_if_ready(
                    session, portfolio_id=stored.portfolio_id, fallback_as_of=fallback_as_of())
    except IntegrityError as exc:
        # A concurrent upload under the same account name committed first.
        if account is not None and "uq_portfolios_user_account_name" in str(exc.orig):
            raise DuplicateAccountName(account.name) from exc
        raise
    except NewSymbolLimitExceeded as exc:
        if exc.status == 422:  # the file itself is too big in new symbols: like any problem
            raise UploadRejected([CsvProblem(None, "Symbol", exc.message)]) from exc
        raise
    return stored, requests


async def enqueue_symbols(
    database_url: str, publish: Publish, stored: store.StoredUpload, username: str,
    requests: list[SnapshotRequest] | None,
) -> list[SnapshotRequest]:
    """Step 3, after the commit: one `symbol.onboard.requested` per symbol still pending, then
    (when step 2 could not decide it) the readiness check; returns the snapshot requests."""
    for symbol in stored.symbols_queued:
        await publish(SymbolOnboardRequested(symbol=symbol, portfolio_id=stored.portfolio_id,
                                             requested_by=username))
    if requests is not None:
        return requests
    # A symbol that settled while step 2's transaction was open announced itself to a
    # coordinator that could not see this portfolio yet; this check catches it.
    async with session_scope(database_url) as session:
        return await store.request_snapshot_if_ready(
            session, portfolio_id=stored.portfolio_id, fallback_as_of=fallback_as_of())


async def start_first_snapshot(
    database_url: str, publish: Publish, stored: store.StoredUpload,
    requests: list[SnapshotRequest], snapshot_maker: SnapshotMaker | None,
) -> str:
    """Step 4: a ready portfolio's first snapshot, made in this process when a snapshot maker
    is wired in (then the onboarding is finished here), else (or when that fails) requested
    on the bus. Returns the onboarding status to answer with."""
    status: str = OnboardingStatus.RUNNING
    if requests and snapshot_maker is not None:
        try:
            await snapshot_maker(stored.portfolio_id, requests[0].as_of)
        except Exception:
            log.exception("in-process first snapshot of %s failed; requesting it on the bus",
                          stored.portfolio_id)
            requests_to_publish = requests
        else:
            requests_to_publish = []
            async with session_scope(database_url) as session:
                if await store.finish_completed_onboardings(session, stored.portfolio_id):
                    status = onboarding_final_status(requests[0].failed_symbols)
        await publish_snapshot_requests(publish, requests_to_publish)
    else:
        await publish_snapshot_requests(publish, requests)
    return status
