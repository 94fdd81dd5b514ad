"""analytics: the large per-portfolio arrays as packed little-endian bytes

portfolio_correlations.correlations (float64, upper triangle i < j, row-major),
portfolio_correlations.observations (int32, upper triangle with the diagonal) and
portfolio_stress_results.contributions / factor_moves (float64, scenarios × factors) become
bytea: a 10,000-portfolio date writes ~10M such numbers, and encoding them one by one as SQL
arrays cost more than all of the analytics' math. The rows are derived data recomputed by
the refresh, so the conversion drops existing ones (a re-run of the date writes them again).

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    ("portfolio_correlations", "correlations", "float8[]"),
    ("portfolio_correlations", "observations", "int4[]"),
    ("portfolio_stress_results", "contributions", "float8[]"),
    ("portfolio_stress_results", "factor_moves", "float8[]"),
)


def upgrade() -> None:
    op.execute("DELETE FROM portfolio_correlations")
    op.execute("DELETE FROM portfolio_stress_results")
    for table, column, _ in COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE bytea USING NULL")


def downgrade() -> None:
    op.execute("DELETE FROM portfolio_correlations")
    op.execute("DELETE FROM portfolio_stress_results")
    for table, column, array_type in COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {array_type} USING NULL")
