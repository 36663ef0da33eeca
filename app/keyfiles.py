"""Instance-local encryption keys: a Fernet key file created 0600 on first use."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet


def load_or_create_fernet(path: Path) -> Fernet:
    """Return the Fernet key stored at `path`, creating it (mode 0600) if it does not exist.

    O_EXCL makes creation race-free: of two processes starting at once, one writes the key and
    the other reads it.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return Fernet(path.read_bytes().strip())
    with os.fdopen(fd, "wb") as fh:
        fh.write(Fernet.generate_key())
    return Fernet(path.read_bytes().strip())
