"""Portfolio snapshots: the refresh use case and its SQL, shared by portfolio_refresh and the status API."""
