"""modelgate.runtime."""
