"""One error vocabulary with HTTP statuses, and the one place that renders it (HTML or JSON)."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

logger = logging.getLogger(__name__)


class AppError(Exception):
    """An error whose message is safe to show to the user, with the HTTP status it maps to."""

    status = 500
    title = "Internal error"

    def __init__(self, message: str, *, errors: list[dict[str, str]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or []
        self.headers = headers or {}


class ConfigError(AppError):
    """The configuration is missing or unsafe; the process refuses to start."""

    title = "Configuration error"


class BadRequest(AppError):
    status = 400
    title = "Bad request"


class Unauthorized(AppError):
    status = 401
    title = "Unauthorized"


class Forbidden(AppError):
    status = 403
    title = "Forbidden"


class NotFound(AppError):
    status = 404
    title = "Not found"


class Conflict(AppError):
    status = 409
    title = "Conflict"


class ValidationError(AppError):
    status = 422
    title = "Validation failed"


class TooManyRequests(AppError):
    status = 429
    title = "Too many requests"


class ServiceUnavailable(AppError):
    status = 503
    title = "Service unavailable"


def problem(status: int, detail: str, *, title: str | None = None,
            errors: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """Build an RFC 9457 problem document."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    return body


def register_error_handlers(app: Any) -> None:
    """Render AppError and HTTP errors as problem+json for API/JSON clients, HTML otherwise."""
    from flask import render_template, request
    from flask_wtf.csrf import CSRFError
    from werkzeug.exceptions import HTTPException

    def wants_json() -> bool:
        if request.path.startswith("/api/") or request.path.endswith((".json", "/status")):
            return True
        best = request.accept_mimetypes.best_match(["application/json", "text/html"])
        return best == "application/json" and request.accept_mimetypes[best] > \
            request.accept_mimetypes["text/html"]

    def render(status: int, detail: str, title: str, errors: list[dict[str, str]] | None,
               headers: dict[str, str] | None = None) -> Any:
        if wants_json():
            body = problem(status, detail, title=title, errors=errors)
            response = app.response_class(
                app.json.dumps(body), status=status, mimetype="application/problem+json"
            )
        else:
            response = app.response_class(
                render_template("errors/error.html", status=status, title=title,
                                detail=detail, errors=errors or []),
                status=status, mimetype="text/html",
            )
        for name, value in (headers or {}).items():
            response.headers[name] = value
        return response

    @app.errorhandler(AppError)
    def handle_app_error(exc: AppError) -> Any:
        if exc.status >= 500:
            logger.error("%s %s failed: %s", request.method, request.path, exc.message)
        return render(exc.status, exc.message, exc.title, exc.errors, exc.headers)

    @app.errorhandler(CSRFError)
    def handle_csrf(exc: CSRFError) -> Any:
        return render(400, "The form is out of date or the CSRF token is missing; "
                           "reload the page and try again.", "Bad request", None)

    @app.errorhandler(HTTPException)
    def handle_http(exc: HTTPException) -> Any:
        status = exc.code or 500
        return render(status, exc.description or HTTPStatus(status).phrase,
                      HTTPStatus(status).phrase, None)

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception) -> Any:
        # Log once, here, with the traceback; the user sees no internals.
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return render(500, "Something went wrong on our side; it has been logged.",
                      "Internal error", None)
