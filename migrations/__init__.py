"""The Alembic environment of fxbroker's SQL schema (run it with ``web_service.schema``)."""
