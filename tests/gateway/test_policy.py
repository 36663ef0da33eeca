"""Policy compilation: the supported subset compiles; anything else is a PolicyError naming it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from multidict import CIMultiDict

from app.gateway.config import (
    ApiRevision,
    ConfigError,
    check_api,
    encrypt_named_value,
    parse_config,
)
from app.gateway.http import Response
from app.gateway.policy import (
    CounterKey,
    HeaderAction,
    NamedValue,
    Policy,
    PolicyError,
    RateLimitByKey,
    SetHeader,
    UnsafePolicy,
    ValidateJwt,
    compile_policy,
    resolve_counter_key,
)
from app.gateway.proxy import guard_answer
from app.gateway.template import render_default_policy

NV = {"staging-backend-key": NamedValue("s3cret-key-value", True),
      "staging-backend-url": NamedValue("http://127.0.0.1:9000", False)}
JWT = """<validate-jwt header-name="Authorization" output-token-variable-name="jwt">
  <openid-config url="https://127.0.0.1:8443/local/.well-known/openid-configuration" />
  <audiences><audience>api://modelgate</audience></audiences></validate-jwt>"""


def wrap(inbound: str, rest: str = "") -> str:
    """A policy document with this inbound content."""
    return f"<policies><inbound><base />{JWT}{inbound}</inbound>{rest}</policies>"


def test_default_policy_compiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default template: two validate-jwt (401, then 403 role), per-caller limit, key."""
    monkeypatch.setenv("MODELGATE_RATE_LIMIT", "120")
    xml = render_default_policy(issuer="https://127.0.0.1:8443/local/", environment="staging")
    policy = compile_policy(xml, NV)
    jwt_steps = [s for s in policy.inbound if isinstance(s, ValidateJwt)]
    assert [s.failed_status for s in jwt_steps] == [401, 403]
    assert jwt_steps[0].issuers == ("https://127.0.0.1:8443/local",)
    assert jwt_steps[0].openid_config_urls == (
        "https://127.0.0.1:8443/local/.well-known/openid-configuration",)
    assert jwt_steps[1].required_claims[0].values == ("Score.Invoke",)
    limit = next(s for s in policy.inbound if isinstance(s, RateLimitByKey))
    assert (limit.calls, limit.renewal_period_s) == (120, 60)
    assert limit.counter_key == CounterKey(variable="jwt", claim="oid", default_is_subject=True)
    header = next(s for s in policy.inbound if isinstance(s, SetHeader))
    assert header == SetHeader("Authorization", HeaderAction.OVERRIDE,
                               ("Bearer s3cret-key-value",))
    assert policy.secrets == ("s3cret-key-value",)


def test_default_rate_limit_is_6000(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without MODELGATE_RATE_LIMIT each caller gets 6000 calls per minute."""
    monkeypatch.delenv("MODELGATE_RATE_LIMIT", raising=False)
    policy = compile_policy(render_default_policy(issuer="https://i/x", environment="staging"),
                            NV)
    assert next(s for s in policy.inbound if isinstance(s, RateLimitByKey)).calls == 6000


