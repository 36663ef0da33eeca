"""The command line as an API client: CI credentials, tokens, scoring and the pipeline.

`modelgate token|score|pipeline run` talk to a running stack over HTTP like any CI system:
the URLs come from MODELGATE_HOME/endpoints.json (written by `modelgate up`) or MODELGATE_*
settings, and the CI client's token comes from MSAL's client-credentials flow. A token is
printed only by `modelgate token`; nothing here logs or echoes one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

CI_CLIENT_ID = "modelgate-ci"
HTTP_TIMEOUT = 30.0
STAGES = ("provision", "train", "deploy", "publish")
FINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
# The seed's test record (the scoring API's example).
EXAMPLE_REQUEST: dict[str, Any] = {"data": [{
    "Age": 20, "Sex": "male", "Job": 0, "Housing": "own", "Saving accounts": "little",
    "Checking account": "little", "Credit amount": 100, "Duration": 48, "Purpose": "radio/TV"}]}


class ClientError(Exception):
    """A command failed; the message is safe to print (never a token or secret)."""


class StackUnavailable(ClientError):
    """No running stack was found or it did not answer; the message says where we looked."""


def where_home_is(home: Path, env: Mapping[str, str] = os.environ) -> str:
    """How the home folder was chosen, for messages that send the user to the right one."""
    if env.get("MODELGATE_HOME"):
        return f"{home} (MODELGATE_HOME)"
    return f"{home} (MODELGATE_HOME is not set, so ./instance)"


def start_hint() -> str:
    """What to run when no stack answers."""
    return ("start the stack with `modelgate up` in another terminal, or set MODELGATE_HOME "
            "to the folder `modelgate up` runs with")


@dataclass(frozen=True)
class Endpoints:
    """Where the running stack answers."""

    panel: str
    issuer: str
    gateway: str
    ca_bundle: str | None

    @property
    def verify(self) -> str | bool:
        """What requests should trust: the local CA when there is one."""
        return self.ca_bundle or True


@dataclass(frozen=True)
class Credentials:
    """A confidential client and where its secret came from."""

    client_id: str
    secret: str = field(repr=False)
    source: str


def endpoints(home: Path, env: Mapping[str, str] = os.environ) -> Endpoints:
    """endpoints.json of the running stack, else the MODELGATE_* URLs (README.md, "Identity")."""
    path = home / "endpoints.json"
    if path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
        return Endpoints(data["panel"].rstrip("/"), data["issuer"].rstrip("/"),
                         data["gateway"].rstrip("/"), data.get("ca_bundle") or None)
    ca = env.get("MODELGATE_CA_BUNDLE") or None
    if ca is None and (home / "tls" / "ca.pem").exists():
        ca = str(home / "tls" / "ca.pem")
    return Endpoints(env.get("MODELGATE_PANEL_URL", "http://127.0.0.1:5000").rstrip("/"),
                     env.get("MODELGATE_ISSUER_URL", "https://127.0.0.1:8443/local").rstrip("/"),
                     env.get("MODELGATE_GATEWAY_URL", "https://127.0.0.1:8000").rstrip("/"), ca)


def credentials(home: Path, env: Mapping[str, str] = os.environ) -> Credentials:
    """The CI client: MODELGATE_CI_CLIENT_ID/_SECRET, MODELGATE_CLIENT_ID/_SECRET, or dev file."""
    for prefix in ("MODELGATE_CI_CLIENT", "MODELGATE_CLIENT"):
        client_id, secret = env.get(f"{prefix}_ID"), env.get(f"{prefix}_SECRET")
        if client_id and secret:
            return Credentials(client_id, secret, f"{prefix}_ID/{prefix}_SECRET")
    path = home / "dev-credentials.json"
    try:
        secret = json.loads(path.read_text(encoding="utf-8"))["clients"][CI_CLIENT_ID]["secret"]
    except FileNotFoundError:
        raise StackUnavailable(
            f"no running stack found: looked for {path.name} in {where_home_is(home, env)}; "
            f"{start_hint()} (a CI system without a local stack sets MODELGATE_PANEL_URL, "
            "MODELGATE_ISSUER_URL, MODELGATE_GATEWAY_URL and MODELGATE_CI_CLIENT_ID/_SECRET)"
        ) from None
    except (KeyError, TypeError, ValueError):
        raise ClientError(f"{path} has no secret for the {CI_CLIENT_ID} client") from None
    return Credentials(CI_CLIENT_ID, str(secret), str(path))


def _session(verify: str | bool) -> requests.Session:
    """A session trusting the local CA and ignoring proxy settings (loopback services)."""
    session = requests.Session()
    session.verify = verify
    session.trust_env = False
    return session


class TokenSource:
    """Client-credentials access tokens through MSAL (cached by MSAL until near expiry)."""

    def __init__(self, home: Path, env: Mapping[str, str] = os.environ) -> None:
        from app.auth.oidc import LOCAL_API_AUDIENCE, OidcSettings

        self.endpoints = endpoints(home, env)
        self.credentials = credentials(home, env)
        identity = env.get("MODELGATE_IDENTITY", "local")
        settings = OidcSettings(identity=identity,  # type: ignore[arg-type]
                                client_id=self.credentials.client_id,
                                issuer_url=self.endpoints.issuer,
                                tenant_id=env.get("MODELGATE_TENANT_ID", ""),
                                api_client_id=env.get("MODELGATE_API_CLIENT_ID", ""))
        self._settings = settings
        audience = settings.api_audience if identity == "entra" else LOCAL_API_AUDIENCE
        self.scopes = [f"{audience}/.default"]
        self._app: Any = None

    def _msal(self) -> Any:
        import msal

        if self._app is None:
            kind = "authority" if self._settings.identity == "entra" else "oidc_authority"
            try:
                self._app = msal.ConfidentialClientApplication(
                    self.credentials.client_id, client_credential=self.credentials.secret,
                    http_client=_session(self.endpoints.verify), timeout=HTTP_TIMEOUT,
                    **{kind: self._settings.authority})
            except (requests.RequestException, ValueError) as exc:
                raise StackUnavailable(f"the identity provider at {self._settings.authority} "
                                       f"cannot be reached ({exc.__class__.__name__}): "
                                       f"{start_hint()}") from None
        return self._app

    def token(self) -> str:
        """An access token for the API; raises ClientError with the provider's reason."""
        try:
            result = self._msal().acquire_token_for_client(self.scopes)
        except requests.RequestException as exc:
            raise StackUnavailable(f"the identity provider cannot be reached "
                                   f"({exc.__class__.__name__}): {start_hint()}") from None
        token = result.get("access_token")
        if not token:
            reason = result.get("error_description") or result.get("error") or "no token"
            raise ClientError(f"{self.credentials.client_id} got no token: {reason}")
        return str(token)


