"""Sharing and deletion: shares of functions and endpoints, allow-lists, public functions,
soft-deleted functions and endpoints, and the Globus identity of a user.

Every new column is nullable or has a server default, so rows written under 0001 stay valid.

Revision ID: 0002_sharing
Revises: 0001_initial
Create Date: 2026-02-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_sharing"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.String(length=36)
_WHEN = sa.DateTime(timezone=True)


def _fk(table: str, column: str, referred: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column],
        [f"{referred}.id"],
        name=op.f(f"fk_{table}_{column}_{referred}"),
        ondelete="CASCADE",
    )


def _share_table(table: str, column: str, referred: str) -> None:
    op.create_table(
        table,
        sa.Column(column, _ID, nullable=False),
        sa.Column("user_id", _ID, nullable=False),
        _fk(table, column, referred),
        _fk(table, "user_id", "users"),
        sa.PrimaryKeyConstraint(column, "user_id", name=op.f(f"pk_{table}")),
    )
    op.create_index(op.f(f"ix_{table}_user_id"), table, ["user_id"])


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("identity_id", _ID, nullable=True))
        batch.create_unique_constraint(op.f("uq_users_identity_id"), ["identity_id"])
    with op.batch_alter_table("functions") as batch:
        batch.add_column(
            sa.Column("public", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch.add_column(sa.Column("deleted_at", _WHEN, nullable=True))
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("deleted_at", _WHEN, nullable=True))
    _share_table("function_shares", "function_id", "functions")
    _share_table("endpoint_shares", "endpoint_id", "endpoints")
    op.create_table(
        "endpoint_allowed_functions",
        sa.Column("endpoint_id", _ID, nullable=False),
        sa.Column("function_id", _ID, nullable=False),
        _fk("endpoint_allowed_functions", "endpoint_id", "endpoints"),
        sa.PrimaryKeyConstraint(
            "endpoint_id", "function_id", name=op.f("pk_endpoint_allowed_functions")
        ),
    )


def downgrade() -> None:
    op.drop_table("endpoint_allowed_functions")
    for table in ("endpoint_shares", "function_shares"):
        op.drop_index(op.f(f"ix_{table}_user_id"), table_name=table)
        op.drop_table(table)
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_column("deleted_at")
    with op.batch_alter_table("functions") as batch:
        batch.drop_column("deleted_at")
        batch.drop_column("public")
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint(op.f("uq_users_identity_id"), type_="unique")
        batch.drop_column("identity_id")
