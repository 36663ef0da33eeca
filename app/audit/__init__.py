"""Audit pages: the trail, chain verification, exports, the timeline."""
