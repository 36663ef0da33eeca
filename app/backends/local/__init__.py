"""The local backend: everything in MODELGATE_HOME on this machine (the embedded default).

Where each primitive acts (docs/architecture.md has the whole table):
- slots: the deployments table is the local runtime's desired state (app.runtime starts the
  replicas of STARTING/ACTIVE/DRAINING rows on a loopback port it records on the row); this
  backend materialises the package, keeps the keys (slots.py) and reads the runtime's
  status.json;
- traffic switch and keys: named values in the local gateway's config.json (gateway.py), the
  backend URL and its key in one atomic write;
- APIs: revision documents under gateway/revisions/, the current one in config.json;
- traffic figures: the gateway's request log (request_log.py);
- training: in the worker process, into the MLflow store the pipeline file names.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.backends.base import (
    ApiRevisionInfo,
    ApiSpec,
    BackendError,
    BackendHealth,
    Capability,
    Checkpoint,
    KeyRole,
    Plan,
    PolicyRefused,
    Progress,
    ProvisionResult,
    ProvisionSpec,
    ReplicaCounts,
    ResourceNotFound,
    SlotInfo,
    SlotKeys,
    SlotRef,
    SlotSpec,
    SlotsReport,
    SmokeResult,
    SmokeTestFailed,
    TrafficStats,
    TrainInfo,
    TrainSpec,
)
from app.backends.local import gateway, request_log, slots
from app.backends.locks import file_lock
from app.gateway.template import ISSUER_URL_NAME
from app.serving.keys import generate_keys

if TYPE_CHECKING:
    from app.ml.registry import ModelRegistry

logger = logging.getLogger(__name__)


class LocalBackend:
    """Backend whose workspace is a folder, whose runtime and gateway run on loopback."""

    name = "local"
    capabilities: frozenset[Capability] = frozenset(
        {Capability.BLUE_GREEN, Capability.KEY_ROTATION})

    def __init__(self, home: str | os.PathLike[str], database_url: str = "") -> None:
        self.home = Path(home).expanduser().resolve()
        self.database_url = database_url
        self._log = request_log.RequestLog(request_log.request_log_path(self.home))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LocalBackend:
        """Build from the panel/worker configuration (uses ``HOME``, ``DATABASE_URL``)."""
        return cls(str(config.get("HOME") or "./instance"), str(config.get("DATABASE_URL") or ""))

    def __repr__(self) -> str:
        return f"LocalBackend(home={str(self.home)!r})"

    # ------------------------------------------------------------------ workspace

    def provision(self, spec: ProvisionSpec, progress: Progress) -> ProvisionResult:
        """Create the workspace in MODELGATE_HOME (see app.backends.local.provisioning)."""
        from app.backends.local.provisioning import provision

        return provision(self.home, spec, progress)

    def teardown(self, workspace: str, progress: Progress) -> None:
        """Remove the workspace; data and model versions are kept (lineage points at them)."""
        from app.backends.local.provisioning import teardown

        teardown(self.home, workspace, progress)

    def plan(self, spec: ProvisionSpec, offline: bool = False) -> Plan:
        """What provisioning, deploying and publishing would do in MODELGATE_HOME."""
        from app.backends.local.plan import plan

        return plan(self.home, spec, offline)

    def health(self) -> BackendHealth:
        """Healthy when MODELGATE_HOME exists (or can be created) and is writable."""
        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return BackendHealth(self.name, False, f"{self.home}: {exc.strerror}")
        if not os.access(self.home, os.W_OK):
            return BackendHealth(self.name, False, f"{self.home} is not writable")
        return BackendHealth(self.name, True, str(self.home))

    # ------------------------------------------------------------------ training

    def train(self, spec: TrainSpec, progress: Progress) -> TrainInfo:
        """Train in this process and register into the MLflow store of the spec."""
        from app.backends.local.training import train

        return train(self.home, spec, progress)

    # ------------------------------------------------------------------ slots

    @contextmanager
    def environment_lock(self, environment: str) -> Iterator[None]:
        """An exclusive file lock per environment (workers of this host share it)."""
        with file_lock(self.home / "runtime" / "locks" / f"{environment}.lock"):
            yield

    def create_slot(self, spec: SlotSpec, progress: Progress) -> SlotInfo:
        """Materialise the package and give the slot fresh keys (digests for its replicas).

        The runtime starts the replicas once the services record the slot's row (STARTING).
        """
        ref = spec.ref
        try:
            slots.load_keys(self.home, ref.id)
        except ResourceNotFound:
            progress(5, f"materialising {ref.model_name} v{ref.model_version}")
            try:
                slots.materialise(self.home, self._registry(), ref.model_name,
                                  ref.model_version)
            except Exception as exc:  # MLflow raises its own family; the message says what
                raise ResourceNotFound(f"cannot materialise {ref.model_name} "
                                       f"v{ref.model_version}: {exc}") from None
            slots.store_keys(self.home, ref.id, SlotKeys(*generate_keys()))
        return SlotInfo(ref, self.name, replicas=spec.replicas)

    def wait_ready(self, slot: SlotRef, replicas: int, timeout: float,
                   checkpoint: Checkpoint) -> SlotInfo:
        """Wait for the runtime's report and /health/ready of the slot's loopback port."""
        url = slots.wait_ready(self.home, slot.id, replicas, timeout, checkpoint)
        return SlotInfo(slot, self.name, f"{url}/score", replicas, replicas)

    def slot_info(self, slot: SlotRef) -> SlotInfo:
        """The runtime's view of a slot (replicas ready, its loopback scoring URI)."""
        entry = slots.read_status(self.home).get("deployments", {}).get(slot.id)
        if not isinstance(entry, dict):
            return SlotInfo(slot, self.name, detail="the runtime does not report this slot")
        url = slots.url_of(entry.get("port"))
        return SlotInfo(slot, self.name, f"{url}/score" if url else "",
                        len(entry.get("replicas", [])), int(entry.get("replicas_ready", 0)),
                        str(entry.get("error") or ""))

    def slots_report(self) -> SlotsReport:
        """The runtime's status.json; not reporting when it is missing or stale."""
        status = slots.read_status(self.home)
        if not status.get("fresh"):
            return SlotsReport(False)
        counts = {}
        for deployment_id, entry in status.get("deployments", {}).items():
            if isinstance(entry, dict):
                counts[str(deployment_id)] = ReplicaCounts(
                    int(entry.get("replicas_ready", 0)),
                    sum(int(r.get("restarts", 0)) for r in entry.get("replicas", [])))
        return SlotsReport(True, counts)

    def slot_keys(self, slot: SlotRef) -> SlotKeys:
        """The slot's keys from the encrypted store (or a pre-seam row's columns)."""
        return slots.load_keys(self.home, slot.id, self._legacy_keys)

    def smoke_test(self, slot: SlotRef, key: str) -> SmokeResult:
        """Score the example on the slot's loopback port with the key, and without one."""
        return slots.smoke_test(self._url(slot), key, self._signature(slot))

    def switch_traffic(self, environment: str, slot: SlotRef) -> SlotInfo:
        """Point the gateway's backend URL and key at the slot in one atomic config write."""
        info = self.slot_info(slot)
        if not info.scoring_uri:
            raise ResourceNotFound(f"slot {slot.id} is not running; cannot switch to it")
        gateway.set_backend(self.home, environment, info.base_url, self.slot_keys(slot).primary)
        return info

    def retire_slot(self, slot: SlotRef) -> None:
        """Drop the slot's keys; the runtime stops replicas of rows the services stopped."""
        slots.forget_keys(self.home, slot.id)

    # ------------------------------------------------------------------ keys

    def regenerate_key(self, slot: SlotRef, which: KeyRole) -> str:
        """A fresh key in one role; the replicas see the new digests within a poll."""
        keys = self.slot_keys(slot)
        fresh = generate_keys()[0]
        slots.store_keys(self.home, slot.id,
                         SlotKeys(fresh, keys.secondary) if which == KeyRole.PRIMARY
                         else SlotKeys(keys.primary, fresh))
        return fresh

    def sync_keys(self, slot: SlotRef) -> None:
        """Rewrite the replicas' digests from the sealed keys (after an interrupted change)."""
        slots.store_keys(self.home, slot.id, self.slot_keys(slot))

    def check_key(self, slot: SlotRef, secret: str) -> bool:
        """200 → True, 401 → False, anything else → SmokeTestFailed."""
        status = slots.key_status(self._url(slot), secret, self._signature(slot))
        if status not in (200, 401):
            raise SmokeTestFailed(f"key check: got HTTP {status}, expected 200 or 401")
        return status == 200

    def gateway_use_key(self, environment: str, secret: str) -> None:
        """Change only the key named value of the environment."""
        gateway.set_backend_key(self.home, environment, secret)

    # ------------------------------------------------------------------ APIs

    def publish_revision(self, spec: ApiSpec) -> ApiRevisionInfo:
        """Set the plain named values, compile the revision against the gateway's named values
        and store it."""
        for name, value in spec.named_values.items():
            if name == ISSUER_URL_NAME:  # also adopts APIs published with a literal issuer
                gateway.set_issuer_url(self.home, value)
            else:
                gateway.set_named_value(self.home, name, value)
        document = self._api_document(spec)
        try:
            gateway.validate_api(self.home, document)
        except BackendError:
            raise
        except Exception as exc:  # ConfigError / PolicyError: the message names the element
            raise PolicyRefused(str(exc)) from None
        gateway.store_revision(self.home, document)
        return ApiRevisionInfo(spec.name, spec.revision, spec.path,
                               gateway.current_revision(self.home, spec.name) == spec.revision)

    def make_revision_current(self, api: str, revision: int) -> ApiRevisionInfo:
        """Replace the API in config.json with the stored revision (one atomic write)."""
        document = gateway.load_revision(self.home, api, revision)
        if document is None:
            raise ResourceNotFound(f"{api} revision {revision} was not published")
        url = gateway.backend_url(self.home, str(document.get("environment", "")))
        if url is None:
            raise ResourceNotFound(f"the gateway has no backend for "
                                   f"{document.get('environment')}")
        try:
            gateway.upsert_api(self.home, {**document, "backend_url": url})
        except Exception as exc:  # ConfigError / PolicyError
            raise PolicyRefused(str(exc)) from None
        return ApiRevisionInfo(api, revision, str(document["path"]), True)

    def _api_document(self, spec: ApiSpec) -> dict[str, Any]:
        url = gateway.backend_url(self.home, spec.environment)
        if url is None:
            raise ResourceNotFound(f"the gateway has no backend for {spec.environment}")
        return {"name": spec.name, "path": spec.path, "revision": spec.revision,
                "environment": spec.environment, "backend_url": url,
                "operations": [{"id": op.id, "method": op.method,
                                "url_template": op.url_template} for op in spec.operations],
                "policy_xml": spec.policy_xml, **spec.rules}

    # ------------------------------------------------------------------ traffic

    def traffic(self, environment: str | None, since: dt.datetime | None) -> TrafficStats:
        """Calls from the request log's tail (only new lines are parsed on each call)."""
        calls = self._log.calls(since)
        if environment is not None:
            calls = [c for c in calls if c.environment == environment]
        return TrafficStats(since, tuple(calls))

    # ------------------------------------------------------------------ helpers

    def _url(self, slot: SlotRef) -> str:
        info = self.slot_info(slot)
        if not info.scoring_uri:
            raise SmokeTestFailed(f"slot {slot.id} is not running ({info.detail})")
        return info.base_url

    def _signature(self, slot: SlotRef) -> dict[str, Any]:
        try:
            return slots.read_signature(
                slots.model_dir(self.home, slot.model_name, slot.model_version))
        except (OSError, ValueError):
            raise ResourceNotFound(f"the package of {slot.model_name} v{slot.model_version} "
                                   "is not materialised") from None

    def _registry(self) -> ModelRegistry:
        from app.pipeline_config import load_pipeline_config, model_registry

        return model_registry(load_pipeline_config().mlflow, self.home)

    def _legacy_keys(self, deployment_id: str) -> tuple[str, str] | None:
        """Keys of a slot deployed before the backend kept them: the row's Fernet tokens."""
        if not self.database_url:
            return None
        from sqlalchemy import create_engine, text

        engine = create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                row = conn.execute(text("SELECT primary_key_enc, secondary_key_enc FROM "
                                        "deployments WHERE id = :id"),
                                   {"id": deployment_id}).first()
        except Exception:  # no such columns any more: nothing to fall back to
            return None
        finally:
            engine.dispose()
        if row is None or not row[0] or not row[1]:
            return None
        return str(row[0]), str(row[1])
