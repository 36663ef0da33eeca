"""Kubernetes manifests of a slot validate offline against the 1.30 schema (strict)."""

from __future__ import annotations

import base64
import json

import kubernetes_validate
import pytest

from app.backends.k8s import K8sSlotSpec, render_manifests, to_yaml
from app.serving.keys import generate_keys, key_digest


@pytest.fixture(scope="module")
def keys() -> tuple[str, str]:
    return generate_keys()


@pytest.fixture(scope="module")
def docs(keys: tuple[str, str]) -> list[dict]:
    spec = K8sSlotSpec(environment="staging", slot="green", model_name="german-credit",
                       model_version="3", image="registry.local/modelgate-scoring:3",
                       primary_sha256=key_digest(keys[0]), secondary_sha256=key_digest(keys[1]))
    return render_manifests(spec)


def test_every_manifest_is_valid_for_kubernetes_1_30(docs: list[dict]) -> None:
    assert [d["kind"] for d in docs] == ["Secret", "Deployment", "Service", "NetworkPolicy",
                                         "HorizontalPodAutoscaler"]
    for doc in docs:
        assert kubernetes_validate.validate(doc, "1.30", strict=True) == "1.30"


def test_invalid_manifest_is_caught(docs: list[dict]) -> None:
    broken = json.loads(json.dumps(docs[1]))
    broken["spec"]["strategy"]["rollingUpdate"]["maxUnavailabel"] = 0  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.30", strict=True)


def test_rollout_probes_network_and_scaling(docs: list[dict]) -> None:
    secret, deployment, service, policy, hpa = docs
    spec = deployment["spec"]
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    container = spec["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    sources = policy["spec"]["ingress"][0]["from"]
    assert sources == [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "modelgate-gateway"}}}]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 2)
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    volume = spec["template"]["spec"]["volumes"][0]["secret"]["secretName"]
    assert volume == secret["metadata"]["name"]


def test_secret_holds_digests_never_keys(docs: list[dict], keys: tuple[str, str]) -> None:
    secret = docs[0]
    content = json.loads(base64.b64decode(secret["data"]["keys.json"]))
    assert content == {"primary_sha256": key_digest(keys[0]),
                       "secondary_sha256": key_digest(keys[1])}
    text = to_yaml(docs)
    for key in keys:
        assert key not in text
        assert base64.b64encode(key.encode()).decode() not in text


def test_a_recorded_prod_deployment_renders_valid_manifests(keys: tuple[str, str]) -> None:
    from app.db import Deployment

    row = Deployment(id="abc", environment="prod", slot="blue", model_name="german-credit",
                     model_version="7", replicas=2, resources={"cpu": 0.5, "memory_mb": 512},
                     state="ACTIVE", traffic=100, primary_key_enc="x", secondary_key_enc="y")
    spec = K8sSlotSpec.from_deployment(row, image="modelgate-scoring:7",
                                       primary_sha256=key_digest(keys[0]),
                                       secondary_sha256=key_digest(keys[1]))
    docs = render_manifests(spec)
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30", strict=True)
    deployment, hpa = docs[1], docs[4]
    assert deployment["metadata"]["name"] == "scoring-prod-blue"
    resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"] == {"cpu": "500m", "memory": "512Mi"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 2)
