"""api_tokens.expires_at: tokens expire (issue 12, finding 9)

Tokens made before this revision had no expiry; they get the default lifetime (90 days)
from now, so nothing stops working at once and nothing works for ever by accident.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "api_tokens", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.execute(
        "UPDATE api_tokens SET expires_at = now() + interval '90 days' WHERE revoked_at IS NULL"
    )


def downgrade() -> None:
    op.drop_column("api_tokens", "expires_at")
