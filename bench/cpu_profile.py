"""Where a proxy's CPU goes, by library: `perf record -e cpu-clock` on its processes.

bench/gateway_bench.py --profile uses it: while wrk drives one path (nginx, the Python floor or
the gateway), perf samples that path's processes at a fixed frequency; `perf report --sort dso`
then says how many samples fell in each shared object, which are grouped here into what a
reader can act on (the Python interpreter, the kernel, OpenSSL, uvloop, httptools, nginx...).
Divided by the requests served in the same window, each group is microseconds of CPU per
request. cpu-clock is a software event, so it works on virtual machines without hardware
counters (here: `perf stat -e cycles` is "not supported"). perf itself costs a little CPU, so
absolute figures are a few percent above the bench's unprofiled ones; the split is the point.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

FREQUENCY_HZ = 2000
# (group, substrings of the shared object's name), first match wins
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("python interpreter", ("libpython", "python3")),
    ("kernel", ("[kernel",)),
    ("OpenSSL", ("libssl", "libcrypto", "_ssl.")),
    ("uvloop", ("loop.cpython",)),
    ("httptools (llhttp)", ("parser.cpython", "url_parser.cpython")),
    ("multidict", ("_multidict",)),
    ("nginx", ("nginx",)),
    ("libc", ("libc.so", "libc-")),
)


def perf_binary() -> str | None:
    """Path of Debian's perf (linux-perf), or None."""
    return shutil.which("perf")


def start_recording(perf: str, pids: list[int], seconds: float,
                    out: Path) -> subprocess.Popen[bytes]:
    """Sample the processes' CPU (cpu-clock) for `seconds`, writing perf's data to `out`."""
    return subprocess.Popen(
        [perf, "record", "-q", "-e", "cpu-clock", "-F", str(FREQUENCY_HZ), "-o", str(out),
         "-p", ",".join(str(p) for p in pids), "--", "sleep", f"{seconds:g}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def samples_by_group(perf: str, data: Path) -> dict[str, int]:
    """Samples per library group in a recording (groups with no sample left out)."""
    report = subprocess.run(
        [perf, "report", "-i", str(data), "--sort", "dso", "--stdio", "-F", "sample,dso"],
        capture_output=True, text=True, check=True, timeout=120).stdout
    groups: dict[str, int] = {}
    for line in report.splitlines():
        fields = line.split(None, 1)
        if line.startswith("#") or len(fields) != 2 or not fields[0].isdigit():
            continue
        count, dso = int(fields[0]), fields[1].strip()
        group = next((name for name, keys in GROUPS if any(k in dso for k in keys)), "other")
        groups[group] = groups.get(group, 0) + count
    return groups


def microseconds_per_request(groups: dict[str, int], requests: float) -> dict[str, float]:
    """Each group's samples as CPU microseconds per request served in the recording window,
    largest first, with the total under "total"."""
    if requests <= 0:
        return {}
    per = {name: count / FREQUENCY_HZ * 1e6 / requests for name, count in groups.items()}
    ordered = dict(sorted(per.items(), key=lambda item: -item[1]))
    return {"total": sum(per.values()), **ordered}
