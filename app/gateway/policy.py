"""API Management policy XML → a typed, pre-compiled plan; anything unsupported is a PolicyError.

Supported subset (one policy file, two gateways; docs/pipeline-config.md says what a policy may
do):

* sections ``inbound``, ``backend``, ``outbound``, ``on-error``; ``<base/>`` anywhere directly in
  a section (there is no global scope locally, so it is a no-op);
* inbound: ``validate-jwt``, ``check-header``, ``rate-limit-by-key``, ``set-header``,
  ``set-backend-service``, ``cors``, ``return-response``;
* backend: ``forward-request`` (``timeout`` in seconds);
* outbound and on-error: ``set-header`` (applied to the response).

Policy expressions are refused everywhere except ``rate-limit-by-key/@counter-key``, which takes
a literal or exactly one of these forms (``V`` = an ``output-token-variable-name`` set by an
earlier ``validate-jwt``, ``C`` = a claim name, ``D`` = a string literal)::

    @(((Jwt)context.Variables["V"]).Subject)
    @(((Jwt)context.Variables["V"]).Claims.GetValueOrDefault("C", "D"))
    @(((Jwt)context.Variables["V"]).Claims.GetValueOrDefault("C",
                                                              ((Jwt)context.Variables["V"]).Subject))

so the counter is always keyed by the validated caller, never by a client-supplied header or IP.
``{{name}}`` named values are resolved at compile time in set-header values and base-url.
A *secret* named value may only be used in an ``<inbound>`` set-header (the request to the
backend); anywhere else, or a literal copy of a secret's value in anything the gateway answers,
is refused naming the element, so no policy can return a key to callers. Header values, reason
phrases, cors values and base-url refuse CR, LF, NUL and other controls (no injected lines).
Both are UnsafePolicy: publishing fails, and a stored revision is not served (503).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from urllib.parse import urlsplit

from app.gateway.plan import (
    CheckHeader,
    ClaimMatch,
    Cors,
    CounterKey,
    HeaderAction,
    InboundStep,
    NamedValue,
    Policy,
    PolicyError,
    RateLimitByKey,
    RequiredClaim,
    ReturnResponse,
    SetBackendService,
    SetHeader,
    UnsafePolicy,
    ValidateJwt,
    resolve_counter_key,
)

__all__ = [
    "CheckHeader",
    "ClaimMatch",
    "Cors",
    "CounterKey",
    "HeaderAction",
    "InboundStep",
    "NamedValue",
    "Policy",
    "PolicyError",
    "RateLimitByKey",
    "RequiredClaim",
    "ReturnResponse",
    "SetBackendService",
    "SetHeader",
    "UnsafePolicy",
    "ValidateJwt",
    "compile_policy",
    "resolve_counter_key",
]

_NAMED = re.compile(r"\{\{([^{}]*)\}\}")
_NAME_OK = re.compile(r"^[A-Za-z0-9._-]{1,256}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
_VAR = r'\(\s*\(\s*Jwt\s*\)\s*context\.Variables\s*\[\s*"([A-Za-z_][A-Za-z0-9_-]{0,63})"\s*\]\s*\)'
_SUBJECT = re.compile(rf"^@\(\s*{_VAR}\s*\.\s*Subject\s*\)$")
_CLAIM = re.compile(
    rf'^@\(\s*{_VAR}\s*\.\s*Claims\s*\.\s*GetValueOrDefault\s*\(\s*"([A-Za-z0-9_.:/-]{{1,128}})"'
    rf'\s*,\s*(?:"([^"\\{{}}@]{{0,128}})"|{_VAR}\s*\.\s*Subject)\s*\)\s*\)$'
)
_MAX_XML = 256 * 1024
# Shorter secrets are not searched for in answers (too many false positives); keys are longer.
_MIN_GUARDED_SECRET = 8
_ONLY_TO_BACKEND = "secret named values may only be used in <inbound> set-header to the backend"
# CR and LF would end the header line (a policy could add Set-Cookie); NUL and the other
# controls are not allowed in field values or reason phrases either (RFC 9110 §5.5)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class _Compiler:
    """One compilation: named values in; used secrets, answer texts and JWT variables tracked."""

    def __init__(self, named_values: Mapping[str, NamedValue]) -> None:
        self._named = named_values
        self.secrets: set[str] = set()
        self.jwt_variables: set[str] = set()
        self._answered: list[tuple[str, str]] = []

    def text(self, raw: str | None, where: str, *, named: bool = False,
             secret_ok: bool = False, answered: bool = False, one_line: bool = False) -> str:
        """Return a literal, substituting {{named values}} if allowed; refuse expressions.

        ``where`` names the element (e.g. ``outbound/set-header[@name='X']``); ``secret_ok``
        allows secret named values (only the request to the backend); ``answered`` marks text
        the gateway may send to callers, checked by :meth:`check_answers`; ``one_line``
        refuses control characters (header values, reason phrases, URLs).
        """
        value = raw or ""
        if value.lstrip().startswith(("@(", "@{")):
            raise PolicyError(f"policy expressions are not supported in {where}: {value[:60]!r}")

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1).strip()
            if not _NAME_OK.match(name):
                raise PolicyError(f"invalid named value reference {{{{{name}}}}} in {where}")
            if name not in self._named:
                raise PolicyError(f"unknown named value {{{{{name}}}}} in {where}")
            nv = self._named[name]
            if nv.secret:
                if not secret_ok:
                    raise UnsafePolicy(f"{where} uses the secret named value {name}; "
                                      f"{_ONLY_TO_BACKEND}")
                self.secrets.add(nv.value)
            return nv.value

        if named:
            value = _NAMED.sub(substitute, value)
        elif _NAMED.search(value):
            raise PolicyError(f"named values are not supported in {where}")
        if one_line and _CONTROL.search(value):
            raise UnsafePolicy(f"{where} contains CR, LF, NUL or another control character; "
                               "header values and reason phrases must be one line of text")
        if answered:
            self._answered.append((where, value))
        return value

    def check_answers(self) -> None:
        """Refuse answer texts holding a secret named value's value (a pasted key, say)."""
        secrets = [(n, nv.value) for n, nv in self._named.items()
                   if nv.secret and len(nv.value) >= _MIN_GUARDED_SECRET]
        for where, value in self._answered:
            for name, secret in secrets:
                if secret in value:
                    raise UnsafePolicy(f"{where} contains the value of the secret named value "
                                      f"{name}; {_ONLY_TO_BACKEND}")

    def guarded_secrets(self) -> tuple[str, ...]:
        """The secrets sent to the backend that answers are checked for, longest first."""
        return tuple(sorted((s for s in self.secrets if len(s) >= _MIN_GUARDED_SECRET),
                            key=len, reverse=True))


