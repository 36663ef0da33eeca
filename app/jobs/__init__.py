"""modelgate.jobs."""
