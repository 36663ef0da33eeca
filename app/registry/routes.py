"""Registry pages: model versions with metrics, one version's charts and lineage, comparison."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, redirect, render_template, request, url_for

from app.auth.users import signed_in
from app.errors import NotFound, ValidationError
from app.labels import SUMMARY_METRICS
from app.registry import charts, fairness_charts
from app.services import fairness, model_cards, models

bp = Blueprint("registry", __name__, url_prefix="/models")


@bp.get("/")
@signed_in
def index() -> Any:
    """Go to the versions of the model the pipeline trains."""
    return redirect(url_for("registry.list", name=models.default_model_name()))


@bp.get("/<name>")
@signed_in
def list(name: str) -> Any:  # noqa: A001  (view names follow the list/detail convention)
    """Show every version of a model with its metrics and aliases."""
    versions = models.list_versions(name)
    return render_template("registry/list.html", name=name, versions=versions,
                           lineage=models.lineages(versions))


@bp.get("/<name>/versions/<id:version>")
@signed_in
def detail(name: str, version: int) -> Any:
    """Show one version: metrics, ROC, confusion matrix, importance, calibration, lineage."""
    from app.errors import ServiceUnavailable

    info = models.get_version(name, str(version))
    report, gate, fairness_error = None, None, ""
    try:
        report = fairness.report(info)
        gate = fairness.gate(info, report).to_dict()
    except ServiceUnavailable as exc:
        fairness_error = exc.message
    return render_template("registry/detail.html", name=name, info=info,
                           lineage=models.lineage(info), charts_data=models.chart_data(info),
                           identical=models.identical_versions(info), fairness_report=report,
                           gate=gate, fairness_error=fairness_error)


@bp.get("/<name>/versions/<id:version>/card")
@signed_in
def card(name: str, version: int) -> Any:
    """The model card of a version: data, use, metrics, decision rule, fairness, approvals."""
    return render_template("registry/card.html", card=model_cards.build(name, str(version)))


@bp.get("/<name>/versions/<id:version>/card.md")
@signed_in
def card_file(name: str, version: int) -> Any:
    """The model card as a Markdown file to download."""
    built = model_cards.build(name, str(version))
    text = render_template("registry/card.md", card=built, cell=model_cards.md_cell)
    return Response(text, mimetype="text/markdown",
                    headers={"Content-Disposition":
                             f'attachment; filename="{built.file_name}"'})


@bp.get("/<name>/compare")
@signed_in
def compare(name: str) -> Any:
    """Show two versions side by side (?a=1&b=2; default: the latest two)."""
    a, b = request.args.get("a", ""), request.args.get("b", "")
    if not a or not b:
        latest = [v.version for v in models.list_versions(name)[:2]]
        if len(latest) < 2:
            raise NotFound(f"model {name!r} needs two versions to compare")
        return redirect(url_for("registry.compare", name=name, a=latest[1], b=latest[0]))
    if a == b:
        raise ValidationError("choose two different versions to compare")
    pair = [models.get_version(name, v) for v in (a, b)]
    data = [models.chart_data(v) for v in pair]
    series = [charts.roc_series(f"v{v.version}", d) for v, d in zip(pair, data, strict=True)
              if not d.error]
    by_version = models.lineages(pair)
    return render_template("registry/compare.html", name=name, pair=pair,
                           lineages=[by_version[v.version] for v in pair], charts_data=data,
                           roc_series=series)


@bp.context_processor
def chart_helpers() -> dict[str, Any]:
    """Expose the SVG chart helpers and metric labels to the registry templates."""
    return {"charts": charts, "fairness_charts": fairness_charts,
            "summary_metrics": SUMMARY_METRICS}
