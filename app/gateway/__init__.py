"""modelgate.gateway."""
