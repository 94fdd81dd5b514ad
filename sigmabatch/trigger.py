"""Publishing the nightly trigger: what cron, `sigmabatch trigger nightly` and the demo run."""

from __future__ import annotations

import datetime as dt
import uuid

from libs.common import bootstrap
from libs.common.events import BatchNightlyRequested


async def publish_nightly(
    nats_url: str, target_date: dt.date | None, requested_by: str, rerun: bool
) -> tuple[str, bool]:
    """Publish `batch.nightly.requested`; returns (msg id, published-not-duplicate)."""
    settings = bootstrap.settings()
    message = BatchNightlyRequested(
        target_date=target_date,
        requested_by=requested_by,
        rerun_token=uuid.uuid4().hex[:12] if rerun else None,
    )
    connection = await bootstrap.connect_bus(settings, "sigmabatch-trigger", long_lived=False,
                                             nats_url=nats_url)
    try:
        published = await connection.publish(message)
    finally:
        await connection.nc.close()
    return message.message_id(), published
