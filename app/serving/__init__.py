"""modelgate.serving."""
