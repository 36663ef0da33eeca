"""Reason codes are computed by the scoring replica and pass through the gateway unchanged."""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import requests

from app.gateway.config import write_gateway_config
from app.serving.keys import generate_keys, write_keys_file
from tests.gateway.conftest import BACKEND_KEY, Stack, api_entry, named
from tests.serving.conftest import Keys, start_replica
from tests.serving.modelpkg import EXAMPLE, build_model_package, load_frame


def test_reasons_pass_through_the_gateway_unchanged(stack: Stack, tmp_path: Path) -> None:
    _, secondary = generate_keys()
    write_keys_file(tmp_path / "keys.json", BACKEND_KEY, secondary)
    package = build_model_package(tmp_path / "gb", "gb")
    replica = start_replica(package, Keys(tmp_path / "keys.json", BACKEND_KEY, secondary),
                            tmp_path / "replica.log")
    entry = api_entry("explained", "explained/credit-risk", stack.issuer)
    entry["name"] = "explained"
    config = copy.deepcopy(stack.config)
    config["apis"].append(entry)
    config["named_values"].update(named(stack.home, "explained", replica.url))
    headers = {"Authorization": f"Bearer {stack.issuer.mint()}"}
    frame, _ = load_frame()
    records = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
               for r in frame.head(20).to_dict("records")]
    try:
        write_gateway_config(stack.home, config)
        url = f"{stack.url}/explained/credit-risk/score"
        deadline = time.monotonic() + 5
        while requests.post(url, json={"data": [EXAMPLE]}, headers=headers, verify=stack.ca,
                            timeout=10).status_code == 404 and time.monotonic() < deadline:
            time.sleep(0.05)
        for query, body in (("?explain=true", {"data": records}),
                            ("", {"data": records, "explain": True})):
            through = requests.post(url + query, json=body, verify=stack.ca, timeout=10,
                                    headers={**headers, "X-Request-ID": "same-id"})
            direct = requests.post(f"{replica.url}/score{query}", json=body, timeout=10,
                                   headers={**replica.headers(), "X-Request-ID": "same-id"})
            assert through.status_code == direct.status_code == 200, through.text
            assert through.content == direct.content  # byte for byte, reasons included
            assert all("reasons" in p for p in through.json()["predictions"])
        plain = requests.post(url, json={"data": records}, headers=headers, verify=stack.ca,
                              timeout=10)
        assert plain.status_code == 200
        assert all("reasons" not in p for p in plain.json()["predictions"])
    finally:
        write_gateway_config(stack.home, stack.config)
        replica.stop()
