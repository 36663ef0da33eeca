"""modelgate.api."""
