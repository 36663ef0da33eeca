"""modelgate.identity."""