def _attrs(el: ET.Element, allowed: set[str],
           required: set[str] | frozenset[str] = frozenset()) -> dict[str, str]:
    """Return the element's attributes, refusing unknown ones and missing required ones."""
    for name in el.attrib:
        if name not in allowed:
            raise PolicyError(f"unsupported attribute '{name}' on <{el.tag}>")
    for name in required:
        if name not in el.attrib:
            raise PolicyError(f"<{el.tag}> requires the attribute '{name}'")
    return dict(el.attrib)


def _children(el: ET.Element, allowed: set[str]) -> Iterator[ET.Element]:
    """Yield child elements, refusing unknown ones (text content is checked by the caller)."""
    for child in el:
        if not isinstance(child.tag, str):
            continue
        if child.tag not in allowed:
            raise PolicyError(f"unsupported element <{child.tag}> in <{el.tag}>")
        yield child


def _no_children(el: ET.Element) -> None:
    """Refuse child elements where none are allowed."""
    for child in _children(el, set()):
        raise PolicyError(f"unsupported element <{child.tag}> in <{el.tag}>")  # pragma: no cover


def _bool(raw: str | None, where: str, default: bool) -> bool:
    """Parse an XML boolean."""
    if raw is None:
        return default
    if raw.strip().lower() in {"true", "false"}:
        return raw.strip().lower() == "true"
    raise PolicyError(f"{where} must be true or false, not {raw[:40]!r}")


def _int(raw: str | None, where: str, low: int, high: int, default: int | None = None) -> int:
    """Parse a bounded integer attribute."""
    if raw is None:
        if default is None:
            raise PolicyError(f"{where} is required")
        return default
    if raw.strip().startswith("@"):
        raise PolicyError(f"policy expressions are not supported in {where}")
    try:
        value = int(raw.strip())
    except ValueError:
        raise PolicyError(f"{where} must be an integer, not {raw[:40]!r}") from None
    if not low <= value <= high:
        raise PolicyError(f"{where} must be between {low} and {high}")
    return value


