"""Kubernetes manifests for a deployment slot: the same slot the local runtime runs, for a cluster.

One slot renders as a Deployment (readiness on /health/ready, liveness on /health/live,
maxUnavailable 0 / maxSurge 1, graceful termination), a ClusterIP Service, a NetworkPolicy that
admits only the gateway's pods, a HorizontalPodAutoscaler (1–2 replicas at 70% CPU, as the seed's
AKS deployment) and a Secret with the keys file. The Secret holds only the SHA-256 digests the
scoring service checks keys against, never a plaintext key.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.db import Deployment

SCORING_PORT = 8080
APP_LABEL = "modelgate-scoring"


@dataclass(frozen=True)
class K8sSlotSpec:
    """What to render: a slot of an environment serving one model version."""

    environment: str
    slot: str
    model_name: str
    model_version: str
    image: str
    primary_sha256: str
    secondary_sha256: str
    namespace: str = "modelgate"
    min_replicas: int = 1
    max_replicas: int = 2
    cpu: float = 0.25
    memory_mb: int = 256
    cpu_target_percent: int = 70
    model_dir: str = "/opt/modelgate/model"
    gateway_labels: Mapping[str, str] = field(
        default_factory=lambda: {"app.kubernetes.io/name": "modelgate-gateway"})

    @classmethod
    def from_deployment(cls, row: Deployment, *, image: str, primary_sha256: str,
                        secondary_sha256: str, namespace: str = "modelgate") -> K8sSlotSpec:
        """The manifests' view of a recorded deployment (its replicas become the HPA minimum)."""
        resources = row.resources or {}
        return cls(environment=row.environment, slot=row.slot, model_name=row.model_name,
                   model_version=row.model_version, image=image, namespace=namespace,
                   primary_sha256=primary_sha256, secondary_sha256=secondary_sha256,
                   min_replicas=row.replicas, max_replicas=max(2, row.replicas),
                   cpu=float(resources.get("cpu", 0.25)),
                   memory_mb=int(resources.get("memory_mb", 256)))

    @property
    def name(self) -> str:
        """Resource name, e.g. scoring-staging-blue."""
        return f"scoring-{self.environment}-{self.slot}"

    def labels(self) -> dict[str, str]:
        """Labels that select exactly this slot's pods."""
        return {"app.kubernetes.io/name": APP_LABEL,
                "modelgate.io/environment": self.environment, "modelgate.io/slot": self.slot}


def _meta(spec: K8sSlotSpec, extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    labels = {**spec.labels(), "modelgate.io/model": spec.model_name,
              "modelgate.io/model-version": str(spec.model_version), **(extra or {})}
    return {"name": spec.name, "namespace": spec.namespace, "labels": labels}


def _cpu(cores: float) -> str:
    return f"{max(1, round(cores * 1000))}m"


def _container(spec: K8sSlotSpec) -> dict[str, Any]:
    probe_common = {"timeoutSeconds": 2, "periodSeconds": 10}
    return {
        "name": "scoring",
        "image": spec.image,
        "command": ["python", "-m", "app.serving", "--model-dir", spec.model_dir,
                    "--keys-file", "/var/run/modelgate/keys/keys.json", "--host", "0.0.0.0",
                    "--port", str(SCORING_PORT)],
        "ports": [{"name": "http", "containerPort": SCORING_PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/health/ready", "port": "http"},
                           "initialDelaySeconds": 2, "failureThreshold": 3, **probe_common},
        "livenessProbe": {"httpGet": {"path": "/health/live", "port": "http"},
                          "initialDelaySeconds": 10, "failureThreshold": 3, **probe_common},
        "resources": {"requests": {"cpu": _cpu(spec.cpu), "memory": f"{spec.memory_mb}Mi"},
                      "limits": {"cpu": _cpu(spec.cpu * 4), "memory": f"{spec.memory_mb * 2}Mi"}},
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "keys", "mountPath": "/var/run/modelgate/keys",
                          "readOnly": True}],
    }


def deployment(spec: K8sSlotSpec) -> dict[str, Any]:
    """The Deployment: rolling updates never take a ready pod away before a new one is ready."""
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(spec),
        "spec": {
            "replicas": spec.min_replicas,
            "selector": {"matchLabels": spec.labels()},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": _meta(spec)["labels"]},
                "spec": {
                    # Serving drains within its own 30 s shutdown timeout after SIGTERM.
                    "terminationGracePeriodSeconds": 40,
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [_container(spec)],
                    "volumes": [{"name": "keys", "secret": {"secretName": f"{spec.name}-keys",
                                                            "defaultMode": 0o400}}],
                },
            },
        },
    }


def service(spec: K8sSlotSpec) -> dict[str, Any]:
    """A ClusterIP Service: reachable inside the cluster only."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(spec),
            "spec": {"type": "ClusterIP", "selector": spec.labels(),
                     "ports": [{"name": "http", "port": 80, "targetPort": "http",
                                "protocol": "TCP"}]}}


def network_policy(spec: K8sSlotSpec) -> dict[str, Any]:
    """Only the gateway's pods may open connections to the scoring pods."""
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": _meta(spec),
            "spec": {"podSelector": {"matchLabels": spec.labels()},
                     "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {
                         "matchLabels": dict(spec.gateway_labels)}}],
                         "ports": [{"protocol": "TCP", "port": SCORING_PORT}]}]}}


def autoscaler(spec: K8sSlotSpec) -> dict[str, Any]:
    """HorizontalPodAutoscaler: min..max replicas at the CPU target (seed: 1-2 at 70%)."""
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": _meta(spec),
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": spec.name},
                     "minReplicas": spec.min_replicas, "maxReplicas": spec.max_replicas,
                     "metrics": [{"type": "Resource", "resource": {
                         "name": "cpu", "target": {"type": "Utilization",
                                                   "averageUtilization":
                                                       spec.cpu_target_percent}}}]}}


def keys_secret(spec: K8sSlotSpec) -> dict[str, Any]:
    """The keys file as a Secret: digests only (the gateway alone holds the plaintext keys)."""
    content = json.dumps({"primary_sha256": spec.primary_sha256,
                          "secondary_sha256": spec.secondary_sha256}).encode()
    meta = _meta(spec)
    meta["name"] = f"{spec.name}-keys"
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": meta,
            "data": {"keys.json": base64.b64encode(content).decode("ascii")}}


def render_manifests(spec: K8sSlotSpec) -> list[dict[str, Any]]:
    """Every manifest of a slot, in apply order."""
    return [keys_secret(spec), deployment(spec), service(spec), network_policy(spec),
            autoscaler(spec)]


def to_yaml(documents: list[dict[str, Any]]) -> str:
    """A multi-document YAML stream for kubectl apply -f."""
    import yaml

    return str(yaml.safe_dump_all(documents, sort_keys=False))
