"""Side-by-side benchmark: modelgate's scoring service vs `mlflow models serve`, same model.

One run fits the canonical pipeline on data/german_credit_data.csv, writes it both as a
modelgate model package and as an MLflow sklearn model (pyfunc_predict_fn="predict_proba",
so both servers compute probabilities), starts each server with the same worker count pinned
to the same core(s), drives closed-loop load at concurrency 1 and 8 from bench/loadgen.py
pinned to the remaining core, and then times one-row compute: the compiled fast path vs the
scikit-learn pipeline's predict_proba.

    python -m bench.scoring_bench [--kind lr|gb] [--duration 10] [--mlflow-python PATH]

`mlflow models serve` needs MLflow's serving dependencies (uvicorn, fastapi); see
bench/README.md for the separate virtualenv used for it. Results go to stdout and to
bench/results/scoring-<kind>.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import requests

from bench.loadgen import LoadResult, run_load

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MLFLOW_PYTHON = Path("/tmp/mlflow-venv/bin/python")
SAVE_MLFLOW_MODEL = """
import sys, joblib, mlflow.sklearn
pipeline = joblib.load(sys.argv[1])
mlflow.sklearn.save_model(pipeline, sys.argv[2], pyfunc_predict_fn="predict_proba",
                          serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE)
"""


def free_port() -> int:
    """A currently free loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pin(cpus: set[int]) -> Callable[[], None]:
    """preexec_fn pinning a child (and its workers) to the given CPUs."""

    def apply() -> None:
        os.sched_setaffinity(0, cpus)

    return apply


def wait_http(url: str, timeout_s: float, process: subprocess.Popen[bytes]) -> None:
    """Poll url until it answers 200; fail if the server process exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before {url} was up")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not up within {timeout_s}s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM a server we started and wait for it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def measure(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, duration_s: float
) -> LoadResult:
    """Warm up with 300 requests, then a closed-loop run of duration_s."""
    return run_load(
        url, body, headers, concurrency=concurrency, duration_s=duration_s, warmup_requests=300
    )


def run_servers(args: argparse.Namespace, work: Path, server_cpus: set[int]) -> dict[str, Any]:
    """Start each server in turn and measure it at every concurrency level."""
    from app.serving.keys import generate_keys, write_keys_file
    from tests.serving.modelpkg import EXAMPLE

    package = work / "package"
    primary, secondary = generate_keys()
    write_keys_file(work / "keys.json", primary, secondary)
    results: dict[str, Any] = {}
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT)

    port = free_port()
    ours = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.serving",
            "--model-dir",
            str(package),
            "--keys-file",
            str(work / "keys.json"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(args.workers),
            "--log-level",
            "WARNING",
        ],
        cwd=ROOT,
        env=env,
        preexec_fn=pin(server_cpus),
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health/ready", 60, ours)
        body = json.dumps({"data": [EXAMPLE]}).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {primary}"}
        results["modelgate"] = {
            c: measure(f"http://127.0.0.1:{port}/score", body, headers, c, args.duration)
            for c in args.concurrency
        }
    finally:
        stop(ours)

    # Whatever happens to the MLflow side, the figures measured so far are kept and reported.
    try:
        measure_mlflow(args, work, env, server_cpus, results)
    except (OSError, RuntimeError, subprocess.CalledProcessError,
            requests.RequestException) as exc:
        results["mlflow_error"] = f"mlflow models serve could not be measured: {exc}"
    return results


def mlflow_server_env(env: dict[str, str], mlflow_python: Path) -> dict[str, str]:
    """The environment of `mlflow models serve`: its venv's bin first on PATH, since it execs
    `uvicorn` by name (it crashed when that folder was not on PATH)."""
    path = env.get("PATH", "")
    return {**env, "PATH": f"{mlflow_python.parent}{os.pathsep}{path}" if path
            else str(mlflow_python.parent)}


def measure_mlflow(args: argparse.Namespace, work: Path, env: dict[str, str],
                   server_cpus: set[int], results: dict[str, Any]) -> None:
    """Serve the same model with `mlflow models serve` and add its points to results."""
    from tests.serving.modelpkg import EXAMPLE

    package = work / "package"
    mlflow_python = Path(args.mlflow_python)
    if not mlflow_python.exists():
        results["mlflow_error"] = f"{mlflow_python} not found; see bench/README.md"
        return
    mlflow_model = work / "mlflow-model"
    subprocess.run(
        [str(mlflow_python), "-c", SAVE_MLFLOW_MODEL, str(package / "model.joblib"),
         str(mlflow_model)],
        check=True,
        env=env,
        cwd=work,
    )
    port = free_port()
    mlflow_env = {**mlflow_server_env(env, mlflow_python),
                  "MLFLOW_TRACKING_URI": f"file:{work / 'mlruns'}"}
    log = work / "mlflow-serve.log"
    with open(log, "wb") as out:
        mlflow = subprocess.Popen(
            [str(mlflow_python), "-m", "mlflow", "models", "serve", "-m", str(mlflow_model),
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port),
             "-w", str(args.workers)],
            cwd=work,
            env=mlflow_env,
            preexec_fn=pin(server_cpus),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/ping", 120, mlflow)
        except RuntimeError as exc:
            last = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
            raise RuntimeError(f"{exc}; its last line: {last[0][:300]}") from None
        body = json.dumps({"dataframe_records": [EXAMPLE]}).encode()
        headers = {"Content-Type": "application/json"}
        check = requests.post(
            f"http://127.0.0.1:{port}/invocations", data=body, headers=headers, timeout=10
        )
        check.raise_for_status()
        results["mlflow_sample_answer"] = check.json()
        points: dict[int, LoadResult] = {}
        results["mlflow"] = points
        for c in args.concurrency:
            points[c] = measure(f"http://127.0.0.1:{port}/invocations", body, headers, c,
                                args.duration)
    finally:
        stop(mlflow)


def time_per_call(func: Callable[[], object], rounds: int, inner: int) -> float:
    """Median µs per call over `rounds` timings of `inner` back-to-back calls."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(inner):
            func()
        samples.append((time.perf_counter() - start) / inner * 1e6)
    return statistics.median(samples)


