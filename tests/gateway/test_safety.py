"""Serving rules: a policy's backend is the recorded one or a listed host, and a policy without
validate-jwt and the role check is served only when the pipeline file declares it anonymous."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.gateway.policy import NamedValue, UnsafePolicy, compile_policy
from app.gateway.safety import ServingRules, check_policy
from app.gateway.template import render_default_policy
from app.pipeline_config import PipelineConfigError, load_pipeline_config

ISSUER = "https://127.0.0.1:8443/local"
AUD = "api://modelgate"
NV = {"staging-backend-key": NamedValue("s3cret-key-value", True),
      "staging-backend-url": NamedValue("http://127.0.0.1:9000", False),
      "prod-backend-url": NamedValue("http://127.0.0.1:9100", False)}
RULES = ServingRules("staging", "http://127.0.0.1:9000", issuer=ISSUER, audience=AUD)
KEY = ('<set-header name="Authorization" exists-action="override"><value>Bearer '
       "{{staging-backend-key}}</value></set-header>")


def jwt(claims: str = '<claim name="roles" match="any"><value>Score.Invoke</value></claim>', *,
        issuer: str = ISSUER, audiences: str = f"<audience>{AUD}</audience>") -> str:
    """A validate-jwt step with these required claims."""
    required = f"<required-claims>{claims}</required-claims>" if claims else ""
    return (f'<validate-jwt header-name="Authorization" require-scheme="Bearer">'
            f'<openid-config url="{issuer}/.well-known/openid-configuration" />'
            f"<audiences>{audiences}</audiences>{required}</validate-jwt>")


def check(inbound: str, rules: ServingRules = RULES) -> None:
    """Compile a policy with this inbound section and check it against the rules."""
    check_policy(compile_policy(f"<policies><inbound>{inbound}</inbound></policies>", NV), rules)


def test_the_default_policy_is_served() -> None:
    """The default template meets every rule, with the issuer and audience known or not."""
    xml = render_default_policy(issuer=ISSUER + "/", environment="staging")
    check_policy(compile_policy(xml, NV), RULES)
    check_policy(compile_policy(xml, NV), ServingRules("staging", "http://127.0.0.1:9000"))


@pytest.mark.parametrize("inbound", [
    jwt() + KEY,
    jwt('<claim name="roles" match="all"><value>Score.Invoke</value><value>Extra</value></claim>')
    + KEY,
    jwt('<claim name="roles" match="any"><value>Score.Invoke</value><value>Score.Invoke</value>'
        "</claim>") + KEY,
    # the role check before a return-response: only callers holding the role get an answer
    jwt() + '<return-response><set-status code="204" /></return-response>',
    # the recorded backend at another path, or written as a literal
    jwt() + '<set-backend-service base-url="http://127.0.0.1:9000/v2" />' + KEY,
    jwt() + '<set-backend-service base-url="{{staging-backend-url}}" />' + KEY,
])
def test_what_counts_as_the_role_check_and_the_recorded_backend(inbound: str) -> None:
    """Accepted: a role rule only a Score.Invoke token meets; the environment's own backend."""
    check(inbound)


@pytest.mark.parametrize(("inbound", "message"), [
    (KEY, "no validate-jwt"),
    (jwt("") + KEY, "no validate-jwt"),
    (jwt('<claim name="roles" match="any"><value>Score.Invoke</value><value>Reader</value>'
         "</claim>") + KEY, "no validate-jwt"),
    (jwt('<claim name="roles" match="all"><value>Reader</value></claim>') + KEY,
     "no validate-jwt"),
    (jwt('<claim name="roles" />') + KEY, "no validate-jwt"),
    (jwt('<claim name="scp" match="any"><value>Score.Invoke</value></claim>') + KEY,
     "no validate-jwt"),
    (jwt(issuer="https://evil.example/tenant") + KEY, "no validate-jwt"),
    (jwt(audiences=f"<audience>{AUD}</audience><audience>api://other</audience>") + KEY,
     "no validate-jwt"),
    ('<return-response><set-status code="200" /></return-response>' + jwt(), "no validate-jwt"),
    (jwt() + '<set-backend-service base-url="https://attacker.example" />' + KEY,
     "https://attacker.example"),
    (jwt() + '<set-backend-service base-url="http://127.0.0.1:9001" />' + KEY,
     "http://127.0.0.1:9001"),
    (jwt() + '<set-backend-service base-url="https://127.0.0.1:9000" />' + KEY,
     "https://127.0.0.1:9000"),
    (jwt() + '<set-backend-service base-url="{{prod-backend-url}}" />' + KEY,
     "http://127.0.0.1:9100"),
])
def test_unsafe_policies_are_refused_naming_why(inbound: str, message: str) -> None:
    """Refused: no (or a weaker) role check, an untrusted issuer, another backend."""
    with pytest.raises(UnsafePolicy, match=message) as caught:
        check(inbound)
    if "validate-jwt" in message:
        assert "gateway.anonymous_apis" in str(caught.value)
    else:
        assert "inbound/set-backend-service/@base-url" in str(caught.value)
        assert "gateway.allowed_backends" in str(caught.value)


