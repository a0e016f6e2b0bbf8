"""The SQL schema: users, their API tokens and client credentials, functions, endpoints, task
groups and sharing.

SQL holds what is durable and written rarely; tasks never touch it (they live in Redis).
The ``MetaData`` carries a naming convention so Alembic migrations get stable constraint
names on every database. Ids are uuid4 strings, except a function's, which is
:func:`function_id_for` (owner, code hash): the same code by the same user has one id.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

ID_LENGTH = 36
"""Length of a uuid in its canonical text form."""
CREDENTIAL_PREFIX_LENGTH = 12
"""How many first characters of an endpoint credential SQL keeps, to name it."""


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


def code_hash(code: str) -> str:
    """The sha256 hex digest of a serialized function."""
    return hashlib.sha256(code.encode()).hexdigest()


def function_id_for(owner_id: str, code_sha256: str) -> str:
    """The deterministic id of a function: uuid5 in the owner's namespace of its code hash."""
    return str(uuid.uuid5(uuid.UUID(owner_id), code_sha256))


def unix_seconds(moment: datetime) -> float:
    """``moment`` as Unix seconds; a naive value (SQLite drops the zone) is read as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


class Base(DeclarativeBase):
    metadata = metadata


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    identity_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), unique=True, nullable=True)
    """The Globus identity (``sub``) of a user created on first sight of it; else None."""


class ClientCredential(Base):
    """An OAuth2 client id and secret of a user (the secret stored only as its sha256): a
    script exchanges them at ``POST /v2/oauth2/token`` for an access token that expires.
    Revoking it revokes the tokens it was exchanged for."""

    __tablename__ = "client_credentials"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Token(Base):
    """An API token, stored only as its sha256; ``prefix`` is its first 8 characters.

    A token exchanged for a client credential names it in ``client_id`` and stops working
    at ``expires_at``; one issued by ``fxbroker user`` has neither."""

    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(8), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    client_id: Mapped[str | None] = mapped_column(
        ForeignKey("client_credentials.id", ondelete="CASCADE"), index=True, nullable=True
    )
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Function(Base):
    """A registered function. A deleted one keeps its row (queued tasks still need the code)."""

    __tablename__ = "functions"
    __table_args__ = (UniqueConstraint("owner_id", "code_hash"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(Text, default="")
    code: Mapped[str] = mapped_column(Text)
    code_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    public: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Endpoint(Base):
    """An endpoint. A deleted one keeps its row: registering its name again revives it.

    Its live credential, if any, is kept only as its sha256 and its first characters (to
    name it); rotating replaces all three, revoking or deleting the endpoint clears them."""

    __tablename__ = "endpoints"
    __table_args__ = (UniqueConstraint("owner_id", "name"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    credential_hash: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    credential_prefix: Mapped[str | None] = mapped_column(
        String(CREDENTIAL_PREFIX_LENGTH), nullable=True
    )
    credential_issued_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )


class TaskGroup(Base):
    __tablename__ = "task_groups"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FunctionShare(Base):
    """``user_id`` may read and run ``function_id``."""

    __tablename__ = "function_shares"

    function_id: Mapped[str] = mapped_column(
        ForeignKey("functions.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class EndpointShare(Base):
    """``user_id`` may read ``endpoint_id`` and submit tasks to it."""

    __tablename__ = "endpoint_shares"

    endpoint_id: Mapped[str] = mapped_column(
        ForeignKey("endpoints.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class EndpointAllowedFunction(Base):
    """One entry of an endpoint's allow-list; an endpoint without entries runs any function.

    ``function_id`` is not a foreign key: the owner may list a function before it is shared."""

    __tablename__ = "endpoint_allowed_functions"

    endpoint_id: Mapped[str] = mapped_column(
        ForeignKey("endpoints.id", ondelete="CASCADE"), primary_key=True
    )
    function_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)


def is_id(text: str) -> bool:
    """True if ``text`` is a uuid in canonical form (what every id here is)."""
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False
