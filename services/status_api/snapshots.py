"""The in-process first snapshot of a `v2_instant` upload (portfolio_refresh's use case)."""
