"""The local backend: everything in MODELGATE_HOME on this machine (the embedded default)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.backends.base import (
    BackendHealth,
    Capability,
    Progress,
    ProvisionResult,
    ProvisionSpec,
)


class LocalBackend:
    """Backend whose workspace is a folder, whose runtime and gateway run on loopback."""

    name = "local"
    # Deploy, key rotation and publishing add their capabilities with their jobs.
    capabilities: frozenset[Capability] = frozenset()

    def __init__(self, home: str | os.PathLike[str]) -> None:
        self.home = Path(home).expanduser().resolve()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LocalBackend:
        """Build from the panel/worker configuration (uses ``HOME``)."""
        return cls(str(config.get("HOME") or "./instance"))

    def provision(self, spec: ProvisionSpec, progress: Progress) -> ProvisionResult:
        """Create the workspace in MODELGATE_HOME (see app.backends.local.provisioning)."""
        from app.backends.local.provisioning import provision

        return provision(self.home, spec, progress)

    def teardown(self, workspace: str, progress: Progress) -> None:
        """Remove the workspace; data and model versions are kept (lineage points at them)."""
        from app.backends.local.provisioning import teardown

        teardown(self.home, workspace, progress)

    def health(self) -> BackendHealth:
        """Healthy when MODELGATE_HOME exists (or can be created) and is writable."""
        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return BackendHealth(self.name, False, f"{self.home}: {exc.strerror}")
        if not os.access(self.home, os.W_OK):
            return BackendHealth(self.name, False, f"{self.home} is not writable")
        return BackendHealth(self.name, True, str(self.home))