@pytest.mark.parametrize(("xml", "named"), [
    (wrap('<set-variable name="x" value="1" />'), "set-variable"),
    (wrap('<choose><when condition="@(true)"><return-response /></when></choose>'), "choose"),
    (wrap('<send-request mode="new" response-variable-name="r" />'), "send-request"),
    (wrap('<rewrite-uri template="/x" />'), "rewrite-uri"),
    (wrap("", "<outbound><find-and-replace from='a' to='b' /></outbound>"), "find-and-replace"),
    (wrap("", "<backend><retry count='2' /></backend>"), "retry"),
    (wrap("", "<inbonud />"), "inbonud"),
    (wrap('<set-header name="X" exists-action="override" foo="1"><value>1</value>'
          "</set-header>"), "foo"),
    (wrap('<set-header name="X" exists-action="replace"><value>1</value></set-header>'),
     "exists-action"),
    (wrap('<set-header name="X"><value>@(context.Request.IpAddress)</value></set-header>'),
     "policy expressions"),
    (wrap('<rate-limit-by-key calls="5" renewal-period="60" '
          'counter-key="@(context.Request.IpAddress)" />'), "counter-key"),
    (wrap('<rate-limit-by-key calls="5" renewal-period="60" counter-key=\'@(context.Request.'
          'Headers.GetValueOrDefault("X-Forwarded-For",""))\' />'), "counter-key"),
    (wrap('<rate-limit-by-key calls="5" renewal-period="60" '
          'counter-key=\'@(((Jwt)context.Variables["other"]).Subject)\' />'), "other"),
    (wrap('<rate-limit-by-key calls="5" renewal-period="60" increment-condition="@(true)" '
          'counter-key="x" />'), "increment-condition"),
    (wrap('<rate-limit-by-key calls="5" renewal-period="600" counter-key="x" />'),
     "renewal-period"),
    (wrap('<set-header name="Authorization"><value>Bearer {{missing-key}}</value></set-header>'),
     "missing-key"),
    (wrap('<set-backend-service backend-id="b1" />'), "backend-id"),
    (wrap('<cors allow-credentials="true"><allowed-origins><origin>*</origin></allowed-origins>'
          "</cors>"), "allow-credentials"),
    ("<policies><inbound><validate-jwt header-name='Authorization'><openid-config "
     "url='https://x/y' /></validate-jwt></inbound></policies>", "audiences"),
    ("<policies><inbound><validate-jwt header-name='Authorization' "
     "require-signed-tokens='false'><openid-config url='https://x/y' /><audiences><audience>a"
     "</audience></audiences></validate-jwt></inbound></policies>", "require-signed-tokens"),
    ("<policies><inbound><validate-jwt header-name='Authorization'><issuer-signing-keys><key>"
     "abc</key></issuer-signing-keys></validate-jwt></inbound></policies>",
     "issuer-signing-keys"),
    ("<policies><inbound><validate-jwt header-name='Authorization' clock-skew='300'>"
     "<openid-config url='https://x/y' /><audiences><audience>a</audience></audiences>"
     "</validate-jwt></inbound></policies>", "clock-skew"),
    ("<policies><inbound><validate-jwt header-name='Authorization'><openid-config "
     "url='http://x/y' /></validate-jwt></inbound></policies>", "https"),
    ('<!DOCTYPE p [<!ENTITY x "y">]><policies />', "DTD"),
    ("<policy />", "policies"),
    ("<policies><inbound>", "well-formed"),
])
def test_unsupported_is_a_policy_error_naming_it(xml: str, named: str) -> None:
    """Publishing fails loudly: the error message names the unsupported thing."""
    with pytest.raises(PolicyError, match=named):
        compile_policy(xml, NV)


def test_supported_elements_compile() -> None:
    """check-header, cors, return-response, forward-request and response set-header compile."""
    xml = wrap(
        '<check-header name="X-Tenant" failed-check-httpcode="403" '
        'failed-check-error-message="wrong tenant" ignore-case="true"><value>contoso</value>'
        "</check-header>"
        '<cors allow-credentials="false"><allowed-origins><origin>https://panel.local</origin>'
        '</allowed-origins><allowed-methods preflight-result-max-age="300"><method>POST</method>'
        "</allowed-methods><allowed-headers><header>Authorization</header></allowed-headers>"
        "</cors>"
        '<rate-limit-by-key calls="10" renewal-period="1" counter-key=\'@(((Jwt)context.'
        'Variables["jwt"]).Subject)\' />'
        '<set-backend-service base-url="{{staging-backend-url}}" />',
        '<backend><forward-request timeout="20" /></backend><outbound><base /><set-header '
        'name="X-Powered-By" exists-action="delete" /></outbound><on-error><set-header '
        'name="X-Err" exists-action="override"><value>1</value></set-header></on-error>')
    policy = compile_policy(xml, NV)
    assert policy.forward_timeout_s == 20.0
    assert policy.cors is not None and policy.cors.max_age_s == 300
    assert [h.name for h in policy.outbound] == ["X-Powered-By"]
    ret = compile_policy(wrap('<return-response><set-status code="418" reason="teapot" />'
                              '<set-header name="X-A" exists-action="override"><value>1</value>'
                              "</set-header><set-body>short and stout</set-body>"
                              "</return-response>"))
    assert ret.inbound[-1].status == 418  # type: ignore[union-attr]


def test_counter_key_resolution() -> None:
    """Claim, default literal and subject fallback resolve from the validated claims only."""
    claims = {"jwt": {"sub": "s1", "oid": "o1", "roles": ["a", "b"]}}
    assert resolve_counter_key(CounterKey(variable="jwt", claim="oid"), claims) == "o1"
    assert resolve_counter_key(CounterKey(variable="jwt"), claims) == "s1"
    assert resolve_counter_key(CounterKey(variable="jwt", claim="tid", default="d"), claims) == "d"
    assert resolve_counter_key(CounterKey(variable="jwt", claim="tid", default_is_subject=True),
                               claims) == "s1"
    assert resolve_counter_key(CounterKey(literal="all"), claims) == "all"


