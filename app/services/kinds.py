"""The job kinds: their Celery task names, the role that may queue them, and their defaults."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from app.auth.roles import Role


class JobKind(enum.StrEnum):
    """Kinds of background job (DESIGN.md panel REST API)."""

    PROVISION = "provision"
    TRAIN = "train"
    DEPLOY = "deploy"
    PUBLISH = "publish"
    ROTATE_KEYS = "rotate-keys"
    PIPELINE = "pipeline"
    SELFCHECK = "selfcheck"


@dataclass(frozen=True)
class KindSpec:
    """How a kind runs: its task, who may queue it, and a human title."""

    kind: JobKind
    task_name: str
    role: Role
    title: str


KIND_SPECS: dict[JobKind, KindSpec] = {
    spec.kind: spec
    for spec in (
        KindSpec(JobKind.PROVISION, "modelgate.infra.provision", Role.ENGINEER, "Provision"),
        KindSpec(JobKind.TRAIN, "modelgate.models.train", Role.ENGINEER, "Train and register"),
        KindSpec(JobKind.DEPLOY, "modelgate.deployments.deploy", Role.ENGINEER, "Deploy"),
        KindSpec(JobKind.PUBLISH, "modelgate.apis.publish", Role.ENGINEER, "Publish API"),
        KindSpec(JobKind.ROTATE_KEYS, "modelgate.deployments.rotate_keys", Role.ENGINEER,
                 "Rotate keys"),
        KindSpec(JobKind.PIPELINE, "modelgate.pipeline.run", Role.ENGINEER, "Pipeline"),
        KindSpec(JobKind.SELFCHECK, "modelgate.jobs.selfcheck", Role.ENGINEER, "Self-check"),
    )
}
