"""A home restored into another folder: point MLflow's store at the artifacts where they are now.

MLflow's SQLite store (``MODELGATE_HOME/mlflow/mlflow.db``) records every location as an
absolute path: the experiment's artifact root (``file:///<home>/mlflow/artifacts``), each run's
and logged model's artifact URI, each model version's storage location. A home backed up and
restored into another folder would go on reading its registered models from, and writing new
runs into, the folder it was backed up from. ``relocate`` finds that folder from the
experiments' artifact roots and rewrites every stored value under it to the same place under
the current home. It is idempotent and cheap when nothing moved, so it runs at every start of
``modelgate up`` and of ``modelgate worker`` (the process that logs new runs).

Everything else in a home is found relative to it (model packages in ``models/``, slots,
gateway configuration), and a store behind a tracking server (``mlflow.tracking_uri``) is
not in the home at all.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

STORE = Path("mlflow") / "mlflow.db"
ARTIFACTS = ("mlflow", "artifacts")  # the artifact root under a home (ModelRegistry.for_home)
LOCK_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Relocation:
    """One earlier home whose stored locations now point into the current home."""

    old: Path
    new: Path
    values: int  # stored values rewritten

    def describe(self) -> str:
        return (f"MLflow's store was made in {self.old}: {self.values} artifact locations "
                f"now point into {self.new}")


def relocate(home: str | Path) -> list[Relocation]:
    """Rewrite the store's locations under an earlier home to the current home.

    Returns one Relocation per earlier home found (none when the home never moved, or has no
    MLflow store yet). Raises sqlite3.Error when the store cannot be read or written.
    """
    home = Path(home).resolve()
    store = home / STORE
    if not store.is_file():
        return []
    done = []
    with contextlib.closing(sqlite3.connect(store, timeout=LOCK_TIMEOUT_SECONDS)) as conn:
        with conn:  # one transaction: a store is moved entirely or not at all
            for old in _earlier_homes(conn, home):
                done.append(Relocation(old, home, _rewrite(conn, old, home)))
    return done


def _earlier_homes(conn: sqlite3.Connection, home: Path) -> list[Path]:
    """Homes other than `home` that an experiment's artifact root lies in."""
    try:
        rows = conn.execute("SELECT artifact_location FROM experiments").fetchall()
    except sqlite3.OperationalError:  # a store MLflow has not initialised yet
        return []
    found: set[Path] = set()
    for (location,) in rows:
        if not isinstance(location, str) or not location.startswith("file:"):
            continue
        path = Path(unquote(urlsplit(location).path))
        if path.parts[-len(ARTIFACTS):] == ARTIFACTS and path.parent.parent != home:
            found.add(path.parent.parent)
    return sorted(found)


def _rewrite(conn: sqlite3.Connection, old: Path, new: Path) -> int:
    """Replace `old` by `new` at the start of every text value of every table.

    Every table, not a list of columns: MLflow adds tables that hold locations from release
    to release (logged models, workspaces, trace archives). A value is rewritten only when it
    is the old home itself or lies under it, as a `file:` URI or as a plain path.
    """
    prefixes = [(old.as_uri(), new.as_uri()), (str(old), str(new))]
    changed = 0
    tables = [name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    for table in tables:
        columns = [row[1] for row in conn.execute(f"PRAGMA table_info({_quote(table)})")]
        for column in columns:
            col = _quote(column)
            for before, after in prefixes:
                cursor = conn.execute(
                    f"UPDATE {_quote(table)} SET {col} = ? || substr({col}, ?) "
                    f"WHERE typeof({col}) = 'text' AND ({col} = ? OR substr({col}, 1, ?) = ?)",
                    (after, len(before) + 1, before, len(before) + 1, before + "/"))
                changed += max(cursor.rowcount, 0)
    return changed


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