def _problem(response: requests.Response) -> str:
    """A one-line description of an error response (problem+json detail when there is one)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("title") or ""
        errors = body.get("errors") or []
        extra = "; ".join(f"{e.get('field')}: {e.get('message')}" for e in errors
                          if isinstance(e, dict))
        return f"{response.status_code} {body.get('title') or response.reason}: {detail}" + (
            f" ({extra})" if extra else "")
    return f"{response.status_code} {response.reason}"


def score_path(environment: str) -> str:
    """The gateway path of an environment's score operation."""
    return "credit-risk/score" if environment == "prod" else f"{environment}/credit-risk/score"


def score(home: Path, body: Any, environment: str = "staging",
          env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """POST a score request through the gateway with a CI token; return the JSON answer."""
    tokens = TokenSource(home, env)
    url = f"{tokens.endpoints.gateway}/{score_path(environment)}"
    try:
        response = _session(tokens.endpoints.verify).post(
            url, json=body, timeout=HTTP_TIMEOUT,
            headers={"Authorization": f"Bearer {tokens.token()}"})
    except requests.RequestException as exc:
        raise StackUnavailable(f"the gateway at {tokens.endpoints.gateway} cannot be reached "
                               f"({exc.__class__.__name__}): {start_hint()}") from None
    if response.status_code != 200:
        raise ClientError(f"POST {url}: {_problem(response)}")
    answer: dict[str, Any] = response.json()
    return answer


def csv_records(text: str) -> list[dict[str, Any]]:
    """Records from a CSV with a header row, as the score tester reads one: an empty cell is a
    missing field (no account), whole numbers become integers, other numbers floats, the rest
    stays text; the gateway checks each value against the model's signature."""
    rows = list(csv.reader(io.StringIO(text)))
    if len(rows) < 2:
        raise ClientError("the CSV needs a header row and at least one record")
    header, records = [name.strip() for name in rows[0]], []
    for row in rows[1:]:
        if not any(cell.strip() for cell in row):
            continue  # a blank line
        record: dict[str, Any] = {}
        for name, cell in zip(header, row, strict=False):
            cell = cell.strip()
            if cell:
                record[name] = _number_or_text(cell)
        records.append(record)
    return records


def _number_or_text(cell: str) -> Any:
    for kind in (int, float):
        try:
            return kind(cell)
        except ValueError:
            continue
    return cell


def score_csv(home: Path, text: str, environment: str = "staging",
              env: Mapping[str, str] = os.environ, *, explain: bool = False
              ) -> list[dict[str, Any]]:
    """Score every record of a CSV through the gateway in chunks; per row, the prediction
    (`label`, `probabilities`, `model`, with `explain` its top 3 `reasons` as sentences) or
    the gateway's `error` for that row."""
    from app.services.scoring import MAX_CHUNK_ROWS, score_records

    records = csv_records(text)
    tokens = TokenSource(home, env)
    url = f"{tokens.endpoints.gateway}/{score_path(environment)}"
    token = tokens.token()
    results: list[dict[str, Any]] = []
    for start in range(0, len(records), MAX_CHUNK_ROWS):
        chunk = score_records(url, token, records[start:start + MAX_CHUNK_ROWS],
                              verify=tokens.endpoints.verify, explain=explain)
        if chunk.status == 0:  # no answer at all: the gateway is not there
            raise StackUnavailable(f"the gateway at {tokens.endpoints.gateway} cannot be reached: "
                                   f"{start_hint()}")
        model = f"v{chunk.model_version}" if chunk.model_version else ""
        results.extend({**row, "model": model} if "label" in row else row for row in chunk.rows)
    return results


class PanelClient:
    """The panel REST API as the CI client."""

    def __init__(self, home: Path, env: Mapping[str, str] = os.environ) -> None:
        self.tokens = TokenSource(home, env)
        self.base = f"{self.tokens.endpoints.panel}/api/v1"
        self._http = _session(self.tokens.endpoints.verify)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One API call; ClientError with the problem detail on any non-2xx answer."""
        try:
            response = self._http.request(
                method, f"{self.base}{path}", json=body, timeout=HTTP_TIMEOUT,
                headers={"Authorization": f"Bearer {self.tokens.token()}"})
        except requests.RequestException as exc:
            raise StackUnavailable(f"the panel at {self.tokens.endpoints.panel} cannot be "
                                   f"reached ({exc.__class__.__name__}): {start_hint()}") from None
        if response.status_code >= 300:
            raise ClientError(f"{method} {path}: {_problem(response)}")
        return response.json()


def bar(percent: int, width: int = 24) -> str:
    """A text progress bar."""
    filled = max(0, min(width, round(width * percent / 100)))
    return "#" * filled + "-" * (width - filled)


def follow_pipeline(panel: PanelClient, job_id: str, stages: tuple[str, ...],
                    out: Callable[[str], None], *, interval: float = 1.0,
                    timeout: float = 3600.0) -> dict[str, Any]:
    """Print a line per stage whenever it changes, until the pipeline job ends; return it."""
    shown: dict[str, tuple[str, int, str]] = {}
    deadline = time.monotonic() + timeout
    while True:
        parent = panel.call("GET", f"/jobs/{job_id}")
        children = panel.call("GET", f"/jobs?parent_id={job_id}&limit=50")["jobs"]
        latest: dict[str, dict[str, Any]] = {}
        for child in sorted(children, key=lambda j: j["created_at"]):
            latest[child["kind"]] = child
        for stage in stages:
            child = latest.get(stage)
            if child is None:
                continue
            state = (child["status"], int(child["progress"]), str(child["step"]))
            if shown.get(stage) != state:
                shown[stage] = state
                out(f"{stage:<10} [{bar(state[1])}] {state[1]:>3}%  {state[0]:<9} "
                    f"{state[2]}  (job {child['id']})")
        if parent["status"] in FINAL:
            return dict(parent)
        if time.monotonic() > deadline:
            raise ClientError(f"pipeline job {job_id} did not finish within {timeout:.0f} s "
                              f"(it is still {parent['status']})")
        time.sleep(interval)


def promotion_version(panel: PanelClient, environment: str, version: str | None) -> str:
    """The version to promote: the one given, else the one staging serves (what CI tested)."""
    if version:
        return version
    for env in panel.call("GET", "/deployments")["environments"]:
        if env["environment"] == "staging" and env.get("active"):
            return str(env["active"]["model"]["version"])
    raise ClientError(f"staging serves nothing, so there is nothing to promote to {environment}; "
                      "deploy a version to staging first or give --version")


def is_protected(panel: PanelClient, environment: str) -> bool:
    """Whether the panel changes `environment` only through approved promotions."""
    return any(env["environment"] == environment and env.get("protected")
               for env in panel.call("GET", "/deployments")["environments"])


def follow_promotion(panel: PanelClient, promotion_id: str, out: Callable[[str], None], *,
                     interval: float = 2.0, timeout: float = 3600.0) -> tuple[dict[str, Any],
                                                                               dict[str, Any] |
                                                                               None]:
    """Wait for a decision, then for the approved job; return (promotion, job or None)."""
    deadline = time.monotonic() + timeout
    out(f"promotion {promotion_id}: waiting for an approver's decision")
    while True:
        row = panel.call("GET", f"/promotions/{promotion_id}")
        if row["state"] != "PENDING":
            break
        if time.monotonic() > deadline:
            raise ClientError(f"promotion {promotion_id} was not decided within {timeout:.0f} s")
        time.sleep(interval)
    who = f" by {row['decided_by']}" if row.get("decided_by") else ""
    comment = f": {row['comment']}" if row.get("comment") else ""
    out(f"promotion {promotion_id}: {row['state'].lower()}{who}{comment}")
    if row["state"] != "APPROVED" or not row.get("deploy_job_id"):
        return dict(row), None
    return dict(row), follow_job(panel, row["deploy_job_id"], out, interval=interval / 2,
                                 timeout=max(1.0, deadline - time.monotonic()))


def follow_job(panel: PanelClient, job_id: str, out: Callable[[str], None], *,
               interval: float = 1.0, timeout: float = 3600.0) -> dict[str, Any]:
    """Print a line whenever the job's status, progress or step changes, until it ends."""
    deadline = time.monotonic() + timeout
    shown: tuple[str, int, str] | None = None
    while True:
        job = panel.call("GET", f"/jobs/{job_id}")
        state = (job["status"], int(job["progress"]), str(job["step"]))
        if state != shown:
            shown = state
            out(f"{job['kind']:<10} [{bar(state[1])}] {state[1]:>3}%  {state[0]:<9} "
                f"{state[2]}  (job {job_id})")
        if job["status"] in FINAL:
            return dict(job)
        if time.monotonic() > deadline:
            raise ClientError(f"job {job_id} did not finish within {timeout:.0f} s "
                              f"(it is still {job['status']})")
        time.sleep(interval)


def failing_child(panel: PanelClient, job_id: str) -> dict[str, Any] | None:
    """The child job that failed (or was cancelled), if any."""
    children = panel.call("GET", f"/jobs?parent_id={job_id}&limit=50")["jobs"]
    for child in children:
        if child["status"] in ("FAILED", "CANCELLED"):
            return dict(child)
    return None
