"""The compiled policy plan: frozen dataclasses the proxy executes (built by policy.py), and
the counter-key evaluation the proxy runs per request."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "te", "trailer", "trailers", "transfer-encoding", "upgrade"})
# never forwarded from the caller: the gateway sets these itself (ASVS V4.1.3)
NOT_FORWARDED = HOP_BY_HOP | {"authorization", "host", "content-length", "x-forwarded-for",
                              "x-forwarded-host", "x-forwarded-proto", "forwarded",
                              "x-request-id"}


class PolicyError(ValueError):
    """The policy document uses something the local gateway does not support, or is invalid."""


class UnsafePolicy(PolicyError):
    """The policy compiles but must not be served (it could leak a secret, inject headers,
    reach an unlisted backend or serve anonymous callers); the message names the element."""


class ClaimMatch(Enum):
    """How the values of a required claim must match."""

    ALL = "all"
    ANY = "any"


class HeaderAction(Enum):
    """set-header exists-action."""

    OVERRIDE = "override"
    SKIP = "skip"
    APPEND = "append"
    DELETE = "delete"


@dataclass(frozen=True)
class NamedValue:
    """A resolved (decrypted) named value."""

    value: str
    secret: bool


@dataclass(frozen=True)
class RequiredClaim:
    """One <claim> of <required-claims>."""

    name: str
    match: ClaimMatch
    separator: str | None
    values: tuple[str, ...]


@dataclass(frozen=True)
class ValidateJwt:
    """validate-jwt, strict by construction (signed tokens only, audiences mandatory)."""

    header_name: str
    failed_status: int
    failed_message: str | None
    require_expiration: bool
    require_scheme: str | None
    clock_skew_s: int
    output_variable: str | None
    openid_config_urls: tuple[str, ...]
    audiences: tuple[str, ...]
    issuers: tuple[str, ...]
    required_claims: tuple[RequiredClaim, ...]
    #: everything that decides whether the token itself is valid (not the claim checks): the
    #: verified-token cache's key, built once here rather than on every request
    validation_key: tuple[object, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "validation_key", (
            self.header_name, self.require_scheme, self.require_expiration, self.clock_skew_s,
            self.openid_config_urls, self.audiences, self.issuers))


@dataclass(frozen=True)
class CheckHeader:
    """check-header."""

    name: str
    failed_status: int
    failed_message: str
    ignore_case: bool
    values: tuple[str, ...]


@dataclass(frozen=True)
class CounterKey:
    """A rate-limit counter key: a literal, or the validated JWT's subject or claim."""

    literal: str | None = None
    variable: str | None = None
    claim: str | None = None
    default: str = ""
    default_is_subject: bool = False


@dataclass(frozen=True)
class RateLimitByKey:
    """rate-limit-by-key."""

    calls: int
    renewal_period_s: int
    counter_key: CounterKey


@dataclass(frozen=True)
class SetHeader:
    """set-header with named values already substituted."""

    name: str
    action: HeaderAction
    values: tuple[str, ...]
    lowered: str = field(init=False, repr=False, compare=False)  # name, for comparisons

    def __post_init__(self) -> None:
        object.__setattr__(self, "lowered", self.name.lower())


@dataclass(frozen=True)
class SetBackendService:
    """set-backend-service base-url."""

    base_url: str


@dataclass(frozen=True)
class Cors:
    """cors."""

    origins: tuple[str, ...]
    methods: tuple[str, ...]
    headers: tuple[str, ...]
    expose_headers: tuple[str, ...]
    allow_credentials: bool
    max_age_s: int | None


@dataclass(frozen=True)
class ReturnResponse:
    """return-response: stop the pipeline and answer with this."""

    status: int
    reason: str | None
    headers: tuple[SetHeader, ...]
    body: str


InboundStep = ValidateJwt | CheckHeader | RateLimitByKey | SetHeader | SetBackendService | Cors | (
    ReturnResponse)


@dataclass(frozen=True)
class Policy:
    """A compiled policy document."""

    inbound: tuple[InboundStep, ...]
    forward_timeout_s: float | None
    outbound: tuple[SetHeader, ...]
    on_error: tuple[SetHeader, ...]
    # values (8+ characters) of the secret named values sent to the backend: no answer may
    # contain one (the proxy checks every answer before it leaves)
    secrets: tuple[str, ...]
    #: the cors step, if any (read on every request: found once, when compiled)
    cors: Cors | None = field(init=False, repr=False, compare=False)
    #: the secrets as the UTF-8 bytes an answer body is scanned for
    secret_bytes: tuple[bytes, ...] = field(init=False, repr=False, compare=False)
    #: request headers (lower case) an inbound set-header overrides or deletes: the caller's
    #: copies can be left out when the backend request is first built, for the same result
    replaced: frozenset[str] = field(init=False, repr=False, compare=False)
    #: the caller's request headers never sent to the backend (lower case)
    dropped_request: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cors", next(
            (s for s in self.inbound if isinstance(s, Cors)), None))
        object.__setattr__(self, "secret_bytes", tuple(s.encode() for s in self.secrets))
        object.__setattr__(self, "replaced", frozenset(
            s.lowered for s in self.inbound if isinstance(s, SetHeader)
            and s.action in (HeaderAction.OVERRIDE, HeaderAction.DELETE)))
        object.__setattr__(self, "dropped_request", NOT_FORWARDED | self.replaced)


def resolve_counter_key(key: CounterKey, variables: Mapping[str, Mapping[str, object]]) -> str:
    """Evaluate a compiled counter key against the validated tokens of this request."""
    if key.literal is not None:
        return key.literal
    claims = variables.get(key.variable or "", {})
    subject = str(claims.get("sub", ""))
    if key.claim is None:
        return subject
    value = claims.get(key.claim)
    if value is None or value == "":
        return subject if key.default_is_subject else key.default
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)
