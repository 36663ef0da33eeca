"""modelgate.services."""
