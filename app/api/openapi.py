"""The OpenAPI description of the panel REST API."""

from __future__ import annotations

from typing import Any

from app.api import openapi_drift as drift_openapi
from app.api import openapi_promotions as promotion_openapi
from app.db import JobStatus
from app.params import SQL_INT_MAX
from app.services.kinds import JobKind

_PROBLEM = {"$ref": "#/components/schemas/Problem"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/problem+json": {"schema": _PROBLEM}}}


def document() -> dict[str, Any]:
    """Return the OpenAPI 3.1 document."""
    job_ref = {"$ref": "#/components/schemas/Job"}
    job_id = [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "modelgate panel API", "version": "1"},
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": {
            "/jobs": {
                "get": {"summary": "List jobs, newest first",
                        "parameters": [
                            {"name": "status", "in": "query", "schema": {"type": "string"}},
                            {"name": "kind", "in": "query", "schema": {"type": "string"}},
                            {"name": "parent_id", "in": "query", "schema": {"type": "string"}},
                            {"name": "limit", "in": "query", "schema": {
                                "type": "integer", "minimum": 1, "maximum": SQL_INT_MAX}}],
                        "responses": {"200": {"description": "Jobs", "content": {
                            "application/json": {"schema": {
                                "type": "object", "properties": {
                                    "jobs": {"type": "array", "items": job_ref}}}}}},
                            "401": _error("Not signed in")}},
                "post": {"summary": "Queue a job",
                         "requestBody": {"required": True, "content": {"application/json": {
                             "schema": {"$ref": "#/components/schemas/JobRequest"}}}},
                         "responses": {"202": {"description": "Queued", "content": {
                             "application/json": {"schema": job_ref}}},
                             "400": _error("Malformed body"), "401": _error("Not signed in"),
                             "403": _error("Missing role, or a deploy/publish/pipeline of a "
                                           "protected environment (request a promotion at "
                                           "/approvals/new; nothing is queued)"),
                             "422": _error("Invalid request"),
                             "503": _error("Queue unreachable; nothing was queued")}},
            },
            "/jobs/{job_id}": {"get": {
                "summary": "One job", "parameters": job_id,
                "responses": {"200": {"description": "The job", "content": {
                    "application/json": {"schema": job_ref}}}, "404": _error("No such job")}}},
            "/jobs/{job_id}/cancel": {"post": {
                "summary": "Cancel a job", "parameters": job_id,
                "responses": {"200": {"description": "Cancelled or cancelling", "content": {
                    "application/json": {"schema": job_ref}}},
                    "403": _error("Missing role"), "409": _error("Already ended")}}},
            "/apis": {"get": {
                "summary": "Published APIs with their current revision and gateway URL",
                "responses": {"200": {"description": "APIs", "content": {
                    "application/json": {"schema": {"type": "object", "properties": {
                        "gateway": {"type": "string"},
                        "apis": {"type": "array",
                                 "items": {"$ref": "#/components/schemas/Api"}}}}}}},
                    "401": _error("Not signed in")}}},
            "/apis/{name}/revisions": {"get": {
                "summary": "One API's revisions, newest first",
                "parameters": [{"name": "name", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": {"200": {"description": "Revisions", "content": {
                    "application/json": {"schema": {"type": "object", "properties": {
                        "name": {"type": "string"},
                        "revisions": {"type": "array",
                                      "items": {"$ref": "#/components/schemas/Api"}}}}}}},
                    "401": _error("Not signed in"), "404": _error("Never published")}}},
            "/apis/{name}/revisions/{revision}/rollback": {"post": {
                "summary": "Make an earlier revision current again (audited)",
                "parameters": [{"name": "name", "in": "path", "required": True,
                                "schema": {"type": "string"}},
                               {"name": "revision", "in": "path", "required": True,
                                "schema": {"type": "integer", "minimum": 1,
                                           "maximum": SQL_INT_MAX}}],
                "responses": {"200": {"description": "The revision, now current", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Api"}}}},
                    "403": _error("Missing role, or the API of a protected environment "
                                  "(request an api-revision promotion)"),
                    "404": _error("No such revision"), "409": _error("Already current"),
                    "422": _error("The gateway refused it (no deployment, policy error)")}}},
            "/deployments": {"get": {
                "summary": "Environments with slot, model version, replica health, traffic and "
                           "key age (never the keys)",
                "responses": {"200": {"description": "Environments", "content": {
                    "application/json": {"schema": {"type": "object", "properties": {
                        "environments": {"type": "array", "items": {"type": "object",
                                         "properties": {
                                             "environment": {"type": "string"},
                                             "active": {"type": ["object", "null"]},
                                             "slots": {"type": "array"},
                                             "history": {"type": "array"},
                                             "previous_version": {"type": ["string", "null"]},
                                             "runtime_reporting": {"type": "boolean"}}}}}}}}},
                    "401": _error("Not signed in")}}},
            "/models/{name}/versions": {"get": {
                "summary": "A model's versions, newest first, with metrics, aliases, tags, "
                           "lineage and fairness (report and promotion gate)",
                "parameters": [{"name": "name", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": {"200": {"description": "Versions", "content": {
                    "application/json": {"schema": {"type": "object", "properties": {
                        "name": {"type": "string"}, "versions": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/ModelVersion"}}}}}}},
                    "401": _error("Not signed in"),
                    "404": _error("No registered version of this model")}}},
            **promotion_openapi.paths(),
            **drift_openapi.paths(),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "bearerFormat": "JWT"}},
            "schemas": {
                "JobRequest": {"type": "object", "required": ["kind"], "properties": {
                    "kind": {"enum": [k.value for k in JobKind]},
                    "params": {"type": "object"}}},
                "Job": {"type": "object", "properties": {
                    "id": {"type": "string"}, "kind": {"type": "string"},
                    "status": {"enum": [s.value for s in JobStatus]},
                    "progress": {"type": "integer", "minimum": 0, "maximum": 100},
                    "step": {"type": "string"}, "params": {"type": "object"},
                    "result": {"type": ["object", "null"]},
                    "error": {"type": ["string", "null"]},
                    "requested_by": {"type": "string"}, "attempts": {"type": "integer"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "started_at": {"type": ["string", "null"], "format": "date-time"},
                    "finished_at": {"type": ["string", "null"], "format": "date-time"}}},
                "ModelVersion": {"type": "object", "properties": {
                    "name": {"type": "string"}, "version": {"type": "string"},
                    "run_id": {"type": ["string", "null"]}, "status": {"type": "string"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "source": {"type": "string"},
                    "aliases": {"type": "array", "items": {"type": "string"}},
                    "tags": {"type": "object", "additionalProperties": {"type": "string"}},
                    "metrics": {"type": "object", "additionalProperties": {"type": "number"}},
                    "params": {"type": "object", "additionalProperties": {"type": "string"}},
                    "lineage": {"type": "object", "properties": {
                        "dataset": {"type": "object", "properties": {
                            "name": {"type": ["string", "null"]},
                            "version": {"type": ["integer", "null"]},
                            "sha256": {"type": ["string", "null"]}}},
                        "run_id": {"type": ["string", "null"]},
                        "code_version": {"type": ["string", "null"]},
                        "job_id": {"type": ["string", "null"]},
                        "model": {"type": "object"},
                        "aliases": {"type": "array", "items": {"type": "string"}},
                        "deployments": {"type": "array", "items": {"type": "object"}}}},
                    "fairness": {"$ref": "#/components/schemas/Fairness"}}},
                "Api": {"type": "object", "properties": {
                    "name": {"type": "string"}, "path": {"type": "string"},
                    "environment": {"type": "string"}, "revision": {"type": "integer"},
                    "is_current": {"type": "boolean"}, "created_by": {"type": "string"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "job_id": {"type": ["string", "null"]},
                    "url": {"type": "string", "description": "gateway base URL of the API"},
                    "operations": {"type": "array", "items": {"type": "object"}}}},
                "Problem": {"type": "object", "properties": {
                    "type": {"type": "string"}, "title": {"type": "string"},
                    "status": {"type": "integer"}, "detail": {"type": "string"},
                    "errors": {"type": "array", "items": {"type": "object", "properties": {
                        "field": {"type": "string"}, "message": {"type": "string"}}}}}},
                **promotion_openapi.schemas(),
                **drift_openapi.schemas(),
            },
        },
    }
