"""The score tester's logic: a form from the deployed model's signature, and gateway calls.

The panel calls the real gateway with the signed-in user's own access token, exactly as a
client would. The token only ever travels in the Authorization header of that call: what is
shown back (request, response, snippets) carries a placeholder instead.
"""

from __future__ import annotations

import json
import pprint
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests

from app.ml.signature import DESIGN_EXAMPLE, FieldSpec, FieldType, Signature
from app.services.backend import api_path, environment_names

GATEWAY_TIMEOUT_SECONDS = 10.0
MAX_CHUNK_ROWS = 100
TOP_REASONS = 3  # reason codes per row in the batch download
TOKEN_PLACEHOLDER = "<your access token>"
NO_ACCOUNT = ""  # the form value of the "no account" option of a nullable category
_FIELD_PATH = re.compile(r"^data\[(\d+)\]\.(.+)$")


class ScoringUnavailable(Exception):
    """Nothing can be scored in this environment yet; the message says why, for the page."""


@dataclass(frozen=True)
class DeployedModel:
    """The model version serving an environment and its signature."""

    environment: str
    name: str
    version: str
    signature: Signature


@dataclass(frozen=True)
class FormField:
    """One input of the generated form."""

    name: str
    input_id: str
    label: str
    kind: str  # "select" or "number"
    value: str
    options: tuple[tuple[str, str], ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    step: str = "1"
    nullable: bool = False
    hint: str = ""


@dataclass(frozen=True)
class ScoreOutcome:
    """One gateway call as the page shows it (never holding the token)."""

    status: int
    body: Any
    latency_ms: float
    request_id: str | None
    request_json: dict[str, Any]
    field_errors: dict[str, str] = field(default_factory=dict)
    other_errors: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether the gateway answered 200 with predictions."""
        return self.status == 200 and isinstance(self.body, dict) and "predictions" in self.body


# --------------------------------------------------------------------------- the model


def deployed_model(environment: str) -> DeployedModel:
    """The signature of the version active in `environment` (models/<name>/<version>/).

    Raises ScoringUnavailable when the environment is unknown, nothing is deployed there, or
    the package is missing.
    """
    from app.services import deployments, models

    if environment not in environment_names():
        raise ScoringUnavailable(f"unknown environment {environment!r}")
    active = deployments.active(environment)
    if active is None:
        raise ScoringUnavailable(f"No model is deployed to {environment} yet: an engineer runs "
                                 "the pipeline (or a deploy job) first.")
    path = models.package_dir(active.model_name, active.model_version) / "signature.json"
    try:
        signature = Signature.load(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ScoringUnavailable(f"The signature of {active.model_name} version "
                                 f"{active.model_version} cannot be read "
                                 f"({type(exc).__name__}).") from None
    return DeployedModel(environment, active.model_name, str(active.model_version), signature)


def score_url(gateway_url: str, environment: str) -> str:
    """The scoring operation's URL on the gateway."""
    return f"{gateway_url.rstrip('/')}/{api_path(environment)}/score"


# --------------------------------------------------------------------------- the form


def example_record(signature: Signature) -> dict[str, Any]:
    """The seed's example record when it fits the signature, else the signature's."""
    names = set(signature.feature_names)
    if set(DESIGN_EXAMPLE) == names:
        return dict(DESIGN_EXAMPLE)
    return dict(signature.example)


def input_id(name: str) -> str:
    """An HTML id for a field name ("Credit amount" → field-credit-amount)."""
    return "field-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _form_value(value: Any) -> str:
    if value is None:
        return NO_ACCOUNT
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def form_fields(signature: Signature, values: Mapping[str, Any] | None = None) -> list[FormField]:
    """The inputs for a signature, filled with `values` (default: the example record)."""
    values = example_record(signature) if values is None else values
    out = []
    for spec in signature.fields:
        value = _form_value(values.get(spec.name))
        if spec.type is FieldType.CATEGORY:
            options = tuple((c, c) for c in spec.categories or ())
            if spec.nullable:
                options = ((NO_ACCOUNT, "No account"), *options)
            out.append(FormField(spec.name, input_id(spec.name), spec.name, "select", value,
                                 options=options, nullable=spec.nullable,
                                 hint="“No account” sends null" if spec.nullable else ""))
        else:
            out.append(FormField(
                spec.name, input_id(spec.name), spec.name, "number", value,
                minimum=spec.minimum, maximum=spec.maximum,
                step="1" if spec.type is FieldType.INTEGER else "any", nullable=spec.nullable,
                hint=_range_hint(spec)))
    return out


def _range_hint(spec: FieldSpec) -> str:
    def fmt(v: float | None) -> str:
        return "?" if v is None else (str(int(v)) if float(v).is_integer() else str(v))

    kind = "whole number" if spec.type is FieldType.INTEGER else "number"
    return f"{kind}, {fmt(spec.minimum)} to {fmt(spec.maximum)}"


def coerce(spec: FieldSpec, raw: Any) -> Any:
    """A form or CSV text value as JSON for the gateway; what does not parse is sent as is.

    Blank means null for nullable fields and "missing" otherwise (returned as ...), so the
    gateway, which owns validation, names the problem.
    """
    if raw is None:
        return None if spec.nullable else ...
    text = str(raw).strip()
    if text == "":
        return None if spec.nullable else ...
    if spec.type is FieldType.CATEGORY:
        return text
    try:
        number = float(text)
    except ValueError:
        return text
    if spec.type is FieldType.INTEGER and number.is_integer() and "." not in text \
            and "e" not in text.lower():
        return int(text)
    return number


def record_from_form(signature: Signature, form: Mapping[str, Any]) -> dict[str, Any]:
    """Build one record from form values keyed by field name (missing inputs are left out)."""
    record: dict[str, Any] = {}
    for spec in signature.fields:
        value = coerce(spec, form.get(spec.name))
        if value is not ...:
            record[spec.name] = value
    return record


def records_from_rows(signature: Signature, columns: Sequence[str],
                      rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """Records from CSV rows; columns that are not fields of the signature are ignored."""
    specs = {s.name: s for s in signature.fields}
    records = []
    for row in rows:
        record: dict[str, Any] = {}
        for name, raw in zip(columns, row, strict=False):
            spec = specs.get(name)
            if spec is None:
                continue
            value = coerce(spec, raw)
            if value is not ...:
                record[name] = value
        records.append(record)
    return records


# --------------------------------------------------------------------------- errors


def split_errors(problem: Any) -> tuple[dict[int, dict[str, str]], list[str]]:
    """Split a problem document's `errors` into per-row field messages and the rest."""
    by_row: dict[int, dict[str, str]] = {}
    other: list[str] = []
    errors = problem.get("errors") if isinstance(problem, dict) else None
    for item in errors or []:
        if not isinstance(item, dict):
            continue
        path, message = str(item.get("field", "")), str(item.get("message", ""))
        match = _FIELD_PATH.match(path)
        if match:
            row = by_row.setdefault(int(match.group(1)), {})
            row.setdefault(match.group(2), message)
        else:
            other.append(f"{path}: {message}" if path else message)
    return by_row, other


def field_errors(problem: Any) -> tuple[dict[str, str], list[str]]:
    """Map a single-record problem's errors to field names (data[0].Age → Age)."""
    by_row, other = split_errors(problem)
    fields = by_row.pop(0, {})
    for row, errors in by_row.items():
        other.extend(f"data[{row}].{name}: {msg}" for name, msg in errors.items())
    return fields, other


# --------------------------------------------------------------------------- the call


def call_gateway(url: str, token: str, body: dict[str, Any], *, verify: str | bool,
                 timeout: float = GATEWAY_TIMEOUT_SECONDS) -> ScoreOutcome:
    """POST a score request through the gateway as the user; errors become outcomes, not raises."""
    session = requests.Session()
    session.trust_env = False  # no proxy or CA bundle from the environment
    started = time.perf_counter()
    try:
        response = session.post(url, json=body, timeout=timeout, verify=verify,
                                headers={"Authorization": f"Bearer {token}",
                                         "Accept": "application/json"})
    except requests.RequestException as exc:
        elapsed = (time.perf_counter() - started) * 1000
        return ScoreOutcome(0, None, round(elapsed, 1), None, body,
                            other_errors=(f"The gateway could not be reached "
                                          f"({type(exc).__name__}).",))
    finally:
        session.close()
    elapsed = (time.perf_counter() - started) * 1000
    try:
        answer: Any = response.json()
    except ValueError:
        answer = {"detail": response.text[:2000]}
    answer = mask(answer, token)
    request_id = response.headers.get("X-Request-ID") or (
        answer.get("request_id") if isinstance(answer, dict) else None)
    fields: dict[str, str] = {}
    other: list[str] = []
    if response.status_code != 200:
        fields, other = field_errors(answer)
        if not fields and not other:
            detail = answer.get("detail") or answer.get("title") if isinstance(answer, dict) \
                else None
            other = [str(detail or f"The gateway answered {response.status_code}.")]
    return ScoreOutcome(response.status_code, answer, round(elapsed, 1), request_id, body,
                        fields, tuple(other))


def mask(value: Any, token: str) -> Any:
    """Replace every occurrence of the token in a JSON value (a defence: gateways never echo it)."""
    if not token:
        return value
    text = json.dumps(value)
    if token not in text:
        return value
    return json.loads(text.replace(token, TOKEN_PLACEHOLDER))


def explain_refused(outcome: ScoreOutcome) -> str | None:
    """The gateway's detail when a 422 refused only the ``explain`` option, else None.

    A model version that cannot explain (a package trained before reason codes, a model
    served by scikit-learn) still scores: callers retry without ``explain``.
    """
    body = outcome.body
    if outcome.status != 422 or not isinstance(body, dict):
        return None
    errors = body.get("errors")
    if not isinstance(errors, list) or not errors or not all(
            isinstance(e, dict) and e.get("field") == "explain" for e in errors):
        return None
    return str(body.get("detail") or "This model version cannot explain its predictions.")


def score_explained(url: str, token: str, body: dict[str, Any], *, verify: str | bool
                    ) -> tuple[ScoreOutcome, str | None]:
    """Score with reason codes; when the model cannot explain, score without and say why."""
    outcome = call_gateway(url, token, {**body, "explain": True}, verify=verify)
    refused = explain_refused(outcome)
    if refused is None:
        return outcome, None
    return call_gateway(url, token, body, verify=verify), refused


def top_reasons(prediction: Mapping[str, Any], count: int = TOP_REASONS) -> list[str]:
    """The first ``count`` reason codes of a prediction as sentences (largest first)."""
    from app.labels import reason_sentence

    reasons = prediction.get("reasons")
    factors = reasons.get("factors") if isinstance(reasons, dict) else None
    if not isinstance(factors, list):
        return []
    return [reason_sentence(f) for f in factors[:count] if isinstance(f, dict)]


# --------------------------------------------------------------------------- shown back


def raw_request(url: str, body: dict[str, Any]) -> str:
    """The HTTP request as sent, with the token masked."""
    return (f"POST {url}\nAuthorization: Bearer {TOKEN_PLACEHOLDER}\n"
            f"Content-Type: application/json\n\n{json.dumps(body, indent=2)}")


def curl_snippet(url: str, body: dict[str, Any], ca_bundle: str | None) -> str:
    """A curl command for the same call; the token comes from $MODELGATE_TOKEN."""
    ca = f" \\\n  --cacert {_shell_quote(ca_bundle)}" if ca_bundle else ""
    return (f"curl -sS -X POST {_shell_quote(url)}{ca} \\\n"
            f"  -H \"Authorization: Bearer $MODELGATE_TOKEN\" \\\n"
            f"  -H 'Content-Type: application/json' \\\n"
            f"  -d {_shell_quote(json.dumps(body))}")


def python_snippet(url: str, body: dict[str, Any], ca_bundle: str | None) -> str:
    """A Python (requests) snippet for the same call; the token comes from MODELGATE_TOKEN."""
    verify = repr(ca_bundle) if ca_bundle else "True"
    literal = pprint.pformat(body, indent=1, width=80, sort_dicts=False)
    return ("import os\n\nimport requests\n\n"
            f"response = requests.post(\n    {url!r},\n"
            f"    json={literal.replace(chr(10), chr(10) + '         ')},\n"
            "    headers={\"Authorization\": f\"Bearer {os.environ['MODELGATE_TOKEN']}\"},\n"
            f"    verify={verify},\n    timeout=10,\n)\nprint(response.status_code, "
            "response.json())")


@dataclass(frozen=True)
class ChunkResult:
    """Per-row predictions or errors of one batch chunk."""

    rows: list[dict[str, Any]]
    model_version: str | None
    status: int


def score_chunk(url: str, token: str, signature: Signature, columns: Sequence[str],
                rows: Sequence[Sequence[Any]], *, verify: str | bool,
                explain: bool = False) -> ChunkResult:
    """Score up to MAX_CHUNK_ROWS CSV rows; rows the gateway refuses get their errors instead.

    A 422 names the bad rows (data[i].Field): those are reported, and the others are sent
    again on their own, so one bad row does not cost the chunk.
    """
    return score_records(url, token, records_from_rows(signature, columns, rows), verify=verify,
                         explain=explain)


def score_records(url: str, token: str, records: Sequence[dict[str, Any]], *,
                  verify: str | bool, explain: bool = False) -> ChunkResult:
    """Score up to MAX_CHUNK_ROWS records; each result is a prediction or that row's errors.

    With ``explain``, each prediction also carries ``reasons``: its TOP_REASONS largest reason
    codes as sentences (none when the model version cannot explain).
    """
    results: list[dict[str, Any]] = [{} for _ in records]
    pending = list(range(len(records)))
    version: str | None = None
    status = 200
    attempts = 3 if explain else 2  # one more when only `explain` is refused
    for _ in range(attempts):
        if not pending:
            break
        body: dict[str, Any] = {"data": [records[i] for i in pending]}
        outcome = call_gateway(url, token, {**body, "explain": True} if explain else body,
                               verify=verify)
        status = outcome.status
        if explain and explain_refused(outcome) is not None:
            explain = False
            continue
        if outcome.ok:
            version = str((outcome.body.get("model") or {}).get("version") or "") or None
            for index, prediction in zip(pending, outcome.body["predictions"], strict=False):
                results[index] = {"label": prediction.get("label"),
                                  "probabilities": prediction.get("probabilities") or {}}
                if explain:
                    results[index]["reasons"] = top_reasons(prediction)
            pending = []
            break
        by_row, other = split_errors(outcome.body) if outcome.status == 422 else ({}, [])
        if not by_row:
            message = "; ".join(other or outcome.other_errors) or f"HTTP {outcome.status}"
            for index in pending:
                results[index] = {"error": message}
            pending = []
            break
        still = []
        for position, index in enumerate(pending):
            errors = by_row.get(position)
            if errors:
                results[index] = {"error": "; ".join(f"{k}: {v}" for k, v in errors.items())}
            else:
                still.append(index)
        pending = still
    for index in pending:  # refused twice: give up on these rows rather than loop
        results[index] = {"error": "refused by the gateway"}
    return ChunkResult(results, version, status)


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"
