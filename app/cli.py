"""The `modelgate` command group (README.md, "Command line")."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

BEAT_PROCESS_NAME = "modelgate-beat"


def _home() -> Path:
    return Path(os.environ.get("MODELGATE_HOME", "./instance")).expanduser().resolve()


def _configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class EnvironmentName(click.ParamType):
    """An environment of the pipeline file, read when the option is parsed (not at import)."""

    name = "environment"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> str:
        from app.pipeline_config import PipelineConfigError, load_pipeline_config

        try:
            names = load_pipeline_config().environment_names
        except PipelineConfigError:
            return str(value)  # the panel names what is wrong with the file
        if value not in names:
            self.fail(f"{value!r} is not one of {', '.join(names)} (the pipeline file's "
                      "environments)", param, ctx)
        return str(value)


ENVIRONMENT = EnvironmentName()


class NoStackError(click.ClickException):
    """No local installation or running stack to talk to: exit 2 with where we looked."""

    exit_code = 2


def _make_app() -> Any:
    """The panel app on this installation's database, or NoStackError naming what is missing."""
    from app import create_app
    from app.client import start_hint, where_home_is

    home = _home()
    missing = [name for name, env in (("secret_key", "MODELGATE_SECRET_KEY"),
                                      ("modelgate.db", "MODELGATE_DATABASE_URL"))
               if not os.environ.get(env) and not (home / name).exists()]
    if missing:
        raise NoStackError(f"no modelgate installation found: looked for {' and '.join(missing)} "
                           f"in {where_home_is(home)}; {start_hint()}")
    return create_app()


def _client_failure(exc: Exception) -> click.ClickException:
    """A CLI error for a ClientError: exit 2 when no stack answered, 1 otherwise."""
    from app.client import StackUnavailable

    if isinstance(exc, StackUnavailable):
        return NoStackError(str(exc))
    return click.ClickException(str(exc))


@click.group()
def main() -> None:
    """modelgate: train, deploy and publish models behind a secure endpoint."""


# --------------------------------------------------------------------------- the stack


@main.command()
@click.option("--panel-port", type=int, default=5000, show_default=True, help="0 = a free port")
@click.option("--issuer-port", type=int, default=8443, show_default=True, help="0 = a free port")
@click.option("--gateway-port", type=int, default=8000, show_default=True, help="0 = a free port")
@click.option("--gateway-workers", default=None, metavar="N",
              help="gateway processes sharing its port, 1-64 (default: "
                   "MODELGATE_GATEWAY_WORKERS, else 1); docs/operations.md, \"Scale-out\"")
def up(panel_port: int, issuer_port: int, gateway_port: int,
       gateway_workers: str | None) -> None:
    """Start the whole local stack in the foreground; Ctrl-C stops it."""
    from app.localstack.stack import Stack

    _configure_logging(logging.WARNING)
    workers = _gateway_workers(gateway_workers, "--gateway-workers")
    stack = Stack(_home(), panel_port=panel_port, issuer_port=issuer_port,
                  gateway_port=gateway_port, redis_url=os.environ.get("MODELGATE_REDIS_URL"),
                  out=lambda line: click.echo(line), gateway_workers=workers)
    sys.exit(stack.run())


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True)
def panel(host: str, port: int, workers: int) -> None:
    """Serve the panel under gunicorn."""
    from app.wsgi import serve_wsgi

    _configure_logging()
    app = _make_app()  # fail fast on bad configuration before forking workers
    # One thread count for gunicorn and for the stream cap derived from it (app.services.streams).
    serve_wsgi(_make_app, host=host, port=port, workers=workers,
               threads=int(app.config["PANEL_THREADS"]))


