"""Asking portfolio_refresh for an onboarding's first snapshot (the upload and the coordinator).

The request's business key (portfolio, as_of) dedupes a repeat on the bus, so the upload,
the coordinator and its reconciler may all publish the same request safely.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

# `Publish` is re-exported: the upload and the coordinator import it from here.
from libs.common.bus import Publish as Publish
from libs.common.calendar import effective_trading_date
from libs.common.events import PortfolioRefreshRequested
from libs.common.onboarding.store import SnapshotRequest


def fallback_as_of() -> dt.date:
    return effective_trading_date(dt.datetime.now(dt.UTC))


async def publish_snapshot_requests(
    publish: Publish, requests: Sequence[SnapshotRequest], correlation_id: str | None = None
) -> None:
    for request in requests:
        kwargs = {"correlation_id": correlation_id} if correlation_id else {}
        await publish(PortfolioRefreshRequested(
            portfolio_id=request.portfolio_id, as_of=request.as_of, reason="onboarding",
            **kwargs))
