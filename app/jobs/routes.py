"""Job pages: list, detail with live log, queue, cancel; JSON status and an SSE stream."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user

from app.auth.roles import Role
from app.auth.users import role_required, signed_in
from app.errors import Conflict
from app.params import int_arg
from app.security import safe_next
from app.services import events, jobs, overview, streams
from app.services.kinds import KIND_SPECS

bp = Blueprint("jobs", __name__, url_prefix="/jobs")
KEEP_ALIVE_SECONDS = 5.0


@bp.get("/")
@signed_in
def list() -> Any:  # noqa: A001  (view names follow the list/detail/create convention)
    """Show recent jobs."""
    status = request.args.get("status") or None
    return render_template("jobs/list.html", jobs=jobs.list_jobs(limit=100, status=status),
                           status=status)


@bp.get("/<job_id>")
@signed_in
def detail(job_id: str) -> Any:
    """Show one job with its progress and live log."""
    job = jobs.get(job_id)
    children = jobs.list_jobs(parent_id=job_id, limit=20)[::-1]  # oldest first
    return render_template("jobs/detail.html", job=job, log=jobs.logs(job_id),
                           children=children, steps=_steps(job, children),
                           produced=overview.produced(job, children))


def _steps(job: Any, children: Sequence[Any]) -> Sequence[dict[str, Any]]:
    """A pipeline's stages in order, each with its child job once queued."""
    if job.kind != "pipeline":
        return []
    until = (job.params or {}).get("until", "publish")
    kinds = [s.kind for s in overview.STAGES]
    wanted = kinds[: kinds.index(until) + 1] if until in kinds else kinds
    by_kind = {c.kind: c for c in children}  # oldest first, so the newest child wins
    return [{"stage": s, "job": by_kind.get(s.kind)} for s in overview.STAGES
            if s.kind in wanted]


@bp.post("/")
@signed_in
def create() -> Any:
    """Queue a job from a form; the page then follows its status."""
    kind = jobs.parse_kind(request.form.get("kind"))
    params_raw = request.form.get("params", "").strip()
    try:
        params = json.loads(params_raw) if params_raw else {}
    except ValueError:
        flash("Parameters must be a JSON object.", "error")
        return redirect(request.referrer or url_for("dashboard.index"))
    job = jobs.submit(kind, params, current_user.username, roles=current_user.roles)
    if request.form.get("next"):
        # The dashboard's run buttons stay on the dashboard, which follows the job live.
        flash(f"Queued {kind.value} job {job.id}.", "info")
        return redirect(safe_next(request.form["next"]))
    return redirect(url_for("jobs.detail", job_id=job.id))


@bp.post("/<job_id>/retry")
@role_required(Role.ENGINEER)
def retry(job_id: str) -> Any:
    """Queue a new job of the same kind with the same parameters as a finished one."""
    old = jobs.get(job_id)
    if not old.job_status.is_final:
        raise Conflict(f"job {job_id} is still {old.status}; cancel it or wait for it to end")
    job = jobs.submit(jobs.parse_kind(old.kind), dict(old.params or {}), current_user.username,
                      roles=current_user.roles)
    flash(f"Retrying job {old.id} as job {job.id}.", "info")
    return redirect(url_for("jobs.detail", job_id=job.id))


@bp.post("/<job_id>/cancel")
@signed_in
def cancel(job_id: str) -> Any:
    """Cancel a job (its owner's role or admin)."""
    jobs.cancel(job_id, current_user.username, roles=current_user.roles)
    return redirect(url_for("jobs.detail", job_id=job_id))


@bp.get("/<job_id>/status")
@signed_in
def status(job_id: str) -> Any:
    """Return the job and its log lines after ?after=N (the polling fallback of the live view)."""
    after = int_arg("after", 0)
    job = jobs.get(job_id)
    body: dict[str, Any] = {
        "job": jobs.to_dict(job),
        "log": [jobs.log_to_dict(line) for line in jobs.logs(job_id, after=after)]}
    if job.kind == "pipeline":
        body["children"] = [jobs.to_dict(c) for c in jobs.list_jobs(parent_id=job_id, limit=20)]
    return body


@bp.get("/events")
@signed_in
def stream() -> Any:
    """Server-Sent Events of job changes (all jobs, or ?job=<id>), for at most SSE_MAX_SECONDS.

    Each stream holds a request thread, so streams are capped per process and per user
    (app.services.streams); over a cap the answer is at once a stream holding one `capped`
    event and nothing else, and the page polls.
    """
    job_filter = request.args.get("job") or None
    client = current_app.extensions["redis"]
    max_seconds = float(current_app.config["SSE_MAX_SECONDS"])
    try:
        admission = streams.admit(current_app.extensions["stream_slots"], client,
                                  current_user.id,
                                  per_user=int(current_app.config["SSE_STREAMS_PER_USER"]),
                                  max_seconds=max_seconds)
    except streams.StreamRefused as refused:
        # A 200 stream, not a 429/503: the browser logs an error status as a console error
        # on every page opened while the user's other pages still hold their streams.
        return Response(streams.capped_event(refused), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-store",
                                 "Retry-After": str(refused.retry_after)})

    def generate() -> Iterator[str]:
        yield "retry: 2000\n\n"
        # A short keep-alive: a write is how the server learns the browser left, and only
        # then is the stream's slot and lease freed for the user's next page.
        for event in events.subscribe(client, max_seconds=max_seconds,
                                      heartbeat_seconds=KEEP_ALIVE_SECONDS):
            if event is None:
                yield ": keep-alive\n\n"
                continue
            event_job = event.get("job_id") or (event.get("job") or {}).get("id")
            if job_filter and event_job != job_filter:
                continue
            yield f"event: {event['type']}\ndata: {json.dumps(event, default=str)}\n\n"

    # The generator needs no request context (all it uses is captured above), so it can be
    # consumed by any thread of the server. The server closes the response when the stream
    # ends or the client goes away, and that frees the stream's slot and lease.
    response = Response(generate(), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
    response.call_on_close(admission.release)
    return response


@bp.app_context_processor
def job_helpers() -> dict[str, Any]:
    """Expose job kinds to templates."""
    return {"kind_specs": KIND_SPECS}
