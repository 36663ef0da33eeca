"""The Backend protocol that jobs drive, its value types, and the BackendError family.

Contract for every implementation (local, azure, test fakes):
- methods block until the operation is done or its timeout passed; they are called only from
  Celery tasks, never from a request;
- they are idempotent by name (provisioning twice, deploying the same version twice, publishing
  the same revision twice leave one result);
- they raise only BackendError subclasses; SDK errors are translated at the backend's edge;
- progress is reported through the callback (percent 0-100, a short step text).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

Progress = Callable[[int, str], None]


class Capability(enum.StrEnum):
    """Optional features a backend may have."""

    BLUE_GREEN = "blue-green"
    KEY_ROTATION = "key-rotation"
    MANAGED_API_GATEWAY = "managed-api-gateway"
    AUTOSCALE = "autoscale"


class BackendError(Exception):
    """A backend operation failed; the message is safe to show to users."""


class ResourceNotFound(BackendError):
    """The named resource does not exist."""


class ResourceConflict(BackendError):
    """The resource exists in a state that forbids the operation."""


class TransientBackendError(BackendError):
    """A failure worth retrying (network, throttling, a service restarting)."""


class CapabilityNotSupported(BackendError):
    """The backend lacks the capability the operation needs."""


@dataclass(frozen=True)
class ProvisionSpec:
    """What to create: a workspace with environments, from the pipeline configuration."""

    workspace: str
    environments: tuple[str, ...] = ("staging", "prod")
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProvisionResult:
    """What provisioning created and what already existed."""

    workspace: str
    created: tuple[str, ...]
    existing: tuple[str, ...]
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BackendHealth:
    """Backend status for the dashboard."""

    name: str
    healthy: bool
    detail: str = ""


class Backend(Protocol):
    """What a deployment target must provide (the local embedded default, or Azure)."""

    name: str
    capabilities: frozenset[Capability]

    def provision(self, spec: ProvisionSpec, progress: Progress) -> ProvisionResult:
        """Create the workspace and environments; report what existed and what was created.

        Raises:
            BackendError: the workspace cannot be created.
        """
        ...

    def teardown(self, workspace: str, progress: Progress) -> None:
        """Remove the workspace; removing a missing workspace is not an error."""
        ...

    def health(self) -> BackendHealth:
        """Return whether the backend is reachable and usable."""
        ...


class SlotNotReady(BackendError):
    """A new deployment slot did not become ready in time (the old slot keeps serving)."""


class SmokeTestFailed(BackendError):
    """A new slot answered its smoke test wrongly (the old slot keeps serving)."""


@dataclass(frozen=True)
class SlotEndpoint:
    """Where a deployment slot listens and how many replicas it should have ready."""

    deployment_id: str
    url: str
    replicas: int


@dataclass(frozen=True)
class SmokeResult:
    """What a slot answered to the signature's example, scored with the slot's own key."""

    label: str
    probabilities: Mapping[str, float]
    model_version: str

