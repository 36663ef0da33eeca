"""modelgate.ml."""
