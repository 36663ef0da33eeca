"""The Backend protocol that jobs drive, its value types, and the BackendError family.

A backend is a deployment target: the embedded local stack, Azure (Azure ML + AKS + API
Management), or any other. The services in app/services hold the rules (blue/green order,
no-401 key rotation order, four eyes, audit, lineage) and call only these primitives.

Contract for every implementation (local, azure, test fakes):
- methods block until the operation is done or its timeout passed; they are called only from
  Celery tasks (and the read-only ones from pages), never hold a request for long;
- they are idempotent by name: creating the same slot twice, publishing the same revision
  twice, switching to the slot that already takes the traffic leave one result;
- they raise only BackendError subclasses: TransientBackendError for what is worth retrying,
  the others are permanent; SDK and OS errors are translated at the backend's edge;
- progress goes through the callback (percent 0-100, non-decreasing, a short step text); a
  callback may raise (the job was cancelled) and the backend lets that exception through,
  leaving nothing half-switched;
- keys are secrets: no key appears in a value's repr, an error message, a log line or a task
  argument. Keys travel only as return values of key methods and arguments of key methods.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.pipeline_config import REQUIRED_ENVIRONMENTS

Progress = Callable[[int, str], None]
Checkpoint = Callable[[], None]


class Capability(enum.StrEnum):
    """Optional features a backend may have; a service needing one it lacks raises
    CapabilityNotSupported before touching anything."""

    BLUE_GREEN = "blue-green"  # create_slot / switch_traffic / retire_slot
    KEY_ROTATION = "key-rotation"  # regenerate_key / check_key / gateway_use_key


def require(backend: Backend, capability: Capability) -> None:
    """Raise CapabilityNotSupported when the backend lacks the capability."""
    if capability not in backend.capabilities:
        raise CapabilityNotSupported(f"the {backend.name} backend does not support "
                                     f"{capability.value}")


class KeyRole(enum.StrEnum):
    """Which of a slot's two keys."""

    PRIMARY = "primary"
    SECONDARY = "secondary"


# --------------------------------------------------------------------------- errors


class BackendError(Exception):
    """A backend operation failed; the message is safe to show to users (never a key)."""


class ResourceNotFound(BackendError):
    """The named resource does not exist."""


class ResourceConflict(BackendError):
    """The resource exists in a state that forbids the operation."""


class TransientBackendError(BackendError):
    """A failure worth retrying (network, throttling, a service restarting)."""


class CapabilityNotSupported(BackendError):
    """The backend lacks the capability the operation needs."""


class SlotNotReady(BackendError):
    """A new deployment slot did not become ready in time (the old slot keeps serving)."""


class SmokeTestFailed(BackendError):
    """A new slot answered its smoke test wrongly (the old slot keeps serving)."""


class PolicyRefused(BackendError):
    """The gateway refused an API revision (its policy does not compile or validate)."""


# --------------------------------------------------------------------------- provisioning


class OperationStore(Protocol):
    """Where a job keeps the continuation tokens of its long-running operations, so that a
    retried or redelivered job resumes polling (GETs only) instead of creating again."""

    def get(self, key: str) -> str | None:
        """The token stored under ``key`` (e.g. ``apim:<name>``), None when there is none."""
        ...

    def put(self, key: str, token: str | None) -> None:
        """Store a token (None forgets it: the operation finished)."""
        ...


class MemoryOperationStore:
    """An OperationStore in a dict (tests, and callers with no job to keep tokens on)."""

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}

    def get(self, key: str) -> str | None:
        return self.tokens.get(key)

    def put(self, key: str, token: str | None) -> None:
        if token is None:
            self.tokens.pop(key, None)
        else:
            self.tokens[key] = token


@dataclass(frozen=True)
class ProvisionSpec:
    """What to create: a workspace with environments, from the pipeline configuration
    (``settings``: ``PipelineConfig.to_dict()``); ``operations`` keeps long operations'
    continuation tokens on the job that provisions."""

    workspace: str
    environments: tuple[str, ...] = REQUIRED_ENVIRONMENTS
    settings: Mapping[str, Any] = field(default_factory=dict)
    operations: OperationStore = field(default_factory=MemoryOperationStore, compare=False,
                                       repr=False)


@dataclass(frozen=True)
class ProvisionResult:
    """What provisioning created and what already existed."""

    workspace: str
    created: tuple[str, ...]
    existing: tuple[str, ...]
    details: Mapping[str, Any] = field(default_factory=dict)


class PlanAction(enum.StrEnum):
    """What provisioning, deploying and publishing would do to one resource."""

    CREATE = "create"
    UPDATE = "update"
    NO_CHANGE = "no change"


@dataclass(frozen=True)
class PlanItem:
    """One resource the chain needs: its kind (``"Virtual network"``), name, the action, and
    for an update the changed properties (``"address_prefixes: [a] -> [b]"``)."""

    kind: str
    name: str
    action: PlanAction
    changes: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class Plan:
    """What the chain would create or change, resource by resource; ``offline``: nothing was
    read from the target (every item is to be created)."""

    backend: str
    offline: bool
    items: tuple[PlanItem, ...]

    def counts(self) -> dict[str, int]:
        """How many items per action, e.g. ``{"create": 12, "update": 1, "no change": 3}``."""
        counts = {action.value: 0 for action in PlanAction}
        for item in self.items:
            counts[item.action.value] += 1
        return counts


