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
from libs.common.market_data.gate import ProviderGate
from libs.common.market_data.throttle import CircuitBreaker, SharedTokenBucket
from libs.common.service import ServiceContext, ServiceDefinition, main
from libs.common.uow import sql_unit_of_work
from services.onboarding.coordinator import OnboardingCoordinator
from services.onboarding.worker import OnboardingWorker

NAME = "onboarding"


def provider_gate(ctx: ServiceContext) -> ProviderGate:
    """The vendor's rate limit shared by every replica (a token bucket in a NATS KV bucket,
    keyed by the provider) and this replica's circuit breaker."""
    settings = ctx.settings
    limiter = SharedTokenBucket(ctx.js, ctx.topology.provider_limits_bucket,
                                settings.market_data_provider, settings.provider_rate_per_second)
    breaker = CircuitBreaker(settings.market_data_provider,
                             failure_threshold=settings.provider_breaker_failures,
                             cooldown_seconds=settings.provider_breaker_cooldown_seconds)
    return ProviderGate(limiter, breaker, call_timeout_seconds=settings.provider_timeout_seconds)


def default_provider(settings: Settings, gate: ProviderGate | None = None) -> MarketDataProvider:
    return get_provider(settings, gate=gate, raise_transient_alone=True)


def build_definition(
    provider_factory: Callable[[Settings, ProviderGate], MarketDataProvider] = default_provider,
) -> ServiceDefinition:
    """The service, with the provider injectable (tests wrap the real one to count calls);
    the factory gets the gate to put under the vendor."""
    state: dict[str, OnboardingCoordinator] = {}

    def coordinator(ctx: ServiceContext) -> OnboardingCoordinator:
        if "c" not in state:
            state["c"] = OnboardingCoordinator(
                sql_unit_of_work(ctx.database_url), ctx.publish,
                stale_after_seconds=ctx.settings.job_stale_after_seconds)
        return state["c"]

    def bind(ctx: ServiceContext) -> list[Subscription]:
        gate = provider_gate(ctx)
        worker = OnboardingWorker(ctx, provider_factory(ctx.settings, gate), gate)
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
