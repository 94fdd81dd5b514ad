"""Rebuild ``sample_prices.csv.gz``, the offline price history of the ``sample`` provider.

The file is a plain subset of the real adjusted closes in ``shared/fixtures/prices`` (facts,
shipped as is, original column names): every ticker of both fixture files from 2014-01-02, the
first session the factor ETFs have, to 2022-12-28, the last one. Proxy mapping (SP500 -> SPY
and so on) is the provider's business, not the file's, so the data stays verifiable against
its source.

    .venv/bin/python -m libs.common.data.build_sample_prices [path/to/shared/fixtures/prices]
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "sample_prices.csv.gz"
DEFAULT_SOURCE = HERE.parents[2].parent / "shared" / "fixtures" / "prices"
FIRST_DATE = "2014-01-02"


def build(source: Path, output: Path = OUTPUT) -> pd.DataFrame:
    stocks = pd.read_csv(source / "sp500_stocks_and_index_daily.csv", index_col="date")
    etfs = pd.read_csv(source / "factor_etfs_daily.csv", index_col="date")
    frame = stocks.join(etfs, how="outer").sort_index().loc[FIRST_DATE:]
    frame.to_csv(output, float_format="%.4f", compression={"method": "gzip", "mtime": 0})
    return frame


if __name__ == "__main__":
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE
    built = build(src)
    print(f"wrote {OUTPUT} ({built.shape[0]} sessions x {built.shape[1]} tickers)")
