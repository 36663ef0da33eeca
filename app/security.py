"""Response hardening for the panel: security headers and safe redirect targets."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit


def init_security(app: Any) -> None:
    """Add CSP, frame, sniffing, referrer and (on HTTPS) HSTS headers to every response."""
    issuer = urlsplit(app.config.get("ISSUER_URL", ""))
    issuer_origin = f"{issuer.scheme}://{issuer.netloc}" if issuer.netloc else ""
    if app.config.get("IDENTITY") == "entra":
        # Chrome applies form-action to the redirect after the sign-in/sign-out POST.
        issuer_origin = "https://login.microsoftonline.com"
    csp = "; ".join([
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        f"form-action 'self' {issuer_origin}".strip(),
    ])

    @app.after_request
    def add_headers(response: Any) -> Any:
        from flask import request

        headers = response.headers
        headers.setdefault("Content-Security-Policy", csp)
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "same-origin")
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        if request.is_secure:
            headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
        if request.path.startswith(("/api/", "/auth/")) or response.mimetype == "text/html":
            headers.setdefault("Cache-Control", "no-store")
        return response


def safe_next(target: str | None, default: str = "/") -> str:
    """Return `target` if it is a same-site path, else `default` (no open redirects)."""
    if not target or not isinstance(target, str):
        return default
    if any(ch in target for ch in "\\\r\n\t") or any(ord(ch) < 32 for ch in target):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return default
    return target
