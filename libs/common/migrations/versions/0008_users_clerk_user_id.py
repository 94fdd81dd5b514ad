"""users.clerk_user_id: web-frontend users signed in with Clerk (issue 16)

A verified Clerk session token's `sub` names one sigmabatch user; the unique constraint makes
concurrent first sign-ins converge on one row (libs/common/clerk.py).

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("clerk_user_id", sa.String(length=200), nullable=True))
    op.create_unique_constraint("users_clerk_user_id_key", "users", ["clerk_user_id"])


def downgrade() -> None:
    op.drop_constraint("users_clerk_user_id_key", "users", type_="unique")
    op.drop_column("users", "clerk_user_id")
