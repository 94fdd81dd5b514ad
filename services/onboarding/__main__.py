"""`python -m services.onboarding`: onboarding workers and coordinator in one process.

Replicas share the durable consumers: symbol requests spread over them, each completion
event is handled once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from libs.common.bootstrap import Subscription, subscriptions
from libs.common.config import Settings
from libs.common.events import SymbolOnboardCompleted, SymbolOnboardRequested
from libs.common.market_data import MarketDataProvider, get_provider
from libs.common.service import ServiceContext, ServiceDefinition, main
from libs.common.uow import sql_unit_of_work
from services.onboarding.coordinator import OnboardingCoordinator
from services.onboarding.worker import OnboardingWorker

NAME = "onboarding"


def default_provider(settings: Settings) -> MarketDataProvider:
    return get_provider(settings)


def build_definition(
    provider_factory: Callable[[Settings], MarketDataProvider] = default_provider,
) -> ServiceDefinition:
    """The service, with the provider injectable (tests wrap the real one to count calls)."""
    state: dict[str, OnboardingCoordinator] = {}

    def coordinator(ctx: ServiceContext) -> OnboardingCoordinator:
        if "c" not in state:
            state["c"] = OnboardingCoordinator(
                sql_unit_of_work(ctx.database_url), ctx.publish,
                stale_after_seconds=ctx.settings.job_stale_after_seconds)
        return state["c"]

    def bind(ctx: ServiceContext) -> list[Subscription]:
        worker = OnboardingWorker(ctx, provider_factory(ctx.settings))
        return subscriptions(NAME, ctx.settings, {
            SymbolOnboardRequested: worker.handle,
            SymbolOnboardCompleted: coordinator(ctx).handle,
        })

    async def on_start(ctx: ServiceContext) -> None:
        await coordinator(ctx).reconcile()

    async def reconcile_loop(ctx: ServiceContext, stop: asyncio.Event) -> None:
        await coordinator(ctx).reconcile_forever(stop)

    async def outcome_loop(ctx: ServiceContext, stop: asyncio.Event) -> None:
        await coordinator(ctx).watch_outcomes(stop)

    return ServiceDefinition(
        name=NAME, subscriptions=bind, on_start=on_start,
        background=(reconcile_loop, outcome_loop),
    )


if __name__ == "__main__":
    main(build_definition())
