"""portfolios.account_name / account_type: the web frontend's account of a portfolio

The SigmaSight frontend creates a portfolio with an account name (unique per user, the
"duplicate account" 409) and an account type. Both are optional: portfolios uploaded through
sigmabatch's own `POST /api/v1/portfolios` have none.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("portfolios", sa.Column("account_name", sa.String(length=100), nullable=True))
    op.add_column("portfolios", sa.Column("account_type", sa.String(length=16), nullable=True))
    op.create_index(
        "uq_portfolios_user_account_name", "portfolios", ["user_id", "account_name"],
        unique=True, postgresql_where=sa.text("account_name IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("uq_portfolios_user_account_name", table_name="portfolios")
    op.drop_column("portfolios", "account_type")
    op.drop_column("portfolios", "account_name")
