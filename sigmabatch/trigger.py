"""Publishing the nightly trigger: what cron, `sigmabatch trigger nightly` and the demo run."""

from __future__ import annotations

import datetime as dt
import uuid

import nats

from libs.common import bus
from libs.common.config import get_settings
from libs.common.events import BatchNightlyRequested
from libs.common.service import declare_streams


async def publish_nightly(
    nats_url: str, target_date: dt.date | None, requested_by: str, rerun: bool
) -> tuple[str, bool]:
    """Publish `batch.nightly.requested`; returns (msg id, published-not-duplicate)."""
    settings = get_settings()
    message = BatchNightlyRequested(
        target_date=target_date,
        requested_by=requested_by,
        rerun_token=uuid.uuid4().hex[:12] if rerun else None,
    )
    nc = await nats.connect(nats_url, connect_timeout=5, allow_reconnect=False)
    try:
        js = nc.jetstream()
        topology = await declare_streams(js, settings)
        published = await bus.publish(js, topology, message)
    finally:
        await nc.close()
    return message.message_id(), published
