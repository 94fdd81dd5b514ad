"""The in-process first snapshot of a `v2_instant` upload.

When every symbol of an upload is already known there is nothing to wait for, so the API
makes the first snapshot inside the upload request with the snapshot use case portfolio_refresh
runs too (`libs.common.snapshots.refresh`: same claim/compute/complete transaction, so a
concurrent bus request for the same slot waits on the row and then skips it). The first poll then says `completed`.
"""

from __future__ import annotations

import datetime as dt
import uuid

from libs.common import pnl
from libs.common.config import Settings
from libs.common.onboarding.upload import SnapshotMaker
from libs.common.snapshots.refresh import refresh_portfolios


def default_snapshot_maker(settings: Settings) -> SnapshotMaker:
    database_url = settings.require_database_url()
    params = pnl.PricingParams(risk_free_rate=settings.risk_free_rate)

    async def make(portfolio_id: uuid.UUID, as_of: dt.date) -> None:
        await refresh_portfolios(database_url, as_of, [portfolio_id], params, explicit=True)

    return make