def one_row_compute(package: Path) -> dict[str, float]:
    """µs per one-row call: fast path vs sklearn predict_proba (with and without DataFrame)."""
    import pandas as pd

    from app.serving.model import load_model
    from app.serving.validation import RecordValidator

    model = load_model(package)
    if model.compiled is None:
        raise RuntimeError(f"fast path not compiled: {model.fallback_reason}")
    row = RecordValidator(model.signature).validate_body({"data": [dict(model.signature.example)]})
    frame = pd.DataFrame(
        [dict(model.signature.example)], columns=list(model.signature.feature_names)
    )
    compiled = model.compiled
    fast = time_per_call(lambda: compiled.predict_proba(row), rounds=15, inner=2000)
    sklearn_frame = time_per_call(lambda: model.pipeline.predict_proba(frame), rounds=15, inner=40)
    sklearn_rows = time_per_call(lambda: model.sklearn_proba(row), rounds=15, inner=40)
    return {
        "fastpath_us": fast,
        "sklearn_predict_proba_us": sklearn_frame,
        "sklearn_with_dataframe_build_us": sklearn_rows,
        "speedup": sklearn_frame / fast,
    }


def report(kind: str, workers: int, results: dict[str, Any], compute: dict[str, float]) -> str:
    """Markdown tables of the run."""
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    lines = [
        f"model: {kind}; server workers: {workers}; load generator: bench/loadgen.py; "
        f"load average after the run: {load}",
        "",
        "| server | concurrency | requests/s | p50 ms | p99 ms | max ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for server in ("modelgate", "mlflow"):
        for c, r in results.get(server, {}).items():
            lines.append(
                f"| {server} | {c} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
                f"{r.max_ms:.2f} | {r.failed} |"
            )
    for c, theirs in results.get("mlflow", {}).items():
        if c in results.get("modelgate", {}):
            ratio = results["modelgate"][c].rps / max(theirs.rps, 1e-9)
            lines.append(f"\nthroughput ratio at c={c}: {ratio:.1f}x")
    if "mlflow_error" in results:
        lines.append(f"\nmlflow not measured (or not at every point): {results['mlflow_error']}")
    lines += [
        "",
        "| one-row compute | µs per call |",
        "|---|---|",
        f"| fast path | {compute['fastpath_us']:.1f} |",
        f"| sklearn predict_proba (prebuilt DataFrame) | "
        f"{compute['sklearn_predict_proba_us']:.0f} |",
        f"| sklearn incl. DataFrame build | {compute['sklearn_with_dataframe_build_us']:.0f} |",
        f"\none-row speed-up: {compute['speedup']:.0f}x",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Benchmark options."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.scoring_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--kind", choices=["lr", "gb"], default="lr")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per point")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--workers", type=int, default=1, help="server processes, each side")
    parser.add_argument("--mlflow-python", default=str(DEFAULT_MLFLOW_PYTHON))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the tables."""
    args = parse_args(argv)
    from tests.serving.modelpkg import build_model_package

    cpus = sorted(os.sched_getaffinity(0))
    # Servers on the first core(s), the load generator on the last, so they do not compete.
    server_cpus = set(cpus[:-1]) if len(cpus) > 1 else set(cpus)
    os.sched_setaffinity(0, {cpus[-1]})
    with tempfile.TemporaryDirectory(prefix="scoring-bench-") as tmp:
        work = Path(tmp)
        build_model_package(work / "package", args.kind)
        results = run_servers(args, work, server_cpus)
        os.sched_setaffinity(0, server_cpus)
        compute = one_row_compute(work / "package")
    text = report(args.kind, args.workers, results, compute)
    print(text)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    serialisable = {
        server: {str(c): r.to_dict() for c, r in runs.items()}
        for server, runs in results.items()
        if server in ("modelgate", "mlflow")
    }
    (out / f"scoring-{args.kind}.json").write_text(
        json.dumps(
            {
                "servers": serialisable,
                "compute": compute,
                "cpus": {"servers": sorted(server_cpus), "loadgen": cpus[-1]},
                "mlflow_error": results.get("mlflow_error"),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
