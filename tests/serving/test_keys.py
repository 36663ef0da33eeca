"""Key generation, the digest-only keys file, and constant-time checks of both keys."""

from __future__ import annotations

import hmac
import json
import os
import stat
from pathlib import Path

import pytest

from app.serving import keys as keys_module
from app.serving.keys import (
    KeyStore,
    extract_bearer,
    generate_keys,
    key_digest,
    write_keys_file,
)


def test_generated_keys_are_256_bit_urlsafe_and_distinct() -> None:
    primary, secondary = generate_keys()
    assert primary != secondary
    for key in (primary, secondary):
        assert len(key) >= 43  # 32 random bytes in URL-safe base64
        assert key.isascii() and all(c.isalnum() or c in "-_" for c in key)


def test_keys_file_holds_only_digests_with_mode_0600(tmp_path: Path) -> None:
    primary, secondary = generate_keys()
    path = tmp_path / "keys.json"
    write_keys_file(path, primary, secondary)
    text = path.read_text()
    assert primary not in text and secondary not in text
    assert json.loads(text) == {
        "primary_sha256": key_digest(primary),
        "secondary_sha256": key_digest(secondary),
    }
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["keys.json"]  # no temp file left behind


@pytest.fixture()
def store(tmp_path: Path) -> tuple[KeyStore, str, str]:
    """A KeyStore over a fresh keys file."""
    primary, secondary = generate_keys()
    write_keys_file(tmp_path / "keys.json", primary, secondary)
    return KeyStore(tmp_path / "keys.json"), primary, secondary


def test_both_keys_accepted_and_near_misses_rejected(store: tuple[KeyStore, str, str]) -> None:
    keys, primary, secondary = store
    assert keys.check_header(f"Bearer {primary}")
    assert keys.check_header(f"Bearer {secondary}")
    assert keys.check_header(f"bearer {primary}")  # the auth scheme is case-insensitive
    for header in (
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Basic {primary}",
        primary,
        f"Bearer {primary[:-1]}",
        f"Bearer {primary}x",
        f"Bearer {primary[:10]}",
        "Bearer wrong",
        f"Bearer {primary}é",
        "Bearer ключ",
        "Bearer \x00",
        "Bearer " + "a" * 10_000,
    ):
        assert not keys.check_header(header), header


def test_non_ascii_key_is_rejected_without_error() -> None:
    assert extract_bearer("Bearer pässword") is None
    assert extract_bearer("Bearer \udcff") is None


def test_both_digests_are_compared_every_time(
    store: tuple[KeyStore, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    keys, primary, secondary = store
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys_module.hmac, "compare_digest", spy)
    for presented in (primary, secondary, "wrong"):
        calls.clear()
        keys.check_header(f"Bearer {presented}")
        # Two digest comparisons (never the plaintext), whichever key matched.
        assert len(calls) == 2
        assert all(isinstance(a, bytes) and len(a) == 32 == len(b) for a, b in calls)


def test_rewritten_file_takes_effect_and_old_keys_fail(store: tuple[KeyStore, str, str]) -> None:
    keys, primary, secondary = store
    new_primary, new_secondary = generate_keys()
    write_keys_file(keys.path, new_primary, new_secondary)
    assert not keys.check_header(f"Bearer {primary}")
    assert not keys.check_header(f"Bearer {secondary}")
    assert keys.check_header(f"Bearer {new_primary}")
    assert keys.check_header(f"Bearer {new_secondary}")


def test_rotation_order_keeps_one_key_valid(store: tuple[KeyStore, str, str]) -> None:
    keys, primary, _ = store
    # regenerate secondary → callers move to it → regenerate primary
    fresh_secondary = generate_keys()[1]
    write_keys_file(keys.path, primary, fresh_secondary)
    assert keys.check_header(f"Bearer {primary}")
    assert keys.check_header(f"Bearer {fresh_secondary}")
    fresh_primary = generate_keys()[0]
    write_keys_file(keys.path, fresh_primary, fresh_secondary)
    assert keys.check_header(f"Bearer {fresh_secondary}")
    assert not keys.check_header(f"Bearer {primary}")


def test_missing_file_denies_and_malformed_file_keeps_last_good(
    store: tuple[KeyStore, str, str],
) -> None:
    keys, primary, _ = store
    keys.path.write_text("{not json")
    assert keys.check_header(f"Bearer {primary}")  # half-written file: keep the last good keys
    keys.path.unlink()
    assert not keys.check_header(f"Bearer {primary}")


def test_absent_digest_never_matches(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"primary_sha256": key_digest("k" * 43)}))
    keys = KeyStore(path)
    assert keys.check_header("Bearer " + "k" * 43)
    assert not keys.check_header("Bearer ")
    assert not keys.check(b"")
