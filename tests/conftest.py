"""Shared fixtures: one real embedded broker and one real LocalCluster per test session.

Every test names its own topics and topologies (uuid suffixes), so tests share
the broker without seeing each other's data. Processes are stopped by pid.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest
from distributed import Client

from streamimg.broker import EmbeddedBroker, free_port
from streamimg.cluster import local_cluster
from streamimg.config import KafkaConfig
from streamimg.sources.video import read_video
from tests.helpers import clip, wait_until


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    with EmbeddedBroker(log_path=tmp_path_factory.mktemp("broker") / "tansu.log") as b:
        yield b


@pytest.fixture(scope="session")
def kafka(broker) -> KafkaConfig:
    return KafkaConfig(bootstrap=broker.bootstrap, session_timeout_ms=2000,
                       heartbeat_interval_ms=500)


@pytest.fixture(scope="session")
def cluster():
    with local_cluster(n_workers=2) as c:
        yield c


@pytest.fixture(scope="session")
def client(cluster):
    with Client(cluster) as c:
        yield c


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def bikes() -> list[np.ndarray]:
    """The first 24 frames of bikes.mp4 (640x272 RGB uint8), decoded once."""
    return [f.image for f in read_video(clip("bikes.mp4"), limit=24)]


# -- PostgreSQL, when one can run here ------------------------------------------------------

def _pg_available() -> bool:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return False
    return _pg_bin("initdb") is not None and _pg_bin("pg_ctl") is not None


def _pg_bin(name: str) -> str | None:
    """A PostgreSQL program: on PATH, or in Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server in a temporary directory (as user postgres when we are root)."""
    if not _pg_available():
        pytest.skip("no PostgreSQL here (initdb and psycopg needed)")
    base = Path(tempfile.mkdtemp(prefix="streamimg-pg-"))  # pytest's tmp is root's only
    as_user = []
    if os.geteuid() == 0:  # initdb refuses root
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres")
    port, data = free_port(), base / "data"
    for cmd in ([_pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                [_pg_bin("pg_ctl"), "-D", str(data), "-w", "-t", "30", "-l", str(base / "log"),
                 "-o",
                 f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off", "start"]):
        done = subprocess.run([*as_user, *cmd], capture_output=True, timeout=60)
        assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    pid = int((data / "postmaster.pid").read_text().split()[0])
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        os.kill(pid, signal.SIGINT)  # "fast" shutdown of the postmaster we started
        try:
            wait_until(lambda: not Path(f"/proc/{pid}").exists(), 30, "postgres to stop")
        except BaseException:
            os.kill(pid, signal.SIGKILL)
            raise
        finally:
            shutil.rmtree(base, ignore_errors=True)
