"""Schema migrations through Alembic, driven from code (no alembic.ini to ship)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

SCRIPT_LOCATION = "zapora:migrations"


def alembic_config(dsn: str) -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    # ConfigParser interpolation would choke on `%` in passwords.
    config.set_main_option("zapora.dsn", dsn.replace("%", "%%"))
    return config


def upgrade(dsn: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(dsn), revision)


def _scripts() -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    return ScriptDirectory.from_config(config)


def head_revision() -> str | None:
    return _scripts().get_current_head()


def known_revisions() -> set[str]:
    """Every revision this release ships; a database at another one was migrated by a newer
    release (expand/contract keeps this release working on it)."""
    return {script.revision for script in _scripts().walk_revisions()}
