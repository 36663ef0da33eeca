"""modelgate: the panel's application factory (other processes have factories of their own)."""
