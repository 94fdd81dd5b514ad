"""The domain rulebook: pure rules (no I/O) that every layer shares.

* :mod:`libs.common.domain.options`: option multiplier, Black-Scholes price and Greeks.
"""
