"""Strict access-token validation: pinned RS256/PS256, JWKS from openid-config, explicit skew.

Rules (RFC 8725, RFC 9068, OWASP ASVS V9), shared with the panel through
app.gateway.token_rules: the algorithm allow-list is fixed (never ``none``, never HMAC), a key
verifies only with the algorithm it is published for, ``kid`` is only a length-capped dictionary
key into the cached JWKS, ``jku``/``x5u``/``jwk`` headers are ignored (never fetched), ``typ``
must be the API's access-token type (``at+jwt``, so ID tokens are refused; ``JWT`` only for an
API published for Entra ID, whose access tokens carry it), ``exp`` is required unless the policy
says otherwise, ``nbf``/``iat`` are honoured and must be numbers, and issuer and audience come
from allow-lists. Keys are bound to the issuer whose discovery document served them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt as pyjwt

from app.gateway.policy import ClaimMatch, RequiredClaim, ValidateJwt
from app.gateway.token_rules import (
    ACCESS_TOKEN_TYPE,
    MAX_KID_LENGTH,
    TokenRejected,
    check_claim_types,
    check_header,
    key_algorithm,
    token_from_authorization,
)
from app.gateway.upstream import UpstreamError, UpstreamPool

log = logging.getLogger(__name__)

_MAX_DOC = 1024 * 1024
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class JwksSettings:
    """How keys are fetched and cached."""

    algorithms: tuple[str, ...] = ("RS256", "PS256")
    fetch_timeout_s: float = 2.0
    lifetime_s: float = 3600.0
    refetch_cooldown_s: float = 30.0
    verified_cache_size: int = 10_000
    verified_cache_ttl_s: float = 60.0


@dataclass(frozen=True)
class _KeySet:
    issuer: str | None
    keys: Mapping[str, Mapping[str, pyjwt.PyJWK]]


class JwksCache:
    """One openid-config URL: discovery → jwks_uri, cached, refetched at most once per cooldown."""

    def __init__(self, url: str, pool: UpstreamPool, settings: JwksSettings) -> None:
        self._url = url
        self._pool = pool
        self._settings = settings
        self._set = _KeySet(None, {})
        self._fetched_at = -1e18
        self._last_attempt = -1e18
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None
        self.fetches = 0

    @property
    def issuer(self) -> str | None:
        """The issuer named by the discovery document (None until fetched)."""
        return self._set.issuer

    @property
    def key_set(self) -> _KeySet:
        """The keys held now (a new object after every successful fetch)."""
        return self._set

    async def lookup(self, kid: str) -> Mapping[str, pyjwt.PyJWK] | None:
        """Keys for kid by usable alg; refresh on expiry or unknown kid, once per cooldown."""
        now = time.monotonic()
        cooled = now - self._last_attempt >= self._settings.refetch_cooldown_s
        if self._set.keys and now - self._fetched_at > self._settings.lifetime_s and cooled:
            # stale-while-revalidate: known keys keep working while a refresh runs
            if self._background is None or self._background.done():
                self._background = asyncio.create_task(self.refresh())
        elif kid not in self._set.keys:
            if self._lock.locked():
                # a fetch is in flight (start-up warm-up or another request): share its result
                async with self._lock:
                    pass
            elif cooled:
                await self.refresh()
        return self._set.keys.get(kid)

    async def refresh(self) -> None:
        """Fetch discovery + JWKS once; on failure keep the cached keys."""
        async with self._lock:
            now = time.monotonic()
            if now - self._last_attempt < self._settings.refetch_cooldown_s:
                return
            self._last_attempt = now
            self.fetches += 1
            try:
                self._set = await self._fetch()
                self._fetched_at = time.monotonic()
            except (UpstreamError, OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("JWKS fetch from %s failed (%s); keeping %d cached keys",
                            self._url, type(exc).__name__, len(self._set.keys))

    async def _get_json(self, url: str) -> dict[str, Any]:
        parts = urlsplit(url)
        origin = self._pool.origin(f"{parts.scheme}://{parts.netloc}")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        resp = await self._pool.request("GET", origin, target, [("Accept", "application/json")],
                                        b"", timeout_s=self._settings.fetch_timeout_s)
        if resp.status != 200:
            raise ValueError(f"HTTP {resp.status}")
        body = resp.body
        if len(body) > _MAX_DOC:
            raise ValueError("document too large")
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data

    async def _fetch(self) -> _KeySet:
        discovery = await self._get_json(self._url)
        jwks_uri = discovery["jwks_uri"]
        issuer = discovery.get("issuer")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith("https://"):
            raise ValueError("jwks_uri must be https")
        jwks = await self._get_json(jwks_uri)
        keys: dict[str, dict[str, pyjwt.PyJWK]] = {}
        for raw in jwks.get("keys", []):
            if not isinstance(raw, dict) or not isinstance(raw.get("kid"), str) or \
                    len(raw["kid"]) > MAX_KID_LENGTH:
                continue
            alg = key_algorithm(raw)  # the one algorithm this key verifies
            if alg is None or alg not in self._settings.algorithms:
                continue
            try:
                key = pyjwt.PyJWK(raw, algorithm=alg)
            except pyjwt.PyJWTError:
                continue
            if getattr(key.key, "key_size", 0) >= 2048:
                keys[raw["kid"]] = {alg: key}
        return _KeySet(issuer if isinstance(issuer, str) else None, keys)


@dataclass(slots=True)
class _Verified:
    claims: dict[str, Any]
    # each JWKS cache of the rule with the key set it held when the token was verified
    key_sets: tuple[tuple[JwksCache, _KeySet], ...]
    not_before: float  # wall clock: nbf - clock skew
    until: float  # wall clock: exp + clock skew, or the entry's time to live if sooner


class VerifiedTokens:
    """Authorization values whose token was already verified, for a short, bounded time.

    Signature verification is ~30% of the gateway's CPU per request (bench/README.md), and a
    client sends the same token until it expires. The key is the raw field value under one
    validation rule (header, scheme, issuers, audiences, skew...) and the API's token type, so a
    hit skips parsing the field, decoding the JOSE header and the signature check alike. An
    entry is reused only while every JWKS cache of the rule still holds the *same key set* it
    held at verification (a JWKS refresh invalidates it), and nbf/exp are re-checked against the
    clock on every use. Only successfully verified tokens are stored.
    """

    def __init__(self, max_entries: int, ttl_s: float) -> None:
        self._entries: dict[tuple[tuple[object, ...], str, str], _Verified] = {}
        self._max = max_entries
        self._ttl = ttl_s

    def recall(self, rule: tuple[object, ...], token_type: str,
               raw: str) -> dict[str, Any] | None:
        """The claims of an already verified Authorization value, if still valid now."""
        entry = self._entries.get((rule, token_type, raw))
        if entry is None:
            return None
        now = time.time()
        if not entry.not_before <= now < entry.until:
            return None
        for cache, key_set in entry.key_sets:
            if cache.key_set is not key_set:
                return None
        return entry.claims

    def remember(self, rule: tuple[object, ...], token_type: str, raw: str,
                 claims: dict[str, Any], key_sets: tuple[tuple[JwksCache, _KeySet], ...],
                 skew_s: int) -> None:
        """Store a verified value (evicting the oldest entry when full)."""
        if self._max <= 0:
            return
        try:
            exp, nbf = claims.get("exp"), claims.get("nbf")
            until = time.time() + self._ttl
            if exp is not None:
                until = min(until, float(exp) + skew_s)
            not_before = float(nbf) - skew_s if nbf is not None else -math.inf
        except (TypeError, ValueError):
            return
        while len(self._entries) >= self._max:
            self._entries.pop(next(iter(self._entries)))
        self._entries[(rule, token_type, raw)] = _Verified(claims, key_sets, not_before, until)


class JwksRegistry:
    """JWKS caches by openid-config URL, shared across config reloads."""

    def __init__(self, pool: UpstreamPool, settings: JwksSettings) -> None:
        self._pool = pool
        self.settings = settings
        self._caches: dict[str, JwksCache] = {}
        self.verified = VerifiedTokens(settings.verified_cache_size, settings.verified_cache_ttl_s)

    def cache(self, url: str) -> JwksCache:
        """Return (creating) the cache for an openid-config URL."""
        found = self._caches.get(url)
        if found is None:
            found = self._caches[url] = JwksCache(url, self._pool, self.settings)
        return found

    def total_fetches(self) -> int:
        """Discovery/JWKS fetch attempts so far (for tests and metrics)."""
        return sum(c.fetches for c in self._caches.values())


def _unverified_header(token: str) -> dict[str, Any]:
    """Decode the JOSE header only to pick the key (PyJWT re-parses and checks it on decode).

    A regex check + C base64 is ~10x cheaper than jwt.get_unverified_header's per-character
    validation, and this runs on every request.
    """
    segment = token.split(".", 1)[0]
    if len(segment) > 4 * MAX_KID_LENGTH or not _B64URL.fullmatch(segment):
        raise TokenRejected("header")
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error):
        raise TokenRejected("header") from None
    if not isinstance(header, dict):
        raise TokenRejected("header")
    return header


async def verify_authorization(values: Sequence[str], step: ValidateJwt,
                               registry: JwksRegistry,
                               token_type: str = ACCESS_TOKEN_TYPE) -> dict[str, Any]:
    """Verify the token in a request's Authorization field values and remember the verified
    value (the caller asks ``registry.verified.recall`` first); raise TokenRejected.
    ``token_type`` is the API's ``typ``."""
    token = token_from_authorization(values, step.require_scheme)
    claims, key_sets = await _verify(token, step, registry, token_type)
    registry.verified.remember(step.validation_key, token_type, values[0], claims, key_sets,
                               step.clock_skew_s)
    return claims