def _status(raw: str | None, where: str, default: int) -> int:
    """Parse an HTTP status attribute."""
    return _int(raw, where, 200, 599, default)


def _header_name(raw: str, where: str) -> str:
    if not _HEADER_NAME.match(raw):
        raise PolicyError(f"invalid header name in {where}: {raw[:60]!r}")
    return raw


def _values(el: ET.Element, tag: str, c: _Compiler, where: str, *, named: bool = False,
            secret_ok: bool = False, answered: bool = False,
            one_line: bool = False) -> tuple[str, ...]:
    """Text of every <tag> child (the only children allowed)."""
    out = []
    for child in _children(el, {tag}):
        _attrs(child, set())
        _no_children(child)
        out.append(c.text((child.text or "").strip(), where, named=named, secret_ok=secret_ok,
                          answered=answered, one_line=one_line))
    return tuple(out)


def _https_url(url: str, where: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.netloc:
        raise PolicyError(f"{where} must be an absolute https URL")
    return url


def _validate_jwt(el: ET.Element, c: _Compiler) -> ValidateJwt:
    a = _attrs(el, {"header-name", "failed-validation-httpcode", "failed-validation-error-message",
                    "require-expiration-time", "require-scheme", "require-signed-tokens",
                    "clock-skew", "output-token-variable-name"}, {"header-name"})
    if not _bool(a.get("require-signed-tokens"), "validate-jwt require-signed-tokens", True):
        raise PolicyError("validate-jwt require-signed-tokens=\"false\" is not supported")
    urls: list[str] = []
    audiences: tuple[str, ...] = ()
    issuers: tuple[str, ...] = ()
    claims: list[RequiredClaim] = []
    for child in _children(el, {"openid-config", "audiences", "issuers", "required-claims"}):
        if child.tag == "openid-config":
            url = _attrs(child, {"url"}, {"url"})["url"]
            url = c.text(url, "inbound/validate-jwt/openid-config/@url", named=True)
            urls.append(_https_url(url, "openid-config url"))
            _no_children(child)
        elif child.tag == "audiences":
            audiences = _values(child, "audience", c, "audiences")
        elif child.tag == "issuers":
            issuers = _values(child, "issuer", c, "inbound/validate-jwt/issuers/issuer",
                              named=True)
        else:
            for claim in _children(child, {"claim"}):
                ca = _attrs(claim, {"name", "match", "separator"}, {"name"})
                try:
                    match = ClaimMatch(ca.get("match", "all"))
                except ValueError:
                    raise PolicyError("claim match must be all or any") from None
                values = _values(claim, "value", c, "required-claims value")
                claims.append(RequiredClaim(ca["name"], match, ca.get("separator"), values))
    if not urls:
        raise PolicyError("validate-jwt needs <openid-config url> (issuer-signing-keys and other "
                          "key sources are not supported)")
    if not audiences:
        raise PolicyError("validate-jwt needs <audiences> (tokens for other APIs must be refused)")
    variable = a.get("output-token-variable-name")
    if variable is not None:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$", variable):
            raise PolicyError("invalid output-token-variable-name")
        c.jwt_variables.add(variable)
    scheme = a.get("require-scheme")
    return ValidateJwt(
        header_name=_header_name(a["header-name"], "validate-jwt header-name"),
        failed_status=_status(a.get("failed-validation-httpcode"), "failed-validation-httpcode",
                              401),
        failed_message=c.text(a.get("failed-validation-error-message"),
                              "inbound/validate-jwt/@failed-validation-error-message",
                              answered=True) or None,
        require_expiration=_bool(a.get("require-expiration-time"), "require-expiration-time",
                                 True),
        require_scheme=c.text(scheme, "require-scheme") if scheme else None,
        clock_skew_s=_int(a.get("clock-skew"), "validate-jwt clock-skew", 0, 60, 0),
        output_variable=variable,
        openid_config_urls=tuple(urls),
        audiences=audiences,
        issuers=issuers,
        required_claims=tuple(claims),
    )


def _counter_key(raw: str, c: _Compiler) -> CounterKey:
    """Compile counter-key against the documented expression whitelist."""
    value = raw.strip()
    if not value.startswith("@"):
        return CounterKey(literal=c.text(value, "inbound/rate-limit-by-key/@counter-key",
                                         named=True))
    m = _SUBJECT.match(value)
    key: CounterKey
    if m:
        key = CounterKey(variable=m.group(1))
    elif m2 := _CLAIM.match(value):
        var, claim, default, default_var = m2.groups()
        if default_var is not None and default_var != var:
            raise PolicyError("counter-key default must use the same JWT variable")
        key = CounterKey(variable=var, claim=claim, default=default or "",
                         default_is_subject=default_var is not None)
    else:
        raise PolicyError(f"unsupported policy expression in rate-limit-by-key counter-key: "
                          f"{value[:80]!r} (see app/gateway/policy.py for the allowed forms)")
    if key.variable not in c.jwt_variables:
        raise PolicyError(f"counter-key uses JWT variable {key.variable!r}, which no earlier "
                          "validate-jwt sets as output-token-variable-name")
    return key


def _set_header(el: ET.Element, c: _Compiler, section: str) -> SetHeader:
    """set-header in ``section``: ``inbound`` sets the request to the backend, others answers."""
    a = _attrs(el, {"name", "exists-action"}, {"name"})
    try:
        action = HeaderAction(a.get("exists-action", "override"))
    except ValueError:
        raise PolicyError(f"unsupported exists-action {a.get('exists-action')!r}") from None
    name = _header_name(c.text(a["name"], f"{section}/set-header/@name"),
                        f"{section}/set-header/@name")
    where = f"{section}/set-header[@name='{name}']"
    to_backend = section == "inbound"
    values = _values(el, "value", c, where, named=True, secret_ok=to_backend,
                     answered=not to_backend, one_line=True)
    if action is not HeaderAction.DELETE and not values:
        raise PolicyError(f"{where} needs a <value>")
    return SetHeader(name, action, values)


def _cors(el: ET.Element, c: _Compiler) -> Cors:
    a = _attrs(el, {"allow-credentials"})
    origins: tuple[str, ...] = ()
    methods: tuple[str, ...] = ("GET", "POST")
    headers: tuple[str, ...] = ()
    expose: tuple[str, ...] = ()
    max_age: int | None = None
    for child in _children(el, {"allowed-origins", "allowed-methods", "allowed-headers",
                                "expose-headers"}):
        if child.tag == "allowed-origins":
            _attrs(child, set())
            origins = _values(child, "origin", c, "inbound/cors/allowed-origins/origin",
                              answered=True, one_line=True)
        elif child.tag == "allowed-methods":
            ma = _attrs(child, {"preflight-result-max-age"})
            if "preflight-result-max-age" in ma:
                max_age = _int(ma["preflight-result-max-age"], "preflight-result-max-age", 0,
                               86400)
            methods = tuple(m.upper() for m in _values(
                child, "method", c, "inbound/cors/allowed-methods/method", answered=True,
                one_line=True))
        elif child.tag == "allowed-headers":
            _attrs(child, set())
            headers = _values(child, "header", c, "inbound/cors/allowed-headers/header",
                              answered=True, one_line=True)
        else:
            _attrs(child, set())
            expose = _values(child, "header", c, "inbound/cors/expose-headers/header",
                             answered=True, one_line=True)
    if not origins:
        raise PolicyError("cors needs <allowed-origins>")
    credentials = _bool(a.get("allow-credentials"), "cors allow-credentials", False)
    if credentials and "*" in origins:
        raise PolicyError("cors allow-credentials=\"true\" cannot be combined with origin *")
    return Cors(origins, methods, headers, expose, credentials, max_age)


def _return_response(el: ET.Element, c: _Compiler) -> ReturnResponse:
    _attrs(el, set())
    status, reason, body = 200, None, ""
    headers: list[SetHeader] = []
    for child in _children(el, {"set-status", "set-header", "set-body"}):
        if child.tag == "set-status":
            sa = _attrs(child, {"code", "reason"}, {"code"})
            status = _status(sa["code"], "set-status code", 200)
            reason = c.text(sa.get("reason"), "inbound/return-response/set-status/@reason",
                            answered=True, one_line=True) or None
        elif child.tag == "set-header":
            headers.append(_set_header(child, c, "inbound/return-response"))
        else:
            _attrs(child, set())
            _no_children(child)
            body = c.text(child.text, "inbound/return-response/set-body", answered=True)
    return ReturnResponse(status, reason, tuple(headers), body)


def _inbound_step(el: ET.Element, c: _Compiler) -> InboundStep:
    if el.tag == "validate-jwt":
        return _validate_jwt(el, c)
    if el.tag == "check-header":
        a = _attrs(el, {"name", "failed-check-httpcode", "failed-check-error-message",
                        "ignore-case"}, {"name", "failed-check-httpcode",
                                         "failed-check-error-message", "ignore-case"})
        name = _header_name(a["name"], "check-header name")
        return CheckHeader(
            name=name,
            failed_status=_status(a["failed-check-httpcode"], "failed-check-httpcode", 401),
            failed_message=c.text(a["failed-check-error-message"],
                                  f"inbound/check-header[@name='{name}']"
                                  "/@failed-check-error-message", answered=True),
            ignore_case=_bool(a["ignore-case"], "check-header ignore-case", False),
            values=_values(el, "value", c, f"inbound/check-header[@name='{name}']/value",
                           named=True),
        )
    if el.tag == "rate-limit-by-key":
        a = _attrs(el, {"calls", "renewal-period", "counter-key"},
                   {"calls", "renewal-period", "counter-key"})
        _no_children(el)
        return RateLimitByKey(
            calls=_int(a["calls"], "rate-limit-by-key calls", 1, 10_000_000),
            renewal_period_s=_int(a["renewal-period"], "rate-limit-by-key renewal-period", 1, 300),
            counter_key=_counter_key(a["counter-key"], c),
        )
    if el.tag == "set-header":
        return _set_header(el, c, "inbound")
    if el.tag == "set-backend-service":
        a = _attrs(el, {"base-url"}, {"base-url"})
        _no_children(el)
        url = c.text(a["base-url"].strip(), "inbound/set-backend-service/@base-url",
                     named=True, one_line=True)
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise PolicyError("set-backend-service base-url must be an absolute http(s) URL")
        return SetBackendService(url.rstrip("/"))
    if el.tag == "cors":
        return _cors(el, c)
    if el.tag == "return-response":
        return _return_response(el, c)
    raise PolicyError(f"unsupported policy element <{el.tag}> in <inbound>")


def _section(root: ET.Element, name: str) -> list[ET.Element]:
    """Return a section's child elements (minus <base/>), checking <base/> has no content."""
    found = [s for s in root if isinstance(s.tag, str) and s.tag == name]
    if not found:
        return []
    if len(found) > 1:
        raise PolicyError(f"<{name}> appears more than once")
    _attrs(found[0], set())
    out = []
    for child in found[0]:
        if not isinstance(child.tag, str):
            continue
        if child.tag == "base":
            _attrs(child, set())
            _no_children(child)
            continue
        out.append(child)
    return out


def compile_policy(xml_text: str, named_values: Mapping[str, NamedValue] | None = None) -> Policy:
    """Parse and compile a policy document; raise PolicyError naming anything unsupported."""
    if len(xml_text) > _MAX_XML:
        raise PolicyError("policy document is too large")
    if "<!DOCTYPE" in xml_text.upper() or "<!ENTITY" in xml_text.upper():
        raise PolicyError("DTDs and entities are not allowed in policy documents")
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise PolicyError(f"policy is not well-formed XML: {exc}") from None
    if root.tag != "policies":
        raise PolicyError(f"the root element must be <policies>, not <{root.tag}>")
    _attrs(root, set())
    list(_children(root, {"inbound", "backend", "outbound", "on-error"}))
    c = _Compiler(named_values or {})
    inbound = tuple(_inbound_step(el, c) for el in _section(root, "inbound"))
    timeout: float | None = None
    for el in _section(root, "backend"):
        if el.tag != "forward-request":
            raise PolicyError(f"unsupported policy element <{el.tag}> in <backend>")
        fa = _attrs(el, {"timeout"})
        _no_children(el)
        if "timeout" in fa:
            timeout = float(_int(fa["timeout"], "forward-request timeout", 1, 240))
    outbound: list[SetHeader] = []
    on_error: list[SetHeader] = []
    for section, target in (("outbound", outbound), ("on-error", on_error)):
        for el in _section(root, section):
            if el.tag != "set-header":
                raise PolicyError(f"unsupported policy element <{el.tag}> in <{section}>")
            target.append(_set_header(el, c, section))
    c.check_answers()
    return Policy(inbound, timeout, tuple(outbound), tuple(on_error), c.guarded_secrets())

