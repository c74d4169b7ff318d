"""A storage URL's form checked without SQLAlchemy or Optuna (a second to import), so a typo is refused at once.

Only what is certain from the text is refused here: no `dialect[+driver]://` form, or a dialect SQLAlchemy
does not ship (nor any installed plugin registers); drivers and servers are checked when connecting
(`gemkr_lab.sweep.study.open_storage`), with the same wording.
"""

import importlib.util
import re
from importlib.metadata import entry_points
from pathlib import Path

from gemkr_lab.config.experiment import ConfigError

_FORM = re.compile(r"(?P<dialect>[A-Za-z][A-Za-z0-9_]*)(\+[A-Za-z0-9_]+)?://")
_ALIASES = {"postgres": "postgresql", "mariadb": "mysql"}  # SQLAlchemy's own aliases, in a dialect's folder


def check_storage_url(url: str, outcome: str = "nothing was started") -> None:
    """Refuse a storage URL that cannot name a database SQLAlchemy knows (the password is never shown)."""
    form = _FORM.match(url)
    if form is None:
        raise ConfigError(
            "the storage is not a database URL (not shown: it may hold a password); "
            f"use e.g. postgresql+psycopg2://USER:PASSWORD@HOST:5432/DB; {outcome}"
        )
    dialect = form["dialect"].lower()
    if dialect not in _known_dialects():
        raise ConfigError(
            f"storage {form[0]}...: names a database type SQLAlchemy does not know; "
            f"use e.g. postgresql+psycopg2://USER@HOST/DB; {outcome}"
        )


def _known_dialects() -> set[str]:
    spec = importlib.util.find_spec("sqlalchemy")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return set()
    folders = {p.name for loc in spec.submodule_search_locations for p in (Path(loc) / "dialects").iterdir()}
    plugins = {e.name.split(".")[0] for e in entry_points(group="sqlalchemy.dialects")}
    return {d for d in folders if not d.startswith("_")} | plugins | {a for a, d in _ALIASES.items() if d in folders}