@main.command()
@click.option("--concurrency", type=int, default=2, show_default=True)
@click.option("--beat/--no-beat", default=False, help="Also run the periodic scheduler.")
@click.option("--queues", default="modelgate", show_default=True)
def worker(concurrency: int, beat: bool, queues: str) -> None:
    """Run a Celery worker for the job queue."""
    from celery.signals import beat_init, worker_ready

    from app.backends.local.relocation import relocate
    from app.localstack.processes import name_this_process
    from workers.main import celery_app, flask_app

    run_dir = Path(flask_app.config["HOME"]) / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    marker = run_dir / f"worker.{os.getpid()}.ready"
    # A home restored into another folder: MLflow's stored locations follow it before this
    # worker logs a run (`up` does the same at its start).
    for relocation in relocate(flask_app.config["HOME"]):
        click.echo(relocation.describe())

    @worker_ready.connect(weak=False)
    def _mark_ready(**_: Any) -> None:
        marker.touch()

    @beat_init.connect(weak=False)
    def _name_beat(**_: Any) -> None:
        # The embedded scheduler is a fork with the worker's command line; name it apart.
        name_this_process(BEAT_PROCESS_NAME)

    argv = ["worker", "--loglevel", "INFO", "--concurrency", str(concurrency),
            "--queues", queues, "--hostname", f"modelgate-{os.getpid()}@%h",
            "--without-gossip", "--without-mingle"]
    if beat:
        argv += ["--beat", "--schedule", str(run_dir / "celerybeat-schedule")]
    try:
        celery_app.worker_main(argv)
    finally:
        marker.unlink(missing_ok=True)


@main.command()
def beat() -> None:
    """Run the periodic scheduler alone (when several workers share one Redis)."""
    from app.localstack.processes import name_this_process
    from workers.main import celery_app, flask_app

    schedule = Path(flask_app.config["HOME"]) / "run" / "celerybeat-schedule"
    schedule.parent.mkdir(parents=True, exist_ok=True)
    name_this_process(BEAT_PROCESS_NAME)
    celery_app.start(["beat", "--loglevel", "INFO", "--schedule", str(schedule)])


@main.command()
@click.option("--poll", type=float, default=0.5, show_default=True,
              help="Seconds between desired-state checks.")
def runtime(poll: float) -> None:
    """Run the local runtime: keep the desired deployments' scoring replicas running."""
    from app.config import load_config
    from app.extensions import make_engine
    from app.runtime.supervisor import Runtime

    _configure_logging()
    config = load_config({"HOME": str(_home()), "DEBUG": True})
    engine = make_engine(config["DATABASE_URL"])
    sys.exit(Runtime(Path(config["HOME"]), engine, poll_interval=poll).run())


# --------------------------------------------------------------------------- identity


@main.group(invoke_without_command=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8443, show_default=True, help="0 = a free port")
@click.pass_context
def idp(ctx: click.Context, host: str, port: int) -> None:
    """Run the local OpenID Connect issuer (HTTPS) at https://HOST:PORT/local."""
    if ctx.invoked_subcommand is not None:
        return
    from app.identity.server import serve

    serve(_home(), host, port)


@idp.command("rotate-keys")
@click.option("--force", is_flag=True, help="Activate the next key even if it is brand new.")
def idp_rotate_keys(force: bool) -> None:
    """One signing-key rotation step: the published next key starts signing."""
    from app.identity.keys import KeyRotationError, rotate_keys

    try:
        result = rotate_keys(_home(), force=force)
    except KeyRotationError as exc:
        raise click.ClickException(f"rotate-keys refused: {exc}") from None
    click.echo(f"signing key: {result.signing_kid}\nnext key:    {result.next_kid}\n"
               f"retired:     {', '.join(result.retired_kids) or '-'}")


# --------------------------------------------------------------------------- gateway


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True, help="0 = a free port")
@click.option("--issuer-url", default=None,
              help="set the issuer-url named value (the token issuer policies name) first")
@click.option("--workers", default=None, metavar="N",
              help="gateway processes sharing the port with SO_REUSEPORT, 1-64 (default: "
                   "MODELGATE_GATEWAY_WORKERS, else 1)")
def gateway(host: str, port: int, issuer_url: str | None, workers: str | None) -> None:
    """Run the API gateway (HTTPS) for the APIs published in MODELGATE_HOME."""
    from app.backends.local import gateway as gateway_config
    from app.gateway.app import serve

    _configure_logging()
    count = _gateway_workers(workers, "--workers")
    redis_url = os.environ.get("MODELGATE_REDIS_URL")
    if not redis_url:
        raise click.ClickException("the gateway needs MODELGATE_REDIS_URL (its rate-limit "
                                   "counters live in Redis)")
    if issuer_url is not None:
        if not issuer_url.startswith("https://"):
            raise click.BadParameter("must be an https URL", param_hint="--issuer-url")
        gateway_config.set_issuer_url(_home(), issuer_url)
    if count > 1:
        from app.gateway.workers import serve_workers

        sys.exit(serve_workers(_home(), host, port, redis_url=redis_url, workers=count))
    serve(_home(), host, port, redis_url=redis_url)


