"""Alembic environment: the URL comes from the caller's config or the service's settings."""

from alembic import context
from sqlalchemy import create_engine

from app.core.database import sqlalchemy_url
from app.core.settings import get_settings
from app.data.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url") or get_settings().database_url
if not url:
    raise SystemExit("DATABASE_URL is not set")

engine = create_engine(sqlalchemy_url(url))
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
