"""What drift sampling costs the score path: the same replica with sampling off, at 10 % and
at 100 %, in one run, plus the request-path cost of ``Sampler.offer`` alone.

    python -m bench.sampling_bench [--duration 10] [--rounds 2]

One run fits the canonical LR pipeline, starts a Redis of its own, then, for each round,
starts a replica per setting in turn (pinned to the first core; the load generator on the
last) and drives closed-loop one-row load at concurrency 1 and 8. The figures per setting are
the medians over the rounds, so a slow moment of the machine does not land on one setting.
Results go to stdout and bench/results/sampling.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.loadgen import LoadResult
from bench.scoring_bench import ROOT, free_port, measure, pin, stop, time_per_call, wait_http

SETTINGS: dict[str, list[str]] = {
    "off": [],
    "10 %": ["--sample-rate", "0.1"],
    "100 %": ["--sample-rate", "1"],
}


def start_redis(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A Redis of the benchmark's own (password, free port, no persistence)."""
    from app.localstack.redis_server import RedisSpec, find_redis_binary, wait_until_ours

    spec = RedisSpec(binary=find_redis_binary(), port=free_port(), password=uuid.uuid4().hex,
                     data_dir=work / "redis")
    spec.data_dir.mkdir(parents=True, exist_ok=True)
    command = spec.command()
    command[command.index("--appendonly") + 1] = "no"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_ours(spec, process)
    return process, spec.url


def run_setting(args: argparse.Namespace, work: Path, redis_url: str, extra: list[str],
                server_cpus: set[int]) -> dict[int, LoadResult]:
    """One replica with the given sampling options, measured at every concurrency."""
    from tests.serving.modelpkg import EXAMPLE

    primary = json.loads((work / "plain-keys.json").read_text())["primary"]
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env.update(PYTHONPATH=str(ROOT), MODELGATE_REDIS_URL=redis_url)
    port = free_port()
    replica = subprocess.Popen(
        [sys.executable, "-m", "app.serving", "--model-dir", str(work / "package"),
         "--keys-file", str(work / "keys.json"), "--host", "127.0.0.1", "--port", str(port),
         "--environment", "bench", "--log-level", "WARNING", *extra],
        cwd=ROOT, env=env, preexec_fn=pin(server_cpus))
    try:
        wait_http(f"http://127.0.0.1:{port}/health/ready", 60, replica)
        body = json.dumps({"data": [EXAMPLE]}).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {primary}"}
        return {c: measure(f"http://127.0.0.1:{port}/score", body, headers, c, args.duration)
                for c in args.concurrency}
    finally:
        stop(replica)


def offer_cost(package: Path) -> dict[str, float]:
    """µs per one-row ``Sampler.offer`` (the only sampling work on the request path)."""
    from app.serving.model import load_model
    from app.serving.sampling import Sampler, SamplingSettings
    from app.serving.validation import RecordValidator

    model = load_model(package)
    rows = RecordValidator(model.signature).validate_body(
        {"data": [dict(model.signature.example)]})
    predictions = model.predictions(rows)
    out = {}
    for name, rate in (("offer_10pct_us", 0.1), ("offer_100pct_us", 1.0)):
        sampler = Sampler(SamplingSettings("bench", rate, 1000, "redis://127.0.0.1:1/0",
                                           buffer_limit=10**9))

        def once(s: Sampler = sampler) -> None:
            s.offer(model.signature, rows, predictions)

        out[name] = time_per_call(once, rounds=15, inner=5000)
    return out


def report(results: dict[str, list[dict[int, LoadResult]]], offer: dict[str, float]) -> str:
    """Markdown: median requests/s and latency per setting and concurrency."""
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    lines = [f"one-row requests, median of {len(next(iter(results.values())))} round(s); "
             f"load average after the run: {load}", "",
             "| sampling | concurrency | requests/s | p50 ms | p99 ms | errors |",
             "|---|---|---|---|---|---|"]
    for name, rounds in results.items():
        for c in rounds[0]:
            points = [r[c] for r in rounds]
            lines.append(
                f"| {name} | {c} | {statistics.median(p.rps for p in points):.0f} | "
                f"{statistics.median(p.p50_ms for p in points):.2f} | "
                f"{statistics.median(p.p99_ms for p in points):.2f} | "
                f"{sum(p.failed for p in points)} |")
    lines += ["", "| request-path work | µs per one-row call |", "|---|---|",
              f"| `Sampler.offer` at 10 % | {offer['offer_10pct_us']:.2f} |",
              f"| `Sampler.offer` at 100 % | {offer['offer_100pct_us']:.2f} |"]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Benchmark options."""
    parser = argparse.ArgumentParser(prog="python -m bench.sampling_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per point")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=2, help="passes over the settings")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the tables."""
    from app.serving.keys import generate_keys, write_keys_file
    from tests.serving.modelpkg import build_model_package

    args = parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus = set(cpus[:-1]) if len(cpus) > 1 else set(cpus)
    os.sched_setaffinity(0, {cpus[-1]})
    with tempfile.TemporaryDirectory(prefix="sampling-bench-") as tmp:
        work = Path(tmp)
        build_model_package(work / "package", "lr")
        primary, secondary = generate_keys()
        write_keys_file(work / "keys.json", primary, secondary)
        (work / "plain-keys.json").write_text(json.dumps({"primary": primary}))
        redis, url = start_redis(work)
        try:
            results: dict[str, list[dict[int, LoadResult]]] = {name: [] for name in SETTINGS}
            for _ in range(args.rounds):
                for name, extra in SETTINGS.items():
                    results[name].append(run_setting(args, work, url, extra, server_cpus))
        finally:
            stop(redis)
        os.sched_setaffinity(0, server_cpus)
        offer = offer_cost(work / "package")
    text = report(results, offer)
    print(text)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    data: dict[str, Any] = {
        "settings": {name: [{str(c): r.to_dict() for c, r in rnd.items()} for rnd in rounds]
                     for name, rounds in results.items()},
        "offer": offer,
    }
    (out / "sampling.json").write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
