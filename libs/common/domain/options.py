"""European option pricing and Greeks (Black-Scholes, no dividends): pure, vectorised.

One function, :func:`black_scholes_greeks`, values any number of options at once from
arrays (or scalars, broadcast together) and returns the price with every Greek, so the mark
used for P&L, the delta used for factor exposures and the Greeks shown by the API all come
from the same inputs. :func:`black_scholes` is the price alone.

Conventions (all per ONE option on ONE unit of underlying; multiply by
``quantity × OPTION_MULTIPLIER`` for a position):

* ``years`` is time to expiry in years (the project measures it as calendar days / 365).
* ``rate`` is the continuously compounded risk-free rate, ``vol`` the annualised volatility,
  both as fractions (0.05, 0.20).
* ``delta`` = ∂price/∂spot (call 0..1, put −1..0).
* ``gamma`` = ∂²price/∂spot².
* ``theta`` = ∂price/∂t per YEAR of calendar time (negative for a long option, as usual);
  ``theta_per_day`` = theta / 365, the value lost per calendar day.
* ``vega`` = ∂price/∂vol per 1.00 (100 vol points) of volatility; ``vega_per_pct`` = vega / 100,
  the change for a one-point move (0.20 → 0.21).
* ``rho`` = ∂price/∂rate per 1.00 of rate; ``rho_per_pct`` = rho / 100.

At or after expiry (``years <= 0``) an option is worth its intrinsic value and every Greek is 0
(an expired option has no exposure to anything). Non-positive spot or strike are treated the
same way (nothing to model). ``vol <= 0`` before expiry is the zero-volatility limit: the
discounted forward intrinsic value, delta 0 or ±1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import ndtr  # standard normal CDF; scipy.stats costs seconds to import

#: Shares of underlying per listed equity option contract: market value, P&L and delta
#: exposure of an option position are all ``quantity × OPTION_MULTIPLIER × per-share value``.
OPTION_MULTIPLIER = 100
#: Calendar days per year, the unit of ``years`` and of ``theta_per_day``.
DAYS_PER_YEAR = 365.0

_TINY_VOL = 1e-12
_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)


@dataclass(frozen=True)
class OptionGreeks:
    """Price and Greeks of each option (float64 arrays of the broadcast input shape)."""

    price: np.ndarray
    delta: np.ndarray
    gamma: np.ndarray
    theta: np.ndarray  # per year
    vega: np.ndarray  # per 1.00 of volatility
    rho: np.ndarray  # per 1.00 of rate
    expired: np.ndarray  # bool: years <= 0 (worth intrinsic, Greeks 0)

    @property
    def theta_per_day(self) -> np.ndarray:
        """Theta per calendar day (theta / 365)."""
        return self.theta / DAYS_PER_YEAR

    @property
    def vega_per_pct(self) -> np.ndarray:
        """Vega per one volatility point (0.01)."""
        return self.vega / 100.0

    @property
    def rho_per_pct(self) -> np.ndarray:
        """Rho per one percentage point of rate (0.01)."""
        return self.rho / 100.0


def _normal_pdf(x: np.ndarray) -> np.ndarray:
    return _INV_SQRT_2PI * np.exp(-0.5 * x * x)


def intrinsic_value(spot: Any, strike: Any, is_call: Any) -> np.ndarray:
    """Exercise value per unit: max(S − K, 0) for calls, max(K − S, 0) for puts."""
    s, k = np.asarray(spot, dtype="float64"), np.asarray(strike, dtype="float64")
    return np.where(np.asarray(is_call, dtype=bool), np.maximum(s - k, 0.0), np.maximum(k - s, 0.0))


def black_scholes_greeks(
    spot: Any, strike: Any, years: Any, rate: Any, vol: Any, is_call: Any
) -> OptionGreeks:
    """Black-Scholes price and Greeks of European options, vectorised (see module docstring).

    Every argument is a scalar or an array; they broadcast together. NaN inputs give NaN
    outputs (except ``expired``), so a missing underlying price stays visible.
    """
    s, k, t, r, v, call = np.broadcast_arrays(
        np.asarray(spot, dtype="float64"),
        np.asarray(strike, dtype="float64"),
        np.asarray(years, dtype="float64"),
        np.asarray(rate, dtype="float64"),
        np.asarray(vol, dtype="float64"),
        np.asarray(is_call, dtype=bool),
    )
    expired = t <= 0
    live = ~expired & (s > 0) & (k > 0)
    # Safe stand-ins where not live, so no warnings; those entries are replaced below.
    s1 = np.where(live, s, 1.0)
    k1 = np.where(live, k, 1.0)
    t1 = np.where(live, t, 1.0)
    v1 = np.where(live, np.maximum(v, _TINY_VOL), 1.0)
    sqrt_t = np.sqrt(t1)
    d1 = (np.log(s1 / k1) + (r + 0.5 * v1 * v1) * t1) / (v1 * sqrt_t)
    d2 = d1 - v1 * sqrt_t
    disc = np.exp(-r * t1)
    pdf_d1 = _normal_pdf(d1)
    nd1, nd2 = ndtr(d1), ndtr(d2)
    n_md1, n_md2 = ndtr(-d1), ndtr(-d2)

    price = np.where(call, s1 * nd1 - k1 * disc * nd2, k1 * disc * n_md2 - s1 * n_md1)
    delta = np.where(call, nd1, nd1 - 1.0)
    gamma = pdf_d1 / (s1 * v1 * sqrt_t)
    decay = -s1 * pdf_d1 * v1 / (2.0 * sqrt_t)
    theta = np.where(call, decay - r * k1 * disc * nd2, decay + r * k1 * disc * n_md2)
    vega = s1 * pdf_d1 * sqrt_t
    rho = np.where(call, k1 * t1 * disc * nd2, -k1 * t1 * disc * n_md2)

    intrinsic = intrinsic_value(s, k, call)
    zero = np.zeros_like(price)

    def pick(model: np.ndarray, dead: np.ndarray) -> np.ndarray:
        out = np.where(live, model, dead)
        # NaN in any input propagates (np.where above would hide it behind `dead`).
        nan_in = np.isnan(s) | np.isnan(k) | np.isnan(t) | np.isnan(r) | (np.isnan(v) & ~expired)
        return np.where(nan_in, np.nan, out)

    return OptionGreeks(
        price=pick(price, intrinsic),
        delta=pick(delta, zero),
        gamma=pick(gamma, zero),
        theta=pick(theta, zero),
        vega=pick(vega, zero),
        rho=pick(rho, zero),
        expired=np.asarray(expired, dtype=bool),
    )


def black_scholes(spot: Any, strike: Any, years: Any, rate: Any, vol: Any, is_call: Any) -> np.ndarray:
    """Black-Scholes price per unit of underlying (intrinsic at or after expiry)."""
    return black_scholes_greeks(spot, strike, years, rate, vol, is_call).price


def delta_dollars(delta: Any, quantity: Any, spot: Any, multiplier: Any = OPTION_MULTIPLIER) -> np.ndarray:
    """Dollar delta of option positions: Δ × quantity × multiplier × spot.

    The value of underlying the position behaves like (a long put is negative). Divided by
    the portfolio's equity this is the position's delta-adjusted weight (docs/design.md §7).
    """
    return (
        np.asarray(delta, dtype="float64")
        * np.asarray(quantity, dtype="float64")
        * np.asarray(multiplier, dtype="float64")
        * np.asarray(spot, dtype="float64")
    )


def gamma_dollars(gamma: Any, quantity: Any, spot: Any, multiplier: Any = OPTION_MULTIPLIER) -> np.ndarray:
    """Dollar gamma: change of dollar delta for a 1% move of the underlying.

    Γ × quantity × multiplier × spot² / 100. (The P&L of a move of fraction x is about
    dollar delta × x + ½ × gamma_dollars × 100 × x².)
    """
    s = np.asarray(spot, dtype="float64")
    return (
        np.asarray(gamma, dtype="float64")
        * np.asarray(quantity, dtype="float64")
        * np.asarray(multiplier, dtype="float64")
        * s
        * s
        / 100.0
    )
