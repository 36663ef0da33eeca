"""Where the top-level asset folders (templates, static, data) are, checked out or installed.

In a checkout they sit beside app/; a wheel carries them inside the package as app/_assets/
(app/build_assets.py copies them at build time), because site-packages has no place for them.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
CHECKOUT = PACKAGE.parent
INSTALLED = PACKAGE / "_assets"
ASSETS: tuple[str, ...] = ("templates", "static", "data")


def asset_dir(name: str) -> Path:
    """The folder of an asset kind: the checkout's when present, else the installed copy."""
    if name not in ASSETS:
        raise ValueError(f"unknown asset folder {name!r}")
    installed = INSTALLED / name
    return installed if installed.is_dir() else CHECKOUT / name
