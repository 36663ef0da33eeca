"""The backend request's headers, built in one pass: the caller's copies of a name the policy
overrides or deletes are left out up front (Policy.replaced), and set-header then edits the
list. The result must be exactly what applying the steps, in order, to the caller's headers
gives (the reference: set-header on a case-insensitive multidict, as before)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from app.gateway.config import ApiRevision, Operation, Route
from app.gateway.http import Request
from app.gateway.plan import NOT_FORWARDED, HeaderAction, Policy, SetHeader
from app.gateway.proxy import Outcome, _apply_headers, _Context, _forward_headers
from app.gateway.proxy import _set_request_header as set_request_header

_NAMES = st.sampled_from(["X-Tenant", "x-tenant", "X-Added", "X-Strip", "Authorization",
                          "authorization", "Host", "X-Other"])
_STEPS = st.lists(st.builds(SetHeader, _NAMES, st.sampled_from(list(HeaderAction)),
                            st.lists(st.sampled_from(["a", "b", "c"]), max_size=2).map(tuple)),
                  max_size=5)
_CALLER = st.lists(st.tuples(_NAMES, st.sampled_from(["1", "2"])), max_size=6)


def _reference(caller: list[tuple[str, str]], steps: list[SetHeader]) -> list[tuple[str, str]]:
    headers = CIMultiDict([(k, v) for k, v in caller if k.lower() not in NOT_FORWARDED])
    _apply_headers(headers, steps)
    return list(headers.items())


@given(caller=_CALLER, steps=_STEPS)
def test_the_one_pass_list_equals_applying_every_step_to_the_caller_headers(
        caller: list[tuple[str, str]], steps: list[SetHeader]) -> None:
    policy = Policy(tuple(steps), None, (), (), ())
    operation = Operation("score", "POST", "/score")
    api = ApiRevision("api", "api", 1, "prod", "http://127.0.0.1:9", (operation,), policy)
    request = Request("POST", "/api/score", "", CIMultiDict(caller), b"", "127.0.0.1", "https")
    ctx = _Context(Route(api, operation), Outcome("rid"), _forward_headers(request, "rid", policy))
    gateway_own = ctx.headers[-3:]
    del ctx.headers[-3:]
    for step in steps:
        set_request_header(ctx, step)
    assert gateway_own == [("X-Forwarded-For", "127.0.0.1"), ("X-Forwarded-Proto", "https"),
                           ("X-Request-ID", "rid")]
    # names compared case-insensitively, values and order exactly
    assert [(k.lower(), v) for k, v in ctx.headers] == \
        [(k.lower(), v) for k, v in _reference(caller, steps)]
