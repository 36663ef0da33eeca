"""The registry pages: model versions, version detail with charts, comparison."""
