"""The Drift page: each field's population stability over time, and the current alert."""
