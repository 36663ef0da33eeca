"""bench/explain_bench.py runs as documented and reports both families (timings not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support import ROOT


def test_the_explain_bench_reports_a_ratio_per_family() -> None:
    result = subprocess.run([sys.executable, "-m", "bench.explain_bench", "--duration", "0.5",
                             "--segments", "1"], cwd=str(ROOT), capture_output=True, text=True,
                            timeout=600, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| lr |", "| gb |"))]
    assert len(rows) == 2
    saved = json.loads((ROOT / "bench" / "results" / "explain.json").read_text())
    for kind in ("lr", "gb"):
        assert saved[kind]["http"]["plain"]["requests"] > 0
        assert saved[kind]["http"]["explained"]["requests"] > 0
        assert saved[kind]["compute"]["explained_us"] > 0