def test_config_validation_names_the_api(tmp_path: Path) -> None:
    """A config whose policy does not compile is refused with the API and revision named."""
    cfg = {"apis": [{"name": "credit-risk", "path": "credit-risk", "revision": 7,
                     "environment": "prod", "backend_url": "http://127.0.0.1:1",
                     "operations": [{"id": "score", "method": "POST", "url_template": "/score"}],
                     "policy_xml": wrap("<set-variable name='x' value='1' />")}]}
    with pytest.raises(ConfigError, match="credit-risk.*revision 7.*set-variable"):
        parse_config(tmp_path, cfg)


def test_secret_named_values_are_encrypted_at_rest(tmp_path: Path) -> None:
    """encrypt_named_value uses gateway/secret.key (0600); the ciphertext hides the key."""
    token = encrypt_named_value(tmp_path, "the-backend-key-123")
    assert "the-backend-key-123" not in token
    key_file = tmp_path / "gateway" / "secret.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    cfg = {"named_values": {"k": {"secret": True, "value": token}}, "apis": []}
    parse_config(tmp_path, cfg)
    key_file.write_bytes(b"A" * 43 + b"=")
    with pytest.raises(ConfigError, match="cannot be decrypted"):
        parse_config(tmp_path, cfg)


ONLY_TO_BACKEND = "secret named values may only be used in <inbound> set-header to the backend"
DEFAULT_STAGING = render_default_policy(issuer="https://127.0.0.1:8443/local",
                                        environment="staging")


def with_outbound(policy_xml: str, outbound: str) -> str:
    """The policy with ``outbound`` added to its <outbound> section."""
    return policy_xml.replace("<outbound>\n    <base />", f"<outbound><base />{outbound}", 1)


@pytest.mark.parametrize(("xml", "element"), [
    (with_outbound(DEFAULT_STAGING, '<set-header name="X-Debug"><value>{{staging-backend-key}}'
                                    "</value></set-header>"),
     "outbound/set-header[@name='X-Debug']"),
    (wrap("", '<on-error><set-header name="X-Key" exists-action="override"><value>k='
              "{{staging-backend-key}}</value></set-header></on-error>"),
     "on-error/set-header[@name='X-Key']"),
    (wrap('<return-response><set-status code="200" /><set-header name="X-K"><value>'
          "{{staging-backend-key}}</value></set-header></return-response>"),
     "inbound/return-response/set-header[@name='X-K']"),
    (wrap('<check-header name="X-Api-Key" failed-check-httpcode="401" failed-check-error-message'
          '="no" ignore-case="false"><value>{{staging-backend-key}}</value></check-header>'),
     "inbound/check-header[@name='X-Api-Key']/value"),
    (wrap('<rate-limit-by-key calls="5" renewal-period="60" '
          'counter-key="{{staging-backend-key}}" />'), "inbound/rate-limit-by-key/@counter-key"),
    (wrap('<set-backend-service base-url="https://h/{{staging-backend-key}}" />'),
     "inbound/set-backend-service/@base-url"),
])
def test_secret_named_values_only_reach_the_backend(xml: str, element: str) -> None:
    """Issue 13: a secret named value anywhere but an inbound set-header is refused, named."""
    with pytest.raises(UnsafePolicy) as caught:
        compile_policy(xml, NV)
    assert str(caught.value) == (f"{element} uses the secret named value staging-backend-key; "
                                 f"{ONLY_TO_BACKEND}")


@pytest.mark.parametrize(("xml", "element"), [
    (wrap("", '<outbound><set-header name="X-Debug"><value>s3cret-key-value</value>'
              "</set-header></outbound>"), "outbound/set-header[@name='X-Debug']"),
    (wrap("<return-response><set-body>the key is s3cret-key-value</set-body>"
          "</return-response>"), "inbound/return-response/set-body"),
    (wrap('<return-response><set-status code="200" reason="s3cret-key-value" />'
          "</return-response>"), "inbound/return-response/set-status/@reason"),
])
def test_a_pasted_secret_value_in_an_answer_is_refused(xml: str, element: str) -> None:
    """The literal value of a secret named value in anything answered is refused, unechoed."""
    with pytest.raises(UnsafePolicy, match=re.escape(element)) as caught:
        compile_policy(xml, NV)
    assert "staging-backend-key" in str(caught.value)
    assert "s3cret-key-value" not in str(caught.value)


