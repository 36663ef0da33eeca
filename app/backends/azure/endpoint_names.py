"""What endpoints.py needs from its neighbours' modules, kept in this one place until they land.

Stand-in for two modules other parts of the azure backend own, with the same names, so that
swapping is one import line in endpoints.py:
- ``names.py`` (provisioning): the endpoint of an environment, the deployments of its slots,
  the attached Kubernetes compute, the API and its named values;
- the scoring container's inference config and environment variables (training's
  serving_image.py: modelgate's own scoring service answers liveness, readiness and score on
  port 5001).

Besides, the tags and properties this backend reads back: the deployment's tag naming the
panel's deployment id, and the model version property holding the signature.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any

from app.gateway.template import backend_key_name, backend_url_name

if TYPE_CHECKING:
    from app.backends.azure.context import AzureContext

#: The two online deployments of an environment's endpoint (blue/green).
DEPLOYMENT_SLOTS: tuple[str, str] = ("blue", "green")
#: The tag on an online deployment naming the panel's deployment id (idempotency, reports).
DEPLOYMENT_TAG = "modelgate-deployment"
#: The tag on an online deployment naming the model version it serves (``name:version``).
MODEL_TAG = "modelgate-model"
#: The model version property (or tag) holding the signature.json text, which the smoke test
#: reads its example and classes from (set when training registers the version).
SIGNATURE_PROPERTY = "modelgate.signature"
#: The Azure ML environment of the scoring container (versioned by its content).
SCORING_ENVIRONMENT = "modelgate-scoring"
#: The port the scoring container listens on (Azure ML's inference config names it).
SCORING_PORT = 5001
#: The environment variable naming the registered version the scoring container serves.
VERSION_VARIABLE = "MODELGATE_MODEL_VERSION"

_ENDPOINT_MAX = 32
_ENDPOINT_OK = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]$")


def endpoint_name(ctx: AzureContext, environment: str) -> str:
    """The Kubernetes online endpoint serving ``environment``: ``<workspace>-<environment>``,
    made valid for Azure ML (letters, digits, dashes; 3-32 characters; starts with a letter)."""
    wanted = f"{ctx.workspace}-{environment}"
    cleaned = re.sub(r"[^a-zA-Z0-9-]+", "-", wanted).strip("-")
    if not cleaned[:1].isalpha():
        cleaned = f"ep-{cleaned}"
    if cleaned == wanted and _ENDPOINT_OK.match(cleaned):
        return cleaned
    # Shortened or changed: a hash of the wanted name keeps two environments apart.
    digest = hashlib.sha256(wanted.encode()).hexdigest()[:6]
    head = cleaned[:_ENDPOINT_MAX - len(digest) - 1].rstrip("-")
    return f"{head}-{digest}"


def deployment_name(slot: str) -> str:
    """The online deployment of a slot (``blue`` or ``green``)."""
    if slot not in DEPLOYMENT_SLOTS:
        raise ValueError(f"slot must be one of {', '.join(DEPLOYMENT_SLOTS)}, not {slot!r}")
    return slot


def attached_compute_name(ctx: AzureContext) -> str:
    """The AKS cluster's name as an Azure ML compute (at most 16 characters: a longer one is
    shortened with a hash)."""
    name = ctx.azure.aks_cluster
    if len(name) <= 16:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:4]
    return f"{name[:11].rstrip('-')}-{digest}"


def api_path(ctx: AzureContext, environment: str) -> str:
    """The API's URL suffix in API Management (as on the local gateway)."""
    return ctx.config.gateway.path_for(environment)


def key_named_value(environment: str) -> str:
    """The secret named value holding the key API Management presents to the endpoint."""
    return backend_key_name(environment)


def url_named_value(environment: str) -> str:
    """The named value holding the endpoint's scoring base URL."""
    return backend_url_name(environment)


def inference_config() -> dict[str, Any]:
    """Azure ML's inference config of the scoring container: the routes its probes and the
    endpoint's router call (``/health/live``, ``/health/ready``, ``/score`` on 5001)."""
    return {"liveness_route": {"path": "/health/live", "port": SCORING_PORT},
            "readiness_route": {"path": "/health/ready", "port": SCORING_PORT},
            "scoring_route": {"path": "/score", "port": SCORING_PORT}}


def deployment_variables(model_version: str) -> dict[str, str]:
    """The deployment's environment variables: the registered version the container serves
    (it also reads it where Azure ML mounts the model; this makes it explicit)."""
    return {VERSION_VARIABLE: str(model_version)}
