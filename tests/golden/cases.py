"""Golden cases: hand-worked numbers for every rule of issue 9 (docs/design.md §7).

Each case is a portfolio, its positions, the closes and betas it sees, and per snapshot date
what must come out: snapshot money to the cent, position rows, factor exposures (weights to
1e-4, dollars to the cent). The arithmetic is written next to each number. `test_golden.py`
runs them through the refresh's own computation (libs.common.snapshots.refresh.compute_chunk,
the step between loading a chunk and writing it), day after day, each rolling from the one
before as the service does.

A change to any of these numbers is a change of the rules: it must change this file, on
purpose, with its arithmetic.

Pricing inputs for every case: risk-free rate 4%, volatility 20% (no history: the default).
Option days to expiry are calendar days / 365.
"""

from __future__ import annotations

RATE = 0.04
VOLATILITY = 0.20

# Black-Scholes of the SPY options below, S = K = 500, T = 108/365 = 0.295890, r 4%, σ 20%:
#   d1 = (ln(1) + (0.04 + 0.02) × 0.295890) / (0.2 × √0.295890) = 0.017753 / 0.108792 = 0.163187
#   d2 = d1 − 0.108792 = 0.054396;  N(d1) = 0.564815, N(d2) = 0.521690
#   call = 500 × 0.564815 − 500 × e^(−0.011836) × 0.521690 = 24.631302
#   put  = 500 × e^(−0.011836) × 0.478310 − 500 × 0.435185 = 18.748377
#   Δ call = 0.564815, Δ put = −0.435185

