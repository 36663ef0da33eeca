"""The azure backend: Azure ML (workspace, compute, data, jobs, models, Kubernetes online
endpoints) on a private AKS cluster in a VNET, published through API Management.

Where each primitive acts (docs/architecture.md and docs/azure.md have the whole table):
- provisioning and plan: provisioning.py (resource group, VNET with subnets and NSG, private
  AKS, role assignment, the Azure ML extension, workspace, compute, data asset, attached
  compute, API Management), each step create-or-update, long operations resumable;
- training: training.py (an Azure ML command job running modelgate's own training code);
- slots and keys: endpoints.py (one Kubernetes online endpoint per environment with key auth,
  blue/green as two online deployments; keys belong to the endpoint);
- APIs and traffic figures: apim.py (API, operation, policy as rawxml, secret named values,
  revisions and releases; the gateway's request reports).

The SDK packages are imported inside those modules' functions only: importing this package
costs nothing, and the panel never imports azure.ai.ml (only workers act on Azure ML).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.backends.azure.context import AzureContext
from app.backends.base import (
    ApiRevisionInfo,
    ApiSpec,
    BackendHealth,
    Capability,
    Checkpoint,
    KeyRole,
    Plan,
    Progress,
    ProvisionResult,
    ProvisionSpec,
    SlotInfo,
    SlotKeys,
    SlotRef,
    SlotSpec,
    SlotsReport,
    SmokeResult,
    TrafficStats,
    TrainInfo,
    TrainSpec,
)
from app.backends.locks import file_lock
from app.pipeline_config import PipelineConfig, load_pipeline_config

logger = logging.getLogger(__name__)

# A deploy waits for Kubernetes and a key rotation for API Management's grace: hold the lock
# long enough for both, and let it expire if a worker dies holding it.
LOCK_SECONDS = 2 * 3600


class AzureBackend:
    """Backend on Azure ML, AKS and API Management (see the module docstring)."""

    name = "azure"
    capabilities: frozenset[Capability] = frozenset(
        {Capability.BLUE_GREEN, Capability.KEY_ROTATION})

    def __init__(self, ctx: AzureContext, *, home: str | os.PathLike[str] = "./instance",
                 redis_url: str = "") -> None:
        self.ctx = ctx
        self.home = Path(home).expanduser().resolve()
        self.redis_url = redis_url

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AzureBackend:
        """Build from the panel/worker configuration: the pipeline file in use
        (MODELGATE_PIPELINE_CONFIG), ``HOME`` and ``REDIS_URL`` (the environment lock)."""
        pipeline = load_pipeline_config()
        return cls.for_pipeline(pipeline, home=str(config.get("HOME") or "./instance"),
                                redis_url=str(config.get("REDIS_URL") or ""))

    @classmethod
    def for_pipeline(cls, pipeline: PipelineConfig, *, credential: Any = None,
                     client_kwargs: Mapping[str, Any] | None = None,
                     home: str | os.PathLike[str] = "./instance",
                     redis_url: str = "") -> AzureBackend:
        """Build for a pipeline configuration; tests pass a credential and
        ``client_kwargs={"transport": …, "polling_interval": 0}``."""
        ctx = AzureContext.build(pipeline, credential=credential, client_kwargs=client_kwargs)
        return cls(ctx, home=home, redis_url=redis_url)

    def __repr__(self) -> str:
        return (f"AzureBackend(subscription={self.ctx.subscription_id!r}, "
                f"resource_group={self.ctx.resource_group!r})")

    # ------------------------------------------------------------------ workspace

    def provision(self, spec: ProvisionSpec, progress: Progress) -> ProvisionResult:
        from app.backends.azure import provisioning

        return provisioning.provision(self.ctx, spec, progress)

    def teardown(self, workspace: str, progress: Progress) -> None:
        from app.backends.azure import provisioning

        provisioning.teardown(self.ctx, workspace, progress)

    def plan(self, spec: ProvisionSpec, offline: bool = False) -> Plan:
        from app.backends.azure import provisioning

        return provisioning.plan(self.ctx, spec, offline)

    def health(self) -> BackendHealth:
        from app.backends.azure import provisioning

        return provisioning.health(self.ctx)

    # ------------------------------------------------------------------ training

    def train(self, spec: TrainSpec, progress: Progress) -> TrainInfo:
        from app.backends.azure import training

        return training.train(self.ctx, spec, progress)

    # ------------------------------------------------------------------ slots

    @contextmanager
    def environment_lock(self, environment: str) -> Iterator[None]:
        """A Redis lock when workers share a Redis (several hosts), else a file lock."""
        name = f"modelgate:azure:lock:{self.ctx.subscription_id}:{self.ctx.resource_group}:" \
               f"{environment}"
        if self.redis_url:
            import redis

            client = redis.Redis.from_url(self.redis_url)
            with client.lock(name, timeout=LOCK_SECONDS, blocking_timeout=LOCK_SECONDS):
                yield
            return
        with file_lock(self.home / "runtime" / "locks" / f"azure-{environment}.lock"):
            yield

    def create_slot(self, spec: SlotSpec, progress: Progress) -> SlotInfo:
        from app.backends.azure import endpoints

        return endpoints.create_slot(self.ctx, spec, progress)

    def wait_ready(self, slot: SlotRef, replicas: int, timeout: float,
                   checkpoint: Checkpoint) -> SlotInfo:
        from app.backends.azure import endpoints

        return endpoints.wait_ready(self.ctx, slot, replicas, timeout, checkpoint)

    def slot_keys(self, slot: SlotRef) -> SlotKeys:
        from app.backends.azure import endpoints

        return endpoints.slot_keys(self.ctx, slot)

    def smoke_test(self, slot: SlotRef, key: str) -> SmokeResult:
        from app.backends.azure import endpoints

        return endpoints.smoke_test(self.ctx, slot, key)

    def switch_traffic(self, environment: str, slot: SlotRef) -> SlotInfo:
        from app.backends.azure import endpoints

        return endpoints.switch_traffic(self.ctx, environment, slot)

    def retire_slot(self, slot: SlotRef) -> None:
        from app.backends.azure import endpoints

        endpoints.retire_slot(self.ctx, slot)

    def slot_info(self, slot: SlotRef) -> SlotInfo:
        from app.backends.azure import endpoints

        return endpoints.slot_info(self.ctx, slot)

    def slots_report(self) -> SlotsReport:
        from app.backends.azure import endpoints

        return endpoints.slots_report(self.ctx)

    # ------------------------------------------------------------------ keys

    def regenerate_key(self, slot: SlotRef, which: KeyRole) -> str:
        from app.backends.azure import endpoints

        return endpoints.regenerate_key(self.ctx, slot, which)

    def sync_keys(self, slot: SlotRef) -> None:
        from app.backends.azure import endpoints

        endpoints.sync_keys(self.ctx, slot)

    def check_key(self, slot: SlotRef, secret: str) -> bool:
        from app.backends.azure import endpoints

        return endpoints.check_key(self.ctx, slot, secret)

    def gateway_use_key(self, environment: str, secret: str) -> None:
        from app.backends.azure import apim

        apim.gateway_use_key(self.ctx, environment, secret)

    # ------------------------------------------------------------------ APIs

    def publish_revision(self, spec: ApiSpec) -> ApiRevisionInfo:
        from app.backends.azure import apim

        return apim.publish_revision(self.ctx, spec)

    def make_revision_current(self, api: str, revision: int) -> ApiRevisionInfo:
        from app.backends.azure import apim

        return apim.make_revision_current(self.ctx, api, revision)

    # ------------------------------------------------------------------ traffic

    def traffic(self, environment: str | None, since: dt.datetime | None) -> TrafficStats:
        from app.backends.azure import apim

        return apim.traffic(self.ctx, environment, since)
