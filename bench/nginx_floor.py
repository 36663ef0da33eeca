"""The compiled floor: nginx as a TLS proxy with keep-alive to the backend, doing nothing else.

bench/gateway_bench.py runs it beside the Python floor (bench/passthrough_proxy.py) and the
gateway, against the same backend in the same run: one nginx worker process (the gateway is one
process too), TLS 1.3 with the same certificate, a pool of keep-alive connections upstream, no
access log, and the backend key swapped in for the caller's Authorization header. It checks
nothing, so it measures what one compiled hop costs on these cores. Debian's `nginx` is used
when installed (`apt-get install -y nginx-light` or `nginx`); without it the point is skipped
with a note.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def nginx_binary() -> str | None:
    """Path of Debian's nginx, or None when it is not installed."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None)


def render_config(prefix: Path, port: int, backend_port: int, cert: Path, key: Path,
                  backend_key: str) -> str:
    """nginx.conf for the floor: everything under `prefix`, loopback only."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read the temp folders
    temp = "\n".join(f"    {name}_temp_path {prefix / (name + '-temp')};"
                     for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""{user}worker_processes 1;
daemon off;
master_process on;
pid {prefix / 'nginx.pid'};
error_log {prefix / 'error.log'} warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temp}
    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        keepalive_requests 1000000;
        location = /credit-risk/score {{
            proxy_pass http://backend/score;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {backend_key}";
        }}
    }}
}}
"""


def worker_pids(master_pid: int) -> list[int]:
    """The master's child processes (nginx's workers), from /proc."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children")
    try:
        return [int(pid) for pid in children.read_text().split()]
    except OSError:
        return []


@contextmanager
def nginx_floor(binary: str, prefix: Path, port: int, backend_port: int, cert: Path, key: Path,
                backend_key: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run nginx in the foreground with the floor's config; stop it on exit."""
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(render_config(prefix, port, backend_port, cert, key, backend_key))
    conf.chmod(0o600)  # it holds the bench's backend key
    check = subprocess.run([binary, "-t", "-p", str(prefix), "-c", str(conf)],
                           capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        raise RuntimeError(f"nginx refused the floor's config: {check.stderr.strip()}")
    proc = subprocess.Popen([binary, "-p", str(prefix), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        proc.terminate()  # SIGTERM: fast shutdown of master and workers
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
