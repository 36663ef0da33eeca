"""One error family for the scoring service, rendered as application/problem+json (RFC 9457)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus

from aiohttp import web

PROBLEM_CONTENT_TYPE = "application/problem+json"


@dataclass(frozen=True)
class FieldError:
    """One validation failure, located by a path such as ``data[0].Age``."""

    field: str
    message: str


class ProblemError(Exception):
    """An error answer: HTTP status, a generic detail, and optional per-field errors."""

    # A plain exception, not a frozen dataclass: raising machinery may set attributes on it.
    def __init__(
        self,
        status: int,
        detail: str,
        errors: tuple[FieldError, ...] = (),
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.headers = headers

    @property
    def title(self) -> str:
        """The standard reason phrase of the status."""
        return HTTPStatus(self.status).phrase

    def to_response(self, request_id: str | None = None) -> web.Response:
        """Render as a problem+json response; details never contain secrets or traces."""
        return problem_response(
            self.status, self.detail, self.errors, request_id=request_id, headers=self.headers
        )


def problem_response(
    status: int,
    detail: str,
    errors: tuple[FieldError, ...] = (),
    *,
    request_id: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> web.Response:
    """Build an RFC 9457 response with status, title, detail and optional errors."""
    body: dict[str, object] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = [{"field": e.field, "message": e.message} for e in errors]
    if request_id is not None:
        body["request_id"] = request_id
    response = web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type=PROBLEM_CONTENT_TYPE,
    )
    for name, value in headers:
        response.headers[name] = value
    if request_id is not None:
        response.headers["X-Request-ID"] = request_id
    return response
