"""The local runtime: keeps the desired deployments (database rows) running as replica processes.

Every poll (0.5 s) it reads the deployments whose state should run, chooses a free loopback
port for a new one (recorded on the row, so a restart of the runtime restores the same URL the
gateway points at), starts ``python -m app.serving`` replicas sharing that port
(SO_REUSEPORT), restarts a replica that exits with exponential backoff, and SIGTERMs the
replicas of slots that should stop (they drain, then exit). It writes its report to
MODELGATE_HOME/runtime/status.json and a readiness marker to MODELGATE_HOME/run/runtime.ready.
It never sees a plaintext key: replicas get the digest-only keys file.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.db import Deployment, DeploymentState, utcnow
from app.localstack.processes import die_with_parent

logger = logging.getLogger(__name__)

MAX_BACKOFF = 30.0
BASE_BACKOFF = 0.25
STABLE_AFTER = 30.0  # a replica up this long has its backoff reset
STOP_TIMEOUT = 40.0  # serving's own shutdown timeout (30 s) plus its drain, then SIGKILL
PORT_FLOOR = 20000  # slot ports are chosen in [PORT_FLOOR, start of the ephemeral range)


@dataclass
class Replica:
    """One replica process of a slot and its restart state."""

    index: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    next_start: float = 0.0
    last_exit: int | None = None


@dataclass
class Slot:
    """A deployment the runtime keeps running."""

    deployment_id: str
    environment: str
    slot: str
    port: int
    model_dir: Path
    keys_file: Path
    replicas: list[Replica] = field(default_factory=list)
    error: str | None = None


def free_port(host: str) -> int:
    """A free TCP port on host, outside the kernel's ephemeral range when possible.

    Replicas bind only after loading the model; a port from the ephemeral range could be taken
    meanwhile by an outgoing connection's local end, so prefer ports below that range.
    """
    low = 32768
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    for _ in range(50):
        if low <= PORT_FLOOR + 100:
            break
        candidate = random.randrange(PORT_FLOOR, low)
        with socket.socket() as sock:
            try:
                sock.bind((host, candidate))
            except OSError:
                continue
            return candidate
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on a TCP port (from /proc/net/tcp and tcp6)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                found.add(parts[9])
    return found


def process_listens(pid: int, inodes: set[str]) -> bool:
    """Whether a process holds one of the given socket inodes (it has bound the port)."""
    if not inodes:
        return False
    try:
        for fd in os.scandir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(fd.path)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return True
    except OSError:
        return False
    return False


class Runtime:
    """Supervises the scoring replicas of every deployment that should run."""

    def __init__(self, home: Path, engine: Engine, *, host: str = "127.0.0.1",
                 poll_interval: float = 0.5, serving_args: tuple[str, ...] = ()) -> None:
        self.home = Path(home)
        self.engine = engine
        self.host = host
        self.poll_interval = poll_interval
        self.serving_args = serving_args
        self.slots: dict[str, Slot] = {}
        self.stopping_procs: list[tuple[subprocess.Popen[bytes], float]] = []
        self.stop_requested = False
        self.status_path = self.home / "runtime" / "status.json"
        self.marker = self.home / "run" / "runtime.ready"
        self.log_dir = self.home / "logs" / "replicas"

    # ------------------------------------------------------------------ life cycle

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT, then stop every replica gracefully."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.status_path.parent.mkdir(parents=True, exist_ok=True)
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.step()  # restore every deployment before saying we are ready
            self.marker.write_text(str(os.getpid()))
            logger.info("runtime ready (pid %d), %d deployment(s) restored", os.getpid(),
                        len(self.slots))
            while not self.stop_requested:
                time.sleep(self.poll_interval)
                self.step()
        finally:
            self.marker.unlink(missing_ok=True)
            self.shutdown()
        return 0

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop_requested = True

    def step(self) -> None:
        """One reconciliation pass: desired state → processes, then the status report."""
        desired = self._desired()
        if desired is not None:
            self._reconcile(desired)
        self._supervise()
        self._reap_stopping()
        self._write_status()

    def shutdown(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM every replica (they drain), SIGKILL what is left after timeout."""
        for slot in list(self.slots.values()):
            self._stop_slot(slot)
        self.slots.clear()
        deadline = time.monotonic() + timeout
        for proc, _ in self.stopping_procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.stopping_procs.clear()
        self._write_status()

    # ------------------------------------------------------------------ desired state

    def _desired(self) -> list[Deployment] | None:
        """Rows that should run, or None when the database cannot be read (keep going)."""
        try:
            with Session(self.engine, expire_on_commit=False) as session:
                rows = list(session.scalars(select(Deployment).where(Deployment.state.in_(
                    [s.value for s in DeploymentState if s.should_run]))))
                for row in rows:
                    if row.port is None:
                        self._assign_port(session, row)
                return rows
        except Exception as exc:  # a locked or restarting database must not stop replicas
            logger.warning("cannot read desired state: %s", exc.__class__.__name__)
            return None

    def _assign_port(self, session: Session, row: Deployment) -> None:
        port = free_port(self.host)
        result = session.execute(update(Deployment).where(
            Deployment.id == row.id, Deployment.port.is_(None)).values(port=port,
                                                                      updated_at=utcnow()))
        session.commit()
        if result.rowcount:  # type: ignore[attr-defined]
            row.port = port
        else:
            session.refresh(row)

    def _reconcile(self, desired: list[Deployment]) -> None:
        wanted = {row.id: row for row in desired if row.port}
        for dep_id in [d for d in self.slots if d not in wanted]:
            logger.info("stopping deployment %s", dep_id)
            self._stop_slot(self.slots.pop(dep_id))
        for dep_id, row in wanted.items():
            slot = self.slots.get(dep_id)
            if slot is None:
                assert row.port is not None
                slot = Slot(dep_id, row.environment, row.slot, row.port,
                            self.home / "models" / row.model_name / row.model_version,
                            self.home / "runtime" / "keys" / f"{dep_id}.json")
                self.slots[dep_id] = slot
                logger.info("deployment %s (%s/%s, %s v%s) on port %d", dep_id,
                            row.environment, row.slot, row.model_name, row.model_version,
                            row.port)
            while len(slot.replicas) < row.replicas:
                slot.replicas.append(Replica(len(slot.replicas)))
            while len(slot.replicas) > row.replicas:
                extra = slot.replicas.pop()
                if extra.process and extra.process.poll() is None:
                    self._terminate(extra.process)

    # ------------------------------------------------------------------ processes

    def _supervise(self) -> None:
        now = time.monotonic()
        for slot in self.slots.values():
            for replica in slot.replicas:
                proc = replica.process
                if proc is not None and proc.poll() is None:
                    continue
                if proc is not None and replica.next_start == 0.0:
                    replica.last_exit = proc.returncode
                    if now - replica.started_at > STABLE_AFTER:
                        replica.restarts = 0
                    delay = min(MAX_BACKOFF, BASE_BACKOFF * 2 ** replica.restarts)
                    replica.next_start = now + delay
                    logger.warning("replica %s/%d exited with %s; restarting in %.2f s",
                                   slot.deployment_id, replica.index, proc.returncode, delay)
                    continue
                if now >= replica.next_start:
                    if proc is not None:
                        replica.restarts += 1
                    replica.next_start = 0.0
                    self._spawn(slot, replica)

    def _spawn(self, slot: Slot, replica: Replica) -> None:
        if not (slot.model_dir / "signature.json").is_file() or not slot.keys_file.is_file():
            slot.error = "model package or keys file missing"
            replica.process = None
            replica.next_start = time.monotonic() + 1.0
            return
        slot.error = None
        argv = [sys.executable, "-m", "app.serving", "--model-dir", str(slot.model_dir),
                "--keys-file", str(slot.keys_file), "--host", self.host,
                "--port", str(slot.port), "--environment", slot.environment,
                *self._sampling_args(), *self.serving_args]
        log = open(self.log_dir / f"{slot.deployment_id}-{replica.index}.log", "ab")  # noqa: SIM115
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        replica.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, env=env,
                                           start_new_session=True,
                                           preexec_fn=die_with_parent)
        log.close()
        replica.started_at = time.monotonic()
        logger.info("started replica %s/%d (pid %d) on port %d", slot.deployment_id,
                    replica.index, replica.process.pid, slot.port)

    def _sampling_args(self) -> list[str]:
        """The drift sampling options of the pipeline file, read when a replica starts.

        The replica writes samples to MODELGATE_REDIS_URL, which it inherits from this
        process's environment (never on its command line: the URL may hold a password).
        """
        from app.pipeline_config import PipelineConfigError, load_pipeline_config

        try:
            drift = load_pipeline_config().drift
        except PipelineConfigError as exc:
            logger.warning("drift sampling off for new replicas: %s", exc)
            return []
        return ["--sample-rate", repr(drift.sample_rate), "--sample-max",
                str(drift.max_samples)]

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            return
        self.stopping_procs.append((proc, time.monotonic() + STOP_TIMEOUT))

    def _stop_slot(self, slot: Slot) -> None:
        for replica in slot.replicas:
            if replica.process is not None and replica.process.poll() is None:
                self._terminate(replica.process)

    def _reap_stopping(self) -> None:
        now = time.monotonic()
        left = []
        for proc, deadline in self.stopping_procs:
            if proc.poll() is not None:
                continue
            if now > deadline:
                proc.kill()
                continue
            left.append((proc, deadline))
        self.stopping_procs = left

    # ------------------------------------------------------------------ status

    def report(self) -> dict[str, Any]:
        """The status document: per deployment its port and each replica's state."""
        deployments: dict[str, Any] = {}
        for slot in self.slots.values():
            inodes = listening_inodes(slot.port)
            replicas = []
            for r in slot.replicas:
                alive = r.process is not None and r.process.poll() is None
                listening = alive and r.process is not None and process_listens(
                    r.process.pid, inodes)
                state = "ready" if listening else ("starting" if alive else "restarting")
                replicas.append({"index": r.index, "pid": r.process.pid if alive and r.process
                                 else None, "state": state, "restarts": r.restarts,
                                 "last_exit": r.last_exit})
            deployments[slot.deployment_id] = {
                "environment": slot.environment, "slot": slot.slot, "port": slot.port,
                "replicas_desired": len(slot.replicas),
                "replicas_ready": sum(1 for r in replicas if r["state"] == "ready"),
                "replicas": replicas, "error": slot.error}
        return {"pid": os.getpid(), "updated_at": utcnow().isoformat(),
                "deployments": deployments}

    def _write_status(self) -> None:
        try:
            fd, tmp = tempfile.mkstemp(prefix=".status-", dir=self.status_path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self.report(), fh)
            os.replace(tmp, self.status_path)
        except OSError as exc:
            logger.warning("cannot write %s: %s", self.status_path, exc.strerror)
