"""docs/operations.md, "Backup and restore": a stopped home and its PostgreSQL database are
backed up with tar and pg_dump exactly as documented, restored into another folder (the one
backed up is gone) and an empty database; the restored stack scores as before, and a new
pipeline run trains, registers and deploys inside the new folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.conftest import PG_ADMIN_URL
from tests.e2e.test_restart_ports import _stop, _up, slots_ready
from tests.e2e.test_whole_stack import _modelgate
from tests.support import wait_for


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{argv[0]}: {done.stderr}"


def _libpq(url: str) -> str:
    """The database URL as pg_dump takes it (no SQLAlchemy driver suffix)."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def test_backup_restore_into_a_fresh_home_and_database_then_score(
        tmp_path: Path, postgres_url: str) -> None:
    home = tmp_path / "instance"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATE_")}
    env["MODELGATE_HOME"] = str(home)
    env["MODELGATE_DATABASE_URL"] = postgres_url
    pipeline_file = tmp_path / "pipeline.yml"
    pipeline_file.write_text("model:\n  importance_repeats: 1\n")
    env["MODELGATE_PIPELINE_CONFIG"] = str(pipeline_file)

    up, _ = _up(env, home)
    try:
        run = _modelgate(env, "pipeline", "run", timeout=900)
        assert run.returncode == 0, run.stdout + run.stderr
        before = _modelgate(env, "score")
        assert before.returncode == 0, before.stdout + before.stderr
    finally:
        _stop(up)

    # back up (the stack is stopped): the home without run/ and endpoints.json, the database
    archive, dump = tmp_path / "modelgate-home.tar.gz", tmp_path / "modelgate.pgdump"
    _run("tar", "-C", str(home), "--exclude=./run", "--exclude=./endpoints.json",
         "-czf", str(archive), ".")
    _run("pg_dump", "--format=custom", f"--file={dump}", _libpq(postgres_url))

    # lose both
    shutil.rmtree(home)
    name = postgres_url.rsplit("/", 1)[1]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()

    # restore into another folder and the empty database
    restored = tmp_path / "restored home"
    restored.mkdir()
    _run("tar", "-C", str(restored), "-xzf", str(archive))
    _run("pg_restore", "--no-owner", f"--dbname={_libpq(postgres_url)}", str(dump))
    env["MODELGATE_HOME"] = str(restored)
    runs_before = set((restored / "mlflow" / "artifacts").iterdir())

    up, _ = _up(env, restored)
    try:
        wait_for(lambda: slots_ready(restored), 120, "the restored slots to serve")
        scored = _modelgate(env, "score")
        assert scored.returncode == 0, scored.stdout + scored.stderr
        assert (json.loads(scored.stdout)["predictions"]
                == json.loads(before.stdout)["predictions"])
        # The restored registry works where it now is: a new run is logged, registered,
        # deployed and scored, its artifacts inside the restored folder.
        run = _modelgate(env, "pipeline", "run", timeout=900)
        assert run.returncode == 0, run.stdout + run.stderr
        assert set((restored / "mlflow" / "artifacts").iterdir()) > runs_before
        assert not home.exists(), "the new run wrote into the folder that was backed up"
        again = _modelgate(env, "score")
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        _stop(up)
