"""The OpenAPI path and schema of the drift endpoint (merged into openapi.document)."""

from __future__ import annotations

from typing import Any

_PROBLEM = {"$ref": "#/components/schemas/Problem"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/problem+json": {"schema": _PROBLEM}}}


def paths() -> dict[str, Any]:
    """Paths of /drift."""
    from app.services.drift import HISTORY_LIMIT, MAX_HISTORY

    return {"/drift/{environment}": {"get": {
        "summary": "An environment's drift checks, oldest first (MLOps.Engineer or Approver)",
        "parameters": [
            {"name": "environment", "in": "path", "required": True,
             "schema": {"type": "string"}},
            {"name": "limit", "in": "query", "schema": {
                "type": "integer", "minimum": 1, "maximum": MAX_HISTORY,
                "default": HISTORY_LIMIT}}],
        "responses": {"200": {"description": "Checks and the samples waiting for the next one",
                              "content": {"application/json": {"schema": {
                                  "type": "object", "properties": {
                                      "environment": {"type": "string"},
                                      "pending": {"type": ["integer", "null"]},
                                      "checks": {"type": "array", "items": {
                                          "$ref": "#/components/schemas/DriftCheck"}}}}}}},
                      "401": _error("Not signed in"),
                      "403": _error("Missing MLOps.Engineer or MLOps.Approver role"),
                      "404": _error("No such environment"),
                      "422": _error("Invalid limit")}}}}


def schemas() -> dict[str, Any]:
    """The DriftCheck schema (docs/responsible-credit.md)."""
    band = {"type": "string", "enum": ["stable", "watch", "act"]}
    field = {"type": "object", "properties": {
        "field": {"type": "string"}, "psi": {"type": "number"}, "band": band,
        "bins": {"type": "array", "items": {"type": "object", "properties": {
            "label": {"type": "string"}, "expected": {"type": "number"},
            "actual": {"type": "number"}}}}}}
    return {"DriftCheck": {"type": "object", "properties": {
        "check_id": {"type": "integer"},
        "environment": {"type": "string"},
        "model": {"type": "object", "properties": {"name": {"type": "string"},
                                                   "version": {"type": "string"}}},
        "checked_at": {"type": "string", "format": "date-time"},
        "hours": {"type": "array", "items": {"type": "string"}},
        "samples": {"type": "integer"},
        "band": band,
        "crossed": {"type": "array", "items": {"type": "object", "properties": {
            "field": {"type": "string"}, "psi": {"type": "number"}, "band": band,
            "from": band}}},
        "fields": {"type": "array", "items": field},
        "score": field,
        "url": {"type": "string"}}}}
