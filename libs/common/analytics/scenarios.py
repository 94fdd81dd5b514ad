"""How the historical stress scenarios are derived from real price history.

The scenario set itself lives in the database (`stress_scenarios`, seeded by migration 0003
with literal numbers, versioned); this module is the derivation of the historical replays,
which a test re-runs on the shipped real history (tests/fixtures/prices) to check the seeded
numbers. A replay is the buy-and-hold return of each factor over the episode, with the
proxies the sample data uses where the ETF itself has no real history: SPY ← the S&P 500
index (SP500), IWM ← SIZE; a spread's return is the long leg's period return minus the short
leg's. Factors without real history in the episode (TLT, VUG: interest_rate,
growth_value_spread; every style ETF before 2013) are left unshocked, so the correlated
impact fills them by their conditional expectation.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

#: factor -> (long leg, short leg or None), in the real history's column names.
REPLAY_FACTORS: dict[str, tuple[str, str | None]] = {
    "market": ("SP500", None),
    "momentum_spread": ("MTUM", "SP500"),
    "size_spread": ("SIZE", "SP500"),
    "quality_spread": ("QUAL", "SP500"),
}


@dataclass(frozen=True)
class Episode:
    scenario_id: str
    name: str
    start: str  # close of the first day (the base)
    end: str  # close of the last day


EPISODES: tuple[Episode, ...] = (
    Episode("hist_covid_crash_2020", "COVID crash (2020-02-19 → 2020-03-23)", "2020-02-19",
            "2020-03-23"),
    Episode("hist_2022_h1", "2022 first half (2021-12-31 → 2022-06-30)", "2021-12-31",
            "2022-06-30"),
    Episode("hist_gfc_2008", "2008 crisis, Lehman to the November low (2008-09-12 → 2008-11-20)",
            "2008-09-12", "2008-11-20"),
)


def replay_shocks(closes: pd.DataFrame, episode: Episode, places: int = 6) -> dict[str, float]:
    """Factor returns over ``episode`` from a wide frame of real closes (NaN = no history)."""
    start, end = pd.Timestamp(episode.start), pd.Timestamp(episode.end)

    def period_return(column: str) -> float | None:
        if column not in closes.columns:
            return None
        series = closes[column]
        if start not in series.index or end not in series.index:
            return None
        first, last = series.loc[start], series.loc[end]
        if pd.isna(first) or pd.isna(last) or first <= 0:
            return None
        return float(last / first - 1.0)

    shocks: dict[str, float] = {}
    for factor, (long, short) in REPLAY_FACTORS.items():
        long_return = period_return(long)
        short_return = 0.0 if short is None else period_return(short)
        if long_return is None or short_return is None:
            continue
        shocks[factor] = round(long_return - short_return, places)
    return shocks