def test_an_unsafe_stored_policy_is_refused_alone(tmp_path: Path) -> None:
    """Loading: an unsafe API is kept out (503) while the others are served; check_api names it."""
    named_values = {"staging-backend-key": {"secret": True, "value": encrypt_named_value(
        tmp_path, "s3cret-key-value")}, "staging-backend-url": {"secret": False,
                                                                 "value": "http://127.0.0.1:9"}}
    leaky = with_outbound(DEFAULT_STAGING, '<set-header name="X-Debug"><value>'
                                           "{{staging-backend-key}}</value></set-header>")
    entry = {"path": "staging/credit-risk", "revision": 4, "environment": "staging",
             "backend_url": "http://127.0.0.1:9",
             "operations": [{"id": "score", "method": "POST", "url_template": "/score"}]}
    cfg = {"named_values": named_values, "apis": [
        dict(entry, name="leaky", policy_xml=leaky),
        dict(entry, name="fine", path="fine", policy_xml=DEFAULT_STAGING)]}
    config = parse_config(tmp_path, cfg)
    leaky_api, fine_api = config.apis
    assert leaky_api.refusal is not None and "X-Debug" in leaky_api.refusal
    assert leaky_api.policy.inbound == () and fine_api.refusal is None
    with pytest.raises(UnsafePolicy, match=r"'leaky' revision 4: outbound/set-header"):
        check_api(tmp_path, cfg, "leaky")
    check_api(tmp_path, cfg, "fine")


def test_the_answer_guard_blocks_a_secret_from_any_source() -> None:
    """Defence in depth: an answer holding a secret the policy uses never leaves."""
    policy = Policy((), None, (SetHeader("X-Debug", HeaderAction.OVERRIDE,
                                         ("s3cret-key-value",)),), (), ("s3cret-key-value",))
    api = ApiRevision("leaky", "leaky", 1, "staging", "http://127.0.0.1:9", (), policy)
    clean = Response(200, b'{"ok": true}', CIMultiDict({"X-A": "1"}))
    assert guard_answer(api, clean, from_backend=True) is clean
    cases = [(Response(200, b"{}", CIMultiDict({"X-Debug": "s3cret-key-value"})), True,
              "The policy tried to return a secret."),
             (Response(418, b"s3cret-key-value"), False, "The policy tried to return a secret."),
             (Response(200, b"echo s3cret-key-value"), True, "The backend failed.")]
    for answer, from_backend, detail in cases:
        blocked = guard_answer(api, answer, from_backend=from_backend)
        assert blocked.status == 502
        assert blocked.headers["Content-Type"] == "application/problem+json"
        assert json.loads(blocked.body)["detail"] == detail
        assert b"s3cret" not in blocked.body


@pytest.mark.parametrize(("xml", "element"), [
    (wrap("", '<outbound><set-header name="X-A" exists-action="override"><value>1&#13;&#10;'
              "Set-Cookie: session=evil</value></set-header></outbound>"),
     "outbound/set-header[@name='X-A']"),
    (wrap('<set-header name="X-To-Backend"><value>a&#10;Host: evil</value></set-header>'),
     "inbound/set-header[@name='X-To-Backend']"),
    # XML cannot carry NUL; a named value can
    (wrap("", '<on-error><set-header name="X-E"><value>{{odd-value}}</value></set-header>'
              "</on-error>"), "on-error/set-header[@name='X-E']"),
    (wrap('<return-response><set-status code="200" reason="OK&#13;&#10;Set-Cookie: a=b" />'
          "</return-response>"), "inbound/return-response/set-status/@reason"),
    (wrap('<return-response><set-header name="X-R"><value>a&#13;b</value></set-header>'
          "</return-response>"), "inbound/return-response/set-header[@name='X-R']"),
    (wrap("<cors><allowed-origins><origin>https://a.example&#10;X: y</origin>"
          "</allowed-origins></cors>"), "inbound/cors/allowed-origins/origin"),
    (wrap('<set-backend-service base-url="https://a.example&#13;&#10;X: y" />'),
     "inbound/set-backend-service/@base-url"),
])
def test_header_and_status_line_injection_is_refused(xml: str, element: str) -> None:
    """Issue 13: CR, LF, NUL (&#13;&#10;&#0; in the XML) in a header value or reason: refused."""
    with pytest.raises(UnsafePolicy, match=re.escape(element)) as caught:
        compile_policy(xml, {**NV, "odd-value": NamedValue("a\x00b", False)})
    assert "CR, LF, NUL" in str(caught.value)


def test_pretty_printed_values_and_tabs_still_compile() -> None:
    """Line breaks around a value are layout, not content; a tab inside is a legal field value."""
    policy = compile_policy(wrap("", '<outbound><set-header name="X-A" exists-action="override">'
                                     "<value>\n      one\ttwo\n    </value></set-header>"
                                     "</outbound>"), NV)
    assert policy.outbound[0].values == ("one\ttwo",)
