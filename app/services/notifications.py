"""Outbound notifications: optional webhooks per event type, signed with HMAC-SHA256.

Configuration: MODELGATE_WEBHOOKS = {"promotion.requested": "http://127.0.0.1:9999/hook", …}
(only https URLs, or http to a loopback address) and MODELGATE_WEBHOOK_SECRET. The panel never
calls a webhook inside a request: `notify` queues the Celery task
`modelgate.notifications.deliver`, which posts the body with
`X-Modelgate-Signature: sha256=<hex of HMAC-SHA256(secret, body)>` and retries 5xx answers and
network errors with exponential backoff, a bounded number of times.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import uuid
from typing import Any
from urllib.parse import urlsplit

from flask import current_app

logger = logging.getLogger(__name__)

DELIVER_TASK = "modelgate.notifications.deliver"
MAX_ATTEMPTS = 5
TIMEOUT_SECONDS = 5.0
SIGNATURE_HEADER = "X-Modelgate-Signature"


class DeliveryError(Exception):
    """A webhook answered with an error or could not be reached."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def allowed_url(url: str) -> bool:
    """Only https, or plain http to a loopback address (no credentials in the URL)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return False
    if parts.username or parts.password or not host:
        return False
    if parts.scheme == "https":
        return True
    if parts.scheme != "http":
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def webhook_for(event_type: str) -> str | None:
    """The configured URL for an event type, if any and allowed."""
    hooks = current_app.config.get("WEBHOOKS") or {}
    if isinstance(hooks, str):  # an unparseable MODELGATE_WEBHOOKS stays a string
        logger.warning("MODELGATE_WEBHOOKS is not a JSON object; webhooks are off")
        return None
    url = hooks.get(event_type) if isinstance(hooks, dict) else None
    if not url:
        return None
    if not isinstance(url, str) or not allowed_url(url):
        logger.warning("webhook for %s refused: only https or loopback http URLs", event_type)
        return None
    return url


def sign(secret: str, body: bytes) -> str:
    """The signature header value for a body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def notify(event_type: str, data: dict[str, Any]) -> None:
    """Queue a webhook delivery for the event if one is configured; never raises."""
    if webhook_for(event_type) is None:
        return
    event = {"id": uuid.uuid4().hex, "type": event_type, "data": data}
    try:
        current_app.extensions["celery"].send_task(DELIVER_TASK, args=[event])
    except Exception as exc:  # a notification must never undo the change it reports
        logger.warning("could not queue the %s webhook: %s", event_type,
                       exc.__class__.__name__)


def deliver(event: dict[str, Any]) -> int:
    """Post one event to its webhook; return the HTTP status.

    Raises:
        DeliveryError: transient (5xx, 429, network) or permanent (4xx, no URL, no secret).
    """
    import requests

    url = webhook_for(str(event.get("type")))
    if url is None:
        raise DeliveryError(f"no allowed webhook for {event.get('type')}", transient=False)
    secret = str(current_app.config.get("WEBHOOK_SECRET") or "")
    if not secret:
        raise DeliveryError("MODELGATE_WEBHOOK_SECRET is not set; refusing to send unsigned",
                            transient=False)
    body = json.dumps(event, sort_keys=True, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body),
               "X-Modelgate-Event": str(event.get("type")),
               "X-Modelgate-Delivery": str(event.get("id"))}
    session = requests.Session()
    session.trust_env = False  # a proxy from the environment must not see signed bodies
    try:
        response = session.post(url, data=body, headers=headers, timeout=TIMEOUT_SECONDS,
                                allow_redirects=False)
    except requests.RequestException as exc:
        raise DeliveryError(f"webhook unreachable: {exc.__class__.__name__}",
                            transient=True) from None
    finally:
        session.close()
    if response.status_code >= 500 or response.status_code == 429:
        raise DeliveryError(f"webhook answered {response.status_code}", transient=True)
    if response.status_code >= 300:
        raise DeliveryError(f"webhook answered {response.status_code}", transient=False)
    return response.status_code


def backoff_seconds(retries: int) -> float:
    """Delay before retry number `retries + 1`: 1, 2, 4, 8 … seconds, at most 60."""
    base = float(current_app.config.get("WEBHOOK_RETRY_BASE_SECONDS", 1.0))
    return float(min(60.0, base * (2 ** retries)))
