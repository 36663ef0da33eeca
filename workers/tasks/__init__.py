"""Import every task module so a worker registers all tasks."""

from workers.tasks import (  # noqa: F401
    apis,
    deployments,
    drift,
    infra,
    jobs,
    pipeline,
    promotions,
    training,
)