CASES: list[dict] = [
    {
        "name": "long put is delta-adjusted (negative market beta), premium kept for P&L",
        "equity_balance": "1000000",
        "positions": [
            {"id": "put", "symbol": "SPY240624P00500000", "quantity": 10, "entry_price": 18.00,
             "entry_date": "2024-03-08", "investment_class": "OPTIONS",
             "underlying_symbol": "SPY", "strike_price": 500, "expiration_date": "2024-06-24",
             "option_type": "PUT"},
        ],
        "prices": {"SPY": {"2024-03-08": 500.00}},
        "betas": {"SPY": {"Market Beta": 1.0}},
        "expect": {
            "2024-03-08": {
                "snapshot": {
                    "equity": "1000000.00",  # stated
                    "equity_source": "stated",
                    "total_value": "18748.38",  # 10 × 100 × 18.748377 (model price)
                    "daily_pnl": "0.00",  # first snapshot
                    "daily_return": "0",
                    "exposure_basis": "equity",
                },
                "positions": {
                    "put": {"market_value": "18748.38", "price_source": "model",
                            "delta": -0.435185},
                },
                "exposures": {
                    # weight = Δ × qty × 100 × S / equity = −0.435185 × 10 × 100 × 500 / 1e6
                    # (premium-weighted it would be +0.0187: the sign was wrong)
                    "Market Beta": {"exposure": -0.217593, "dollars": "-217592.72"},
                },
            },
        },
    },
    {
        "name": "long call, same inputs",
        "equity_balance": "1000000",
        "positions": [
            {"id": "call", "symbol": "SPY240624C00500000", "quantity": 10, "entry_price": 24.00,
             "entry_date": "2024-03-08", "investment_class": "OPTIONS",
             "underlying_symbol": "SPY", "strike_price": 500, "expiration_date": "2024-06-24",
             "option_type": "CALL"},
        ],
        "prices": {"SPY": {"2024-03-08": 500.00}},
        "betas": {"SPY": {"Market Beta": 1.0}},
        "expect": {
            "2024-03-08": {
                "snapshot": {"total_value": "24631.30", "equity": "1000000.00"},
                "positions": {"call": {"market_value": "24631.30", "delta": 0.564815}},
                # 0.564815 × 10 × 100 × 500 / 1e6
                "exposures": {"Market Beta": {"exposure": 0.282407, "dollars": "282407.28"}},
            },
        },
    },
    {
        "name": "no stated equity: starts from the net market value; weights sum to 1",
        "equity_balance": None,
        "positions": [
            {"id": "aapl", "symbol": "AAPL", "quantity": 100, "entry_price": 150.00,
             "entry_date": "2024-03-01"},
            {"id": "msft", "symbol": "MSFT", "quantity": 100, "entry_price": 240.00,
             "entry_date": "2024-03-01"},
        ],
        "prices": {"AAPL": {"2024-03-08": 230.00, "2024-03-11": 232.30},
                   "MSFT": {"2024-03-08": 415.00, "2024-03-11": 419.15}},
        "betas": {"AAPL": {"Market Beta": 1.0}, "MSFT": {"Market Beta": 1.0}},
        "expect": {
            "2024-03-08": {
                "snapshot": {
                    # 100 × 230 + 100 × 415 = 64,500 (not the entry cost 39,000)
                    "equity": "64500.00",
                    "equity_source": "net_market_value",
                    "total_value": "64500.00",
                    "daily_pnl": "0.00",
                },
                # 23,000/64,500 × 1 + 41,500/64,500 × 1 = 1.0 (entry cost gave 1.654)
                "exposures": {"Market Beta": {"exposure": 1.0, "dollars": "64500.00"}},
            },
            "2024-03-11": {
                "snapshot": {
                    # both +1%: 100 × 2.30 + 100 × 4.15 = 645.00; 645 / 64,500 = 1%
                    "daily_pnl": "645.00",
                    "daily_return": "0.01",
                    "equity": "65145.00",
                    "equity_source": "net_market_value",
                },
                "exposures": {"Market Beta": {"exposure": 1.0, "dollars": "65145.00"}},
            },
        },
    },
    {
        "name": "first quote after an entry-price mark is a valuation adjustment, not P&L",
        "equity_balance": "10000",
        "positions": [
            {"id": "new", "symbol": "NEWCO", "quantity": 100, "entry_price": 50.00,
             "entry_date": "2024-03-08"},
            {"id": "old", "symbol": "OLDCO", "quantity": 10, "entry_price": 10.00,
             "entry_date": "2024-03-08"},
        ],
        # NEWCO has no quote until Monday; OLDCO marks the sessions
        "prices": {"NEWCO": {"2024-03-11": 80.00},
                   "OLDCO": {"2024-03-08": 10.00, "2024-03-11": 11.00}},
        "betas": {},
        "expect": {
            "2024-03-08": {
                "snapshot": {"total_value": "5100.00", "equity": "10000.00",  # 100 × 50 + 100
                             "data_quality": {"no_price": ["NEWCO"]}},
                "positions": {"new": {"price_source": "entry", "market_value": "5000.00"}},
            },
            "2024-03-11": {
                "snapshot": {
                    "daily_pnl": "10.00",  # OLDCO only: 10 × (11 − 10)
                    "valuation_adjustment": "3000.00",  # NEWCO 100 × (80 − 50)
                    "equity": "13010.00",  # 10,000 + 10 + 3,000
                    "daily_return": "0.001",  # 10 / 10,000: the re-mark is not a return
                    "data_quality": {"no_price": []},
                },
                "positions": {"new": {"daily_pnl": "0.00", "valuation_adjustment": "3000.00",
                                      "price_source": "market"}},
            },
        },
    },
    {
        "name": "a private exit realizes exit price − carried value",
        "equity_balance": "100000",
        "positions": [
            {"id": "pe", "symbol": "PRIVATE_FUND_A", "quantity": 1, "entry_price": 50000.00,
             "entry_date": "2024-03-01", "exit_date": "2024-03-11", "exit_price": 70000.00,
             "investment_class": "PRIVATE"},
            {"id": "x", "symbol": "OLDCO", "quantity": 1, "entry_price": 10.00,
             "entry_date": "2024-03-01"},
        ],
        "prices": {"OLDCO": {"2024-03-08": 10.00, "2024-03-11": 10.00}},
        "betas": {},
        "expect": {
            "2024-03-08": {"snapshot": {"total_value": "50010.00", "daily_pnl": "0.00"}},
            "2024-03-11": {
                "snapshot": {
                    "daily_realized_pnl": "20000.00",  # 1 × (70,000 − 50,000)
                    "daily_pnl": "20000.00",
                    "equity": "120000.00",
                    "total_value": "10.00",
                },
                "positions": {"pe": {"realized_pnl": "20000.00", "market_value": "0.00"}},
            },
        },
    },
    {
        "name": "an explicit PUBLIC class beats the name heuristic (REIT is a ticker)",
        "equity_balance": "1000",
        "positions": [
            {"id": "reit", "symbol": "REIT", "quantity": 10, "entry_price": 20.00,
             "entry_date": "2024-03-08", "investment_class": "PUBLIC"},
        ],
        "prices": {"REIT": {"2024-03-08": 21.00, "2024-03-11": 22.50}},
        "betas": {"REIT": {"Market Beta": 0.8}},
        "expect": {
            "2024-03-11": {
                "snapshot": {"daily_pnl": "15.00"},  # 10 × (22.50 − 21.00); carried gave 0
                "positions": {"reit": {"price_source": "market", "market_value": "225.00"}},
                # 0.8 × 225 / 1,015
                "exposures": {"Market Beta": {"exposure": 0.177340, "dollars": "180.00"}},
            },
        },
    },
    {
        "name": "weekend entry: day one is the first session on or after entry",
        "equity_balance": "100000",
        "positions": [
            {"id": "base", "symbol": "OLDCO", "quantity": 1, "entry_price": 10.00,
             "entry_date": "2024-03-01"},
            {"id": "sat", "symbol": "SPY", "quantity": 10, "entry_price": 400.00,
             "entry_date": "2024-03-09"},  # a Saturday
        ],
        "prices": {"OLDCO": {"2024-03-08": 10.00, "2024-03-11": 10.00},
                   "SPY": {"2024-03-08": 400.00, "2024-03-11": 420.00}},
        "betas": {},
        "expect": {
            "2024-03-08": {"snapshot": {"total_value": "10.00"}},
            "2024-03-11": {
                # Monday is SPY's day one: P&L 0 (measuring from Friday's 400 gave +200)
                "snapshot": {"daily_pnl": "0.00", "total_value": "4210.00"},
                "positions": {"sat": {"daily_pnl": "0.00", "market_value": "4200.00"}},
            },
        },
    },
    {
        "name": "equity_prev ≤ 0: return null, weights against gross exposure",
        "equity_balance": "1000",
        "previous": {"snapshot_date": "2024-03-08", "equity": "-1000.00",
                     "cumulative_pnl": "-2000.00"},
        "positions": [
            {"id": "long", "symbol": "AAA", "quantity": 100, "entry_price": 10.00,
             "entry_date": "2024-03-01"},
            {"id": "short", "symbol": "BBB", "quantity": -100, "entry_price": 12.00,
             "entry_date": "2024-03-01"},
        ],
        "prices": {"AAA": {"2024-03-08": 10.00, "2024-03-11": 11.00},
                   "BBB": {"2024-03-08": 12.00, "2024-03-11": 12.00}},
        "betas": {"AAA": {"Market Beta": 1.0}, "BBB": {"Market Beta": 1.0}},
        "expect": {
            "2024-03-11": {
                "snapshot": {
                    "daily_pnl": "100.00",  # 100 × (11 − 10)
                    "equity": "-900.00",
                    "daily_return": None,  # 100 / −1,000 would read −10%
                    "exposure_basis": "gross_exposure",
                    "gross_exposure": "2300.00",  # 1,100 + 1,200
                },
                # (1,100 − 1,200) / 2,300 × 1 — no sign flip from a negative equity
                "exposures": {"Market Beta": {"exposure": -0.043478, "dollars": "-100.00"}},
            },
        },
    },
    {
        "name": "position rows add up to the snapshot to the cent",
        "equity_balance": "1000",
        "positions": [
            {"id": f"lot{i}", "symbol": "AAA", "quantity": 0.5, "entry_price": 10.00,
             "entry_date": "2024-03-01"} for i in (1, 2, 3)
        ],
        "prices": {"AAA": {"2024-03-08": 10.00, "2024-03-11": 10.01}},
        "betas": {},
        "expect": {
            "2024-03-11": {
                # exact 3 × 0.5 × 0.01 = 0.015 → 0.02; the lots get 0.01 + 0.01 + 0.00
                # (largest remainder, ties to the first rows), not 0.01 each (= 0.03)
                "snapshot": {"daily_pnl": "0.02", "total_value": "15.02"},  # 15.015 → 15.02
                "positions": {"lot1": {"daily_pnl": "0.01", "market_value": "5.01"},
                              "lot2": {"daily_pnl": "0.01", "market_value": "5.01"},
                              "lot3": {"daily_pnl": "0.00", "market_value": "5.00"}},
            },
        },
    },
    {
        "name": "symbols without a price or betas are listed on the snapshot",
        "equity_balance": "10000",
        "positions": [
            {"id": "nobeta", "symbol": "NOBETA", "quantity": 10, "entry_price": 10.00,
             "entry_date": "2024-03-01"},
            {"id": "nopx", "symbol": "NOPX", "quantity": 10, "entry_price": 5.00,
             "entry_date": "2024-03-01"},
            {"id": "spy", "symbol": "SPY", "quantity": 1, "entry_price": 500.00,
             "entry_date": "2024-03-01"},
        ],
        "prices": {"NOBETA": {"2024-03-08": 10.00}, "SPY": {"2024-03-08": 500.00}},
        "betas": {"SPY": {"Market Beta": 1.0}},
        "expect": {
            "2024-03-08": {
                "snapshot": {
                    "total_value": "650.00",  # 100 + 50 (NOPX at entry) + 500
                    "data_quality": {"no_price": ["NOPX"], "no_betas": ["NOBETA", "NOPX"]},
                    "is_degraded": True,
                },
                "exposures": {"Market Beta": {"exposure": 0.05, "dollars": "500.00"}},
            },
        },
    },
    {
        "name": "an expired option is worth its intrinsic value at the expiry close, frozen",
        "equity_balance": "100000",
        "positions": [
            {"id": "exp", "symbol": "SPY240621C00500000", "quantity": 10, "entry_price": 12.00,
             "entry_date": "2024-03-01", "investment_class": "OPTIONS",
             "underlying_symbol": "SPY", "strike_price": 500, "expiration_date": "2024-06-21",
             "option_type": "CALL"},
        ],
        "prices": {"SPY": {"2024-06-21": 520.00, "2024-06-28": 530.00, "2024-07-01": 540.00}},
        "betas": {"SPY": {"Market Beta": 1.0}},
        "expect": {
            "2024-06-28": {
                "snapshot": {"total_value": "20000.00",  # 10 × 100 × (520 − 500)
                             "data_quality": {"expired_options": ["SPY240621C00500000"]}},
                "positions": {"exp": {"market_value": "20000.00", "delta": 0.0,
                                      "is_expired": True}},
                "exposures": {"Market Beta": {"exposure": 0.0, "dollars": "0.00"}},
            },
            "2024-07-01": {
                # frozen: SPY at 540 changes nothing
                "snapshot": {"total_value": "20000.00", "daily_pnl": "0.00"},
                "positions": {"exp": {"market_value": "20000.00", "is_expired": True}},
            },
        },
    },
    {
        "name": "an option expired before any stored close: first later close stands in, stale",
        "equity_balance": "100000",
        "positions": [
            {"id": "old", "symbol": "SPY240621P00600000", "quantity": -2, "entry_price": 30.00,
             "entry_date": "2024-03-01", "investment_class": "OPTIONS",
             "underlying_symbol": "SPY", "strike_price": 600, "expiration_date": "2024-06-21",
             "option_type": "PUT"},
        ],
        # the fetched history starts after the expiry (the template's options of 2024)
        "prices": {"SPY": {"2024-07-01": 540.00, "2024-07-02": 545.00}},
        "betas": {},
        "expect": {
            "2024-07-01": {
                "snapshot": {"total_value": "-12000.00",  # −2 × 100 × (600 − 540)
                             "data_quality": {"expired_options": ["SPY240621P00600000"],
                                              "stale_price": ["SPY"]}},
                "positions": {"old": {"is_expired": True, "delta": 0.0}},
            },
            "2024-07-02": {
                "snapshot": {"total_value": "-12000.00", "daily_pnl": "0.00"},  # frozen
            },
        },
    },
]
