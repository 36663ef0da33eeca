"""The seed's whole flow on a fresh MODELGATE_HOME: `modelgate up`, `modelgate pipeline run`,
`modelgate score` of the example record, then Ctrl-C leaves nothing running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import requests

from app.client import EXAMPLE_REQUEST
from tests.e2e.test_up import _processes_of
from tests.support import ROOT, wait_for


def _modelgate(env: dict[str, str], *args: str, timeout: float = 60,
               stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=str(ROOT), env=env,
                          capture_output=True, text=True, timeout=timeout, input=stdin,
                          check=False)


def test_up_pipeline_run_score_and_stop(tmp_path: Path) -> None:
    home = tmp_path / "instance"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATE_")}
    env["MODELGATE_HOME"] = str(home)
    pipeline_file = tmp_path / "pipeline.yml"
    pipeline_file.write_text("model:\n  importance_repeats: 3\n")
    env["MODELGATE_PIPELINE_CONFIG"] = str(pipeline_file)
    up = subprocess.Popen(
        [sys.executable, "-m", "app", "up", "--panel-port", "0", "--issuer-port", "0",
         "--gateway-port", "0"],
        cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        endpoints_file = home / "endpoints.json"
        wait_for(lambda: endpoints_file.exists() or up.poll() is not None, 120, "endpoints.json")
        assert up.poll() is None, up.stdout.read().decode() if up.stdout else ""
        endpoints = json.loads(endpoints_file.read_text())
        assert requests.get(endpoints["gateway"] + "/health", verify=endpoints["ca_bundle"],
                            timeout=5).status_code == 200

        run = _modelgate(env, "pipeline", "run", timeout=900)
        assert run.returncode == 0, run.stdout + run.stderr
        for stage in ("provision", "train", "deploy", "publish"):
            assert any(line.startswith(stage) and "SUCCEEDED" in line
                       for line in run.stdout.splitlines()), run.stdout
        assert "succeeded" in run.stdout.splitlines()[-1]

        scored = _modelgate(env, "score")
        assert scored.returncode == 0, scored.stdout + scored.stderr
        answer = json.loads(scored.stdout)
        prediction = answer["predictions"][0]
        assert set(prediction["probabilities"]) == {"good", "bad"}
        assert prediction["label"] in ("good", "bad")
        assert abs(sum(prediction["probabilities"].values()) - 1) < 1e-9
        assert answer["model"]["name"] == "german-credit" and answer["model"]["version"]

        # The same record from a file; a bad record fails with the problem detail.
        record = tmp_path / "record.json"
        record.write_text(json.dumps(EXAMPLE_REQUEST))
        from_file = _modelgate(env, "score", str(record))
        assert json.loads(from_file.stdout)["predictions"] == answer["predictions"]
        bad = _modelgate(env, "score", "-", stdin='{"data": [{"Age": 20, "Sex": "robot"}]}')
        assert bad.returncode == 1 and "422" in bad.stderr and "Sex" in bad.stderr

        # A failing stage: non-zero exit with the failing job's error.
        pipeline_file.write_text("model:\n  importance_repeats: many\n")
        failed = _modelgate(env, "pipeline", "run", "--until", "train", timeout=300)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert "pipeline failed (provision job" in failed.stderr
        assert "importance_repeats" in failed.stderr

        token = _modelgate(env, "token").stdout.strip()
        apis = requests.get(endpoints["panel"] + "/api/v1/apis", timeout=10,
                            headers={"Authorization": f"Bearer {token}"}).json()["apis"]
        assert [(a["name"], a["revision"], a["url"]) for a in apis] == [
            ("credit-risk-staging", 1, endpoints["gateway"] + "/staging/credit-risk")]

        # A second publish and a rollback, over the REST API as CI: the gateway follows.
        pipeline_file.write_text("model:\n  importance_repeats: 3\n")
        auth = {"Authorization": f"Bearer {token}"}
        api = endpoints["panel"] + "/api/v1"
        job = requests.post(f"{api}/jobs", json={"kind": "publish", "params": {}},
                            headers=auth, timeout=10).json()
        done = wait_for(lambda: (j := requests.get(f"{api}/jobs/{job['id']}", headers=auth,
                                                   timeout=10).json())["status"] in
                        ("SUCCEEDED", "FAILED") and j, 60, "the publish job")
        assert done["status"] == "SUCCEEDED" and done["result"]["revision"] == 2, done
        wait_for(lambda: _served_revision(endpoints, token, home) == 2, 15, "revision 2")
        back = requests.post(f"{api}/apis/credit-risk-staging/revisions/1/rollback",
                             headers=auth, timeout=10)
        assert back.status_code == 200 and back.json()["is_current"]
        wait_for(lambda: _served_revision(endpoints, token, home) == 1, 15, "revision 1")

        # One stage per command, as the CI definitions in ci/ run them.
        for stage in ("provision", "publish"):
            single = _modelgate(env, stage, timeout=300)
            assert single.returncode == 0, single.stdout + single.stderr
            assert single.stdout.splitlines()[0].startswith(f"{stage} job ")
            assert single.stdout.splitlines()[-1].endswith("succeeded")
        wait_for(lambda: _served_revision(endpoints, token, home) == 3, 15, "revision 3")
        protected = _modelgate(env, "deploy", "--environment", "prod")
        assert protected.returncode == 1 and "--reason" in protected.stderr
    finally:
        up.send_signal(signal.SIGINT)
        try:
            code = up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            raise
    assert code == 0
    assert not (home / "endpoints.json").exists()
    wait_for(lambda: not _processes_of(home), 15, "every child process to be gone")
    secret = json.loads((home / "dev-credentials.json").read_text())["clients"]["modelgate-ci"]
    for log in (p for p in (home / "logs").rglob("*") if p.is_file()):
        text = log.read_text(errors="replace")
        assert secret["secret"] not in text, f"the CI secret is in {log.name}"
        assert token not in text, f"a token is in {log.name}"


def _served_revision(endpoints: dict[str, str], token: str, home: Path) -> int | None:
    """Score once through the gateway and read which API revision served it from its log."""
    r = requests.post(endpoints["gateway"] + "/staging/credit-risk/score", json=EXAMPLE_REQUEST,
                      headers={"Authorization": f"Bearer {token}"},
                      verify=endpoints["ca_bundle"], timeout=10)
    assert r.status_code == 200, r.text
    request_id = r.json()["request_id"]
    log = home / "logs" / "gateway-requests.jsonl"

    def record() -> dict[str, object] | None:
        for line in reversed(log.read_text().splitlines()):
            entry = json.loads(line)
            if entry["request_id"] == request_id:
                return dict(entry)
        return None

    found = wait_for(record, 10, "the request in the gateway log", interval=0.1)
    revision = found["revision"]
    return int(revision) if isinstance(revision, int) else None
