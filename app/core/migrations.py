"""Applies the Alembic migrations to a database (the schema changes only through them)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

ALEMBIC_INI = Path(__file__).resolve().parents[2] / "alembic.ini"


def upgrade(database_url: str, revision: str = "head") -> None:
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    command.upgrade(config, revision)


def main() -> None:
    """`python -m app.core.migrations`: upgrade DATABASE_URL to the newest schema."""
    from app.core.settings import get_settings

    url = get_settings().database_url
    if not url:
        raise SystemExit("DATABASE_URL is not set")
    upgrade(url)


if __name__ == "__main__":
    main()
