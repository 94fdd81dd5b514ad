"""The refresh orchestration (`SnapshotRefresh`) on an in-memory slot store (no servers).

`tests/test_portfolio_refresh.py` and `tests/test_refresh_isolation.py` run the same class on
PostgreSQL (the claims, the row locks, the numbers). Here a fake `SlotStore` keeps which
(portfolio, date) snapshots are complete in sets, with the claim rules of
`repository.claim_slots` that the ordering depends on (a complete slot is skipped; under a
later complete one too when `skip_if_later`; before the first position when
`require_holdings`); what is checked is the use case's own part: which dates in which order,
who stops where, and how a failing chunk is cut down to its bad portfolio.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest

from libs.common import pnl
from libs.common.snapshots.refresh import DateOutcome, SlotReads, SnapshotRefresh

D = dt.date
PARAMS = pnl.PricingParams()
BATCH = [D(2025, 11, 17), D(2025, 11, 18), D(2025, 11, 19), D(2025, 11, 20), D(2025, 11, 21),
         D(2025, 11, 24), D(2025, 11, 25)]


@dataclass(frozen=True)
class Call:
    day: dt.date
    ids: tuple[uuid.UUID, ...]
    skip_if_later: bool
    require_holdings: bool
    restate: bool


class FakeSlots:
    def __init__(self, batch_dates: Sequence[dt.date] = BATCH) -> None:
        self.batch = sorted(batch_dates)
        self.first_entry: dict[uuid.UUID, dt.date] = {}
        self.complete: dict[uuid.UUID, set[dt.date]] = {}
        self.poison: dict[uuid.UUID, set[dt.date]] = {}  # data that breaks these dates
        self.down = False  # the database is unreachable
        self.calls: list[Call] = []
        self.recorded: list[tuple[uuid.UUID, dt.date, str]] = []

    def portfolio(self, entry: dt.date, *complete: dt.date) -> uuid.UUID:
        pid = uuid.uuid4()
        self.first_entry[pid] = entry
        self.complete[pid] = set(complete)
        return pid

    # SlotReads
    async def latest_complete_dates(self, portfolio_ids: Sequence[uuid.UUID],
                                    before: dt.date) -> dict[uuid.UUID, dt.date]:
        return {p: max(d for d in self.complete[p] if d < before) for p in portfolio_ids
                if any(d < before for d in self.complete[p])}

    async def first_entry_dates(
            self, portfolio_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, dt.date]:
        return {p: self.first_entry[p] for p in portfolio_ids}

    async def batch_dates_between(self, after: dt.date, before: dt.date) -> list[dt.date]:
        return [d for d in self.batch if after < d < before]

    async def first_complete_dates(
            self, portfolio_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, dt.date]:
        return {p: min(self.complete[p]) for p in portfolio_ids if self.complete[p]}

    async def restatement_dates(self, day: dt.date,
                                portfolio_ids: Sequence[uuid.UUID]) -> list[dt.date]:
        later = {d for d in self.batch if d > day}
        later |= {d for p in portfolio_ids for d in self.complete[p] if d > day}
        return [day, *sorted(later)]

    # SlotStore
    @contextlib.asynccontextmanager
    async def reads(self) -> AsyncIterator[SlotReads]:
        yield self

    async def refresh_date(
        self, day: dt.date, portfolio_ids: Sequence[uuid.UUID], params: pnl.PricingParams, *,
        skip_if_later: bool, require_holdings: bool = True,
        restate_degraded_before: dt.datetime | None = None, restate: bool = False,
    ) -> DateOutcome:
        self.calls.append(Call(day, tuple(portfolio_ids), skip_if_later, require_holdings,
                               restate))
        if self.down:
            raise ConnectionError("connection refused")
        claimed = [
            p for p in portfolio_ids
            if (restate or day not in self.complete[p])
            and not (skip_if_later and any(d > day for d in self.complete[p]))
            and not (require_holdings and self.first_entry[p] > day)
        ]
        bad = [p for p in claimed if day in self.poison.get(p, set())]
        if bad:  # the whole transaction rolls back
            raise ValueError(f"numeric field overflow ({len(bad)} bad)")
        for p in claimed:
            self.complete[p].add(day)
        return DateOutcome(day, len(claimed), 3 * len(claimed))

    async def record_portfolio_failure(self, portfolio_id: uuid.UUID, day: dt.date,
                                       reason: str) -> None:
        self.recorded.append((portfolio_id, day, reason))


def days_refreshed(slots: FakeSlots) -> list[dt.date]:
    return [c.day for c in slots.calls]


async def test_catch_up_runs_every_missing_batch_date_oldest_first_then_the_day() -> None:
    slots = FakeSlots()
    behind = slots.portfolio(D(2025, 11, 1), D(2025, 11, 18))
    current = slots.portfolio(D(2025, 11, 1), D(2025, 11, 21))
    outcomes = await SnapshotRefresh(slots).refresh_portfolios(
        D(2025, 11, 25), [behind, current], PARAMS)
    assert days_refreshed(slots) == [D(2025, 11, 19), D(2025, 11, 20), D(2025, 11, 21),
                                     D(2025, 11, 24), D(2025, 11, 25)]
    assert [o.snapshots for o in outcomes] == [1, 1, 1, 2, 2]  # 19-21: `current` skipped
    assert all(c.skip_if_later and c.require_holdings for c in slots.calls)
    assert slots.complete[behind] >= set(BATCH[2:])


async def test_a_new_portfolio_starts_at_its_first_entry_and_the_cap_keeps_the_latest() -> None:
    slots = FakeSlots()
    new = slots.portfolio(D(2025, 11, 18))
    await SnapshotRefresh(slots).refresh_portfolios(D(2025, 11, 25), [new], PARAMS,
                                                     max_backfill=2)
    # catch-up would be 18..24; the cap keeps the two latest before the day
    assert days_refreshed(slots) == [D(2025, 11, 21), D(2025, 11, 24), D(2025, 11, 25)]


async def test_an_explicit_request_makes_one_snapshot_even_under_a_later_one() -> None:
    slots = FakeSlots()
    onboarding = slots.portfolio(D(2025, 11, 18))  # no snapshot yet: no backfill
    later = slots.portfolio(D(2025, 11, 1), D(2025, 11, 25))
    await SnapshotRefresh(slots).refresh_portfolios(D(2025, 11, 20), [onboarding], PARAMS,
                                                     explicit=True)
    assert slots.calls == [Call(D(2025, 11, 20), (onboarding,), False, False, False)]
    await SnapshotRefresh(slots).refresh_portfolios(D(2025, 11, 21), [later], PARAMS,
                                                     explicit=True)
    assert D(2025, 11, 21) in slots.complete[later]
    # the batch itself never writes under a later complete snapshot
    slots.complete[later].discard(D(2025, 11, 21))
    await SnapshotRefresh(slots).refresh_portfolios(D(2025, 11, 21), [later], PARAMS)
    assert D(2025, 11, 21) not in slots.complete[later]


async def test_a_poison_portfolio_is_bisected_out_and_recorded_once() -> None:
    slots = FakeSlots()
    ids = sorted(slots.portfolio(D(2025, 11, 1), D(2025, 11, 24)) for _ in range(8))
    poison = ids[5]
    slots.poison[poison] = {D(2025, 11, 25)}
    outcome = await SnapshotRefresh(slots).refresh_date_isolated(
        D(2025, 11, 25), ids, PARAMS, skip_if_later=True)
    assert outcome.snapshots == 7 and outcome.positions == 21
    assert list(outcome.failed) == [poison]
    assert outcome.failed[poison] == "ValueError: numeric field overflow (1 bad)"
    assert slots.recorded == [(poison, D(2025, 11, 25), outcome.failed[poison])]
    # the chunk, then halves down to the poison alone: 1 + 2·log2(8) transactions
    assert [len(c.ids) for c in slots.calls] == [8, 4, 4, 2, 1, 1, 2]
    assert slots.calls[5].ids == (poison,)
    assert all(D(2025, 11, 25) in slots.complete[p] for p in ids if p != poison)


async def test_an_infrastructure_failure_is_not_bisected_but_raised_for_a_retry() -> None:
    slots = FakeSlots()
    ids = [slots.portfolio(D(2025, 11, 1), D(2025, 11, 24)) for _ in range(4)]
    slots.down = True
    with pytest.raises(ConnectionError):
        await SnapshotRefresh(slots).refresh_date_isolated(
            D(2025, 11, 25), ids, PARAMS, skip_if_later=True)
    assert len(slots.calls) == 1 and slots.recorded == []


async def test_a_portfolio_failing_a_catch_up_date_stops_there_and_the_others_go_on() -> None:
    slots = FakeSlots()
    good = slots.portfolio(D(2025, 11, 1), D(2025, 11, 19))
    bad = slots.portfolio(D(2025, 11, 1), D(2025, 11, 19))
    slots.poison[bad] = {D(2025, 11, 21)}
    outcomes = await SnapshotRefresh(slots).refresh_portfolios(D(2025, 11, 25), [good, bad],
                                                                PARAMS)
    assert [o.day for o in outcomes] == [D(2025, 11, 20), D(2025, 11, 21), D(2025, 11, 24),
                                         D(2025, 11, 25)]
    assert [o.failed for o in outcomes][1] == {bad: "ValueError: numeric field overflow (1 bad)"}
    assert max(slots.complete[bad]) == D(2025, 11, 20)  # no later date rolls over the hole
    assert max(slots.complete[good]) == D(2025, 11, 25)
    assert all(bad not in c.ids for c in slots.calls if c.day > D(2025, 11, 21))


async def test_catch_up_ends_early_when_every_portfolio_failed() -> None:
    slots = FakeSlots()
    bad = slots.portfolio(D(2025, 11, 1), D(2025, 11, 19))
    slots.poison[bad] = {D(2025, 11, 20)}
    outcomes = await SnapshotRefresh(slots).refresh_portfolios(D(2025, 11, 25), [bad], PARAMS)
    assert [o.day for o in outcomes] == [D(2025, 11, 20)]


async def test_restatement_recomputes_from_the_day_in_order_from_each_first_snapshot() -> None:
    slots = FakeSlots()
    old = slots.portfolio(D(2025, 11, 1), D(2025, 11, 17), D(2025, 11, 18), D(2025, 11, 20))
    young = slots.portfolio(D(2025, 11, 19), D(2025, 11, 20), D(2025, 11, 21))
    never = slots.portfolio(D(2025, 11, 1))  # no snapshot: nothing to restate
    outcomes = await SnapshotRefresh(slots).restate_portfolios(
        D(2025, 11, 18), [old, young, never], PARAMS)
    assert [(c.day, set(c.ids)) for c in slots.calls] == [
        (D(2025, 11, 18), {old}), (D(2025, 11, 19), {old}), (D(2025, 11, 20), {old, young}),
        (D(2025, 11, 21), {old, young}), (D(2025, 11, 24), {old, young}),
        (D(2025, 11, 25), {old, young})]
    assert all(c.restate and not c.skip_if_later for c in slots.calls)
    assert D(2025, 11, 19) in slots.complete[old]  # the hole between its snapshots is filled
    assert min(slots.complete[young]) == D(2025, 11, 20)  # history does not grow backwards
    assert [o.snapshots for o in outcomes] == [1, 1, 2, 2, 2, 2]


async def test_a_portfolio_failing_a_restated_date_stops_there() -> None:
    slots = FakeSlots()
    ok, bad = (slots.portfolio(D(2025, 11, 1), D(2025, 11, 17)) for _ in range(2))
    slots.poison[bad] = {D(2025, 11, 19)}
    await SnapshotRefresh(slots).restate_portfolios(D(2025, 11, 18), [ok, bad], PARAMS)
    assert [c.ids for c in slots.calls if c.day == D(2025, 11, 20)] == [(ok,)]
    assert [(p, d) for p, d, _ in slots.recorded] == [(bad, D(2025, 11, 19))]
