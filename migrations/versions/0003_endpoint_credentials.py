"""Endpoint credentials: each endpoint's live credential, kept as its sha256 and first
characters, with the moment it was issued.

The columns are nullable: endpoints registered under 0002 have no credential until their
owner rotates one (``POST /v1/endpoints/{id}/credential``).

Revision ID: 0003_endpoint_credentials
Revises: 0002_sharing
Create Date: 2026-12-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_endpoint_credentials"
down_revision: str | None = "0002_sharing"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("credential_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("credential_prefix", sa.String(length=12), nullable=True))
        batch.add_column(
            sa.Column("credential_issued_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch.create_unique_constraint(op.f("uq_endpoints_credential_hash"), ["credential_hash"])


def downgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_constraint(op.f("uq_endpoints_credential_hash"), type_="unique")
        batch.drop_column("credential_issued_at")
        batch.drop_column("credential_prefix")
        batch.drop_column("credential_hash")
