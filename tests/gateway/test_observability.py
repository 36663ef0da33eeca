"""Gateway metrics exposition: Prometheus semantics of the hand-kept counters and histograms."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.gateway.observability import GatewayMetrics


def _samples(metrics: GatewayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_counts_buckets_and_sums_follow_prometheus_semantics() -> None:
    """Counters by api/status; buckets cumulative and upper-inclusive; sums and counts add up."""
    m = GatewayMetrics()
    m.observe("credit-risk", 200, 0.001, 0.0004)   # exactly on the 0.001 bound
    m.observe("credit-risk", 200, 0.003, None)      # no backend time (answered by the gateway)
    m.observe("credit-risk", 429, 20.0, None)       # above the last bound → only +Inf
    s = _samples(m)
    assert s[("modelgate_gateway_requests_total", (("api", "credit-risk"), ("status", "200")))] == 2
    assert s[("modelgate_gateway_requests_total", (("api", "credit-risk"), ("status", "429")))] == 1

    def bucket(name: str, le: str) -> float:
        return s[(f"{name}_bucket", (("api", "credit-risk"), ("le", le)))]

    total = "modelgate_gateway_request_seconds"
    assert bucket(total, "0.0005") == 0
    assert bucket(total, "0.001") == 1
    assert bucket(total, "0.005") == 2
    assert bucket(total, "10.0") == 2
    assert bucket(total, "+Inf") == 3
    assert s[(f"{total}_count", (("api", "credit-risk"),))] == 3
    assert abs(s[(f"{total}_sum", (("api", "credit-risk"),))] - 20.004) < 1e-9
    backend = "modelgate_gateway_backend_seconds"
    assert bucket(backend, "0.0005") == 1
    assert s[(f"{backend}_count", (("api", "credit-risk"),))] == 1


def test_label_space_is_bounded_without_losing_counts() -> None:
    """Past the series cap new APIs are counted under api="-" instead of growing without bound."""
    m = GatewayMetrics()
    m._MAX_SERIES = 2
    for api in ("a", "b", "c", "d"):
        m.observe(api, 200, 0.01, None)
    s = _samples(m)
    requests = {k: v for k, v in s.items() if k[0] == "modelgate_gateway_requests_total"}
    assert sum(requests.values()) == 4
    assert requests[("modelgate_gateway_requests_total", (("api", "-"), ("status", "200")))] == 2
