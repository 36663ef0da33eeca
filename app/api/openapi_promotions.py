"""The OpenAPI paths and schemas of the promotion endpoints (merged into openapi.document)."""

from __future__ import annotations

from typing import Any

from app.params import SQL_INT_MAX

_PROBLEM = {"$ref": "#/components/schemas/Problem"}
_PROMOTION = {"$ref": "#/components/schemas/Promotion"}
_GATE = {"$ref": "#/components/schemas/GateResult"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/problem+json": {"schema": _PROBLEM}}}


def _decision(summary: str, done: str, *, approve: bool = False) -> dict[str, Any]:
    properties: dict[str, Any] = {"comment": {"type": "string", "maxLength": 2000}}
    if approve:
        properties["gate_override"] = {
            "type": "string", "maxLength": 2000,
            "description": "required when the request's gate failed (the reason for approving "
                           "anyway, audited as promotion.gate-overridden); refused otherwise"}
    return {"post": {
        "summary": summary,
        "parameters": [{"name": "promotion_id", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "requestBody": {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "properties": properties}}}},
        "responses": {"200": {"description": done, "content": {
            "application/json": {"schema": _PROMOTION}}},
            "401": _error("Not signed in"),
            "403": _error("Missing MLOps.Approver role, or you requested it yourself"),
            "404": _error("No such request"),
            "409": _error("Not pending: already decided, expired or superseded"),
            "422": _error("Invalid comment; or, approving, the gate failed and no "
                          "gate_override was given (or one was given for a passed gate)"),
            "503": _error("Queue unreachable; the request stays pending")}}}


def paths() -> dict[str, Any]:
    """Paths of /promotions."""
    return {
        "/promotions": {
            "get": {"summary": "Promotion requests, pending first",
                    "parameters": [
                        {"name": "state", "in": "query", "schema": {"type": "string"}},
                        {"name": "requested_by", "in": "query", "schema": {"type": "string"}},
                        {"name": "environment", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "schema": {
                            "type": "integer", "minimum": 1, "maximum": SQL_INT_MAX}}],
                    "responses": {"200": {"description": "Requests", "content": {
                        "application/json": {"schema": {"type": "object", "properties": {
                            "promotions": {"type": "array", "items": _PROMOTION}}}}}},
                        "401": _error("Not signed in")}},
            "post": {"summary": "Request promotion of a model version, or of a new API revision "
                                "(kind api-revision), to a protected environment (four-eyes)",
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": {"type": "object", "required": ["reason"],
                                    "properties": {
                                        "kind": {"enum": ["model", "api-revision"],
                                                 "default": "model"},
                                        "version": {"type": ["string", "integer"],
                                                    "description": "kind model: required"},
                                        "policy_xml": {"type": "string", "maxLength": 12000,
                                                       "description": "kind api-revision: "
                                                       "default the default policy"},
                                        "environment": {"enum": ["prod"], "default": "prod"},
                                        "reason": {"type": "string", "maxLength": 2000}}}}}},
                     "responses": {"201": {"description": "Pending request", "content": {
                         "application/json": {"schema": _PROMOTION}}},
                         "400": _error("Malformed body"), "401": _error("Not signed in"),
                         "403": _error("Missing MLOps.Engineer role"),
                         "422": _error("Unknown version or environment, or no reason")}},
        },
        "/promotions/{promotion_id}": {"get": {
            "summary": "One promotion request",
            "parameters": [{"name": "promotion_id", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": {"description": "The request", "content": {
                "application/json": {"schema": _PROMOTION}}}, "404": _error("No such request")}}},
        "/promotions/{promotion_id}/approve": _decision(
            "Approve (never your own request); queues the deploy job (which also publishes the "
            "default policy when the environment has no API) or the publish job; a version "
            "that failed the promotion gate needs gate_override", "Approved", approve=True),
        "/promotions/{promotion_id}/reject": _decision(
            "Reject (never your own request); closes it", "Rejected"),
    }


def schemas() -> dict[str, Any]:
    """Component schemas of the promotion endpoints."""
    return {"Promotion": {"type": "object", "properties": {
        "id": {"type": "string"}, "kind": {"enum": ["model", "api-revision"]},
        "environment": {"type": "string"},
        "model": {"type": "object", "properties": {"name": {"type": "string"},
                                                   "version": {"type": "string"}}},
        "api": {"type": "object", "properties": {"name": {"type": "string"},
                                                 "policy_xml": {"type": "string"}}},
        "plan": {"type": "array", "items": {"type": "string"},
                 "description": "what approving does, step by step"},
        "reason": {"type": "string"},
        "state": {"enum": ["PENDING", "APPROVED", "REJECTED", "EXPIRED", "SUPERSEDED"]},
        "requested_by": {"type": "string"},
        "requested_at": {"type": "string", "format": "date-time"},
        "expires_at": {"type": "string", "format": "date-time"},
        "evidence": {"type": "object", "description": "candidate and current metrics, staging "
                                                      "smoke results and identical_to_current "
                                                      "(same data, parameters and seed as the "
                                                      "serving version), frozen at request "
                                                      "time"},
        "decided_by": {"type": ["string", "null"]},
        "decided_at": {"type": ["string", "null"], "format": "date-time"},
        "comment": {"type": ["string", "null"]},
        "deploy_job_id": {"type": ["string", "null"]},
        "superseded_by": {"type": ["string", "null"]},
        "gate": {"oneOf": [_GATE, {"type": "null"}],
                 "description": "the promotion gate's result for the version, judged when "
                                "requested (null for an API revision)"},
        "gate_override": {"type": ["string", "null"],
                          "description": "the approver's reason for approving despite a "
                                         "failed gate"}}},
        "GateResult": {"type": "object", "properties": {
            "configured": {"type": "boolean"}, "passed": {"type": "boolean"},
            "failures": {"type": "array", "items": {"type": "string"}},
            "checks": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"enum": ["min_heldout_auc", "min_selection_rate_ratio",
                                  "max_equalized_odds_gap"]},
                "attribute": {"type": ["string", "null"]},
                "threshold": {"type": "number"}, "value": {"type": ["number", "null"]},
                "passed": {"type": ["boolean", "null"],
                           "description": "null: not judged (groups too small)"},
                "detail": {"type": "string"}}}}}},
        "Fairness": {"type": "object", "properties": {
            "report": {"type": ["object", "null"],
                       "description": "the fairness report of the version on its held-out "
                                      "part (docs/responsible-credit.md); null when it has "
                                      "none"},
            "gate": {"oneOf": [_GATE, {"type": "null"}],
                     "description": "judged against the current thresholds"},
            "error": {"type": "string"}}}}