def _gateway_workers(option: str | None, name: str) -> int:
    """The gateway's worker count: the option if given, else MODELGATE_GATEWAY_WORKERS, else 1."""
    from app.gateway.workers import parse_workers, workers_from_env

    try:
        if option is not None:
            return parse_workers(option, name)
        return workers_from_env(os.environ)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


# --------------------------------------------------------------------------- database


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations up to a revision."""
    from app.config import load_config
    from app.migrate import upgrade

    config = load_config({"HOME": str(_home()), "DEBUG": True})
    upgrade(config["DATABASE_URL"], revision)
    click.echo("database is up to date")


# --------------------------------------------------------------------------- jobs


@main.group(invoke_without_command=True)
@click.pass_context
def jobs(ctx: click.Context) -> None:
    """The job queue from the terminal (reads the instance database directly)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(jobs_list)


@jobs.command("list")
@click.option("--status", default=None)
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def jobs_list(status: str | None, limit: int, as_json: bool) -> None:
    """List recent jobs."""
    from app.services import jobs as service

    with _make_app().app_context():
        found = [service.to_dict(job) for job in service.list_jobs(limit=limit, status=status)]
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo("no jobs")
        return
    click.echo(f"{'ID':<13} {'KIND':<12} {'STATUS':<10} {'PROG':>4}  {'BY':<14} STEP")
    for job in found:
        click.echo(f"{job['id']:<13} {job['kind']:<12} {job['status']:<10} "
                   f"{job['progress']:>3}%  {job['requested_by'][:14]:<14} {job['step']}")


@jobs.command("show")
@click.argument("job_id")
def jobs_show(job_id: str) -> None:
    """Show one job and its log."""
    from app.errors import AppError
    from app.services import jobs as service

    with _make_app().app_context():
        try:
            job = service.to_dict(service.get(job_id))
        except AppError as exc:
            raise click.ClickException(exc.message) from None
        lines = [service.log_to_dict(line) for line in service.logs(job_id)]
    for key in ("id", "kind", "status", "progress", "step", "requested_by", "attempts",
                "created_at", "started_at", "finished_at", "error"):
        click.echo(f"{key:>13}: {job[key]}")
    click.echo(f"{'params':>13}: {json.dumps(job['params'])}")
    if job["result"] is not None:
        click.echo(f"{'result':>13}: {json.dumps(job['result'])}")
    click.echo("log:")
    for line in lines:
        click.echo(f"  {line['time'][11:19]} {line['level']:<7} {line['message']}")


@jobs.command("cancel")
@click.argument("job_id")
def jobs_cancel(job_id: str) -> None:
    """Cancel a job."""
    import getpass

    from app.errors import AppError
    from app.services import jobs as service

    with _make_app().app_context():
        try:
            job = service.cancel(job_id, f"cli:{getpass.getuser()}")
        except AppError as exc:
            raise click.ClickException(exc.message) from None
        click.echo(f"{job.id}: {job.status}"
                   + (" (cancellation requested)" if job.status == "RUNNING" else ""))


# --------------------------------------------------------------------------- sessions


@main.group()
def sessions() -> None:
    """Signed-in panel sessions (records in Redis)."""


@sessions.command("end")
@click.argument("username")
def sessions_end(username: str) -> None:
    """End every panel session of USERNAME now (e.g. right after changing their roles)."""
    import getpass

    import redis

    from app.auth.sessions import end_user_sessions

    with _make_app().app_context():
        try:
            ended = end_user_sessions(username, f"cli:{getpass.getuser()}")
        except redis.RedisError as exc:
            raise click.ClickException(f"Redis is unreachable ({type(exc).__name__})") from None
    click.echo(f"{username}: {ended} panel session(s) ended")


# --------------------------------------------------------------------------- audit


@main.group()
def audit() -> None:
    """The tamper-evident audit trail."""


@audit.command("verify")
def audit_verify() -> None:
    """Check the hash chain; exit 1 and name the first broken row on tampering."""
    from app.services import audit as service

    with _make_app().app_context():
        report = service.verify()
    if report.ok:
        click.echo(f"audit trail intact: {report.checked} events verified")
        return
    click.echo(f"audit trail BROKEN at event {report.broken_id}: {report.reason} "
               f"({report.checked} events before it verified)", err=True)
    sys.exit(1)


