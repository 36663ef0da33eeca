"""modelgate.backends."""
