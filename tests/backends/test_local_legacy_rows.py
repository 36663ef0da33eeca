"""Deployments recorded before the seam keep working: migration 0008 fills backend, endpoint and
scoring URI, and the local backend still reads their keys from the row's encrypted columns."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, text

from app.backends.base import SlotRef
from app.backends.local import LocalBackend
from app.keyfiles import load_or_create_fernet
from app.migrate import upgrade


def test_a_pre_seam_row_is_migrated_and_its_keys_stay_readable(tmp_path: Path,
                                                                database_url: str) -> None:
    upgrade(database_url, "0007")
    fernet = load_or_create_fernet(tmp_path / "secrets" / "deployment-keys.key")
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO deployments (id, environment, slot, model_name, model_version, "
            "replicas, resources, state, port, traffic, primary_key_enc, secondary_key_enc, "
            "keys_rotated_at, created_at, updated_at) VALUES ('old1', 'prod', 'green', "
            "'german-credit', '2', 1, '{}', 'ACTIVE', 20123, 100, :p, :s, "
            "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"),
            {"p": fernet.encrypt(b"primary-key").decode(),
             "s": fernet.encrypt(b"secondary-key").decode()})
    upgrade(database_url)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT backend, endpoint, scoring_uri FROM deployments "
                                "WHERE id = 'old1'")).one()
    engine.dispose()
    assert tuple(row) == ("local", "prod", "http://127.0.0.1:20123/score")
    backend = LocalBackend(tmp_path, database_url)
    keys = backend.slot_keys(SlotRef("old1", "prod", "prod", "green", "german-credit", "2"))
    assert (keys.primary, keys.secondary) == ("primary-key", "secondary-key")
