"""``streamimg serve``: the analysis service, alone or with everything one machine needs.

Without ``--embedded`` it serves the HTTP API and page (:mod:`streamimg.service.app`)
over the given database and broker, and expects the jobs to run elsewhere:
``streamimg ingest`` (requests -> frames), ``streamimg run <topology>`` (frames ->
analytics and annotated frames) and the results sink (``python -m
streamimg.results.sink``: analytics, frames and request status -> database).

With ``--embedded`` it starts them itself, as child processes stopped by their ids
when the service stops: the embedded broker, the ingest job, the topology's daemon
(worker threads in its own process), the results sink, and a SQLite database file
under ``--workdir``. One command gives the whole experience.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from streamimg.config import KafkaConfig

log = logging.getLogger("streamimg.serve")


def topology_models(path: Path) -> tuple[str, tuple[str, ...]]:
    """``(topology name, analytics value names)`` of a topology file (checked, not run).

    Raises
    ------
    TopologyError
        If the file does not load or its program does not compile.
    """
    from streamimg.topology import load_topology

    topology = load_topology(path)
    program = topology.check()
    names = {n for s in program.sinks if s.analytics for n in s.plan.values}
    return topology.name, tuple(sorted(names))


def _child(cmd: list[str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def stop_child(proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """SIGTERM ``proc`` and wait for it (SIGKILL after ``timeout_s``)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def start_ingest(kafka: KafkaConfig, requests: str, log_path: Path,
                 extra: list[str] = ()) -> subprocess.Popen:
    """``streamimg ingest``: requests -> the ``frames`` topic (a child process)."""
    return _child([sys.executable, "-m", "streamimg.cli", "ingest", "--requests", requests,
                   "--frames", "frames", "--bootstrap", kafka.bootstrap, *extra], log_path)


def start_sink(kafka: KafkaConfig, name: str, db: str, images: Path, requests: str,
               log_path: Path, extra: list[str] = ()) -> subprocess.Popen:
    """The results sink of topology ``name`` and the request status (a child process)."""
    return _child([sys.executable, "-m", "streamimg.results.sink", "--analytics",
                   f"{name}.analytics", "--frames", f"{name}.frames", "--status",
                   f"{requests}.status", "--dlq", f"{name}.dlq", "--db", db, "--images",
                   str(images), "--bootstrap", kafka.bootstrap, *extra], log_path)


def start_jobs(kafka: KafkaConfig, topology: Path, name: str, db: str, images: Path,
               requests: str, workdir: Path, extra: list[str] = ()) -> list[subprocess.Popen]:
    """Start the ingest job, the topology's daemon and the results sink; their processes.

    Logs go to ``workdir/{ingest,daemon,results}.log``. ``extra``: ``--kafka KEY=VALUE``
    flags for every job.
    """
    daemon = _child([sys.executable, "-m", "streamimg.cli", "run", str(topology),
                     "--create-topics", "--bootstrap", kafka.bootstrap, *extra],
                    workdir / "daemon.log")
    return [start_ingest(kafka, requests, workdir / "ingest.log", extra), daemon,
            start_sink(kafka, name, db, images, requests, workdir / "results.log", extra)]


def run_http(cfg: Any, host: str, port: int, signals: list[int]) -> None:
    """Serve the app of ``cfg`` until SIGINT/SIGTERM (recorded in ``signals``).

    Installs its own handlers first: uvicorn re-raises the signal it caught once it has
    shut down, which would kill the process before the caller stops its jobs.
    """
    import uvicorn

    from streamimg.service.app import create_app

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: signals.append(signum))
    if not signals:
        uvicorn.run(create_app(cfg), host=host, port=port, log_level="warning")


def serve(*, kafka: KafkaConfig, db: str | None, topology: Path, requests: str, host: str,
          port: int, embedded: bool, workdir: Path, uploads: Path | None = None,
          models: tuple[str, ...] | None = None, kafka_flags: list[str] = (),
          max_upload_bytes: int = 200 * 1024 * 1024) -> int:
    """Run the service until SIGINT/SIGTERM; return 0.

    ``kafka``: the broker's settings (its bootstrap is replaced by the embedded broker's
    with ``embedded``); ``kafka_flags``: the ``--kafka KEY=VALUE`` flags the jobs get.

    Raises
    ------
    TopologyError
        If ``topology`` does not load (it names the models and topics).
    BrokerError
        If the embedded broker does not start.
    """
    from streamimg.results.store import ResultsStore
    from streamimg.service.app import ServiceConfig

    # Our own handlers from the start: a signal during start-up stops what started (no
    # orphaned job), and uvicorn, which re-raises the signal it caught once it has shut
    # down, then lands here instead of killing the process before the jobs are stopped.
    signals: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: signals.append(signum))
    name, names = topology_models(topology)
    workdir.mkdir(parents=True, exist_ok=True)
    db = db or f"sqlite:///{(workdir / 'results.db').resolve()}"
    with ExitStack() as stack:
        if embedded:
            from streamimg.admin import ensure_topics
            from streamimg.broker import EmbeddedBroker

            broker = stack.enter_context(EmbeddedBroker(log_path=workdir / "broker.log"))
            kafka = dataclasses.replace(kafka, bootstrap=broker.bootstrap)
        store = ResultsStore(db)
        store.create()
        stack.callback(store.close)
        if embedded:
            ensure_topics(kafka, [requests, "frames"])
            procs = start_jobs(kafka, topology, name, db, workdir / "images", requests,
                               workdir, list(kafka_flags))
            for proc in reversed(procs):
                stack.callback(stop_child, proc)
        cfg = ServiceConfig(store=store, kafka=kafka, requests_topic=requests,
                            models=models or names, uploads=uploads or workdir / "uploads",
                            max_upload_bytes=max_upload_bytes)
        print(f"streamimg serve: http://{host}:{port}/ (API docs at /docs); topology "
              f"{name!r}, models {list(cfg.models)}, database {db}"
              + (f", embedded broker at {kafka.bootstrap}" if embedded else ""), flush=True)
        run_http(cfg, host, port, signals)
    return 0
