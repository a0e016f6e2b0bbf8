"""Client credentials: an OAuth2 client id and hashed secret per row, exchanged for access
tokens that expire (the Globus Compute SDK's client-credentials login).

``tokens`` gains ``client_id`` (the credential a token was exchanged for; revoking it revokes
them) and ``expires_at``; both are nullable, so tokens written before stay valid forever.

Revision ID: 0004_client_credentials
Revises: 0003_endpoint_credentials
Create Date: 2026-12-01 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_client_credentials"
down_revision: str | None = "0003_endpoint_credentials"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.String(length=36)
_WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "client_credentials",
        sa.Column("id", _ID, nullable=False),
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.Column("revoked_at", _WHEN, nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_client_credentials_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_client_credentials")),
    )
    op.create_index(
        op.f("ix_client_credentials_user_id"), "client_credentials", ["user_id"], unique=False
    )
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("client_id", _ID, nullable=True))
        batch.add_column(sa.Column("expires_at", _WHEN, nullable=True))
        batch.create_index(batch.f("ix_tokens_client_id"), ["client_id"], unique=False)
        batch.create_foreign_key(
            batch.f("fk_tokens_client_id_client_credentials"),
            "client_credentials",
            ["client_id"],
            ["id"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.drop_constraint(batch.f("fk_tokens_client_id_client_credentials"), type_="foreignkey")
        batch.drop_index(batch.f("ix_tokens_client_id"))
        batch.drop_column("expires_at")
        batch.drop_column("client_id")
    op.drop_index(op.f("ix_client_credentials_user_id"), table_name="client_credentials")
    op.drop_table("client_credentials")
