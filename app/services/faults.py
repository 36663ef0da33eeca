"""Fault-injection points for crash tests: inert unless MODELGATE_FAULT_AT names one."""

from __future__ import annotations

import os
import time
from pathlib import Path

from flask import current_app

FAULT_WAIT_SECONDS = 600.0


def fault_point(armed: str, name: str, job_id: str) -> None:
    """Armed, the first attempt of a job to reach `name` writes run/fault.<name>.<job id>
    (holding this process's pid) under MODELGATE_HOME and waits there, so a test can kill the
    worker at exactly this step; a later attempt of the same job goes on."""
    if armed != name:
        return
    marker = Path(current_app.config["HOME"]) / "run" / f"fault.{name}.{job_id}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(os.getpid()))
    time.sleep(FAULT_WAIT_SECONDS)