def test_declared_anonymous_apis_and_listed_backends() -> None:
    """The pipeline file's declarations open exactly what they name."""
    anonymous = ServingRules("staging", "http://127.0.0.1:9000", anonymous=True)
    check(KEY, anonymous)
    with pytest.raises(UnsafePolicy, match="attacker"):  # anonymous does not open backends
        check('<set-backend-service base-url="https://attacker.example" />' + KEY, anonymous)
    listed = ServingRules("staging", None, ("scoring.example.com", "10.0.0.5:8443", "[::1]:8443"),
                          anonymous=True)
    for url in ("https://scoring.example.com", "https://SCORING.example.com:443/x",
                "https://10.0.0.5:8443", "https://[::1]:8443"):
        check(f'<set-backend-service base-url="{url}" />', listed)
    for url in ("http://scoring.example.com", "https://scoring.example.com.evil.net",
                "https://10.0.0.5", "https://10.0.0.5:8444", "https://user@evil.example"):
        with pytest.raises(UnsafePolicy, match="base-url"):
            check(f'<set-backend-service base-url="{url}" />', listed)


@pytest.mark.parametrize(("issuer", "token_type", "served"), [
    (ISSUER, "at+jwt", True),
    ("https://login.microsoftonline.com/9188040d-6c67-4c5b-b112-36a304b66dad/v2.0", "JWT", True),
    ("https://login.microsoftonline.us/contoso.onmicrosoft.com/v2.0/", "JWT", True),
    (ISSUER, "JWT", False),  # the local issuer's tokens are at+jwt: never loosened
    (None, "JWT", False),  # no recorded issuer: nothing says the tokens come from Entra ID
    ("http://login.microsoftonline.com/tenant/v2.0", "JWT", False),
    ("https://login.microsoftonline.com/tenant/", "JWT", False),  # the v1 issuer
    ("https://login.microsoftonline.com/v2.0", "JWT", False),
    ("https://login.microsoftonline.com/a/b/v2.0", "JWT", False),
])
def test_typ_jwt_only_for_an_entra_v2_issuer(issuer: str | None, token_type: str,
                                             served: bool) -> None:
    """An API may record Entra ID's access-token type only with an Entra v2 issuer."""
    audience = "api://6e9a3c1f"
    rules = ServingRules("staging", "http://127.0.0.1:9000", issuer=issuer, audience=audience,
                         access_token_type=token_type)
    trusted = issuer if issuer and issuer.startswith("https://") else ISSUER  # compiles
    inbound = jwt(issuer=trusted.rstrip("/"), audiences=f"<audience>{audience}</audience>") + KEY
    if served:
        check(inbound, rules)
    else:
        with pytest.raises(UnsafePolicy, match=f"access_token_type '{token_type}'"):
            check(inbound, rules)


def test_pipeline_file_declares_backends_and_anonymous_apis(tmp_path: Path) -> None:
    """gateway.allowed_backends and gateway.anonymous_apis: optional lists, each item checked."""
    own = tmp_path / "pipeline.yml"
    assert load_pipeline_config().gateway.allowed_backends == ()
    own.write_text("gateway:\n  allowed_backends: [scoring.example.com, '10.0.0.5:8443']\n"
                   "  anonymous_apis: [credit-risk-staging]\n")
    gateway = load_pipeline_config(own).gateway
    assert gateway.allowed_backends == ("scoring.example.com", "10.0.0.5:8443")
    assert gateway.anonymous_apis == ("credit-risk-staging",)
    for text, key in (("gateway: {allowed_backends: scoring.example.com}\n",
                       "gateway.allowed_backends"),
                      ("gateway: {allowed_backends: ['https://x.example']}\n",
                       "gateway.allowed_backends[0]"),
                      ("gateway: {anonymous_apis: [credit-risk, 'bad name']}\n",
                       "gateway.anonymous_apis[1]")):
        own.write_text(text)
        with pytest.raises(PipelineConfigError) as caught:
            load_pipeline_config(own)
        assert caught.value.key == key
