"""Import every task module so a worker registers all tasks."""

from workers.tasks import jobs  # noqa: F401
