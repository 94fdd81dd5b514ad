"""The factor set as rows of factor_definitions, and its idempotent seeding.

Exposures reference factor_definitions by name (foreign key), so the definitions are seeded
before any exposure is written, by whichever writer comes first; seeding again converges on
these values and changes nothing when they already match.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.db import raw_connection
from libs.common.factors import FACTOR_MODELS

DISPLAY_NAMES = {
    "market": "Market Beta",
    "interest_rate": "Interest Rate Beta",
    "value": "Value",
    "growth": "Growth",
    "momentum": "Momentum",
    "quality": "Quality",
    "size": "Size",
    "low_volatility": "Low Volatility",
    "growth_value_spread": "Growth-Value Spread",
    "momentum_spread": "Momentum Spread",
    "size_spread": "Size Spread",
    "quality_spread": "Quality Spread",
}


@dataclass(frozen=True)
class FactorDefinitionRow:
    name: str
    display_name: str
    kind: str
    method: str
    regressor: str
    window_days: int
    min_obs: int
    sort_order: int


def factor_definitions() -> list[FactorDefinitionRow]:
    """One row per factor of libs.common.factors, in engine order."""
    rows = []
    order = 0
    for model in FACTOR_MODELS:
        for reg in model.regressors:
            rows.append(
                FactorDefinitionRow(
                    name=reg.factor,
                    display_name=DISPLAY_NAMES.get(
                        reg.factor, reg.factor.replace("_", " ").title()
                    ),
                    kind=model.name,
                    method=model.method,
                    regressor=reg.long if reg.short is None else f"{reg.long}-{reg.short}",
                    window_days=model.window,
                    min_obs=model.min_obs,
                    sort_order=order,
                )
            )
            order += 1
    return rows


async def seed_factor_definitions(session: AsyncSession) -> None:
    """Insert or correct the definitions in one set-based statement (safe to repeat)."""
    rows = factor_definitions()
    connection = await raw_connection(session)
    await connection.execute(
        """
        INSERT INTO factor_definitions
            (name, display_name, kind, method, regressor, window_days, min_obs, sort_order)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                             $6::int[], $7::int[], $8::int[])
        ON CONFLICT (name) DO UPDATE SET
            display_name = EXCLUDED.display_name, kind = EXCLUDED.kind,
            method = EXCLUDED.method, regressor = EXCLUDED.regressor,
            window_days = EXCLUDED.window_days, min_obs = EXCLUDED.min_obs,
            sort_order = EXCLUDED.sort_order
        WHERE (factor_definitions.display_name, factor_definitions.kind, factor_definitions.method,
               factor_definitions.regressor, factor_definitions.window_days,
               factor_definitions.min_obs, factor_definitions.sort_order)
              IS DISTINCT FROM
              (EXCLUDED.display_name, EXCLUDED.kind, EXCLUDED.method, EXCLUDED.regressor,
               EXCLUDED.window_days, EXCLUDED.min_obs, EXCLUDED.sort_order)
        """,
        [r.name for r in rows],
        [r.display_name for r in rows],
        [r.kind for r in rows],
        [r.method for r in rows],
        [r.regressor for r in rows],
        [r.window_days for r in rows],
        [r.min_obs for r in rows],
        [r.sort_order for r in rows],
    )
