"""`python -m services.portfolio_refresh`: the snapshot service (see handlers.py for the design).

Three durable consumers, each shared by every replica: the batch-completed event (plans a
date), the chunk commands (the fan-out: replicas take different chunks) and single-portfolio
refresh requests.
"""

from __future__ import annotations

from libs.common.events import (
    PortfolioRefreshChunkRequested,
    PortfolioRefreshRequested,
    SymbolBatchCompleted,
)
from libs.common.service import ServiceContext, ServiceDefinition, Subscription, main
from libs.common.snapshots.refresh import JOB_CHUNK, JOB_PLAN, JOB_REQUEST
from services.portfolio_refresh.handlers import RefreshHandlers


def subscriptions(ctx: ServiceContext) -> list[Subscription]:
    handlers = RefreshHandlers(ctx)
    return [
        Subscription(
            ctx.consumer("portfolio-refresh-batch", SymbolBatchCompleted, JOB_PLAN),
            handlers.on_symbol_batch_completed,
        ),
        Subscription(
            ctx.consumer("portfolio-refresh-chunk", PortfolioRefreshChunkRequested, JOB_CHUNK),
            handlers.on_chunk,
        ),
        Subscription(
            ctx.consumer("portfolio-refresh-request", PortfolioRefreshRequested, JOB_REQUEST),
            handlers.on_refresh_requested,
            concurrency=2,
        ),
    ]


DEFINITION = ServiceDefinition(name="portfolio_refresh", subscriptions=subscriptions)

if __name__ == "__main__":
    main(DEFINITION)
