"""Publishing the nightly trigger: what cron, `sigmabatch trigger nightly` and the demo run."""

from __future__ import annotations

import datetime as dt
import uuid

from libs.common import bootstrap
from libs.common.events import BatchNightlyRequested


async def publish_nightly(
    nats_url: str,
    target_date: dt.date | None,
    requested_by: str,
    rerun: bool,
    replicas: int | None = None,
) -> tuple[str, bool]:
    """Publish `batch.nightly.requested`; returns (msg id, published-not-duplicate).

    `replicas`: the count the running system declared its streams with (a trigger run from
    another shell must not set a cluster's R3 streams back to the default 1).
    """
    settings = bootstrap.settings()
    if replicas is not None:
        settings = settings.model_copy(update={"stream_replicas": replicas})
    message = BatchNightlyRequested(
        target_date=target_date,
        requested_by=requested_by,
        rerun_token=uuid.uuid4().hex[:12] if rerun else None,
        rerun=rerun,
    )
    # Reconnecting: a node lost mid-publish moves the client to another (the publish retries).
    connection = await bootstrap.connect_bus(settings, "sigmabatch-trigger", nats_url=nats_url)
    try:
        published = await connection.publish(message)
    finally:
        await connection.nc.close()
    return message.message_id(), published
