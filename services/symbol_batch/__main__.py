"""`python -m services.symbol_batch`: the nightly symbol batch consumer.

Replicas share one durable consumer on the work queue; the advisory lock and the job tracker
make sure one of them runs a given night.
"""

from __future__ import annotations

from collections.abc import Callable

from libs.common.bootstrap import Subscription, subscriptions
from libs.common.config import Settings
from libs.common.events import BatchNightlyRequested
from libs.common.market_data import create_provider
from libs.common.market_data.base import MarketDataProvider
from libs.common.service import ServiceContext, ServiceDefinition, main
from services.symbol_batch.handlers import SymbolBatch

NAME = "symbol_batch"


def build_definition(
    provider_factory: Callable[[Settings], MarketDataProvider] = create_provider,
) -> ServiceDefinition:
    def bind(ctx: ServiceContext) -> list[Subscription]:
        batch = SymbolBatch.from_context(ctx, provider_factory(ctx.settings))
        return subscriptions(NAME, ctx.settings, {BatchNightlyRequested: batch.handle})

    return ServiceDefinition(name=NAME, subscriptions=bind)


if __name__ == "__main__":
    main(build_definition())