@audit.command("export")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl",
              show_default=True)
def audit_export(fmt: str) -> None:
    """Write the whole trail to standard output, oldest first."""
    from app.services import audit as service

    with _make_app().app_context():
        for chunk in (service.export_jsonl() if fmt == "jsonl" else service.export_csv()):
            click.echo(chunk, nl=False)


# --------------------------------------------------------------------------- plan


@main.command()
@click.option("--offline", is_flag=True,
              help="Read nothing (no network, no credential): list every resource as to be "
                   "created.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(offline: bool, as_json: bool) -> None:
    """What provisioning, deploying and publishing would create or change, resource by
    resource, on the configured backend (MODELGATE_BACKEND, the pipeline file in
    MODELGATE_PIPELINE_CONFIG); changes nothing. Exit 0 when the plan was made."""
    from app.backends import get_backend
    from app.backends.base import BackendError
    from app.pipeline_config import PipelineConfigError, load_pipeline_config
    from app.services.plans import make_plan, plan_dict, plan_lines

    try:
        config = load_pipeline_config()
        target = get_backend({"BACKEND": os.environ.get("MODELGATE_BACKEND", "local"),
                              "HOME": str(_home()),
                              "REDIS_URL": os.environ.get("MODELGATE_REDIS_URL", "")})
        result = make_plan(target, config, offline)
    except (BackendError, PipelineConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(plan_dict(result), indent=2))
        return
    for line in plan_lines(result):
        click.echo(line)


# --------------------------------------------------------------------------- kubernetes


@main.group()
def k8s() -> None:
    """Kubernetes manifests of the deployed slots (for a cluster instead of the runtime)."""


@k8s.command("render")
@click.option("--environment", type=ENVIRONMENT, default="staging", show_default=True)
@click.option("--image", default="modelgate-scoring:latest", show_default=True,
              help="The scoring image the Deployment runs.")
def k8s_render(environment: str, image: str) -> None:
    """Print the active slot of ENVIRONMENT as manifests (keys only as digests)."""
    from app.errors import AppError
    from app.services import deployments

    with _make_app().app_context():
        try:
            click.echo(deployments.k8s_manifests(environment, image), nl=False)
        except AppError as exc:
            raise click.ClickException(exc.message) from None


# --------------------------------------------------------------------------- CI client


@main.command()
def token() -> None:
    """Print an access token for the CI client (like `az account get-access-token`)."""
    from app.client import ClientError, TokenSource

    try:
        click.echo(TokenSource(_home()).token())
    except ClientError as exc:
        raise _client_failure(exc) from None


@main.command()
@click.argument("file", type=click.File("r"), required=False)
@click.option("--environment", type=ENVIRONMENT, default="staging",
              show_default=True)
@click.option("--csv", "csv_file", type=click.File("r"), default=None,
              help="Score every row of a CSV with a header row (as the score tester does).")
@click.option("--explain", is_flag=True,
              help="Ask for reason codes (with --csv: the top 3 per row, as sentences).")
def score(file: Any, environment: str, csv_file: Any, explain: bool) -> None:
    """Score FILE (or - for standard input; default: the seed's example record) via the gateway.

    With --csv, print one line per row: its label and probabilities, or its field errors; exit 1
    when any row was refused.
    """
    from app.client import EXAMPLE_REQUEST, ClientError
    from app.client import score as post_score

    if csv_file is not None:
        _score_csv(csv_file, environment, explain)
        return
    if file is None:
        body: Any = EXAMPLE_REQUEST
    else:
        try:
            body = json.load(file)
        except ValueError as exc:
            raise click.ClickException(f"{file.name} is not JSON: {exc}") from None
    if explain and isinstance(body, dict):
        body = {**body, "explain": True}
    try:
        answer = post_score(_home(), body, environment)
    except ClientError as exc:
        raise _client_failure(exc) from None
    click.echo(json.dumps(answer, indent=2))


def _score_csv(csv_file: Any, environment: str, explain: bool = False) -> None:
    from app.client import ClientError, score_csv

    try:
        rows = score_csv(_home(), csv_file.read(), environment, explain=explain)
    except ClientError as exc:
        raise _client_failure(exc) from None
    refused = 0
    for number, row in enumerate(rows, start=1):
        if "label" in row:
            odds = " ".join(f"p_{name}={p:.4f}" for name, p in sorted(row["probabilities"].items()))
            reasons = "; ".join(row.get("reasons") or [])
            click.echo(f"row {number}: {row['label']} {odds} {row['model']}".rstrip()
                       + (f"  reasons: {reasons}" if reasons else ""))
        else:
            refused += 1
            click.echo(f"row {number}: refused: {row['error']}")
    click.echo(f"{len(rows) - refused} of {len(rows)} rows scored"
               + (f", {refused} refused" if refused else ""), err=True)
    if refused:
        sys.exit(1)


@main.group()
def pipeline() -> None:
    """The whole chain: provision → train → deploy → publish."""


@pipeline.command("run")
@click.option("--until", type=click.Choice(["provision", "train", "deploy", "publish"]),
              default="publish", show_default=True, help="Last stage to run.")
@click.option("--environment", type=ENVIRONMENT, default="staging",
              show_default=True)
@click.option("--version", default=None,
              help="Protected environment: the version to promote (default: what staging serves).")
@click.option("--reason", default=None,
              help="Protected environment: why (required; the approver reads it).")
@click.option("--wait/--no-wait", default=False,
              help="Protected environment: wait for the decision and the approved job.")
@click.option("--timeout", type=float, default=3600, show_default=True, help="Seconds.")
def pipeline_run(until: str, environment: str, version: str | None, reason: str | None,
                 wait: bool, timeout: float) -> None:
    """Queue the pipeline on the running stack as the CI client and follow it.

    A protected environment (prod by default) is never changed directly: this requests a
    promotion of VERSION instead, and with --wait waits for an approver's decision and the
    approved job (exit 0 when it succeeded, 1 on rejection, expiry or failure).
    """
    from app.client import ClientError, PanelClient, is_protected

    try:
        panel = PanelClient(_home())
        if is_protected(panel, environment):
            _request_promotion(panel, environment, version, reason, wait, timeout)
        else:
            _run_pipeline(panel, until, environment, timeout)
    except ClientError as exc:
        raise _client_failure(exc) from None


def _run_pipeline(panel: Any, until: str, environment: str, timeout: float) -> None:
    from app.client import STAGES, failing_child, follow_pipeline

    stages = STAGES[: STAGES.index(until) + 1]
    job = panel.call("POST", "/jobs", {"kind": "pipeline",
                                       "params": {"until": until, "environment": environment}})
    click.echo(f"pipeline job {job['id']} queued: {' → '.join(stages)} on {environment}")
    try:
        final = follow_pipeline(panel, job["id"], stages, click.echo, timeout=timeout)
    except KeyboardInterrupt:
        panel.call("POST", f"/jobs/{job['id']}/cancel")
        click.echo(f"pipeline job {job['id']}: cancellation requested", err=True)
        sys.exit(130)
    if final["status"] != "SUCCEEDED":
        child = failing_child(panel, job["id"])
        where = f" ({child['kind']} job {child['id']})" if child else ""
        click.echo(f"pipeline {final['status'].lower()}{where}: "
                   f"{final.get('error') or 'cancelled'}", err=True)
        sys.exit(1)
    click.echo(f"pipeline job {job['id']} succeeded")


def _request_promotion(panel: Any, environment: str, version: str | None, reason: str | None,
                       wait: bool, timeout: float) -> None:
    from app.client import follow_promotion, promotion_version

    if not reason or not reason.strip():
        raise click.ClickException(f"{environment} is protected: the pipeline requests a "
                                   "promotion, which needs --reason (the approver reads it)")
    version = promotion_version(panel, environment, version)
    row = panel.call("POST", "/promotions", {"version": version, "environment": environment,
                                             "reason": reason})
    click.echo(f"{environment} is protected: promotion {row['id']} requested "
               f"(v{version} → {environment}); approving it {', '.join(row.get('plan') or [])}")
    click.echo(f"an approver decides at {panel.tokens.endpoints.panel}/approvals/{row['id']}")
    gate = row.get("gate") or {}
    if gate.get("passed") is False:
        click.echo(f"v{version} fails the promotion gate ({'; '.join(gate.get('failures') or [])})"
                   ": approving it needs an override with a reason", err=True)
    if not wait:
        return
    final, job = follow_promotion(panel, row["id"], click.echo, timeout=timeout)
    if job is None:
        why = final.get("comment") or {"EXPIRED": "nobody decided in time",
                                       "SUPERSEDED": "a newer request replaced it"}.get(
            final["state"], "no reason given")
        click.echo(f"promotion {row['id']} {final['state'].lower()}: {why}", err=True)
        sys.exit(1)
    if job["status"] != "SUCCEEDED":
        click.echo(f"{job['kind']} job {job['id']} {job['status'].lower()}: "
                   f"{job.get('error') or 'cancelled'}", err=True)
        sys.exit(1)
    click.echo(f"promotion {row['id']}: {job['kind']} job {job['id']} succeeded")


# --------------------------------------------------------------------------- one stage (CI)

_STAGE_TIMEOUT = click.option("--timeout", type=float, default=3 * 3600, show_default=True,
                              help="Seconds to follow the job (API Management takes 30-75 "
                                   "minutes to create on Azure).")


@main.command("provision")
@_STAGE_TIMEOUT
def provision_stage(timeout: float) -> None:
    """Queue the provision job on the running stack as the CI client and follow it
    (exit 0 when it succeeded, 1 otherwise). Run `modelgate plan` first to see what it does."""
    _run_stage("provision", {}, timeout)


@main.command("train")
@click.option("--dataset-version", type=int, default=None,
              help="The dataset version (default: the latest).")
@_STAGE_TIMEOUT
def train_stage(dataset_version: int | None, timeout: float) -> None:
    """Queue the train job as the CI client and follow it (exit 0 when it succeeded)."""
    _run_stage("train", {} if dataset_version is None else
               {"dataset_version": dataset_version}, timeout)


@main.command("deploy")
@click.option("--environment", type=ENVIRONMENT, default="staging", show_default=True)
@click.option("--version", default=None, help="The model version (default: the latest; for a "
                                              "protected environment: what staging serves).")
@click.option("--reason", default=None, help="Protected environment: why (the approver reads "
                                             "it).")
@click.option("--wait/--no-wait", default=False,
              help="Protected environment: wait for the decision and the approved job.")
@_STAGE_TIMEOUT
def deploy_stage(environment: str, version: str | None, reason: str | None, wait: bool,
                 timeout: float) -> None:
    """Queue the deploy job (blue/green) as the CI client and follow it; a protected
    environment gets a promotion request instead (as `pipeline run` does)."""
    _run_stage("deploy", {"environment": environment,
                          **({"version": version} if version else {})}, timeout,
               promotion=(environment, version, reason, wait))


@main.command("publish")
@click.option("--environment", type=ENVIRONMENT, default="staging", show_default=True)
@click.option("--reason", default=None, help="Protected environment: why (the approver reads "
                                             "it).")
@click.option("--wait/--no-wait", default=False,
              help="Protected environment: wait for the decision and the approved job.")
@_STAGE_TIMEOUT
def publish_stage(environment: str, reason: str | None, wait: bool, timeout: float) -> None:
    """Queue the publish job (the API and its policy) as the CI client and follow it; a
    protected environment gets a promotion request instead."""
    _run_stage("publish", {"environment": environment}, timeout,
               promotion=(environment, None, reason, wait))


def _run_stage(kind: str, params: dict[str, Any], timeout: float,
               promotion: tuple[str, str | None, str | None, bool] | None = None) -> None:
    from app.client import ClientError, PanelClient, follow_job, is_protected

    try:
        panel = PanelClient(_home())
        if promotion is not None and is_protected(panel, promotion[0]):
            environment, version, reason, wait = promotion
            _request_promotion(panel, environment, version, reason, wait, timeout)
            return
        job = panel.call("POST", "/jobs", {"kind": kind, "params": params})
        click.echo(f"{kind} job {job['id']} queued")
        try:
            final = follow_job(panel, job["id"], click.echo, timeout=timeout)
        except KeyboardInterrupt:
            panel.call("POST", f"/jobs/{job['id']}/cancel")
            click.echo(f"{kind} job {job['id']}: cancellation requested", err=True)
            sys.exit(130)
    except ClientError as exc:
        raise _client_failure(exc) from None
    if final["status"] != "SUCCEEDED":
        click.echo(f"{kind} job {job['id']} {final['status'].lower()}: "
                   f"{final.get('error') or 'cancelled'}", err=True)
        sys.exit(1)
    click.echo(f"{kind} job {job['id']} succeeded")


if __name__ == "__main__":
    main()
