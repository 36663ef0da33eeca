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


_EXPLAIN = (
    "Add reason codes to each prediction: `reasons` with the log-odds of the positive class "
    "split into a base and one contribution per input field. A model version that cannot "
    "explain (see /health/ready) answers 422 naming `explain`."
)


def _reasons_schemas(signature: Signature) -> dict[str, Any]:
    """Schemas of the ``reasons`` object added when a request asks for ``explain``."""
    positive = signature.positive_class
    value_types = sorted({"string" if f.type is FieldType.CATEGORY else
                          ("integer" if f.type is FieldType.INTEGER else "number")
                          for f in signature.fields} | {"null"})
    return {
        "Reasons": {
            "type": "object",
            "description": (
                f"Why the model gave this record its probability of {positive!r}, in log-odds "
                f"of {positive!r}: base + the sum of every factor's contribution equals "
                f"log(P({positive}) / (1 - P({positive}))) to 1e-9. Logistic regression: "
                "exact linear contributions relative to the training mean of the encoded "
                "features (base = intercept + coef · mean). Gradient boosting: path-dependent "
                "TreeSHAP values on the served trees (base = the trees' expected output over "
                "their training cover). A field's one-hot columns are summed."
            ),
            "required": ["base", "factors"],
            "properties": {
                "base": {
                    "type": "number",
                    "description": f"Log-odds of {positive!r} for the baseline applicant.",
                },
                "factors": {
                    "type": "array",
                    "description": "One per input field, largest |contribution| first.",
                    "items": {"$ref": "#/components/schemas/ReasonFactor"},
                },
            },
        },
        "ReasonFactor": {
            "type": "object",
            "required": ["field", "value", "direction", "contribution"],
            "properties": {
                "field": {"type": "string", "enum": list(signature.feature_names)},
                "value": {
                    "type": value_types,
                    "description": "The record's value of the field (null: none given).",
                },
                "direction": {
                    "type": "string",
                    "enum": ["raises", "lowers", "neutral"],
                    "description": f"Whether the field raises or lowers the risk of "
                                   f"{positive!r} (neutral: no effect at all).",
                },
                "contribution": {
                    "type": "number",
                    "description": f"Change in the log-odds of {positive!r} due to the field.",
                },
            },
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
                },
                "explain": {"type": "boolean", "default": False, "description": _EXPLAIN},
            },
            "example": {"data": [dict(signature.example)]},
        },
        "Prediction": {
            "type": "object",
            "required": ["label", "probabilities"],
            "properties": {
                "label": {"type": "string", "enum": list(signature.classes)},
                "probabilities": probabilities,
                "reasons": {
                    "$ref": "#/components/schemas/Reasons",
                    "description": "Present only when the request asked for explain.",
                },
            },
        },
        **_reasons_schemas(signature),
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
                },
                {
                    "name": "explain",
                    "in": "query",
                    "required": False,
                    "description": _EXPLAIN + " Same as `\"explain\": true` in the body.",
                    "schema": {"type": "boolean", "default": False},
                },
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
                "422": _problem_response(
                    "Schema violation, with errors per field (or explain asked of a model "
                    "version that cannot explain)"
                ),
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
