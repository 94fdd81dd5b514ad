"""Risk analytics of portfolios (DESIGN §10): pure, vectorised across a chunk, no I/O.

`risk` (holdings-based return series, volatility, beta, concentration, sectors),
`correlation` (pairwise-complete, PSD-repaired matrices and their summary), `stress`
(factor-shock and historical scenarios), `scenarios` (the seeded scenario set and how the
historical replays were derived), `chunk` (one call computing all of them for the positions
a refresh valued). Windows, λ, thresholds and the rates duration are stated where defined.
"""
