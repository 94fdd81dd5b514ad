"""`python -m services.portfolio_refresh`: the snapshot service (see handlers.py for the design).

Three durable consumers, each shared by every replica: the batch-completed event (plans a
date), the chunk commands (the fan-out: replicas take different chunks) and single-portfolio
refresh requests.
"""

from __future__ import annotations

from libs.common.bootstrap import Subscription, subscriptions
from libs.common.events import (
    PortfolioRefreshChunkRequested,
    PortfolioRefreshRequested,
    SymbolBatchCompleted,
)
from libs.common.service import ServiceContext, ServiceDefinition, main
from services.portfolio_refresh.handlers import RefreshHandlers

NAME = "portfolio_refresh"


def bind(ctx: ServiceContext) -> list[Subscription]:
    handlers = RefreshHandlers(ctx)
    return subscriptions(NAME, ctx.settings, {
        SymbolBatchCompleted: handlers.on_symbol_batch_completed,
        PortfolioRefreshChunkRequested: handlers.on_chunk,
        PortfolioRefreshRequested: handlers.on_refresh_requested,
    })


DEFINITION = ServiceDefinition(name=NAME, subscriptions=bind)

if __name__ == "__main__":
    main(DEFINITION)
