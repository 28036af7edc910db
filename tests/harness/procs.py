"""Processes for fault-injection tests: a real ``dask scheduler`` with ``dask worker``s.

Every process is started on loopback with a free port, and stopped by its pid.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from distributed import Client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class DaskProcesses:
    """``dask scheduler`` plus ``n`` ``dask worker`` processes (no nanny: we restart them).

    Use as a context manager; ``address`` is the scheduler's ``tcp://`` address.
    """

    def __init__(self, log_dir: Path, n_workers: int = 2, scheduler_args: tuple = ()):
        self.log_dir = log_dir
        self.scheduler_args = list(scheduler_args)
        self.n_workers = n_workers
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.dashboard_port = free_port()
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self._n = 0

    def _spawn(self, args: list[str], name: str) -> subprocess.Popen:
        self._n += 1
        log = open(self.log_dir / f"{name}-{self._n}.log", "wb")  # noqa: SIM115
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1"}
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env)
        log.close()
        return proc

    def __enter__(self) -> DaskProcesses:
        self.scheduler = self._spawn(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
             "--port", str(self.port), "--dashboard-address", f"127.0.0.1:{self.dashboard_port}",
             "--no-show", *self.scheduler_args], "scheduler")
        for _ in range(self.n_workers):
            self.start_worker()
        self.wait_workers(self.n_workers, 60)
        return self

    def start_worker(self) -> subprocess.Popen:
        proc = self._spawn(
            [sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--no-nanny",
             "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard",
             "--death-timeout", "60"], "worker")
        self.workers.append(proc)
        return proc

    def kill_worker(self, index: int = 0) -> int:
        """SIGKILL a live worker (the ``index``-th still running); return its pid."""
        live = [w for w in self.workers if w.poll() is None]
        proc = live[index % len(live)]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        return proc.pid

    def wait_workers(self, n: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with Client(self.address, timeout=f"{timeout_s}s") as client:
            while len(client.scheduler_info(n_workers=-1)["workers"]) < n:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{n} Dask workers did not join in {timeout_s} s")
                time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        for w in self.workers:
            _stop(w)
        if self.scheduler is not None:
            _stop(self.scheduler)
