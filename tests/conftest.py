"""Shared fixtures: one real embedded broker and one real LocalCluster per test session.

Every test names its own topics and topologies (uuid suffixes), so tests share
the broker without seeing each other's data. Processes are stopped by pid.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from distributed import Client

from streamimg.broker import EmbeddedBroker
from streamimg.cluster import local_cluster
from streamimg.config import KafkaConfig
from streamimg.sources.video import read_video
from tests.helpers import clip


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
