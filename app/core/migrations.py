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
    """`python -m app.core.migrations`: upgrade DATABASE_URL (else the embedded database) to the newest schema."""
    from app.core.embedded_postgres import database_url
    from app.core.settings import get_settings

    upgrade(database_url(get_settings()))


if __name__ == "__main__":
    main()
