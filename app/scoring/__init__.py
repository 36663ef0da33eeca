"""modelgate.scoring: the score tester."""
