"""The scoring container Azure ML runs for a deployment: modelgate's own scoring service in
its Azure ML mode (app/serving/azureml.py), built from the Dockerfile's ``azureml-scoring``
target and pushed where the cluster can pull it (``azure.scoring_image``).

Azure ML reaches a custom container through its inference config: liveness, readiness and
scoring routes, each a port and a path. The endpoint checks the key before the request
reaches the container (the container checks none; see app/serving/azureml.py).
"""

from __future__ import annotations

from typing import Any

from app.backends.azure.context import AzureContext
from app.backends.base import BackendError

# The scoring service's routes (app/serving/app.py) on the Azure ML mode's port.
SCORING_PORT = 5001
LIVENESS_PATH = "/health/live"
READINESS_PATH = "/health/ready"
SCORING_PATH = "/score"
VERSION_VARIABLE = "MODELGATE_MODEL_VERSION"


def inference_config() -> dict[str, dict[str, Any]]:
    """The deployment environment's ``inference_config`` (Azure ML's custom container
    routes)."""
    return {
        "liveness_route": {"port": SCORING_PORT, "path": LIVENESS_PATH},
        "readiness_route": {"port": SCORING_PORT, "path": READINESS_PATH},
        "scoring_route": {"port": SCORING_PORT, "path": SCORING_PATH},
    }


def scoring_environment(ctx: AzureContext) -> Any:
    """The ``Environment`` an online deployment runs: the scoring image with the inference
    config (unnamed: Azure ML registers it with the deployment).

    Raises:
        BackendError: ``azure.scoring_image`` is not set.
    """
    image = ctx.azure.scoring_image.strip()
    if not image:
        raise BackendError("azure.scoring_image is not set: build the Dockerfile's "
                           "azureml-scoring target, push it to a registry the cluster can pull "
                           "from, and name it in the pipeline file (docs/azure.md)")
    from azure.ai.ml.entities import Environment

    return Environment(image=image, inference_config=inference_config(),
                       description="modelgate scoring service (Azure ML mode)")


def deployment_variables(model_version: str) -> dict[str, str]:
    """The deployment's environment variables: the registered version the container serves
    (it also reads it from where Azure ML mounts the model; this makes it explicit)."""
    return {VERSION_VARIABLE: str(model_version)}
