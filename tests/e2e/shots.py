"""Where the browser tests save their screenshots."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tests.support import ROOT


def screenshot_path(name: str) -> Path:
    """Where a browser test saves a screenshot: outside the work tree unless asked to refresh.

    `MODELGATE_REFRESH_SCREENSHOTS=1 python -m pytest tests/e2e` rewrites docs/screenshots/;
    any other run writes to $MODELGATE_SCREENSHOTS_DIR (default: a folder in the temp dir), so
    the tests leave the tracked PNGs alone.
    """
    if os.environ.get("MODELGATE_REFRESH_SCREENSHOTS") == "1":
        folder = ROOT / "docs" / "screenshots"
    else:
        folder = Path(os.environ.get("MODELGATE_SCREENSHOTS_DIR")
                      or Path(tempfile.gettempdir()) / "modelgate-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name