async def validate_token(token: str, step: ValidateJwt, registry: JwksRegistry,
                         token_type: str = ACCESS_TOKEN_TYPE) -> dict[str, Any]:
    """Verify header, signature and registered claims; return the claims or raise
    TokenRejected (no cache). ``token_type`` is the API's recorded access-token ``typ``."""
    claims, _ = await _verify(token, step, registry, token_type)
    return claims


async def _verify(token: str, step: ValidateJwt, registry: JwksRegistry, token_type: str,
                  ) -> tuple[dict[str, Any], tuple[tuple[JwksCache, _KeySet], ...]]:
    alg, kid = check_header(_unverified_header(token), token_type)
    if alg not in registry.settings.algorithms:
        raise TokenRejected("alg")
    caches = [registry.cache(url) for url in step.openid_config_urls]
    key: pyjwt.PyJWK | None = None
    bound_issuers: set[str] = set()
    for cache in caches:
        found = await cache.lookup(kid)
        if found is not None and alg in found:
            key = key or found[alg]
            if cache.issuer:
                bound_issuers.add(cache.issuer)
    if key is None:
        raise TokenRejected("unknown-kid")
    # taken before the signature check: a refresh during it makes the entry stale, not wrong
    key_sets = tuple((cache, cache.key_set) for cache in caches)
    issuers: Sequence[str] = step.issuers or tuple(bound_issuers)
    require = ["iss", "aud", "sub"] + (["exp"] if step.require_expiration else [])
    try:
        claims: dict[str, Any] = pyjwt.decode(
            token, key, algorithms=[alg], audience=list(step.audiences), issuer=list(issuers),
            leeway=step.clock_skew_s,
            options={"require": require, "verify_signature": True, "verify_exp": True,
                     "verify_nbf": True, "verify_iat": True, "verify_aud": True,
                     "verify_iss": True},
        )
    except pyjwt.PyJWTError as exc:
        raise TokenRejected(type(exc).__name__) from None
    check_claim_types(claims)
    if bound_issuers and claims.get("iss") not in bound_issuers:
        raise TokenRejected("issuer-key-binding")
    return claims, key_sets


def claims_satisfy(claims: Mapping[str, Any], required: Sequence[RequiredClaim]) -> bool:
    """Check required-claims (match all/any, optional separator for string claims)."""
    for rule in required:
        raw = claims.get(rule.name)
        if raw is None:
            return False
        if isinstance(raw, list):
            present = {str(v) for v in raw}
        elif rule.separator:
            present = set(str(raw).split(rule.separator))
        else:
            present = {str(raw)}
        if not rule.values:
            continue
        hits = [v in present for v in rule.values]
        if not (all(hits) if rule.match is ClaimMatch.ALL else any(hits)):
            return False
    return True
