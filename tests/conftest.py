"""Shared fixtures: the panel app on SQLite or PostgreSQL, a real Redis, signed-in clients."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.support import ROOT, RedisServer

PG_ADMIN_URL = os.environ.get("MODELGATE_TEST_PG_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")

USERS: dict[str, list[str]] = {
    "alice": ["MLOps.Engineer", "Score.Invoke"],
    "bob": ["MLOps.Approver", "Score.Invoke"],
    "carol": ["Score.Invoke"],
    "dave": ["MLOps.Admin", "Score.Invoke"],
    "erin": [],
}


_TREE_BEFORE = pytest.StashKey[set[str]]()


def _tree_changes() -> set[str] | None:
    """`git status` lines of the work tree (None outside a git checkout)."""
    try:
        done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return set(done.stdout.splitlines()) if done.returncode == 0 else None


def pytest_sessionstart(session: pytest.Session) -> None:
    before = _tree_changes()
    if before is not None:
        session.config.stash[_TREE_BEFORE] = before


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when the tests changed the work tree (tracked files or new files)."""
    before = session.config.stash.get(_TREE_BEFORE, None)
    after = _tree_changes()
    if before is None or after is None:
        return
    new = sorted(after - before)
    if new:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("the tests changed the work tree: " + ", ".join(new), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server of this test's own."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_available() -> bool:
    try:
        with create_engine(PG_ADMIN_URL).connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


@pytest.fixture
def postgres_url(pg_available: bool) -> Iterator[str]:
    """A fresh PostgreSQL database for this test, dropped afterwards."""
    if not pg_available:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}")
        pytest.skip("PostgreSQL is not reachable")
    name = f"modelgate_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs against SQLite and against PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'modelgate.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'modelgate.db'}"


def build_app(home: Path, database_url: str, redis_url: str, **overrides: Any) -> Any:
    """Create the panel app for tests and migrate its database."""
    from app import create_app
    from app.migrate import upgrade

    app = create_app({"TESTING": True, "HOME": str(home), "DATABASE_URL": database_url,
                      "REDIS_URL": redis_url, **overrides})
    upgrade(database_url)
    return app


def sign_in(client: Any, username: str, roles: list[str] | None = None) -> None:
    """Open a server-side session for a user and put it in the client's cookie, as the sign-in
    callback does, but without the identity provider.

    Such a session has no tokens behind it, so its roles could not be re-checked: they are
    marked checked a day ahead, so that long module-scoped tests keep their user. Tests of the
    re-check sign in through the real issuer (tests/auth/test_sessions.py).
    """
    from app.auth.sessions import SID_KEY, session_store
    from app.auth.users import User

    user = User(id=f"oid-{username}", name=username.title(), username=username,
                roles=frozenset(USERS[username] if roles is None else roles))
    store = session_store(client.application)
    session_id = store.create(user, roles_checked_at=time.time() + 86400)
    with client.session_transaction() as session:
        session[SID_KEY] = session_id
        session["_user_id"] = user.id
        session["_fresh"] = True


def csrf_headers(client: Any) -> dict[str, str]:
    """Read the CSRF token from a rendered page, as the pages' own fetch calls do."""
    import re

    page = client.get("/").get_data(as_text=True)
    match = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert match, "no CSRF token on the dashboard"
    return {"X-CSRFToken": match.group(1)}
