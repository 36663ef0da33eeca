"""modelgate.backends/local."""
