"""modelgate.dashboard."""
