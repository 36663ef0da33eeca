"""Settings of the local OpenID Connect issuer: URLs, lifetimes and sign-in throttling."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: The path prefix under which the issuer lives, so the issuer URL has a path segment (MSAL
#: refuses an `oidc_authority` without one).
ISSUER_PATH = "/local"
#: The only resource server the issuer mints access tokens for.
API_AUDIENCE = "api://modelgate"
#: How long verifiers may cache the JWKS document (Cache-Control max-age).
JWKS_MAX_AGE_SECONDS = 60
#: Clock skew we allow verifiers on top of a token's lifetime before dropping a retired key.
VERIFIER_SKEW_SECONDS = 300


def issuer_url(host: str = "127.0.0.1", port: int = 8443) -> str:
    """Return the issuer URL, exactly as it appears in `iss` and the discovery document."""
    return f"https://{host}:{port}{ISSUER_PATH}"


@dataclass(frozen=True)
class IssuerSettings:
    """Everything the issuer app needs; lifetimes in seconds."""

    home: Path
    host: str = "127.0.0.1"
    port: int = 8443
    access_token_ttl: int = 600
    id_token_ttl: int = 3600
    refresh_token_ttl: int = 24 * 3600
    code_ttl: int = 60
    max_failed_signins: int = 5
    lockout_base_seconds: int = 30
    lockout_max_seconds: int = 900
    #: The issuer URL clients use when it differs from the bind address (containers).
    public_url: str = ""

    @property
    def issuer(self) -> str:
        """The issuer URL: the public URL if set, else https://host:port/local."""
        return self.public_url or issuer_url(self.host, self.port)

    @property
    def state_dir(self) -> Path:
        """The folder holding keys, the code/refresh-token database and the session key."""
        return Path(self.home) / "identity"

    @property
    def credentials_file(self) -> Path:
        """The dev credentials file (docs/internal-contracts.md)."""
        return Path(self.home) / "dev-credentials.json"

    @property
    def retired_key_grace(self) -> int:
        """How long a retired signing key stays published: longest token life plus skew."""
        return max(self.access_token_ttl, self.id_token_ttl) + VERIFIER_SKEW_SECONDS


_ENV_INTS = {
    "access_token_ttl": "MODELGATE_IDP_ACCESS_TOKEN_TTL",
    "id_token_ttl": "MODELGATE_IDP_ID_TOKEN_TTL",
    "refresh_token_ttl": "MODELGATE_IDP_REFRESH_TOKEN_TTL",
    "code_ttl": "MODELGATE_IDP_CODE_TTL",
    "max_failed_signins": "MODELGATE_IDP_MAX_FAILED_SIGNINS",
    "lockout_base_seconds": "MODELGATE_IDP_LOCKOUT_SECONDS",
}


def settings_from_env(home: Path, host: str = "127.0.0.1", port: int = 8443) -> IssuerSettings:
    """Build settings from defaults overridden by MODELGATE_IDP_* environment variables."""
    values: dict[str, int] = {}
    for field, var in _ENV_INTS.items():
        raw = os.environ.get(var)
        if raw is None or raw == "":
            continue
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{var} must be an integer number of seconds/attempts") from None
        if value <= 0:
            raise ValueError(f"{var} must be positive")
        values[field] = value
    public_url = os.environ.get("MODELGATE_IDP_PUBLIC_URL", "").rstrip("/")
    if public_url and not (public_url.startswith("https://") and public_url.endswith(ISSUER_PATH)):
        raise ValueError(f"MODELGATE_IDP_PUBLIC_URL must be https://<host>:<port>{ISSUER_PATH}")
    return IssuerSettings(home=Path(home), host=host, port=port, public_url=public_url,
                          **values)
