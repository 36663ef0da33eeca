"""SVG chart helpers: well-formed, escaped, and robust to empty data."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from app.registry import charts

SVG = "{http://www.w3.org/2000/svg}"


def _parse(markup: str) -> ET.Element:
    return ET.fromstring(str(markup))  # raises on malformed markup


def test_charts_are_well_formed_svg_without_inline_styles() -> None:
    roc = {"auc": 0.8, "fpr": [0, 0.2, 1], "tpr": [0, 0.7, 1]}
    cm = {"labels": ["bad", "good"], "matrix": [[40, 20], [30, 110]]}
    drawn = [
        charts.roc_curve([charts.RocSeries("v1", roc, charts.operating_point(cm)),
                          charts.RocSeries("v2", roc)]),
        charts.confusion_matrix(cm, 0.3, {"bad_as_good": 5, "good_as_bad": 1}),
        charts.feature_importance({"features": [
            {"feature": "Age", "importance_mean": 0.02, "importance_std": 0.01},
            {"feature": "Sex", "importance_mean": -0.004, "importance_std": 0.002}]}),
        charts.calibration({"brier": 0.17, "bins": [
            {"mean_predicted": 0.1, "observed_rate": 0.12, "count": 50},
            {"mean_predicted": 0.6, "observed_rate": 0.5, "count": 10}]}),
    ]
    for markup in drawn:
        root = _parse(markup)
        assert root.tag == f"{SVG}svg" and root.get("role") == "img"
        assert root.find(f"{SVG}title") is not None
        assert "style=" not in str(markup)
    assert len(_parse(drawn[0]).findall(f"{SVG}polyline")) == 2
    assert charts.operating_point(cm) == (30 / 140, 40 / 60)


def test_text_is_escaped() -> None:
    hostile = '<script>alert("x")</script>'
    markup = charts.feature_importance({"features": [
        {"feature": hostile, "importance_mean": 0.1, "importance_std": 0.0}]})
    assert "<script>" not in str(markup)
    assert "&lt;script&gt;" in str(markup)
    _parse(markup)


def test_empty_data_draws_empty_charts() -> None:
    for markup in (charts.roc_curve([]), charts.confusion_matrix({}),
                   charts.feature_importance({}), charts.calibration({})):
        _parse(markup)
    assert charts.operating_point({}) is None
    assert charts.operating_point({"matrix": [[0, 0], [1, 1]]}) is None
