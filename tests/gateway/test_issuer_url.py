"""Issue 16: the issuer a published policy trusts is the `issuer-url` named value, set at each
start, so a stack restarted on other ports keeps accepting the new issuer's tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.backends.local import gateway as gateway_config
from app.gateway.config import ConfigError, parse_config
from app.gateway.plan import ValidateJwt
from app.gateway.template import ISSUER_URL_REF, adopt_issuer_url_name, render_default_policy

OLD, NEW = "https://127.0.0.1:40001/local", "https://127.0.0.1:40002/local"
BACKEND = "http://127.0.0.1:9000"


def _api(policy: str, issuer: str) -> dict[str, Any]:
    return {"name": "credit-risk-staging", "path": "staging/credit-risk", "revision": 1,
            "environment": "staging", "backend_url": BACKEND,
            "operations": [{"id": "score", "method": "POST", "url_template": "/score"}],
            "policy_xml": policy, "issuer": issuer, "audience": "api://modelgate"}


def _document(api: dict[str, Any], issuer_url: str) -> dict[str, Any]:
    return {"apis": [api], "named_values": {
        "issuer-url": {"secret": False, "value": issuer_url},
        "staging-backend-url": {"secret": False, "value": BACKEND},
        "staging-backend-key": {"secret": False, "value": "not-a-secret-here"}}}


def _trusted(tmp_path: Path, document: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(openid-config URLs, issuers) the served API's validate-jwt steps accept."""
    api = parse_config(tmp_path, document).apis[0]
    assert api.refusal is None, api.refusal
    steps = [s for s in api.policy.inbound if isinstance(s, ValidateJwt)]
    return ({u for s in steps for u in s.openid_config_urls},
            {i for s in steps for i in s.issuers})


def test_the_panels_policy_follows_the_issuer_url_named_value(tmp_path: Path) -> None:
    policy = render_default_policy(issuer=ISSUER_URL_REF, environment="staging")
    assert OLD not in policy and NEW not in policy
    api = _api(policy, ISSUER_URL_REF)
    for issuer in (OLD, NEW):  # the same stored document, started with either issuer
        assert _trusted(tmp_path, _document(api, issuer)) == (
            {f"{issuer}/.well-known/openid-configuration"}, {issuer})


def test_a_recorded_issuer_must_name_a_plain_named_value(tmp_path: Path) -> None:
    api = _api(render_default_policy(issuer=ISSUER_URL_REF, environment="staging"),
               "{{nothing-here}}")
    with pytest.raises(ConfigError, match="nothing-here"):
        parse_config(tmp_path, _document(api, OLD))


def test_only_modelgates_own_literal_policies_are_adopted() -> None:
    rendered = _api(render_default_policy(issuer=OLD, environment="staging", rate_limit=60),
                    OLD)
    assert adopt_issuer_url_name(rendered)
    assert rendered["issuer"] == ISSUER_URL_REF
    assert rendered["policy_xml"] == render_default_policy(
        issuer=ISSUER_URL_REF, environment="staging", rate_limit=60)
    edited = render_default_policy(issuer=OLD, environment="staging").replace(
        'renewal-period="60"', 'renewal-period="30"')
    written = _api(edited, OLD)
    assert not adopt_issuer_url_name(written)
    assert written["policy_xml"] == edited and written["issuer"] == OLD


def test_a_start_re_points_a_policy_published_with_a_literal_issuer(tmp_path: Path) -> None:
    """A home published before policies named the issuer: the next start adopts the name."""
    from app.gateway.config import default_config_path, load_config

    old = _document(_api(render_default_policy(issuer=OLD, environment="staging"), OLD), OLD)
    del old["named_values"]["issuer-url"]
    gateway_config.update(tmp_path, lambda config: config.update(old))
    assert gateway_config.set_issuer_url(tmp_path, NEW + "/") == ["credit-risk-staging"]
    served = load_config(tmp_path, default_config_path(tmp_path)).apis[0]
    assert served.refusal is None
    steps = [s for s in served.policy.inbound if isinstance(s, ValidateJwt)]
    assert {i for s in steps for i in s.issuers} == {NEW}