@dataclass(frozen=True)
class BackendHealth:
    """Backend status for the dashboard."""

    name: str
    healthy: bool
    detail: str = ""


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainSpec:
    """One training run: the model settings, the data, and the job that asks (its tag).

    ``dataset_version`` None means the latest registered version, or ``dataset_path`` (the
    configured file) registered first when none is registered yet.
    """

    job_id: str
    model: Any  # app.ml.config.TrainingConfig
    dataset_name: str
    dataset_version: int | None = None
    dataset_path: str | None = None
    experiment: str = ""
    tracking_uri: str = ""


@dataclass(frozen=True)
class TrainInfo:
    """Where a run trained and which registry version it produced (``summary``: job result)."""

    model_name: str
    version: str
    run_id: str
    where: str
    summary: Mapping[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- slots


@dataclass(frozen=True)
class SlotRef:
    """Names one slot of one environment's endpoint and the model version it serves
    (``id``: the panel's deployment id)."""

    id: str
    environment: str
    endpoint: str
    slot: str
    model_name: str
    model_version: str


@dataclass(frozen=True)
class SlotSpec:
    """A slot to create at 0% traffic, running the version its ref names."""

    ref: SlotRef
    replicas: int
    resources: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SlotInfo:
    """What the backend reports about a slot: where it scores and how ready it is."""

    ref: SlotRef
    backend: str
    scoring_uri: str = ""
    replicas: int = 0
    replicas_ready: int = 0
    detail: str = ""

    @property
    def base_url(self) -> str:
        """The scoring URI without its ``/score`` operation."""
        return self.scoring_uri.removesuffix("/score")


@dataclass(frozen=True)
class SlotKeys:
    """A slot's two keys; the repr hides them."""

    primary: str = field(repr=False)
    secondary: str = field(repr=False)

    def __repr__(self) -> str:
        return "SlotKeys(primary=***, secondary=***)"

    def __str__(self) -> str:
        return repr(self)


@dataclass(frozen=True)
class ReplicaCounts:
    """How many replicas of a slot are ready, and how often they restarted."""

    ready: int
    restarts: int


@dataclass(frozen=True)
class SlotsReport:
    """The backend's view of every running slot, by deployment id; ``reporting`` is false
    when the backend cannot tell (then nothing is known about any slot)."""

    reporting: bool
    slots: Mapping[str, ReplicaCounts] = field(default_factory=dict)


@dataclass(frozen=True)
class SmokeResult:
    """What a slot answered to the signature's example, scored with the slot's own key."""

    label: str
    probabilities: Mapping[str, float]
    model_version: str


# --------------------------------------------------------------------------- APIs and traffic


@dataclass(frozen=True)
class ApiOperation:
    """One operation of a published API."""

    id: str
    method: str
    url_template: str


SCORE_OPERATION = ApiOperation("score", "POST", "/score")


@dataclass(frozen=True)
class ApiSpec:
    """A revision of an environment's API: name, path, policy and operations, and the rules
    the gateway checks the policy against (issuer, audience, allowed backends, anonymous)."""

    name: str
    path: str
    environment: str
    revision: int
    policy_xml: str
    operations: tuple[ApiOperation, ...] = (SCORE_OPERATION,)
    rules: Mapping[str, Any] = field(default_factory=dict)
    # plain (not secret) named values the policy refers to, e.g. {"issuer-url": "https://…"}
    named_values: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ApiRevisionInfo:
    """A revision as the gateway holds it."""

    name: str
    revision: int
    path: str
    is_current: bool


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call through the gateway, as its request log has it."""

    time: dt.datetime
    api: str
    status: int
    latency_ms: float
    environment: str | None = None
    model_version: str | None = None


@dataclass(frozen=True)
class TrafficStats:
    """The gateway's calls since a moment (oldest first); services aggregate them."""

    since: dt.datetime | None
    calls: tuple[CallRecord, ...]


# --------------------------------------------------------------------------- the protocol


class Backend(Protocol):
    """What a deployment target must provide (the local embedded default, Azure, …)."""

    name: str
    capabilities: frozenset[Capability]

    # -- workspace

    def provision(self, spec: ProvisionSpec, progress: Progress) -> ProvisionResult:
        """Create the workspace and environments; report what existed and what was created.

        Idempotent: a second call creates nothing and lists everything as existing.

        Raises:
            ResourceConflict: a resource exists but differs in a way that cannot be changed.
            TransientBackendError: worth retrying.
            BackendError: the workspace cannot be created.
        """
        ...

    def teardown(self, workspace: str, progress: Progress) -> None:
        """Remove the workspace; removing a missing workspace is not an error."""
        ...

    def plan(self, spec: ProvisionSpec, offline: bool = False) -> Plan:
        """Every resource provisioning, deploying and publishing the spec's configuration
        needs, each with create / update (the changed properties) / no change, read from the
        target; ``offline`` reads nothing (everything is to be created) and never raises for
        want of a network. Changes nothing.

        Raises:
            BackendError: the target cannot be read (credentials, network), with what to set.
        """
        ...

    def health(self) -> BackendHealth:
        """Return whether the backend is reachable and usable (never raises)."""
        ...

    # -- training

    def train(self, spec: TrainSpec, progress: Progress) -> TrainInfo:
        """Train where the backend trains and register the version, tagged with the job.

        Idempotent by ``spec.job_id``: a version already registered by this job is returned
        instead of training again. Progress may raise to cancel until registration starts.

        Raises:
            BackendError: bad data or settings (the message names them); registry trouble.
        """
        ...

    # -- slots (blue/green)

    def environment_lock(self, environment: str) -> AbstractContextManager[None]:
        """Serialise deploys and key rotations of one environment across this backend's workers."""
        ...

    def create_slot(self, spec: SlotSpec, progress: Progress) -> SlotInfo:
        """Create a slot serving the version at 0% traffic, with its own keys.

        Idempotent by ``spec.ref.id``: a second call returns the same slot. Does not wait
        for readiness (``wait_ready`` does).

        Raises:
            ResourceNotFound: the model version cannot be fetched from the registry.
            BackendError: the slot cannot be created.
        """
        ...

    def wait_ready(self, slot: SlotRef, replicas: int, timeout: float,
                   checkpoint: Checkpoint) -> SlotInfo:
        """Block until every replica of the slot is ready; ``checkpoint()`` is called between
        polls and may raise to cancel the wait (the exception passes through).

        Raises:
            SlotNotReady: not ready within ``timeout`` (the message says what was seen).
        """
        ...

    def slot_keys(self, slot: SlotRef) -> SlotKeys:
        """The keys a slot accepts now (for its smoke test, the gateway and an admin's reveal).

        Raises:
            ResourceNotFound: the backend holds no keys for the slot.
        """
        ...

    def smoke_test(self, slot: SlotRef, key: str) -> SmokeResult:
        """Score the model signature's example on the slot directly with ``key``; also require
        that a request without a key is refused and that the slot serves the ref's version.

        Raises:
            SmokeTestFailed: with what was wrong (never the key).
        """
        ...

    def switch_traffic(self, environment: str, slot: SlotRef) -> SlotInfo:
        """Send all of the environment's traffic to the slot, with the slot's primary key.

        Atomic from a caller's point of view: every request goes either to the old slot with
        the old key or to the new slot with the new key, never a mix. Idempotent.
        """
        ...

    def retire_slot(self, slot: SlotRef) -> None:
        """Stop a slot and forget its keys; retiring a missing slot is not an error."""
        ...

    def slot_info(self, slot: SlotRef) -> SlotInfo:
        """What the backend sees of a slot now (readiness, scoring URI); never raises for a
        missing slot (``replicas_ready`` 0, ``detail`` says so)."""
        ...

    def slots_report(self) -> SlotsReport:
        """Replica counts of every running slot in one call (pages show them; never raises)."""
        ...

    # -- keys (primitives; the no-401 order is the services' rule)

    def regenerate_key(self, slot: SlotRef, which: KeyRole) -> str:
        """Replace one of the slot's keys with a new secret and return it; the other key
        keeps working. Takes effect on every replica before returning."""
        ...

    def sync_keys(self, slot: SlotRef) -> None:
        """Make the slot accept exactly the keys ``slot_keys`` returns (repairs a regenerate
        interrupted half-way; a no-op where the keys live in one place)."""
        ...

    def check_key(self, slot: SlotRef, secret: str) -> bool:
        """Whether the slot accepts ``secret`` (True: 200 to the example, False: 401).

        Raises:
            SmokeTestFailed: the slot answered neither (down, or a wrong answer).
        """
        ...

    def gateway_use_key(self, environment: str, secret: str) -> None:
        """Make the gateway present ``secret`` to the environment's backend (only the key)."""
        ...

    # -- APIs

    def publish_revision(self, spec: ApiSpec) -> ApiRevisionInfo:
        """Record a revision of an API in the gateway (not yet current), checked against
        ``spec.rules``, after setting ``spec.named_values``; idempotent by (name, revision) —
        publishing again re-checks it.

        Raises:
            PolicyRefused: the policy does not compile (the message names the element).
        """
        ...

    def make_revision_current(self, api: str, revision: int) -> ApiRevisionInfo:
        """Make a published revision the one the gateway serves, atomically.

        Raises:
            ResourceNotFound: the revision was not published, or the environment has no
                backend slot behind the gateway yet.
            PolicyRefused: the gateway refused it.
        """
        ...

    # -- traffic

    def traffic(self, environment: str | None, since: dt.datetime | None) -> TrafficStats:
        """The gateway's calls since ``since`` (None: as far back as cheaply available),
        of one environment or of all."""
        ...

