"""OpenAPI 3.1 description of the scoring service, generated from the model signature."""

from __future__ import annotations

from typing import Any

from app.ml.signature import FieldSpec, FieldType, Signature


def _field_schema(spec: FieldSpec) -> dict[str, Any]:
    """JSON Schema of one record field."""
    schema: dict[str, Any]
    if spec.type is FieldType.CATEGORY:
        schema = {"type": "string", "enum": list(spec.categories)}
    else:
        schema = {"type": "integer" if spec.type is FieldType.INTEGER else "number"}
        if spec.minimum is not None:
            schema["minimum"] = spec.minimum
        if spec.maximum is not None:
            schema["maximum"] = spec.maximum
    if spec.nullable:
        schema["type"] = [schema["type"], "null"]
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
        schema["description"] = "Missing or null means 'none'."
    return schema


def _problem_response(description: str) -> dict[str, Any]:
    """A problem+json response entry."""
    return {
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }


def build_openapi(signature: Signature) -> dict[str, Any]:
    """The OpenAPI document for POST /score and the health endpoints."""
    record = {
        "type": "object",
        "additionalProperties": False,
        "properties": {f.name: _field_schema(f) for f in signature.fields},
        "required": [f.name for f in signature.fields if not f.nullable],
    }
    probabilities = {
        "type": "object",
        "properties": {
            c: {"type": "number", "minimum": 0, "maximum": 1} for c in signature.classes
        },
        "required": list(signature.classes),
    }
    schemas = {
        "Record": record,
        "ScoreRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["data"],
            "properties": {
                "data": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": signature.max_rows,
                    "items": {"$ref": "#/components/schemas/Record"},
                }
            },
            "example": {"data": [dict(signature.example)]},
        },
        "Prediction": {
            "type": "object",
            "required": ["label", "probabilities"],
            "properties": {
                "label": {"type": "string", "enum": list(signature.classes)},
                "probabilities": probabilities,
            },
        },
        "ScoreResponse": {
            "type": "object",
            "required": ["predictions", "model", "request_id"],
            "properties": {
                "predictions": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/Prediction"},
                },
                "model": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
                },
                "request_id": {"type": "string"},
            },
        },
        "Problem": {
            "type": "object",
            "required": ["status", "title", "detail"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "request_id": {"type": "string"},
                "errors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                    },
                },
            },
        },
    }
    score = {
        "post": {
            "operationId": "score",
            "summary": f"Score records with {signature.name} version {signature.version}",
            "security": [{"bearerKey": []}],
            "parameters": [
                {
                    "name": "X-Request-ID",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                }
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ScoreRequest"}}
                },
            },
            "responses": {
                "200": {
                    "description": "Predictions, labels by class name",
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/ScoreResponse"}
                        }
                    },
                },
                "400": _problem_response("Malformed JSON"),
                "401": _problem_response("Missing or wrong key"),
                "413": _problem_response("Body larger than 1 MiB"),
                "415": _problem_response("Content-Type is not application/json"),
                "422": _problem_response("Schema violation, with errors per field"),
                "503": _problem_response("Model not ready"),
            },
        }
    }
    health = {
        "get": {"responses": {"200": {"description": "OK"}, "503": {"description": "Not ready"}}}
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"{signature.name} scoring service",
            "version": signature.version,
        },
        "paths": {"/score": score, "/health/live": health, "/health/ready": health},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerKey": {"type": "http", "scheme": "bearer"}},
        },
    }
