"""equity_source, valuation adjustments, delta-adjusted exposures and data quality (issue 9)

portfolios.equity_balance becomes optional (none stated: the first snapshot starts from the
net market value) with equity_source saying which; snapshots record the valuation
adjustment, the exposure basis, the data-quality lists and whether they are degraded (so the
date's batch restates them); position rows record their valuation adjustment, option delta
and expired flag.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONEY = sa.Numeric(precision=24, scale=6)


def upgrade() -> None:
    op.alter_column("portfolios", "equity_balance", existing_type=MONEY, nullable=True)
    op.add_column("portfolios", sa.Column("equity_source", sa.String(length=24), nullable=False,
                                          server_default=sa.text("'stated'")))
    op.add_column("portfolio_snapshots", sa.Column("equity_source", sa.String(length=24)))
    op.add_column("portfolio_snapshots", sa.Column("valuation_adjustment", MONEY))
    op.add_column("portfolio_snapshots", sa.Column("exposure_basis", sa.String(length=16)))
    op.add_column("portfolio_snapshots", sa.Column(
        "data_quality", postgresql.JSONB(astext_type=sa.Text()), nullable=False,
        server_default="{}"))
    op.add_column("portfolio_snapshots", sa.Column(
        "is_degraded", sa.Boolean(), nullable=False, server_default=sa.text("false")))
    op.add_column("position_snapshots", sa.Column(
        "valuation_adjustment", MONEY, nullable=False, server_default=sa.text("0")))
    op.add_column("position_snapshots", sa.Column("delta", sa.Float()))
    op.add_column("position_snapshots", sa.Column(
        "is_expired", sa.Boolean(), nullable=False, server_default=sa.text("false")))


def downgrade() -> None:
    op.drop_column("position_snapshots", "is_expired")
    op.drop_column("position_snapshots", "delta")
    op.drop_column("position_snapshots", "valuation_adjustment")
    for column in ("is_degraded", "data_quality", "exposure_basis", "valuation_adjustment",
                   "equity_source"):
        op.drop_column("portfolio_snapshots", column)
    op.drop_column("portfolios", "equity_source")
    op.execute("UPDATE portfolios SET equity_balance = 0 WHERE equity_balance IS NULL")
    op.alter_column("portfolios", "equity_balance", existing_type=MONEY, nullable=False)
