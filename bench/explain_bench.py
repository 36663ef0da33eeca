"""The cost of reason codes: an explained one-row score vs a plain one, same run, per family.

For each model family (logistic regression; gradient boosting, 100 trees of depth 3) one run
fits the canonical pipeline on data/german_credit_data.csv, writes a model package with its
explain.json, and measures, for the seed's example record:

* compute in-process: ``predictions`` vs ``predictions`` + ``add_reasons`` (what the replica's
  handler adds when a request asks for ``explain``), alternating rounds, median µs per call,
  and the one thing a request *without* explain pays: the option check (``requested``);
* over HTTP: one scoring replica (``python -m app.serving --workers 1``, pinned to the first
  core), closed loop at concurrency 1 from bench/loadgen.py (pinned to the other core),
  alternating segments of plain and ``?explain=true`` requests against the same replica.

    python -m bench.explain_bench [--duration 10] [--segments 4] [--kind lr gb]

Prints a table with the ratio explained / plain and writes bench/results/explain.json
(git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.loadgen import run_load
from bench.scoring_bench import free_port, pin, stop, wait_http

ROOT = Path(__file__).resolve().parent.parent


def alternate(funcs: dict[str, Callable[[], object]], rounds: int, inner: int) -> dict[str, float]:
    """Median µs per call of each function, timed in alternating rounds of `inner` calls."""
    samples: dict[str, list[float]] = {name: [] for name in funcs}
    for _ in range(rounds):
        for name, func in funcs.items():
            start = time.perf_counter()
            for _ in range(inner):
                func()
            samples[name].append((time.perf_counter() - start) / inner * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def compute_cost(package: Path) -> dict[str, float]:
    """µs per one-row call, in-process: plain predictions vs predictions with reasons."""
    from app.serving import explain
    from app.serving.model import load_model
    from app.serving.validation import RecordValidator

    model = load_model(package)
    explainer, unavailable = explain.explainer_for(model, package)
    if explainer is None:
        raise RuntimeError(f"no explainer: {unavailable}")
    rows = RecordValidator(model.signature).validate_body(
        {"data": [dict(model.signature.example)]})

    def plain() -> object:
        return model.predictions(rows)

    def explained() -> object:
        predictions = model.predictions(rows)
        explain.add_reasons(predictions, rows, explainer, None)
        return predictions

    payload = {"data": [dict(model.signature.example)]}

    def off() -> object:  # all a request without explain pays: the option check
        return explain.requested(payload, "")

    timings = alternate({"plain": plain, "explained": explained}, rounds=15, inner=1000)
    off_us = alternate({"off": off}, rounds=15, inner=20000)["off"]
    return {"plain_us": timings["plain"], "explained_us": timings["explained"],
            "ratio": timings["explained"] / timings["plain"], "off_check_us": off_us}


def http_cost(package: Path, work: Path, duration_s: float, segments: int,
              server_cpus: set[int]) -> dict[str, Any]:
    """Closed loop at c=1 on one replica, alternating plain and explained segments."""
    from app.serving.keys import generate_keys, write_keys_file
    from tests.serving.modelpkg import EXAMPLE

    primary, secondary = generate_keys()
    write_keys_file(work / "keys.json", primary, secondary)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "app.serving", "--model-dir", str(package), "--keys-file",
         str(work / "keys.json"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--log-level", "WARNING"],
        cwd=ROOT, env=env, preexec_fn=pin(server_cpus))
    try:
        wait_http(f"http://127.0.0.1:{port}/health/ready", 60, server)
        body = json.dumps({"data": [EXAMPLE]}).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {primary}"}
        urls = {"plain": f"http://127.0.0.1:{port}/score",
                "explained": f"http://127.0.0.1:{port}/score?explain=true"}
        runs: dict[str, list[Any]] = {"plain": [], "explained": []}
        for _ in range(segments):
            for mode, url in urls.items():
                runs[mode].append(run_load(url, body, headers, concurrency=1,
                                           duration_s=duration_s / segments,
                                           warmup_requests=100))
    finally:
        stop(server)
    out: dict[str, Any] = {}
    for mode, results in runs.items():
        if any(r.failed for r in results):
            raise RuntimeError(f"{mode} requests failed: {[r.errors for r in results]}")
        out[mode] = {
            "rps": statistics.median(r.rps for r in results),
            "p50_ms": statistics.median(r.p50_ms for r in results),
            "p99_ms": statistics.median(r.p99_ms for r in results),
            "requests": sum(r.ok for r in results),
        }
    out["p50_ratio"] = out["explained"]["p50_ms"] / out["plain"]["p50_ms"]
    out["rps_ratio"] = out["plain"]["rps"] / out["explained"]["rps"]
    return out


def report(results: dict[str, dict[str, Any]]) -> str:
    """A markdown table of the run."""
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    lines = [
        f"load average after the run: {load}",
        "",
        "| family | compute plain µs | compute explained µs | ratio | explain-off check µs | "
        "HTTP plain p50 ms | HTTP explained p50 ms | ratio | plain rps | explained rps |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, r in results.items():
        c, h = r["compute"], r["http"]
        lines.append(
            f"| {kind} | {c['plain_us']:.1f} | {c['explained_us']:.1f} | {c['ratio']:.1f}x | "
            f"{c['off_check_us']:.2f} | {h['plain']['p50_ms']:.2f} | "
            f"{h['explained']['p50_ms']:.2f} | "
            f"{h['p50_ratio']:.2f}x | {h['plain']['rps']:.0f} | {h['explained']['rps']:.0f} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Benchmark options."""
    parser = argparse.ArgumentParser(prog="python -m bench.explain_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=["lr", "gb"], nargs="+", default=["lr", "gb"])
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds of HTTP load per mode and family")
    parser.add_argument("--segments", type=int, default=4,
                        help="alternating plain/explained segments per family")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    args = parse_args(argv)
    from tests.serving.modelpkg import build_model_package

    cpus = sorted(os.sched_getaffinity(0))
    server_cpus = set(cpus[:-1]) if len(cpus) > 1 else set(cpus)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="explain-bench-") as tmp:
        for kind in args.kind:
            work = Path(tmp) / kind
            package = build_model_package(work / "package", kind)
            os.sched_setaffinity(0, {cpus[-1]})  # the load generator on the last core
            http = http_cost(package, work, args.duration, args.segments, server_cpus)
            os.sched_setaffinity(0, server_cpus)
            results[kind] = {"compute": compute_cost(package), "http": http}
    print(report(results))
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "explain.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
