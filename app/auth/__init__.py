"""modelgate.auth."""
